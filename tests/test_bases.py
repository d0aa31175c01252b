"""Your own base: GLIGEN's adapters plugged into a base without them, single-file checkpoints, concepts across bases.

Stand-ins for users' SD-1.x bases, made from `tiny` and `mini` (`pacgen.mini.bases`): the model's UNet saved without
its adapters (a diffusers folder), with its other weights nudged (a sibling finetune), and the model written as one
A1111-layout `.safetensors` file.
"""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pacgen.app import views
from pacgen.app.cli import main
from pacgen.bases import sd1
from pacgen.concepts import ConceptError
from pacgen.grounding import gligen
from pacgen.layout import Box
from pacgen.mini.bases import write_plain_base, write_single_file
from pacgen.mini.stand_ins import write_random_concept
from pacgen.mini.tiny import build_tiny
from pacgen.models import ModelLoadError, load_components
from pacgen.sampling import PACGenPipeline

BOX = [Box("a red star", (0.1, 0.1, 0.6, 0.6))]
SETTINGS = dict(seed=0, num_inference_steps=4, output_type="np")


@pytest.fixture(scope="module")
def mini():
    return load_components("mini", device="cpu")


@pytest.fixture(scope="module")
def stand_ins(mini, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bases")
    return {"plain": write_plain_base(mini, folder / "plain"),
            "nudged": write_plain_base(mini, folder / "nudged", nudge=0.05),
            "file": write_single_file(mini, folder / "mini.safetensors"),
            "file without vae": write_single_file(mini, folder / "no-vae.safetensors", with_vae=False),
            "tmp": folder}


def same_weights(a, b) -> bool:
    a, b = a.state_dict(), b.state_dict()
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def images(components, boxes=BOX):
    return PACGenPipeline(components)("a red star on grass", boxes=boxes, **SETTINGS).images


def test_plugging_tinys_own_adapters_into_its_own_base_gives_tiny_back_bit_for_bit(tmp_path):
    tiny = build_tiny()
    plugged = load_components(str(write_plain_base(tiny, tmp_path / "plain")), device="cpu", grounding="tiny")
    tiny.save(tmp_path / "whole")  # saved and read back as the plain base was: the same configs
    assert same_weights(plugged.unet, tiny.unet)
    assert plugged.fingerprint == load_components(str(tmp_path / "whole"), device="cpu").fingerprint
    assert plugged.adapters == "tiny" and plugged.describe() == f"{tmp_path / 'plain'} + GLIGEN adapters from tiny"
    assert np.array_equal(images(plugged)[0], images(load_components("tiny", device="cpu"))[0])


def test_plugging_minis_own_adapters_into_its_own_base_gives_mini_back_bit_for_bit(mini, stand_ins):
    plugged = load_components(str(stand_ins["plain"]), device="cpu", grounding="mini")
    assert same_weights(plugged.unet, mini.unet) and plugged.fingerprint == mini.fingerprint
    assert np.array_equal(images(plugged)[0], images(mini)[0])


def test_a_base_without_adapters_gains_them_and_nothing_else_and_draws_its_boxes(mini, stand_ins):
    plugged = load_components(str(stand_ins["nudged"]), device="cpu", grounding="mini")
    ours, theirs = plugged.unet.state_dict(), mini.unet.state_dict()
    adapters = [k for k in theirs if gligen.is_adapter_key(k)]
    assert adapters and all(torch.equal(ours[k], theirs[k]) for k in adapters)  # GLIGEN's adapters, copied
    assert not any(t.is_meta for t in ours.values())
    assert not torch.equal(ours["conv_in.weight"], theirs["conv_in.weight"])  # the base's own weights
    assert plugged.fingerprint != mini.fingerprint
    boxed, unboxed = images(plugged)[0], images(plugged, [])[0]
    assert np.abs(boxed - unboxed).mean() > 0.01  # the fusers read the boxes


def test_a_single_file_checkpoint_loads_offline_and_gives_the_images_of_its_folder(mini, stand_ins):
    loaded = load_components(str(stand_ins["file"]), device="cpu", grounding="mini")
    for part in ("unet", "vae", "text_encoder"):
        assert same_weights(getattr(loaded, part), getattr(mini, part)), part
    assert loaded.notices == [] and loaded.scheduler_config == mini.scheduler_config
    assert np.array_equal(images(loaded)[0], images(mini)[0])
    without_vae = load_components(str(stand_ins["file without vae"]), device="cpu", grounding="mini")
    assert without_vae.notices == ["no-vae.safetensors has no VAE of its own: using the VAE of mini."]
    assert np.array_equal(images(without_vae)[0], images(mini)[0])


def test_a_concept_loads_on_a_sibling_base_with_a_notice_and_is_refused_on_other_shapes(mini, stand_ins, tmp_path):
    trained_on = PACGenPipeline.from_pretrained("mini", device="cpu")  # its own copy: the LoRA wraps its layers
    concept = write_random_concept(trained_on, tmp_path / "dog", "my dog", "sks", strength=0.1)
    sibling = PACGenPipeline(load_components(str(stand_ins["nudged"]), device="cpu", grounding="mini"))
    sibling.load_concept(concept)
    notice = f"concept 'my dog' was trained on mini, used on {stand_ins['nudged']}: its look may differ"
    assert sibling.transplanted == {"my dog": notice}
    result = sibling("<my dog> on grass", boxes=[Box("<my dog>", (0.1, 0.1, 0.6, 0.6))], **SETTINGS)
    assert notice in result.warnings  # regional sampling's base rows are the sibling's own UNet, without the LoRA
    with pytest.raises(ConceptError, match="whose shapes differ from the loaded model 'tiny'") as refused:
        PACGenPipeline.from_pretrained("tiny", device="cpu").load_concept(concept)
    assert "\n" not in str(refused.value)


def test_a_unet_of_another_family_is_refused_in_one_line(stand_ins, tmp_path):
    tiny_base = write_plain_base(build_tiny(), tmp_path / "tiny-plain")
    with pytest.raises(ModelLoadError, match="do not fit .* its block_out_channels is \\[16, 32\\], the grounding "
                                             "adapters need \\[64, 96, 128\\]") as caught:
        load_components(str(tiny_base), device="cpu", grounding="mini")
    assert "\n" not in str(caught.value)
    sd2 = {**sd1.read_config(sd1.CONFIGS, "unet"), "cross_attention_dim": 1024, "use_linear_projection": True}
    with pytest.raises(sd1.BaseFitError, match="is not SD-1.x: its cross_attention_dim is 1024, .* need 768"):
        sd1.check_unet_fits(sd2, sd1.read_config(sd1.CONFIGS, "unet"), "sd2", sd1.NAME)
    sdxl = tmp_path / "sdxl.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1),
               "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": torch.zeros(1)}, str(sdxl))
    with pytest.raises(ModelLoadError, match="no CLIP ViT-L text encoder .* SD-2.x and SDXL files are other families"):
        load_components(str(sdxl), device="cpu", grounding="mini")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_corrupt_or_truncated_safetensors_file_is_one_line_never_a_traceback(stand_ins, damage, capsys):
    good = stand_ins["file"].read_bytes()
    path = stand_ins["tmp"] / f"{damage}.safetensors"
    path.write_bytes({"truncated": good[: len(good) // 2], "garbage": b"\x00\xffnot a checkpoint" * 100,
                      "empty": b""}[damage])
    with pytest.raises(ModelLoadError, match=f"'{damage}.safetensors' is not a readable .safetensors file") as caught:
        load_components(str(path), device="cpu", grounding="mini")
    assert "\n" not in str(caught.value)
    assert main(["generate", "--model", str(path), "--grounding", "mini", "--prompt", "a star", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "is not a readable .safetensors file" in err


def test_a_base_with_its_own_adapters_is_used_as_it_is_and_the_header_names_both_sources(mini, stand_ins):
    own = load_components("mini", device="cpu", grounding=str(stand_ins["plain"]))
    assert same_weights(own.unet, mini.unet) and own.adapter_source == "mini"
    assert own.notices == [f"mini has its own GLIGEN adapters: the grounding source {stand_ins['plain']} is not used."]
    plugged = load_components(str(stand_ins["nudged"]), device="cpu", grounding="mini")
    status = {"device": "CPU", "model": plugged.model_id, "adapters": plugged.adapter_source, "dtype": "float32",
              "memory": "1 GiB", "concepts": 0, "size": 64}
    header = views.header(status)
    assert f"Model **{stand_ins['nudged']}** with box adapters from **mini**" in header


def test_sd14_random_is_a_model_name_with_sd14s_shapes_for_speed_and_memory_runs(monkeypatch):
    from accelerate import init_empty_weights

    from pacgen import models
    from pacgen.mini.sd14_random import build_sd14_random

    assert models.registered_models()["sd14-random"] is build_sd14_random and "sd14-random" in models.model_names()
    monkeypatch.setattr(models, "fingerprint", lambda *modules: "no weights")  # it reads weights: there are none
    with init_empty_weights():  # shapes only: the real build takes 5 GB and 20 s on the CPU
        components = build_sd14_random()
    unet = components.unet
    assert sum(p.numel() for n, p in unet.named_parameters() if not gligen.is_adapter_key(n)) == 859_520_964
    assert components.model_id == "sd14-random" and components.text_encoder.config.hidden_size == 768


def test_the_shipped_sd1_configs_read_offline_and_describe_gligens_sd14_unet():
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig

    unet_config = UNet2DConditionModel.load_config(str(sd1.CONFIGS), subfolder="unet", local_files_only=True)
    text = CLIPTextConfig.from_pretrained(str(sd1.CONFIGS), subfolder="text_encoder", local_files_only=True)
    vae = AutoencoderKL.load_config(str(sd1.CONFIGS), subfolder="vae", local_files_only=True)
    assert text.hidden_size == unet_config["cross_attention_dim"] == 768 and vae["scaling_factor"] == 0.18215
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config({**unet_config, "attention_type": gligen.ATTENTION_TYPE})
    assert sum(isinstance(m, gligen.FUSER) for m in unet.modules()) == 16  # GLIGEN's 16 fusers on SD-1.x
    assert sum(p.numel() for n, p in unet.named_parameters() if not gligen.is_adapter_key(n)) == 859_520_964
