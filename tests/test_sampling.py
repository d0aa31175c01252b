import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionGLIGENPipeline
from diffusers.models.attention import GatedSelfAttentionDense

from pacgen import lora
from pacgen.concepts import ConceptError
from pacgen.errors import PACGenError
from pacgen.layout import Box, LayoutError
from pacgen.models import ZERO_SNR_SCHEDULER_CONFIG, ModelLoadError
from pacgen.settings import SettingsError
from pacgen.sampling import PACGenPipeline, blend, guided

BOXES = [Box("a dog", (0.1, 0.2, 0.5, 0.9)), Box("a red ball", (0.6, 0.6, 0.95, 0.95))]


def pixels(result):
    return np.stack([np.asarray(image) for image in result.images]).astype(np.int16)


def test_same_seed_same_image_and_different_seeds_differ(pipe):
    first = pipe("a dog on grass", boxes=BOXES, seed=3, num_inference_steps=6)
    again = pipe("a dog on grass", boxes=BOXES, seed=3, num_inference_steps=6)
    other = pipe("a dog on grass", boxes=BOXES, seed=4, num_inference_steps=6)
    assert np.array_equal(pixels(first), pixels(again))
    assert np.abs(pixels(first) - pixels(other)).mean() > 1


def test_image_k_of_a_batch_equals_a_single_run_with_seed_plus_k(pipe):
    batch = pipe("a dog", boxes=BOXES, seed=10, num_images=2, num_inference_steps=4, output_type="np")
    single = pipe("a dog", boxes=BOXES, seed=11, num_inference_steps=4, output_type="np")
    assert batch.seeds == [10, 11]
    assert np.abs(batch.images[1] - single.images[0]).max() < 1e-4


