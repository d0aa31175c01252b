"""Concept LoRAs to the kohya/A1111 format and back, proven on UNet predictions of the `tiny` model."""

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from pacgen import lora
from pacgen.concepts import ConceptError
from pacgen.kohya import KOHYA_FILE, module_name, read_kohya_file, write_kohya_file
from pacgen.methods import method_modules
from pacgen.models import load_components


@pytest.fixture
def comp():
    return load_components("tiny", device="cpu")


def _predict(unet, adapter: str | None) -> torch.Tensor:
    """One noise prediction with only `adapter` active (None: the base model), on fixed inputs."""
    generator = torch.Generator().manual_seed(1)
    size = unet.config.sample_size
    latents = torch.randn(1, unet.config.in_channels, size, size, generator=generator)
    text = torch.randn(1, 8, unet.config.cross_attention_dim, generator=generator)
    lora.activate(unet, [adapter] if adapter else [])
    with torch.no_grad():
        return unet(latents, torch.tensor([500]), encoder_hidden_states=text).sample


def _trained_adapter(unet, name: str, method: str, rank: int, alpha: float) -> dict[str, torch.Tensor]:
    """A LoRA as training leaves it (random non-zero factors at scale alpha/rank), and its change at scale 1 in our
    file's naming: what a concept file holds."""
    lora.add_adapter(unet, name, rank=rank, alpha=alpha, targets=sorted(method_modules(unet, method)))
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for layer in lora.lora_layers(unet):
            for weight in (layer.lora_A[name].weight, layer.lora_B[name].weight):
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.3)
    raw = get_peft_model_state_dict(unet, adapter_name=name)
    return {f"unet.{k}": v * (alpha / rank if ".lora_B." in k else 1.0) for k, v in raw.items()}


def _load(unet, state: dict[str, torch.Tensor], name: str) -> str:
    lora.load_adapter(unet, state, name)
    return name


def test_module_names_round_trip_for_every_layer_a_concept_may_change(comp):
    names = method_modules(comp.unet, "full")
    assert all(module_name(name.replace(".", "_")) == name for name in names)


@pytest.mark.parametrize("method", ["lora", "lora-all"])
def test_our_file_and_its_kohya_round_trip_predict_the_same(comp, tmp_path, method):
    ours = _trained_adapter(comp.unet, "trained", method, rank=4, alpha=4)
    kohya = write_kohya_file(ours, tmp_path)
    back = read_kohya_file(kohya, comp.unet)
    assert set(back) == set(ours)
    base = _predict(comp.unet, None)
    expected = _predict(comp.unet, _load(comp.unet, ours, "ours"))
    got = _predict(comp.unet, _load(comp.unet, back, "back"))
    assert (expected - base).abs().max() > 1e-2  # the LoRA really changes the prediction
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    with safe_open(str(kohya), "pt") as handle:
        keys = list(handle.keys())
    assert all(k.startswith("lora_unet_") and k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha"))
               for k in keys)
    if method == "lora-all":
        assert any("_resnets_" in k and k.endswith("_conv1.lora_down.weight") for k in keys)  # conv LoRA (LoCon)


