"""Base model families: what a family's UNet, VAE and text encoder look like, its noise schedule and defaults, how
its weights are named in other tools' files, and how a single-file checkpoint of it is read.

One module per family (`sd1`: Stable Diffusion 1.x). `pacgen.models` loads a base of a family and plugs a grounding
adapter (`pacgen.grounding`) into it.
"""
