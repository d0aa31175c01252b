"""Offline "mini" setting: a procedural toy world and a personal concept kit to train and score a small model."""

# LoRA settings for concepts on mini, the app's defaults and the benchmark's alike, chosen with
# `python -m pacgen.mini.bench` (docs/mini_bench.md): at higher rates the LoRAs damage mini's scenes.
LORA_STEPS, LORA_LEARNING_RATE, LORA_CLASS_IMAGES = 400, 2e-4, 20
# mini's sampling default, which the trainer records in the model folder: boxes steer every step, not GLIGEN's
# first 30%; on held-out world scenes that raised shape+colour from 71% to 85% (docs/mini_study.md).
GROUNDING_FRACTION = 1.0
