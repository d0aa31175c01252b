"""Weights too large to compute are refused at import, and no image is ever made of NaN or infinity (issue 26, item 4)."""

import math
import zipfile

import pytest
import torch
from safetensors.torch import load_file, save_file

from pacgen.concepts import ConceptError
from pacgen.finite import NonFiniteError
from pacgen.layout import Box
from pacgen.lora import LoraFileError, check_lora_fits, output_limit, read_lora_file

BOXES = [Box("<my dog>", (0.1, 0.1, 0.6, 0.6)), Box("a ball", (0.6, 0.6, 0.9, 0.9))]
FAST = dict(num_inference_steps=2, seed=0, width=64, height=64)


def scaled(path, factor, which=("lora_A", "lora_B")):
    state = load_file(str(path))
    save_file({k: v * factor if any(f".{w}." in k for w in which) else v for k, v in state.items()}, str(path))
    return path


@pytest.mark.parametrize("which", [("lora_A", "lora_B"), ("lora_B",)], ids=["both factors", "one factor"])
def test_weights_scaled_by_1e30_are_refused_at_import_naming_a_layer(pipe, library, random_concept, tmp_path, which):
    made = random_concept(pipe)
    scaled(made.lora_path, 1e30, which)
    state = read_lora_file(made.lora_path)  # finite numbers, every one
    assert all(torch.isfinite(v).all() for v in state.values())
    with pytest.raises(LoraFileError, match=r"^the LoRA changes '.*attn.*' by far too much .* float32: inputs of 1 "
                                            r"would give outputs up to .*e\+\d\d, beyond 1.8e\+19"):
        check_lora_fits(pipe.components.unet, state)
    archive = tmp_path / "huge.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for file in made.path.iterdir():
            out.write(file, file.name)
    with pytest.raises(ConceptError, match="^huge.zip: the LoRA changes .* by far too much"):
        library.import_zip(archive, pipe.components.fingerprint,
                           check=lambda concept, state: check_lora_fits(pipe.components.unet, state))
    assert library.list() == []
    with pytest.raises(LoraFileError, match="by far too much"):
        pipe.load_concept(made)
    assert pipe.concepts == {}


def test_the_limit_is_the_dtypes_and_what_normalisation_can_square():
    assert output_limit(torch.float16) == 65504
    assert output_limit(torch.float32) == output_limit(torch.bfloat16) == math.sqrt(torch.finfo(torch.float32).max)


def test_a_concept_that_overflows_while_sampling_is_named_not_drawn_black(pipe, random_concept):
    concept = pipe.load_concept(random_concept(pipe))
    pipe(f"a photo of <{concept.name}>", boxes=BOXES, **FAST)  # sound: an image
    for name, param in pipe.components.unet.named_parameters():  # what no check before sampling can see
        if f"lora_B.{concept.adapter_name}" in name:
            param.data.fill_(math.inf)
            break
    with pytest.raises(NonFiniteError, match=r"^generation failed: concept 'my dog' drove the model to values that "
                                             r"are not finite numbers \(NaN or infinity\), so no image was made"):
        pipe(f"a photo of <{concept.name}>", boxes=BOXES, **FAST)
    with pytest.raises(NonFiniteError, match="concept 'my dog'"):
        pipe(f"a photo of <{concept.name}>", boxes=BOXES, regional=False, **FAST)
    assert len(pipe("a ball", boxes=BOXES[1:], **FAST).images) == 1  # the base model alone still draws


def test_a_decoder_that_overflows_gives_a_message_not_a_black_image(pipe, monkeypatch):
    decode = pipe.components.vae.decode

    def overflowing(latents, **kwargs):
        out = decode(latents, **kwargs)
        out.sample[:, :, 0, 0] = math.nan
        return out

    monkeypatch.setattr(pipe.components.vae, "decode", overflowing)
    with pytest.raises(NonFiniteError, match=r"^generation failed: the image decoder \(float32\) computed values that "
                                             r"are not finite numbers \(NaN or infinity\), so no image was made$"):
        pipe("a ball", boxes=BOXES[1:], **FAST)
