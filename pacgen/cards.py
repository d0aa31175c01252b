"""A concept folder's model card (README.md): the metadata the Hub reads for a LoRA, then what the concept is, what it
was trained on (base and grounding adapters) and how to use it.

The card's YAML block carries what the Hub shows and indexes: `base_model` (links the concept to its base),
`library_name: diffusers`, tags, and `instance_prompt` (shown as the trigger words). `license` is left for the user
to choose; the card says so. Written by training and by imports (`pacgen.concepts`), pushed by `pacgen.hub`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from huggingface_hub import ModelCardData

from . import methods
from .grounding import gligen
from .kohya import KOHYA_FILE

if TYPE_CHECKING:  # a card is made from a concept's fields; the concepts module writes cards
    from .concepts import Concept

TAGS = ["text-to-image", "diffusers", "lora", "dreambooth", "pacgen", "gligen", "stable-diffusion",
        "template:sd-lora"]
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def model_card(concept: Concept, photo_count: int, augmented: bool) -> str:
    """The concept folder's README.md: Hub metadata, then what the concept is and how to use it (a concept imported
    from a kohya file, `training["imported_from"]`, says so instead of how it was trained)."""
    base = concept.base_model if HUB_ID.fullmatch(concept.base_model) and not Path(concept.base_model).exists() \
        else None  # mini, tiny or a local folder: no Hub id to link to
    data = ModelCardData(base_model=base, library_name="diffusers", tags=TAGS,
                         instance_prompt=f"a photo of {concept.identifier} {concept.class_noun}", inference=False)
    method, rank = concept.training.get("method", "lora"), concept.training.get("rank")
    what = methods.METHODS.get(method, methods.METHODS["lora"]).description.format(rank=rank)
    how = "PACGen's resize/reposition augmentation" if augmented else "the photos as taken (plain DreamBooth)"
    settings = "\n".join(f"- {k}: {v}" for k, v in concept.training.items())
    source = concept.training.get("imported_from")
    origin = (f"A PACGen concept imported from the kohya-format LoRA `{source}` (a {concept.class_noun}).\n\n"
              if source else f"A PACGen concept: {what} (never GLIGEN's fusers),\n"
              f"trained on {photo_count} photos of a {concept.class_noun} with {how}.\n\n")
    when = f"imported on {concept.created}" if source else f"trained in {concept.duration_s:.0f} s on {concept.created}"
    return (
        "---\n# license: choose one before publishing (SD-1.4 based models are usually creativeml-openrail-m)\n"
        f"{data.to_yaml()}\n---\n\n"
        f"# {concept.name}\n\n{origin}"
        f"- trigger word: `{concept.identifier}` (prompt `{concept.identifier} {concept.class_noun}`, or "
        f"`<{concept.name}>` in PACGen)\n"
        f"- base model: `{concept.base_model}` (fingerprint `{concept.base_fingerprint}`)\n"
        f"- box adapters: {gligen.NAME}'s, from `{concept.adapters or concept.base_model}` (never changed by the concept)\n"
        f"- {when}\n"
        "- license: not chosen yet; add a `license:` line to the metadata above before publishing\n\n"
        "Load it in diffusers with `pipe.load_lora_weights(folder)`, or in PACGen with `--concept folder`. "
        f"For AUTOMATIC1111, Forge or ComfyUI use `{KOHYA_FILE}` (kohya format) where the folder has one.\n\n"
        f"## {'Source' if source else 'Training settings'}\n\n{settings}\n"
    )