@pytest.mark.parametrize("scheduler", ["dpm++", "ddim"])
@pytest.mark.parametrize("schedule", ["sd", "zero-snr"])
def test_matches_diffusers_gligen_pipeline_without_concepts(pipe, scheduler, schedule):
    """The reference check: no concept, regional off -> diffusers' own GLIGEN pipeline, pixel for pixel.

    Also for a v-prediction model on a zero-terminal-SNR schedule, as `mini`'s trainer can make with --zero-snr.
    """
    comp = pipe.components
    if schedule == "zero-snr":
        comp.scheduler_config = dict(ZERO_SNR_SCHEDULER_CONFIG)
    request = dict(prompt="a dog and a ball on grass", boxes=BOXES, num_inference_steps=8, guidance_scale=7.5,
                   grounding_fraction=0.5, regional=False, scheduler=scheduler, output_type="np")
    ours = pipe(**request, seed=7)
    with_generator = pipe(**request, generator=torch.Generator().manual_seed(7))  # diffusers' convention
    assert with_generator.seeds == [None]
    reference = StableDiffusionGLIGENPipeline(
        vae=comp.vae, text_encoder=comp.text_encoder, tokenizer=comp.tokenizer, unet=comp.unet,
        scheduler=pipe.make_scheduler(scheduler), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    reference.set_progress_bar_config(disable=True)
    theirs = reference(
        "a dog and a ball on grass", gligen_phrases=[b.label for b in BOXES], gligen_boxes=[list(b.xyxy) for b in BOXES],
        gligen_scheduled_sampling_beta=0.5, num_inference_steps=8, guidance_scale=7.5, height=64, width=64,
        generator=torch.Generator().manual_seed(7), output_type="np",
    ).images
    assert np.abs(ours.images[0] - theirs[0]).max() <= 1e-3
    assert np.abs(with_generator.images[0] - theirs[0]).max() <= 1e-3


def test_a_seed_and_a_generator_together_are_refused(pipe):
    with pytest.raises(SettingsError, match="a seed or a generator, not both"):
        pipe("a dog", boxes=BOXES, seed=1, generator=torch.Generator().manual_seed(1), num_inference_steps=1)


def test_pndm_is_refused_for_a_zero_snr_model_and_the_message_names_what_works(pipe):
    pipe.components.scheduler_config = dict(ZERO_SNR_SCHEDULER_CONFIG)
    with pytest.raises(SettingsError, match="'pndm' cannot follow .* choose one of dpm\\+\\+, ddim, euler"):
        pipe("a dog", boxes=BOXES, num_inference_steps=2, scheduler="pndm")


def test_a_model_folder_sets_its_own_grounding_default(pipe, tmp_path):
    """mini records that its boxes should steer every step; sampler, CLI and app then default to that."""
    def used(p, **kwargs):
        return p("a dog", boxes=BOXES, seed=0, num_inference_steps=2, **kwargs).settings["grounding_fraction"]

    assert used(pipe) == 0.3  # GLIGEN's scheduled sampling, for SD-1.4 and any folder that says nothing
    defaults = pipe.components.defaults
    defaults.sampling = defaults.sampling.override(grounding_fraction=1.0)
    defaults.training = defaults.training.override(steps=123)
    pipe.components.save(tmp_path / "model")
    loaded = PACGenPipeline.from_pretrained(str(tmp_path / "model"), device="cpu")
    assert used(loaded) == 1.0 and used(loaded, grounding_fraction=0.5) == 0.5
    assert loaded.components.defaults.training.steps == 123 and loaded.components.defaults.banner == defaults.banner
    for text, message in (("{not json", "is not valid JSON"), ('{"sampling": {"grounding_fraction": 2}}', "between 0 and 1"),
                          ('{"sampling": {"grounding": 1}}', "unknown setting"), ("[1]", "must hold a JSON object"),
                          ('{"colour": 1}', "unknown section")):
        (tmp_path / "model" / "pacgen.json").write_text(text)
        with pytest.raises(ModelLoadError, match=message):
            PACGenPipeline.from_pretrained(str(tmp_path / "model"), device="cpu")


def test_fusers_run_exactly_during_the_grounded_fraction(pipe):
    unet = pipe.components.unet
    calls, fuser_calls = [], []
    fuser = next(m for m in unet.modules() if isinstance(m, GatedSelfAttentionDense))
    unet.register_forward_pre_hook(lambda *_: calls.append(len(calls)))
    fuser.register_forward_pre_hook(lambda *_: fuser_calls.append(len(calls) - 1))
    pipe("a dog", boxes=BOXES, seed=0, num_inference_steps=10, grounding_fraction=0.3, scheduler="ddim")
    assert len(calls) == 10
    assert fuser_calls == [0, 1, 2]


@pytest.mark.parametrize("xyxy", [(0.0, 0.0, 0.45, 0.45), (0.55, 0.55, 1.0, 1.0), (0.5, 0.0, 1.0, 0.5)])
def test_the_boxed_object_is_drawn_inside_its_box(xyxy):
    """On the embedded model (which follows boxes): the red star's pixels lie inside the box it was given."""
    mini = PACGenPipeline.from_pretrained("mini", device="cpu")
    image = np.asarray(mini("a red star on grass", boxes=[Box("a red star", xyxy)], seed=0).images[0]).astype(int)
    red = (image[..., 0] > 150) & (image[..., 1] < 90) & (image[..., 2] < 90)
    size = image.shape[0]
    x0, y0, x1, y1 = (round(v * size) for v in xyxy)
    inside = red[y0:y1, x0:x1].sum()
    assert red.sum() >= 10 and inside / red.sum() > 0.9


def test_blended_step_is_concept_inside_and_base_outside():
    """On a real UNet prediction: the blend takes branch c inside the box and b outside."""
    from pacgen.layout import region_masks
    from pacgen.mini.tiny import build_tiny

    comp = build_tiny()
    latents = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    text = torch.randn(3, 77, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        noise = comp.unet(latents, 500, encoder_hidden_states=text).sample
    base, concept = guided(noise, ["negative", "base", "concept"], 5.0)
    masks = region_masks([Box("<c>", (0.25, 0.25, 0.75, 0.5))], 16, 16)
    eps = blend(base, [concept], masks)
    inside = masks[0].bool()
    assert torch.allclose(eps[..., inside], concept[..., inside], atol=1e-6)
    assert torch.allclose(eps[..., ~inside], base[..., ~inside], atol=1e-6)
    uncond, cond = noise[0:1], noise[2:3]
    assert torch.allclose(concept, uncond + 5.0 * (cond - uncond))


def test_per_row_adapters_equal_separate_passes(pipe, random_concept):
    first = pipe.load_concept(random_concept(pipe, "one", "sks", seed=1))
    second = pipe.load_concept(random_concept(pipe, "two", "ohwx", seed=2))
    unet = pipe.components.unet
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)).expand(3, -1, -1, -1)
    text = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1)).expand(3, -1, -1)
    names = [lora.BASE_ROW, first.adapter_name, second.adapter_name]
    with torch.no_grad(), lora.row_adapters(unet, names):
        mixed = unet(latents, 400, encoder_hidden_states=text).sample
    separate = []
    for name in ([], [first.adapter_name], [second.adapter_name]):
        lora.activate(unet, name)
        with torch.no_grad():
            separate.append(unet(latents[:1], 400, encoder_hidden_states=text[:1]).sample)
    assert torch.allclose(mixed, torch.cat(separate), atol=1e-5)
    assert not torch.allclose(separate[0], separate[1], atol=1e-3)


