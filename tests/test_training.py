import copy
import threading
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image

from pacgen import lora
from pacgen.augment import AugmentConfig
from pacgen.concepts import ConceptLibrary
from pacgen.layout import Box
from pacgen.models import ZERO_SNR_SCHEDULER_CONFIG
from pacgen.settings import TrainSettings
from pacgen.training import (TrainingCancelled, class_image_dir, estimate_seconds, measure_rates, train_concept,
                             training_target)

FAST = dict(num_class_images=2, class_image_steps=2, samples_per_photo=4)

pytestmark = pytest.mark.slow  # every test here trains


def run(events):
    return list(events)


def instance_loss(pipe, photos, prompt):
    """Denoising loss on the training photos with fixed noise and timesteps, for the model's prediction type."""
    comp = pipe.components
    pixels = pipe.image_processor.preprocess([p.resize((64, 64)) for p in photos])
    with torch.no_grad():
        latents = comp.vae.encode(pixels).latent_dist.mean * comp.vae.config.scaling_factor
        gen = torch.Generator().manual_seed(0)
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.tensor([100, 400, 700])
        scheduler = DDPMScheduler.from_config(comp.scheduler_config)
        noisy = scheduler.add_noise(latents, noise, t)
        text = pipe.encode_prompts([prompt] * 3)
        target = training_target(scheduler, latents, noise, t)
        return float(((comp.unet(noisy, t, encoder_hidden_states=text).sample - target) ** 2).mean())


