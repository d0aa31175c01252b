"""Gradio components and API endpoints made from the settings dataclasses, so every surface uses their names.

A component's label, help text, range and default come from the field (`pacgen.settings`), its value from the
loaded model's defaults; a handler's API parameter names are the field names.
"""

from __future__ import annotations

import functools
import inspect
import logging
from dataclasses import Field
from typing import Any, Callable

import gradio as gr

from ..errors import PACGenError
from ..settings import kind, label, optional
from .views import plain
from .visitors import Caller, acting_as

UI_ONLY = {"api_visibility": "private"}  # page-internal events: not part of the public API
_DONE = object()
logger = logging.getLogger(__name__)


def refused(error: PACGenError) -> gr.Error:
    """The message a user sees for input they can fix, logged as one line: a refusal is no fault of the server's,
    so Gradio is told not to print its traceback (which it keeps for every other exception)."""
    logger.warning("refused a request: %s", " ".join(str(error).split()))
    return gr.Error(plain(str(error)), print_exception=False)


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
    if f.name == "seed":
        return _named_refusals(gr.Number(value=-1 if value is None else value, precision=0, **common), f.name)
    low = meta["low"] if low is None else low
    high = meta["high"] if high is None else high
    integer = kind(f) == "int"
    precision = 0 if integer else None  # whole numbers arrive as int, and the API types them so
    linear = low is not None and high is not None and (high - low <= 2000 if integer else low == 0 and high <= 50)
    if linear and not optional(f):  # a slider is never empty: an optional setting left unset would read its minimum
        box = gr.Slider(low, high, value=value, step=step or (1 if integer else 0.05), precision=precision, **common)
    else:
        box = gr.Number(value=value, precision=precision, minimum=low, maximum=high, **common)
    return _named_refusals(box, f.name)


def _named_refusals(box: gr.Number | gr.Slider, name: str) -> gr.Number | gr.Slider:
    """Gradio checks a number's range before any handler runs, with a message that does not say which number
    and a traceback in the server log; here its refusal names the setting and is logged as one line, like ours."""
    check = box.preprocess

    def preprocess(payload):
        if isinstance(payload, float) and not payload.is_integer() and box.precision == 0:
            return payload  # `precision` would round 1.5 to 2: the settings' check refuses it, naming the setting
        try:
            return check(payload)
        except gr.Error as error:
            raise refused(PACGenError(f"{name}: {error.message}")) from None

    box.preprocess = preprocess
    return box


def concept_choice(names: list[str], **props) -> gr.Dropdown:
    """A dropdown of concept names, which differ per visitor: its API parameter is typed `str`, not the enum of the
    names it was built with (nobody's in particular, often none: `Literal[]`). Set on the instance: a subclass of a
    Gradio component would make Gradio write a .pyi stub beside this module."""
    box = gr.Dropdown(names, allow_custom_value=True, **props)
    box.api_info = lambda: {"type": "string", "description": "a concept name, as /list_concepts gives it"}
    return box


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
                raise refused(error) from None
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
                raise refused(error) from None

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
