"""Shared fixtures: every test runs offline on the `tiny` model, built in code in milliseconds."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from pacgen import lora  # noqa: E402
from pacgen.concepts import Concept  # noqa: E402
from pacgen.sampling import PACGenPipeline  # noqa: E402


@pytest.fixture
def pipe() -> PACGenPipeline:
    return PACGenPipeline.from_pretrained("tiny", device="cpu")


def write_random_concept(pipe, folder, name, identifier, class_noun="dog", seed=0, strength=0.3) -> Concept:
    """A concept folder whose LoRA has random, clearly non-zero weights (a stand-in for training)."""
    unet = pipe.components.unet
    adapter = f"tmp_{seed}"
    lora.add_adapter(unet, adapter, rank=4, alpha=4)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora.lora_layers(unet):
            for weights in (layer.lora_A[adapter].weight, layer.lora_B[adapter].weight):
                weights.copy_(torch.randn(weights.shape, generator=gen) * strength)
    folder.mkdir(parents=True, exist_ok=True)
    lora.save_adapter(unet, adapter, folder)
    unet.delete_adapters(adapter)
    comp = pipe.components
    concept = Concept(name, identifier, class_noun, comp.model_id, comp.fingerprint, path=folder)
    (folder / "concept.json").write_text(concept.to_json())
    return concept


@pytest.fixture
def random_concept(tmp_path):
    def make(pipe, name="my dog", identifier="sks", class_noun="dog", seed=0, strength=0.3):
        return write_random_concept(pipe, tmp_path / name.replace(" ", "-"), name, identifier, class_noun, seed, strength)

    return make