def test_the_trained_alpha_is_written_and_its_scale_kept(comp, tmp_path):
    """Trained at alpha 8 on rank 4 (scale 2): the kohya file says alpha 8, holds the raw trained up factor, and
    both our reader and diffusers' own kohya loader reproduce the trained adapter's prediction."""
    ours = _trained_adapter(comp.unet, "trained", "lora", rank=4, alpha=8)
    live = _predict(comp.unet, "trained")
    raw_up = {k: v for k, v in get_peft_model_state_dict(comp.unet, adapter_name="trained").items() if "lora_B" in k}
    kohya = write_kohya_file(ours, tmp_path, alpha=8)
    stored = load_file(str(kohya))
    assert {float(v) for k, v in stored.items() if k.endswith(".alpha")} == {8.0}
    some = next(iter(raw_up))
    kohya_up = "lora_unet_" + some.removesuffix(".lora_B.weight").replace(".", "_") + ".lora_up.weight"
    torch.testing.assert_close(stored[kohya_up], raw_up[some])
    torch.testing.assert_close(_predict(comp.unet, _load(comp.unet, read_kohya_file(kohya), "back")), live,
                               atol=1e-5, rtol=1e-5)

    other = load_components("tiny", device="cpu")  # diffusers' loader, on a fresh copy of the same model
    sd = StableDiffusionPipeline(other.vae, other.text_encoder, other.tokenizer, other.unet,
                                 DDIMScheduler(**{k: v for k, v in other.scheduler_config.items()
                                                  if k not in ("skip_prk_steps",)}),
                                 safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    sd.load_lora_weights(str(tmp_path), weight_name=kohya.name, adapter_name="kohya")
    torch.testing.assert_close(_predict(other.unet, "kohya"), live, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("alpha, scale", [(1.0, 0.25), (0.0, 1.0)])
def test_a_third_party_alpha_is_folded_into_our_scale(comp, tmp_path, alpha, scale):
    """A kohya file trained elsewhere with alpha 1 on rank 4 acts at scale 1/4; read into our naming it keeps it. Alpha
    0 is the rank (scale 1), as kohya's own loader reads it: not a concept that does nothing."""
    ours = _trained_adapter(comp.unet, "trained", "lora", rank=4, alpha=4)
    path = write_kohya_file(ours, tmp_path)
    state = load_file(str(path))
    save_file({k: (torch.tensor(alpha) if k.endswith(".alpha") else v) for k, v in state.items()}, str(path))
    back = read_kohya_file(path)
    assert set(back) == set(ours)
    for key in ours:
        torch.testing.assert_close(back[key], ours[key] * (scale if ".lora_B." in key else 1.0))


@pytest.mark.parametrize("key, message", [
    ("lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight", "also changes the text encoder"),
    ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_fuser_attn_to_q.lora_down.weight", "may change"),
    ("lora_unet_position_net_linears_0.lora_down.weight", "may change"),
    ("lora_unet_down_blocks_0_attentions_0_norm.lora_down.weight", "may change"),  # a GroupNorm: no LoRA there
    ("model.diffusion_model.input_blocks.1.1.proj_in.weight", "may change"),  # a whole checkpoint, not a LoRA
])
def test_foreign_keys_are_refused_with_the_key_named(comp, tmp_path, key, message):
    path = tmp_path / "foreign.safetensors"
    save_file({key: torch.zeros(4, 8)}, str(path))
    with pytest.raises(lora.LoraFileError, match=message) as caught:
        read_kohya_file(path, comp.unet)
    assert key in str(caught.value) and str(tmp_path) not in str(caught.value)


# ----------------------------------------------------------------------------- wired into training, the library, the app


def _stand_in(pipe, library, name="my dog"):
    """A random concept committed to `library` as an older version of the app left it: no kohya copy."""
    from pacgen.mini.stand_ins import write_random_concept

    with library.staging() as staged:
        return library.commit(staged, write_random_concept(pipe, staged, name, "sks"))


def _kohya_of(unet, tmp_path, alpha: float = 8) -> tuple:
    """A kohya file (alpha 8, rank 4: scale 2, as another trainer would write it) and its adapter's prediction."""
    ours = _trained_adapter(unet, "elsewhere", "lora", rank=4, alpha=alpha)
    expected = _predict(unet, "elsewhere")
    lora.delete_adapter(unet, "elsewhere")
    return write_kohya_file(ours, tmp_path / "civitai", alpha=alpha), expected


def test_a_trained_concept_carries_a_kohya_copy_with_the_trained_alpha(pipe, photos, library):
    from pacgen.settings import TrainSettings
    from pacgen.training import train_concept

    config = TrainSettings(steps=2, learning_rate=5e-3, rank=4, alpha=8, method="lora", prior_preservation=False,
                           samples_per_photo=2)
    concept = list(train_concept(pipe, photos, "my star", "star", config, library))[-1].concept
    kohya = concept.path / KOHYA_FILE
    assert {float(v) for k, v in load_file(str(kohya)).items() if k.endswith(".alpha")} == {8.0}
    unet = pipe.components.unet
    base, loaded = _predict(unet, None), _predict(unet, concept.adapter_name)  # attached from the diffusers file
    assert (loaded - base).abs().max() > 1e-4
    torch.testing.assert_close(_predict(unet, _load(unet, read_kohya_file(kohya, unet), "kohya")), loaded,
                               atol=1e-5, rtol=1e-5)


def test_exports_carry_the_kohya_copy_and_imports_keep_it_or_make_one(pipe, library, tmp_path):
    import zipfile

    from pacgen.concepts import ConceptLibrary

    old = _stand_in(pipe, library)
    assert not (old.path / KOHYA_FILE).exists()
    exported = library.export_zip("my dog", tmp_path / "out")
    assert KOHYA_FILE in zipfile.ZipFile(exported).namelist()  # an older concept's download gets one too
    other = ConceptLibrary(tmp_path / "other")
    imported = other.import_zip(exported, pipe.components.fingerprint)
    assert (imported.path / KOHYA_FILE).read_bytes() == zipfile.ZipFile(exported).read(KOHYA_FILE)

    older = tmp_path / "older.zip"  # an export made before concepts had a kohya copy
    with zipfile.ZipFile(exported) as source, zipfile.ZipFile(older, "w") as target:
        for member in source.namelist():
            if member != KOHYA_FILE:
                target.writestr(member, source.read(member))
    again = ConceptLibrary(tmp_path / "again").import_zip(older, pipe.components.fingerprint)
    unet = pipe.components.unet
    from_lora = _predict(unet, _load(unet, lora.read_lora_file(again.lora_path), "from_lora"))
    from_kohya = _predict(unet, _load(unet, read_kohya_file(again.path / KOHYA_FILE, unet), "from_kohya"))
    torch.testing.assert_close(from_kohya, from_lora, atol=1e-5, rtol=1e-5)


def test_an_imported_kohya_lora_is_a_concept_that_predicts_as_the_original(pipe, library, tmp_path):
    from huggingface_hub import ModelCard

    unet = pipe.components.unet
    path, expected = _kohya_of(unet, tmp_path)
    comp = pipe.components
    concept = library.import_kohya(path, "civitai dog", "dog", " ohwx ", comp.fingerprint, comp.model_id,
                                   check=lambda c, state: lora.check_lora_fits(unet, state))
    assert (concept.identifier, concept.class_noun, concept.name) == ("ohwx", "dog", "civitai dog")
    assert (concept.path / KOHYA_FILE).is_file() and library.get("civitai dog").path == concept.path
    pipe.load_concept(concept)
    torch.testing.assert_close(_predict(unet, concept.adapter_name), expected, atol=1e-5, rtol=1e-5)
    card = ModelCard((concept.path / "README.md").read_text())
    assert card.data.to_dict()["instance_prompt"] == "a photo of ohwx dog"
    assert f"imported from the kohya-format LoRA `{path.name}`" in card.text and "trained on" not in card.text


@pytest.mark.parametrize("name, noun, trigger, message", [
    ("kohya dog", "dog", "two words", "the trigger word must be one word"),
    ("kohya dog", "dog", "<sks>", "the trigger word must be one word"),
    ("kohya dog", "dog", "a\u200bb", "the trigger word contains the character ZERO WIDTH SPACE"),
    ("kohya dog", "", "sks", "the class noun is missing"),
    ("", "dog", "sks", "the concept name is empty"),
])
def test_kohya_import_fields_are_checked(pipe, library, tmp_path, name, noun, trigger, message):
    path, _ = _kohya_of(pipe.components.unet, tmp_path)
    with pytest.raises(ConceptError, match=message):
        library.import_kohya(path, name, noun, trigger, pipe.components.fingerprint, "tiny")
    assert library.list() == []


def test_a_kohya_file_with_foreign_keys_is_refused_and_nothing_is_added(pipe, library, tmp_path):
    path = tmp_path / "with_text_encoder.safetensors"
    key = "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"
    save_file({key: torch.zeros(4, 8)}, str(path))
    with pytest.raises(ConceptError, match="also changes the text encoder") as caught:
        library.import_kohya(path, "kohya dog", "dog", "sks", pipe.components.fingerprint, "tiny")
    assert key in str(caught.value) and str(tmp_path) not in str(caught.value)
    assert library.list() == [] and not any(library.staging_dir.iterdir())


def test_the_app_imports_a_kohya_lora_and_refuses_one_that_does_not_fit(tmp_path):
    from pacgen.app.session import Studio
    from pacgen.errors import PACGenError

    studio = Studio("tiny", tmp_path / "home", device="cpu")
    path, _ = _kohya_of(studio.pipe.components.unet, tmp_path)
    assert studio.import_kohya(str(path), "kohya dog", "dog", "ohwx") == "Imported 'kohya dog' (ohwx dog)."
    assert "kohya dog" in studio.concept_names() and "kohya dog" in studio.pipe.concepts
    wrong = load_file(str(path))
    some = next(k for k in wrong if k.endswith(".lora_down.weight"))
    wrong[some] = torch.zeros(4, wrong[some].shape[1] + 1)  # a layer of another size: made for another model
    save_file(wrong, str(path))
    with pytest.raises(PACGenError, match="does not fit this model"):
        studio.import_kohya(str(path), "other dog", "dog", "ohwx")
    with pytest.raises(PACGenError, match="choose a kohya-format LoRA file"):
        studio.import_kohya(None, "other dog", "dog", "ohwx")
    assert studio.concept_names() == ["kohya dog"]


@pytest.mark.parametrize("dropped, message", [
    ("lora_down.weight", "has no lora_down weight"),
    ("lora_up.weight", "has no lora_up weight"),
])
def test_an_unpaired_factor_is_refused_naming_its_layer(pipe, library, tmp_path, dropped, message):
    path, _ = _kohya_of(pipe.components.unet, tmp_path)
    state = load_file(str(path))
    layer = next(k for k in state if k.endswith(".lora_down.weight")).removesuffix(".lora_down.weight")
    del state[f"{layer}.{dropped}"]
    save_file(state, str(path))
    with pytest.raises(ConceptError, match=f"layer '{layer}' {message}; a LoRA layer needs both factors"):
        library.import_kohya(path, "kohya dog", "dog", "sks", pipe.components.fingerprint, "tiny")
    assert library.list() == []
