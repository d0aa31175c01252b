"""Pushing a concept folder to the Hub as a model repo, with its model card (`pacgen.cards`). Photos stay local
unless asked for: they are the user's, not the concept's.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import httpx as hub_httpx

from .cards import HUB_ID, TAGS, model_card  # noqa: F401  (where callers look)
from .concepts import Concept
from .errors import PACGenError


class HubError(PACGenError):
    """Pushing to the Hub is not possible now: no token, or the Hub refused or could not be reached."""


def push_concept(folder: str | Path, repo_id: str, token: str | None = None, api: HfApi | None = None,
                 private: bool = True, include_photos: bool = False) -> str:
    """Upload a concept folder to the Hub model repo `repo_id` (created if missing, private by default); its URL.
    Its training previews (the CLI keeps them in `previews/`) stay local, and its photos unless `include_photos`.

    The token is `token`, else the one huggingface_hub finds (`HF_TOKEN`, or `hf auth login`'s).
    """
    if not HUB_ID.fullmatch(repo_id or ""):
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
                          ignore_patterns=["previews/*"] + ([] if include_photos else ["photos/*"]))
    except (HfHubHTTPError, hub_httpx.TransportError) as error:
        raise HubError(f"the Hub refused or could not be reached while pushing to '{repo_id}': "
                       f"{str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__}") from None
    return str(url)
