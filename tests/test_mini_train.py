"""The `mini` trainer end to end, on a budget of a few steps: its output is a model the app can load and run."""

import pytest
import torch

from pacgen.layout import Box
from pacgen.mini import train as train_module
from pacgen.mini.train import grounding, main, parse_args, recolour, render_scenes
from pacgen.mini.world import SHAPES
from pacgen.mini.tiny import build_toy_tokenizer, toy_text_encoder
from pacgen.models import MINI_DIR, load_components
from pacgen.sampling import PACGenPipeline


@pytest.mark.slow  # trains
@pytest.mark.parametrize("schedule", [[], ["--zero-snr"]])
def test_trainer_writes_a_loadable_model(tmp_path, schedule):
    threads = torch.get_num_threads()
    try:
        folder = main([
            "--out", str(tmp_path / "mini"), "--work", str(tmp_path / "work"), "--scenes", "16", "--batch", "4",
            "--vae-steps", "2", "--unet-steps", "2", "--tune-steps", "1", "--threads", "1", "--size", "32", *schedule,
        ])
    finally:
        torch.set_num_threads(threads)
    assert "replay with `--tune-steps 1`" in (folder / "TRAINING.md").read_text()  # the tune stage ran
    components = load_components(str(folder), device="cpu")
    assert components.unet.dtype == torch.float32 and components.default_size == 32
    # the new model asks for what the shipped mini asks for: boxes steering every step, its LoRA recipe, its examples
    assert components.defaults == load_components("mini", device="cpu").defaults
    # the schedule the UNet was trained for is the one it samples with
    assert components.scheduler_config.get("prediction_type", "epsilon") == ("v_prediction" if schedule else "epsilon")
    result = PACGenPipeline(components)("a red star on grass", boxes=[Box("a red star", (0.1, 0.1, 0.6, 0.6))],
                                        num_inference_steps=2, seed=0)
    assert result.images[0].size == (32, 32)


