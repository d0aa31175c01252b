"""A concept folder as a Hub model repo: its model card (README.md with the metadata the Hub reads) and the push.

The card's YAML block carries what the Hub shows and indexes for a LoRA: `base_model` (links the concept to its
base), `library_name: diffusers`, tags, and `instance_prompt` (shown as the trigger words). `license` is left for
the user to choose; the card says so. Photos stay local unless asked for: they are the user's, not the concept's.
"""

from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub import HfApi, ModelCardData, get_token
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import httpx as hub_httpx

from .concepts import Concept
from .errors import PACGenError
from .grounding import gligen
from .kohya import KOHYA_FILE

TAGS = ["text-to-image", "diffusers", "lora", "dreambooth", "pacgen", "gligen", "stable-diffusion",
        "template:sd-lora"]
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
_WHAT = {"lora": "a LoRA on the UNet's attention projections",
         "lora-all": "a LoRA on the UNet's attention, feed-forward, proj_in/out and resnet convolutions",
         "full": "a full finetune of the UNet's weight matrices and kernels, stored as a rank-{rank} LoRA of its "
                 "weight change"}


class HubError(PACGenError):
    """Pushing to the Hub is not possible now: no token, or the Hub refused or could not be reached."""


def model_card(concept: Concept, photo_count: int, augmented: bool) -> str:
    """The concept folder's README.md: Hub metadata, then what the concept is and how to use it (a concept imported
    from a kohya file, `training["imported_from"]`, says so instead of how it was trained)."""
    base = concept.base_model if _HUB_ID.fullmatch(concept.base_model) and not Path(concept.base_model).exists() \
        else None  # mini, tiny or a local folder: no Hub id to link to
    data = ModelCardData(base_model=base, library_name="diffusers", tags=TAGS,
                         instance_prompt=f"a photo of {concept.identifier} {concept.class_noun}", inference=False)
    method, rank = concept.training.get("method", "lora"), concept.training.get("rank")
    what = _WHAT.get(method, _WHAT["lora"]).format(rank=rank)
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


def push_concept(folder: str | Path, repo_id: str, token: str | None = None, api: HfApi | None = None,
                 private: bool = True, include_photos: bool = False) -> str:
    """Upload a concept folder to the Hub model repo `repo_id` (created if missing, private by default); its URL.

    The token is `token`, else the one huggingface_hub finds (`HF_TOKEN`, or `hf auth login`'s).
    """
    if not _HUB_ID.fullmatch(repo_id or ""):
        raise HubError(f"the Hub repo '{repo_id}' must be written as owner/name")
    concept = Concept.load(folder)
    token = token or get_token()
    if not token:
        raise HubError("no Hugging Face token is configured: set HF_TOKEN or run `hf auth login`, then push again")
    api = api or HfApi()
    try:
        url = api.create_repo(repo_id, token=token, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), token=token, repo_type="model",
                          commit_message=f"PACGen concept {concept.name}",
                          ignore_patterns=None if include_photos else ["photos/*"])
    except (HfHubHTTPError, hub_httpx.TransportError) as error:
        raise HubError(f"the Hub refused or could not be reached while pushing to '{repo_id}': "
                       f"{str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__}") from None
    return str(url)
