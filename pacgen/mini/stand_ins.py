"""Stand-ins for trained concepts, for tests and benchmarks: LoRAs with random, clearly non-zero weights."""

from __future__ import annotations

from pathlib import Path

import torch

from pacgen import lora
from pacgen.concepts import Concept
from pacgen.sampling import PACGenPipeline


def write_random_concept(
    pipe: PACGenPipeline, folder: Path, name: str, identifier: str, class_noun: str = "dog",
    seed: int = 0, strength: float = 0.3, rank: int = 4,
) -> Concept:
    """Write a concept folder (LoRA + concept.json) for the pipeline's base model, without training."""
    unet = pipe.components.unet
    adapter = f"random{seed:012d}"  # one length for every seed: PEFT selects an adapter's keys by substring
    lora.add_adapter(unet, adapter, rank=rank, alpha=rank)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora.lora_layers(unet):
            for weight in (layer.lora_A[adapter].weight, layer.lora_B[adapter].weight):
                weight.copy_(torch.randn(weight.shape, generator=generator) * strength)
    folder.mkdir(parents=True, exist_ok=True)
    lora.save_adapter(unet, adapter, folder)
    lora.delete_adapter(unet, adapter)
    comp = pipe.components
    concept = Concept(name, identifier, class_noun, comp.model_id, comp.fingerprint, path=folder)
    (folder / "concept.json").write_text(concept.to_json())
    return concept
