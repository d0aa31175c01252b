"""The three training methods on `tiny`: each trains, saves, reloads and generates; none touches GLIGEN's adapters;
a full finetune's stored LoRA reproduces the finetuned UNet; every file loads in plain diffusers."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from pacgen import lora
from pacgen.concepts import Concept
from pacgen.layout import Box
from pacgen.methods import method_modules
from pacgen.sampling import PACGenPipeline
from pacgen.settings import TrainSettings
from pacgen.training import train_concept

pytestmark = pytest.mark.slow  # every test here trains
METHODS = ["lora", "lora-all", "full"]
FAST = dict(steps=4, learning_rate=5e-3, rank=8, prior_preservation=False, samples_per_photo=2)


def gligen_state(pipe):
    return {k: v.clone() for k, v in pipe.components.unet.state_dict().items() if "fuser" in k or "position_net" in k}


def base_state(pipe):
    """The UNet's own weights, wherever a loaded LoRA has moved them (`x.base_layer.weight`)."""
    state = pipe.components.unet.state_dict()
    return {k.replace(".base_layer", ""): v.clone() for k, v in state.items() if "lora_" not in k}


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_saves_reloads_and_generates_without_touching_the_base(pipe, photos, library, method):
    before_gligen, before_base = gligen_state(pipe), base_state(pipe)
    events = list(train_concept(pipe, photos, "my star", "star", TrainSettings(method=method, **FAST), library))
    concept = events[-1].concept
    assert concept.training["method"] == method and "my star" in pipe.concepts
    after_gligen, after_base = gligen_state(pipe), base_state(pipe)
    assert all(torch.equal(before_gligen[k], after_gligen[k]) for k in before_gligen)  # fusers, position net
    assert all(torch.equal(before_base[k], after_base[k]) for k in before_base)  # a full finetune is undone too
    touched = {key[len("unet."):].split(".lora")[0] for key in lora.read_lora_file(concept.lora_path)}
    assert touched == set(method_modules(pipe.components.unet, method))
    request = dict(prompt="<my star> on grass", boxes=[Box("<my star>", (0.2, 0.2, 0.7, 0.7))], num_inference_steps=3,
                   seed=1, output_type="np")
    just_trained = pipe(**request).images[0]
    fresh = PACGenPipeline.from_pretrained("tiny", device="cpu")
    plain = fresh("a star on grass", boxes=[Box("a star", (0.2, 0.2, 0.7, 0.7))], num_inference_steps=3, seed=1,
                  output_type="np").images[0]
    fresh.load_concept(library.get("my star"))
    assert np.array_equal(fresh(**request).images[0], just_trained)
    assert np.abs(just_trained - plain).max() > 1e-3


def test_a_full_finetunes_stored_lora_reproduces_the_finetuned_unet(pipe, tmp_path):
    unet = pipe.components.unet
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))
    concept = Concept("tuned", "sks", "star", "tiny", pipe.components.fingerprint)
    files = {}
    for rank in (1024, 2):
        with pipe.training(concept, "full", rank=rank, alpha=rank, seed=0) as weights, torch.no_grad():
            generator = torch.Generator().manual_seed(2)
            for param in weights.params:  # stands in for a finetune: every trained weight moves
                param.add_(torch.randn(param.shape, generator=generator) * 0.02)
            finetuned = unet(latents, 500, encoder_hidden_states=text).sample
            files[rank] = tmp_path / f"rank{rank}"
            files[rank].mkdir()
            files[rank, "error"] = weights.save(files[rank])
    assert files[1024, "error"] < 1e-9 < 0.1 < files[2, "error"]  # every layer exact at full rank; not at rank 2
    for rank, tolerance in ((1024, 1e-4), (2, None)):
        state = lora.read_lora_file(files[rank] / lora.LORA_FILE)
        lora.load_adapter(unet, state, f"rank{rank:04d}")
        lora.activate(unet, [f"rank{rank:04d}"])
        with torch.no_grad():
            stored = unet(latents, 500, encoder_hidden_states=text).sample
        error = float((stored - finetuned).abs().max())
        assert error < tolerance if tolerance else error > 1e-3
    lora.activate(unet, [])


@pytest.mark.parametrize("method", METHODS)
def test_every_methods_file_loads_in_plain_diffusers(pipe, photos, library, method):
    """Interoperability: the same file in diffusers' own SD pipeline gives what our whole-image mode gives."""
    list(train_concept(pipe, photos, "my star", "star", TrainSettings(method=method, **FAST), library))
    concept = library.get("my star")
    ours = pipe("a photo of <my star>", regional=False, grounding_fraction=0.0, num_inference_steps=4, seed=2,
                scheduler="ddim", output_type="np").images[0]
    comp = pipe.components
    sd = StableDiffusionPipeline(comp.vae, comp.text_encoder, comp.tokenizer, comp.unet, pipe.make_scheduler("ddim"),
                                 safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    sd.set_progress_bar_config(disable=True)
    sd.load_lora_weights(str(concept.path), adapter_name="interop")
    sd.set_adapters(["interop"])
    theirs = sd(f"a photo of {concept.identifier} star", num_inference_steps=4, height=64, width=64, output_type="np",
                generator=torch.Generator().manual_seed(2)).images[0]
    assert np.abs(ours - theirs).max() <= 1e-3


def test_concepts_of_every_method_share_one_regional_image(pipe, photos, library):
    """Three boxes, one concept of each method, and names that are prefixes of each other: each concept's row
    equals that concept alone."""
    names = ["star", "star two", "star two b"]
    for name, method in zip(names, METHODS):
        list(train_concept(pipe, photos, name, "star", TrainSettings(method=method, **FAST), library))
    for name in names:  # each file holds its own weights only, whatever else was loaded when it was saved
        keys = lora.read_lora_file(library.get(name).lora_path)
        assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)
    boxes = [Box(f"<{n}>", (0.05 + 0.32 * k, 0.1, 0.32 * (k + 1), 0.5)) for k, n in enumerate(names)]
    together = pipe(" and ".join(f"<{n}>" for n in names), boxes=boxes, num_inference_steps=3, seed=3,
                    output_type="np").images[0]
    assert together.shape == (64, 64, 3)
    unet = pipe.components.unet
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)).expand(4, -1, -1, -1)
    text = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1)).expand(4, -1, -1)
    adapters = [pipe.concepts[n].adapter_name for n in names]
    with torch.no_grad(), lora.row_adapters(unet, [lora.BASE_ROW, *adapters]):
        mixed = unet(latents, 400, encoder_hidden_states=text).sample
    for row, adapter in enumerate([None, *adapters]):
        lora.activate(unet, [adapter] if adapter else [])
        with torch.no_grad():
            alone = unet(latents[:1], 400, encoder_hidden_states=text[:1]).sample
        assert torch.allclose(mixed[row : row + 1], alone, atol=1e-5)
