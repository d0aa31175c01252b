"""The toy layer: a procedural world, a kit of personal objects, the models trained or built on it (`mini`'s
trainer, `tiny`), the scorer that measures them against the renderer's truth, and the benchmarks.

It depends on the core package and nothing depends on it: importing it registers `tiny` and `sd14-random` as model
names.
"""

from pacgen.mini.sd14_random import build_sd14_random
from pacgen.mini.tiny import build_tiny
from pacgen.models import register_model

register_model("tiny", build_tiny)
register_model("sd14-random", build_sd14_random)