def test_regional_sampling_keeps_the_concept_inside_its_box(pipe, random_concept):
    """With a strong concept LoRA, the regional image stays closer to the plain one outside the box."""
    pipe.load_concept(random_concept(pipe, strength=0.6))
    box = [Box("<my dog>", (0.0, 0.0, 0.5, 0.5))]
    kwargs = dict(seed=5, num_inference_steps=8, output_type="np")
    plain = pipe("a dog", boxes=[Box("a dog", box[0].xyxy)], **kwargs).images[0]
    regional = pipe("a <my dog>", boxes=box, **kwargs).images[0]
    whole = pipe("a <my dog>", boxes=box, regional=False, **kwargs).images[0]
    outside = np.ones((64, 64), bool)
    outside[:40, :40] = False
    assert np.abs(regional - plain)[outside].mean() < np.abs(whole - plain)[outside].mean()
    assert np.abs(regional - plain)[:32, :32].mean() > 0.01


def test_concept_on_another_base_model_of_the_same_shapes_loads_with_a_notice(pipe, random_concept):
    concept = random_concept(pipe)
    concept.base_model, concept.base_fingerprint = "sd15-finetune", "0123456789abcdef"
    pipe.load_concept(concept)
    assert pipe.transplanted == {"my dog": "concept 'my dog' was trained on sd15-finetune, used on tiny: its look "
                                           "may differ"}


def test_unknown_concept_and_unboxed_concept_are_refused(pipe, random_concept):
    with pytest.raises(LayoutError, match="unknown concept '<cat>'"):
        pipe("a <cat>", boxes=BOXES, num_inference_steps=1)
    pipe.load_concept(random_concept(pipe))
    with pytest.raises(LayoutError, match="has no box"):
        pipe("<my dog> on grass", boxes=BOXES, num_inference_steps=1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(height=60), "multiples of 8"),
        (dict(num_inference_steps=0), "num_inference_steps must be between 1 and 500, got 0"),
        (dict(guidance_scale=-1.0), "guidance_scale must be between 0 and 30"),
        (dict(guidance_scale=float("nan")), "guidance_scale must be a finite number"),
        (dict(grounding_fraction=1.5), "grounding_fraction must be between 0 and 1"),
        (dict(num_inference_steps=2.5), "must be a whole number"),
        (dict(seed=-2), "seed must be between 0 and"),
        (dict(scheduler="magic"), "unknown scheduler"),
        (dict(steps=3), "unknown setting"),
        (dict(boxes=[Box("word " * 80, (0, 0, 1, 1))]), "tokens long"),
    ],
)
def test_bad_generation_settings_are_refused(pipe, kwargs, message):
    with pytest.raises(PACGenError, match=message):
        pipe("a dog", **{"num_inference_steps": 2, **kwargs})


def test_tiny_is_identical_in_another_process(pipe):
    code = "from pacgen.mini.tiny import build_tiny; print(build_tiny().fingerprint)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == pipe.components.fingerprint


def test_toy_vocabulary_words_and_identifiers_are_single_tokens(pipe):
    from pacgen.mini.tiny import TOY_WORDS
    from pacgen.training import IDENTIFIER_CANDIDATES

    tokenizer = pipe.components.tokenizer
    assert [w for w in TOY_WORDS if len(tokenizer.tokenize(w)) != 1] == []
    assert all(len(tokenizer.tokenize(w)) == 1 for w in IDENTIFIER_CANDIDATES)


