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

UI_ONLY = {"api_visibility": "private"}  # page-internal events: not part of the public API


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
        return gr.Number(value=-1 if value is None else value, precision=0, **common)
    low = meta["low"] if low is None else low
    high = meta["high"] if high is None else high
    integer = kind(f) == "int"
    linear = low is not None and high is not None and (high - low <= 2000 if integer else low == 0 and high <= 50)
    if linear:
        return gr.Slider(low, high, value=value, step=step or (1 if integer else 0.05), **common)
    return gr.Number(value=value, precision=0 if integer else None, minimum=low, maximum=high, **common)


def endpoint(fn: Callable, names: list[str]) -> Callable:
    """`fn(*values)` exposed with these parameter names, which Gradio's API (and gradio_client) then shows.

    Errors users can fix become `gr.Error` messages, not stack traces; generators keep streaming.
    """
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except PACGenError as error:
                raise gr.Error(str(error)) from None
    else:
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except PACGenError as error:
                raise gr.Error(str(error)) from None

    original = inspect.signature(fn)
    extra = [p for p in original.parameters.values() if p.kind == p.KEYWORD_ONLY]  # e.g. progress=gr.Progress()
    params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names]
    wrapped.__signature__ = original.replace(parameters=params + extra)
    return wrapped
