"""Grounding adapters: the layers that put each phrase in its box, plugged into a base model's UNet.

One module per adapter family (`gligen`: GLIGEN's gated self-attention fusers and position net). A later box-control
adapter is a new module here; `pacgen.models` assembles a base and its adapter into one `Components`.
"""
