"""Offline "mini" setting: a procedural toy world and a personal concept kit to train and score a small model."""

# LoRA settings for concepts on mini, the app's defaults and the benchmark's alike, chosen with
# `python -m pacgen.mini.bench` (docs/mini_bench.md): at higher rates the LoRAs damage mini's scenes.
LORA_STEPS, LORA_LEARNING_RATE, LORA_CLASS_IMAGES = 400, 2e-4, 20