@pytest.mark.slow  # trains
def test_a_model_over_the_repository_limit_is_refused_after_training(tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "MAX_MB", 1)
    threads = torch.get_num_threads()
    try:
        with pytest.raises(RuntimeError, match="over the 1 MB the repository allows"):
            main(["--out", str(tmp_path / "mini"), "--work", str(tmp_path / "work"), "--scenes", "8", "--batch", "4",
                  "--vae-steps", "1", "--unet-steps", "1", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)


def test_recolour_changes_only_the_chosen_rows_and_stays_in_range():
    x = torch.rand(64, 3, 8, 8) * 2 - 1
    same = recolour(x, torch.Generator().manual_seed(0), share=0.0)
    assert torch.equal(same, x)
    jittered = recolour(x, torch.Generator().manual_seed(0), share=1.0)
    assert jittered.min() >= -1 and jittered.max() <= 1
    changed = (jittered - x).abs().flatten(1).amax(1) > 1e-3
    assert changed.float().mean() > 0.9  # a kit colour the world never paints now reaches the VAE


def test_grounding_uses_bare_shape_nouns_as_concepts_are_grounded(tmp_path):
    cfg = parse_args(["--out", str(tmp_path / "m"), "--work", str(tmp_path), "--scenes", "8", "--threads", "1"])
    tokenizer = build_toy_tokenizer()
    data = render_scenes(cfg, tokenizer)
    settings = tokenizer.batch_decode(data["setting_ids"], skip_special_tokens=True)
    assert [s.strip() for s in settings] == ["on " + c.rsplit(" on ", 1)[1] for c in data["captions"]]
    nouns = {data["phrases"][i] for i in data["obj_noun"][data["obj_noun"] >= 0].tolist()}
    assert nouns <= set(SHAPES) and nouns
    text_encoder = toy_text_encoder(tokenizer, hidden=32, layers=1, heads=2)
    rows, keep = torch.arange(8), torch.ones(8, dtype=torch.bool)
    used = set()
    for seed in range(20):
        kwargs = grounding(text_encoder, data, rows, keep, torch.device("cpu"), torch.Generator().manual_seed(seed))
        assert kwargs["masks"][:, :2].sum() == (data["obj_phrase"] >= 0).sum()
        used.add(kwargs["positive_embeddings"][0, 0].sum().item())
    assert len(used) == 2  # the first object is grounded sometimes as "a red star", sometimes as "star"


@pytest.mark.slow  # trains
def test_init_goes_on_training_a_saved_model_and_keeps_its_provenance(tmp_path):
    threads = torch.get_num_threads()
    common = ["--scenes", "16", "--batch", "4", "--threads", "1", "--zero-snr"]
    try:
        base = main(["--out", str(tmp_path / "base"), "--work", str(tmp_path / "w1"), "--vae-steps", "2",
                     "--unet-steps", "2", *common])
        more = main(["--out", str(tmp_path / "more"), "--work", str(tmp_path / "w2"), "--init", str(base),
                     "--vae-steps", "0", "--unet-steps", "0", "--tune-steps", "2", *common])
        with pytest.raises(SystemExit, match="predicts v_prediction, this run trains epsilon: run with --zero-snr"):
            main(["--out", str(tmp_path / "bad"), "--work", str(tmp_path / "w3"), "--init", str(base),
                  "--vae-steps", "0", "--unet-steps", "0", *common[:-1]])
        with pytest.raises(SystemExit, match="not a saved mini model"):
            main(["--out", str(tmp_path / "bad"), "--work", str(tmp_path / "w3"), "--init", str(tmp_path / "w1")])
    finally:
        torch.set_num_threads(threads)
    before, after = (load_components(str(folder), device="cpu") for folder in (base, more))
    assert after.vae.config.scaling_factor == before.vae.config.scaling_factor  # the UNet's latents keep their scale
    assert all(torch.equal(a, b) for a, b in zip(before.vae.parameters(), after.vae.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(before.unet.parameters(), after.unet.parameters()))
    record = (more / "TRAINING.md").read_text()
    assert f"## It started from `{base}` (--init)" in record and "replay with `--unet-steps 2`" in record
    assert not (tmp_path / "bad").exists()  # a refused start writes nothing
    assert parse_args(["--out", "o", "--work", "w", "--init", "mini"]).init == MINI_DIR  # the shipped model


@pytest.mark.slow  # trains
def test_init_goes_on_at_a_new_size_and_the_model_then_draws_at_it(tmp_path):
    """The 64 px mini starts from the shipped 32 px weights (issue 25): its VAE and UNet are convolutional."""
    threads = torch.get_num_threads()
    try:
        folder = main(["--out", str(tmp_path / "m64"), "--work", str(tmp_path / "w"), "--init", "mini", "--size", "64",
                       "--vae-steps", "0", "--unet-steps", "0", "--tune-steps", "1", "--scenes", "8", "--batch", "4",
                       "--threads", "1", "--zero-snr"])
    finally:
        torch.set_num_threads(threads)
    shipped, grown = (load_components(str(f), device="cpu") for f in (MINI_DIR, folder))
    assert grown.default_size == 64 and shipped.default_size == 32
    assert "64x64" in grown.defaults.banner and "32x32" not in grown.defaults.banner
    assert grown.vae.config.scaling_factor == shipped.vae.config.scaling_factor  # the UNet's latents keep their scale
    image = PACGenPipeline(grown)("a red star on grass", boxes=[Box("a red star", (0.2, 0.2, 0.7, 0.7))], seed=0,
                                  num_inference_steps=2).images[0]
    assert image.size == (64, 64)


@pytest.mark.slow  # trains
def test_the_decoder_stage_changes_only_the_decoder_so_trained_concepts_stay_valid(tmp_path):
    """The decoder learns to draw patterns the world never paints; the encoder, the UNet and the text encoder are
    untouched, so the model's fingerprint, and every concept trained on it, stays."""
    threads = torch.get_num_threads()
    try:
        folder = main(["--out", str(tmp_path / "m"), "--work", str(tmp_path / "w"), "--init", "mini",
                       "--vae-steps", "0", "--unet-steps", "0", "--decoder-steps", "2", "--scenes", "8",
                       "--batch", "4", "--threads", "1", "--zero-snr"])
    finally:
        torch.set_num_threads(threads)
    shipped, tuned = (load_components(str(f), device="cpu") for f in (MINI_DIR, folder))
    assert tuned.fingerprint == shipped.fingerprint
    for part in ("encoder", "quant_conv"):
        assert all(torch.equal(a, b) for a, b in zip(getattr(shipped.vae, part).parameters(),
                                                     getattr(tuned.vae, part).parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(shipped.vae.decoder.parameters(), tuned.vae.decoder.parameters()))
    assert tuned.vae.config.scaling_factor == shipped.vae.config.scaling_factor
    assert "replay with `--decoder-steps 2`" in (folder / "TRAINING.md").read_text()