def test_a_concepts_row_is_not_told_what_the_other_boxes_hold(pipe, random_concept):
    """The neighbour's words ("a blue circle") bleed into a concept whose row reads them; that row draws only
    inside the concept's box, so it gets the prompt without the other boxes' phrases."""
    pipe.load_concept(random_concept(pipe))
    boxes = [Box("<my dog>", (0.0, 0.0, 0.5, 0.5)), Box("a blue circle", (0.5, 0.5, 1.0, 1.0))]
    result = pipe("a photo of <my dog> and a blue circle on grass", boxes=boxes, num_inference_steps=1, seed=0)
    assert result.branch_prompts["concept:my dog"] == "a photo of sks dog on grass"
    assert result.branch_prompts["base"] == "a photo of dog and a blue circle on grass"


@pytest.mark.parametrize("guidance, same", [("own", True), ("shared", False)])
def test_own_concept_guidance_is_diffusers_lora_guidance_inside_the_box(pipe, random_concept, guidance, same):
    """Under "own" guidance a concept's box is guided as diffusers guides a loaded LoRA (its unconditional row
    through the LoRA too): with a box over the whole image, regional sampling then equals whole-image sampling."""
    pipe.load_concept(random_concept(pipe, strength=0.6))
    boxes = [Box("<my dog>", (0.0, 0.0, 1.0, 1.0))]
    kwargs = dict(seed=4, num_inference_steps=2, output_type="np", concept_guidance=guidance)
    regional = pipe("a photo of <my dog>", boxes=boxes, **kwargs).images[0]
    whole = pipe("a photo of <my dog>", boxes=boxes, regional=False, **kwargs).images[0]
    difference = np.abs(regional - whole).max()
    assert difference < 1e-2 if same else difference > 0.1  # PEFT's per-row forward differs by rounding only


@pytest.mark.parametrize("guidance", ["own", "shared"])
def test_unet_rows_counts_what_a_regional_step_batches_one_row_per_concept_however_many_boxes(
        pipe, random_concept, guidance):
    """`unet_rows` prices requests (the cost limit, ZeroGPU's declared duration): it must be what the sampler runs."""
    pipe.load_concept(random_concept(pipe))
    pipe.load_concept(random_concept(pipe, name="my cat", identifier="zwx", class_noun="cat", seed=1))
    boxes = [Box("<my dog>", (0.0, 0.0, 0.4, 0.4)), Box("<my cat>", (0.5, 0.5, 1.0, 1.0)),
             Box("<my dog>", (0.6, 0.0, 1.0, 0.4))]
    batches = []
    hook = pipe.components.unet.register_forward_pre_hook(lambda _, args: batches.append(args[0].shape[0]))
    try:
        pipe("<my dog> and <my cat>", boxes=boxes, num_inference_steps=1, num_images=2, seed=0,
             concept_guidance=guidance)
    finally:
        hook.remove()
    settings = pipe.settings(concept_guidance=guidance)
    assert batches == [2 * settings.unet_rows(2)] and settings.unet_rows(2) == (6 if guidance == "own" else 4)


def test_concept_guidance_scale_guides_only_the_concepts_rows(pipe, random_concept):
    """A concept's row may be guided harder than the prompt (a few photos teach a weaker pattern than a phrase the
    model knows): unset or equal to the guidance scale it changes nothing, and without a concept nothing either."""
    pipe.load_concept(random_concept(pipe, strength=0.6))
    boxes = [Box("<my dog>", (0.0, 0.0, 0.5, 0.5)), Box("a blue circle", (0.5, 0.5, 1.0, 1.0))]
    kwargs = dict(seed=4, num_inference_steps=2, output_type="np", guidance_scale=3.0)
    prompt = "a photo of <my dog> and a blue circle"
    plain = pipe(prompt, boxes=boxes, **kwargs).images[0]
    assert np.array_equal(pipe(prompt, boxes=boxes, concept_guidance_scale=3.0, **kwargs).images[0], plain)
    # 0 is unset, as the app's empty number box sends it: no guidance would leave the concept out of its box
    assert np.array_equal(pipe(prompt, boxes=boxes, concept_guidance_scale=0.0, **kwargs).images[0], plain)
    assert np.abs(pipe(prompt, boxes=boxes, concept_guidance_scale=6.0, **kwargs).images[0] - plain).max() > 0.05
    phrase = [Box("a dog", (0.0, 0.0, 0.5, 0.5))]
    assert np.array_equal(pipe("a photo of a dog", boxes=phrase, concept_guidance_scale=6.0, **kwargs).images[0],
                          pipe("a photo of a dog", boxes=phrase, **kwargs).images[0])
    assert pipe.settings().concept_guidance_scale is None  # tiny keeps one scale for every row