def test_training_lowers_loss_keeps_base_and_fusers_identical_and_saves(pipe, photos, library):
    before = {k: v.clone() for k, v in pipe.components.unet.state_dict().items()}
    loss_before = instance_loss(pipe, photos, "a photo of sks star")
    config = TrainSettings(steps=30, learning_rate=2e-3, prior_preservation=False, samples_per_photo=2,
                         augment=AugmentConfig.none())
    events = run(train_concept(pipe, photos, "my star", "star", config, library))
    steps = [e for e in events if e.phase == "training"]
    assert [e.step for e in steps] == list(range(1, 31)) and steps[-1].eta_s == 0
    concept = events[-1].concept
    assert events[-1].phase == "done" and concept.identifier == "sks"
    lora.activate(pipe.components.unet, [concept.adapter_name])
    assert instance_loss(pipe, photos, "a photo of sks star") < loss_before * 0.97
    lora.activate(pipe.components.unet, [])
    after = {k: v for k, v in pipe.components.unet.state_dict().items() if "lora_" not in k}
    for key, value in before.items():
        assert torch.equal(after[key.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")]
                           if key not in after else after[key], value), key
    folder = library.get("my star").path
    assert {p.name for p in folder.iterdir()} >= {"pytorch_lora_weights.safetensors", "concept.json", "thumbnail.png",
                                                 "README.md"}
    card = (folder / "README.md").read_text()
    assert "plain DreamBooth" in card and "augmentation" not in card.split("##")[0]  # trained without it


def test_a_concept_is_trained_grounded_by_its_box_as_compose_draws_it(pipe, photos, library):
    boxes = []
    position_net = pipe.components.unet.position_net
    hook = position_net.register_forward_hook(lambda module, args, kwargs, out: boxes.append(kwargs["boxes"][:, 0]),
                                              with_kwargs=True)
    try:
        config = TrainSettings(steps=3, batch_size=2, prior_preservation=False, samples_per_photo=2)
        run(train_concept(pipe, photos, "grounded", "star", config, library))
        assert len(boxes) == 3 and all(b.shape == (2, 4) for b in boxes)
        assert all(((0 <= b) & (b <= 1)).all() and (b[:, 2:] > b[:, :2]).all() for b in boxes)
        boxes.clear()
        run(train_concept(pipe, photos, "free", "star", config.override(grounded=False), library))
        assert not boxes
    finally:
        hook.remove()


def test_a_v_prediction_model_is_trained_on_velocity(pipe, photos, library):
    """At the end of a zero-SNR schedule the input is pure noise and the target is the image itself (negated):
    after training, the prediction there points toward the photos. Trained on noise instead, it stays at 0."""
    comp = pipe.components
    comp.scheduler_config = dict(ZERO_SNR_SCHEDULER_CONFIG)
    scheduler = DDPMScheduler.from_config(comp.scheduler_config)
    with torch.no_grad():
        pixels = pipe.image_processor.preprocess([p.resize((64, 64)) for p in photos])
        latents = comp.vae.encode(pixels).latent_dist.mean * comp.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
        last = torch.full((len(photos),), 999)
        assert torch.allclose(scheduler.add_noise(latents, noise, last), noise, atol=1e-6)
        assert torch.allclose(training_target(scheduler, latents, noise, last), -latents, atol=1e-6)
        text = pipe.encode_prompts(["a photo of sks star"] * len(photos))

    def toward_photos() -> float:
        with torch.no_grad():
            prediction = comp.unet(noise, last, encoder_hidden_states=text).sample
        return float(torch.nn.functional.cosine_similarity(prediction.flatten(), -latents.flatten(), dim=0))

    assert toward_photos() < 0
    config = TrainSettings(steps=30, learning_rate=2e-3, prior_preservation=False, samples_per_photo=2,
                         augment=AugmentConfig.none())
    run(train_concept(pipe, photos, "my star", "star", config, library))
    lora.activate(comp.unet, [library.get("my star").adapter_name])
    assert toward_photos() > 0.05  # 0.10 here; an epsilon-trained LoRA reaches -0.01


def test_same_seed_same_concept_whatever_ran_before(pipe, photos, library):
    config = TrainSettings(steps=3, learning_rate=5e-3, **FAST)
    run(train_concept(pipe, photos, "first", "star", config, library))
    first = lora.read_lora_file(library.get("first").lora_path)
    pipe.unload_concept("first")
    library.delete("first")  # so that the second gets the same identifier word
    torch.rand(7)  # e.g. an image generated in between
    run(train_concept(pipe, photos, "second", "star", config, library))
    assert library.get("second").identifier == "sks"
    second = lora.read_lora_file(library.get("second").lora_path)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_weight_averaging_saves_the_average_of_the_steps_weights(pipe, photos, tmp_path):
    """`ema_steps` 1 (decay 0) leaves the last step's weights; 10 (decay 0.9) saves another concept (over three
    steps its warm-up decays 0.18, 0.25, 0.31: the last step's weights count 0.69, the one before 0.23), and the
    concept's record says which."""
    saved = {}
    for steps in (0, 1, 10):
        library = ConceptLibrary(tmp_path / str(steps))
        config = TrainSettings(steps=3, learning_rate=5e-3, prior_preservation=False, ema_steps=steps, **FAST)
        run(train_concept(pipe, photos, "my star", "star", config, library))
        saved[steps] = lora.read_lora_file(library.get("my star").lora_path)
        assert library.get("my star").training["ema_steps"] == steps
        pipe.unload_concept("my star")
    last, one_step, averaged = saved[0], saved[1], saved[10]
    assert all(torch.equal(last[k], one_step[k]) for k in last)
    assert not all(torch.allclose(last[k], averaged[k], rtol=0, atol=1e-4) for k in last)


def test_saved_lora_loads_back_and_changes_generation_only_when_used(pipe, photos, library):
    run(train_concept(pipe, photos, "my star", "star", TrainSettings(steps=5, learning_rate=5e-3, **FAST), library))
    from pacgen.sampling import PACGenPipeline

    fresh = PACGenPipeline.from_pretrained("tiny", device="cpu")
    kwargs = dict(num_inference_steps=4, seed=1, output_type="np")
    plain = fresh("a star on grass", boxes=[Box("a star", (0.2, 0.2, 0.7, 0.7))], **kwargs).images[0]
    fresh.load_concept(library.get("my star"))
    unused = fresh("a star on grass", boxes=[Box("a star", (0.2, 0.2, 0.7, 0.7))], **kwargs).images[0]
    used = fresh("<my star> on grass", boxes=[Box("<my star>", (0.2, 0.2, 0.7, 0.7))], **kwargs).images[0]
    assert np.array_equal(plain, unused)
    assert np.abs(used - plain).max() > 1e-3


def test_a_concept_just_trained_generates_exactly_as_after_a_reload(photos, library):
    """In half precision too: the trained LoRA is attached from its saved file, in the model's dtype."""
    from pacgen.sampling import PACGenPipeline

    pipe = PACGenPipeline.from_pretrained("tiny", device="cpu", dtype=torch.bfloat16)
    run(train_concept(pipe, photos, "my star", "star", TrainSettings(steps=3, learning_rate=5e-3, **FAST), library))
    adapter = library.get("my star").adapter_name
    assert {layer.lora_A[adapter].weight.dtype for layer in lora.lora_layers(pipe.components.unet)} == {torch.bfloat16}
    request = dict(prompt="<my star> on grass", boxes=[Box("<my star>", (0.2, 0.2, 0.7, 0.7))], num_inference_steps=3,
                   seed=4, output_type="np")
    just_trained = pipe(**request).images[0]
    fresh = PACGenPipeline.from_pretrained("tiny", device="cpu", dtype=torch.bfloat16)
    fresh.load_concept(library.get("my star"))
    assert np.array_equal(just_trained, fresh(**request).images[0])


@pytest.mark.parametrize("how", ["event", "close"])
def test_cancel_leaves_nothing_behind(pipe, photos, library, how):
    cancel = threading.Event()
    events = train_concept(pipe, photos, "my star", "star", TrainSettings(steps=50, **FAST), library, cancel)
    if how == "event":
        with pytest.raises(TrainingCancelled):
            for event in events:
                if event.phase == "training" and event.step == 3:
                    cancel.set()
    else:
        for event in events:
            if event.phase == "training" and event.step == 3:
                events.close()
    assert library.list() == [] and not (library.root / "concepts" / "my-star").exists()
    assert list((library.root / "staging").glob("*")) == []
    assert "my star" not in pipe.concepts and not lora.adapter_names(pipe.components.unet)


def test_class_images_are_cached_and_reused(pipe, photos, library):
    first = run(train_concept(pipe, photos, "first", "star", TrainSettings(steps=1, **FAST), library))
    assert sum(e.phase == "class-images" for e in first) == 2
    folder = class_image_dir(library, pipe.components, "a photo of a star", 64)
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")}
    second = run(train_concept(pipe, photos, "second", "star", TrainSettings(steps=1, **FAST), library))
    assert not any(e.phase == "class-images" for e in second)
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")} == stamps
    assert second[-1].concept.identifier != first[-1].concept.identifier


def test_class_images_drawn_by_another_vae_are_not_reused(pipe):
    """The fingerprint leaves the VAE out; a decoder trained further draws the class noun differently."""
    other_vae = copy.deepcopy(pipe.components.vae)
    with torch.no_grad():
        other_vae.decoder.conv_out.bias.add_(0.1)
    other = replace(pipe.components, vae=other_vae)
    assert other.fingerprint == pipe.components.fingerprint
    assert class_image_dir("/cache", other, "a photo of a star", 64) != class_image_dir(
        "/cache", pipe.components, "a photo of a star", 64)


def test_previews_show_the_concept_while_training(pipe, photos, library):
    config = TrainSettings(steps=4, preview_every=2, **FAST)
    previews = [e.preview for e in train_concept(pipe, photos, "my star", "star", config, library) if e.preview]
    assert len(previews) == 2 and all(isinstance(p, Image.Image) and p.size == (64, 64) for p in previews)


@pytest.mark.parametrize("method", ["lora", "lora-all", "full"])
@pytest.mark.parametrize("prior", [False, True])
def test_every_method_is_estimated_with_or_without_prior_preservation(pipe, library, method, prior):
    settings = TrainSettings(method=method, prior_preservation=prior, steps=10, preview_every=5, **FAST)
    before = [p.detach().clone() for p in pipe.components.unet.parameters()]
    rates = measure_rates(pipe, settings)
    estimate = estimate_seconds(pipe, library, "star", settings, rates, photos=3)
    assert estimate.parts["training steps"] == pytest.approx(10 * rates.train_step_s) and rates.train_step_s > 0
    assert (estimate.parts["class images"] > 0) == prior
    assert estimate.seconds == pytest.approx(sum(estimate.parts.values()))
    made = 2 if prior else 0
    assert f"{made} class images to make, {12 + made} images to encode, 2 previews" in estimate.basis
    assert all(torch.equal(a, b) for a, b in zip(before, pipe.components.unet.parameters()))  # timing trains nothing
