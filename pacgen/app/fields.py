"""Gradio components and API endpoints made from the settings dataclasses, so every surface uses their names.

A component's label, help text, range and default come from the field (`pacgen.settings`), its value from the
loaded model's defaults; a handler's API parameter names are the field names.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import Field
from typing import Any, Callable

import gradio as gr

from ..errors import PACGenError
from ..settings import kind, label
from .views import plain
from .visitors import Caller, acting_as

UI_ONLY = {"api_visibility": "private"}  # page-internal events: not part of the public API
_DONE = object()


def component(f: Field, value: Any, *, low: float | None = None, high: float | None = None,
              step: float | None = None) -> gr.components.Component:
    """The input for one setting: a checkbox, a dropdown, a slider for a bounded range on a linear scale, else a
    number box. `low`/`high`/`step` narrow the field's own range for this model (image sizes, say)."""
    meta = f.metadata
    common = dict(label=label(f), info=meta["help"], elem_id=f"setting-{f.name}")
    if kind(f) == "bool":
        return gr.Checkbox(value=value, **common)
    if kind(f) == "str":
        return gr.Dropdown(list(meta["choices"]), value=value, **common)
    # No `precision` on number boxes: Gradio would round 1.5 to 2 before the settings' check, which refuses it.
    if f.name == "seed":
        return gr.Number(value=-1 if value is None else value, **common)
    low = meta["low"] if low is None else low
    high = meta["high"] if high is None else high
    integer = kind(f) == "int"
    linear = low is not None and high is not None and (high - low <= 2000 if integer else low == 0 and high <= 50)
    if linear:
        return gr.Slider(low, high, value=value, step=step or (1 if integer else 0.05), **common)
    return gr.Number(value=value, minimum=low, maximum=high, **common)


def caller_of(request: gr.Request | None, profile: gr.OAuthProfile | None = None) -> Caller:
    """Who made a Gradio request: their login (an `--auth` user, a Hugging Face account) and page session."""
    login = (profile.username if profile is not None else None) or (request.username if request else None)
    return Caller(login=login, session=request.session_hash if request else None)


def endpoint(fn: Callable, names: list[str], optional: tuple[str, ...] = ()) -> Callable:
    """`fn(*values)` exposed with these parameter names, which Gradio's API (and gradio_client) then shows;
    `optional` ones default to None for API clients (inputs with no value of their own, like a photo).

    The call runs on behalf of whoever made the request (`visitors.acting_as`: Gradio passes the request and, on a
    Space with Hugging Face login, the profile, which the API does not show). Errors users can fix become
    `gr.Error` messages, not stack traces (HTML-escaped: Gradio renders an error's text as HTML); generators keep streaming, each step as the same visitor.
    """
    takes_progress = "progress" in inspect.signature(fn).parameters

    def split(args: tuple) -> tuple[tuple, dict, Caller]:
        *values, request, profile, progress = args
        return tuple(values), ({"progress": progress} if takes_progress else {}), caller_of(request, profile)

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def wrapped(*args):
            values, extra, caller = split(args)
            steps = fn(*values, **extra)  # a generator: its body runs at each next(), as the caller below
            try:
                while True:
                    with acting_as(caller):
                        item = next(steps, _DONE)
                    if item is _DONE:
                        return
                    yield item
            except PACGenError as error:
                raise gr.Error(plain(str(error))) from None
            finally:
                steps.close()
    else:
        @functools.wraps(fn)
        def wrapped(*args):
            values, extra, caller = split(args)
            try:
                with acting_as(caller):
                    return fn(*values, **extra)
            except PACGenError as error:
                raise gr.Error(plain(str(error))) from None

    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter(n, positional, **({"default": None} if n in optional else {})) for n in names]
    if optional and names[-len(optional):] != list(optional):
        raise ValueError(f"optional parameters {optional} must come last, after {names}")
    special = [inspect.Parameter("request", positional, annotation=gr.Request, default=None),
               inspect.Parameter("profile", positional, annotation=gr.OAuthProfile | None, default=None),
               inspect.Parameter("progress", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=gr.Progress())]
    wrapped.__signature__ = inspect.Signature(params + special)
    wrapped.__annotations__ = {"request": gr.Request, "profile": gr.OAuthProfile | None}  # Gradio reads these
    del wrapped.__wrapped__  # so Gradio reads the signature above, not fn's
    return wrapped
