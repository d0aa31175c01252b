"""The Space's front matter against the Hub's documented rules, and the loader against what the Space preloads.

Rules, from the Hub's Spaces configuration reference and ZeroGPU page (huggingface/hub-docs,
docs/hub/spaces-config-reference.md and docs/hub/spaces-zerogpu.md): the accepted keys are listed; a
`preload_from_hub` item is `repo`, `repo file1,file2` or `repo file1,file2 commit`; ZeroGPU supports Python 3.10.13
and 3.12.12 and the Gradio SDK only.
"""

import json
import os
import re
from pathlib import Path

import pytest
import torch
from huggingface_hub import metadata_load
from huggingface_hub.errors import LocalEntryNotFoundError
from huggingface_hub.utils import httpx

from pacgen import models
from pacgen.models import DEFAULT_MODEL, HUB_PINS, ModelLoadError, load_components

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTED_KEYS = {
    "title", "emoji", "colorFrom", "colorTo", "sdk", "python_version", "sdk_version", "suggested_hardware",
    "suggested_storage", "app_file", "app_build_command", "app_port", "base_path", "fullWidth", "header",
    "short_description", "models", "datasets", "tags", "thumbnail", "pinned", "hf_oauth", "hf_oauth_scopes",
    "hf_oauth_expiration_minutes", "hf_oauth_authorized_org", "disable_embedding", "startup_duration_timeout",
    "custom_headers", "preload_from_hub", "license",  # `license` is the card metadata every Space may carry
}
COLOURS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}
ZEROGPU_PYTHONS = {"3.10", "3.12"}  # documented as 3.10.13 and 3.12.12


@pytest.fixture(scope="module")
def config() -> dict:
    return metadata_load(ROOT / "README.md")


def _preload(config: dict) -> dict[str, list[str]]:
    entries = {}
    for item in config["preload_from_hub"]:
        repo, *rest = item.split()
        entries[repo] = rest
    return entries


def test_front_matter_uses_only_documented_keys_and_values(config):
    assert set(config) <= DOCUMENTED_KEYS, set(config) - DOCUMENTED_KEYS
    assert config["sdk"] == "gradio"  # ZeroGPU runs Gradio Spaces only
    assert {config["colorFrom"], config["colorTo"]} <= COLOURS
    assert (ROOT / config["app_file"]).is_file()


def test_sdk_version_is_the_pinned_gradio(config):
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (ROOT / "requirements.txt").read_text(), re.M))
    assert config["sdk_version"] == pins["gradio"]


def test_python_version_is_one_zerogpu_runs(config):
    assert isinstance(config["python_version"], str)  # unquoted 3.10 would parse as the float 3.1
    assert ".".join(config["python_version"].split(".")[:2]) in ZEROGPU_PYTHONS


ZEROGPU_TORCHES = {"2.8.0", "2.9.1", "2.10.0", "2.11.0"}  # listed by name on the ZeroGPU page
LOCAL_TORCH = "2.13.0"  # what the README's install command and CI install first


def _torch_pins(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip().startswith("torch")]


def test_the_space_gets_a_torch_zerogpu_lists_and_requirements_accept_it_and_the_local_one():
    """Spaces install pre-requirements.txt before requirements.txt (hub-docs, spaces-dependencies.md)."""
    from packaging.requirements import Requirement

    (pre,) = _torch_pins(ROOT / "pre-requirements.txt")
    (needed,) = _torch_pins(ROOT / "requirements.txt")
    space_torch = str(Requirement(pre).specifier).removeprefix("==")
    assert space_torch in ZEROGPU_TORCHES
    assert Requirement(needed).specifier.contains(space_torch) and Requirement(needed).specifier.contains(LOCAL_TORCH)
    assert f"pip install torch=={LOCAL_TORCH} && pip install -r requirements.txt" in (ROOT / "README.md").read_text()


def test_preload_names_the_files_and_commit_the_loader_reads(config):
    """Each entry is `repo files commit`; for the default model, exactly the pinned files at the pinned commit."""
    entries = _preload(config)
    for repo, rest in entries.items():
        assert re.fullmatch(r"[\w.-]+/[\w.-]+", repo) and len(rest) <= 2
        if rest:
            assert all(name and not name.startswith("/") for name in rest[0].split(","))
    files, commit = entries[DEFAULT_MODEL]
    pin = HUB_PINS[DEFAULT_MODEL]
    assert files.split(",") == list(pin.files) and commit == pin.revision


def test_preload_commit_is_a_full_commit_hash(config):
    """The documented form (the Spaces configuration reference); the short `29be6c8` left the Space unbuildable."""
    assert re.fullmatch(r"[0-9a-f]{40}", _preload(config)[DEFAULT_MODEL][1])


def _save_tokenizer_as_on_the_hub(tokenizer, folder: Path) -> None:
    """The layout the Hub repo has (vocab.json + merges.txt, no tokenizer.json), which transformers 5 converts."""
    tokenizer.save_pretrained(folder)
    bpe = json.loads((folder / "tokenizer.json").read_text())["model"]
    (folder / "vocab.json").write_text(json.dumps(bpe["vocab"]))
    merges = [" ".join(m) if isinstance(m, list) else m for m in bpe["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    specials = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials))
    (folder / "tokenizer.json").unlink()


WEIGHT_FILES = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "pytorch_model"}


def _hub_cache_snapshot(cache: Path, pin) -> Path:
    """`tiny` written as the pinned commit of the default repo in the Hub cache's layout (models--owner--name/
    snapshots/<commit>/ and refs/main), holding only the pinned files: each weight file a pickled fp16 state dict
    named `<weights>.fp16.bin`, as the repo's `main` holds them."""
    repo = cache / ("models--" + pin.repo_id.replace("/", "--"))
    folder = repo / "snapshots" / pin.revision
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(pin.revision)
    comp = load_components("tiny", device="cpu")
    for part, stem in WEIGHT_FILES.items():
        module = getattr(comp, part)
        (folder / part).mkdir(parents=True)
        if part == "text_encoder":  # transformers writes only safetensors now: its config, then the pickle below
            module.config.to_json_file(folder / part / "config.json")
        else:
            module.save_config(folder / part)
        state = {k: v.half() for k, v in module.state_dict().items()}
        torch.save(state, folder / part / f"{stem}.{pin.variant}.bin")
    _save_tokenizer_as_on_the_hub(comp.tokenizer, folder / "tokenizer")
    for path in [p for p in folder.rglob("*") if p.is_file()]:
        if path.relative_to(folder).as_posix() not in pin.files:
            path.unlink()
    return folder


def test_the_default_model_loads_from_exactly_the_preloaded_files_at_the_pinned_commit(tmp_path, monkeypatch):
    """Offline, from a Hub cache that holds only the pinned files at the pinned commit (what `preload_from_hub`
    leaves in a Space's cache), every pickle read with `weights_only=True`."""
    pin = HUB_PINS[DEFAULT_MODEL]
    folder = _hub_cache_snapshot(tmp_path / "hub", pin)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    loads = []
    real_load = torch.load

    def load(*args, **kwargs):
        loads.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    comp = load_components(DEFAULT_MODEL, device="cpu", dtype=torch.float32)
    assert loads == [True, True, True]  # the three weight files, each as weights only
    on_disk = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert on_disk == sorted(pin.files)  # every pinned file exists in the tiny layout, and nothing else was needed
    assert comp.model_id == DEFAULT_MODEL and comp.folder is None and comp.dtype == torch.float32
    tiny = load_components("tiny", device="cpu")
    for mine, theirs in ((comp.unet, tiny.unet), (comp.vae, tiny.vae), (comp.text_encoder, tiny.text_encoder)):
        assert all(torch.equal(a, b.half().float()) for a, b in zip(mine.state_dict().values(),
                                                                    theirs.state_dict().values()))
    assert comp.tokenizer("a photo of a dog").input_ids == tiny.tokenizer("a photo of a dog").input_ids


def test_the_loader_asks_the_hub_for_the_pinned_commit_and_files_only(monkeypatch, tmp_path):
    pin = HUB_PINS[DEFAULT_MODEL]
    calls = []

    def snapshot_download(repo_id, revision, allow_patterns, **kwargs):
        calls.append((repo_id, revision, allow_patterns, kwargs))
        return str(_hub_cache_snapshot(tmp_path / "hub", pin))

    monkeypatch.setattr(models, "snapshot_download", snapshot_download)
    load_components(DEFAULT_MODEL, device="cpu", dtype=torch.float32)
    assert calls == [(DEFAULT_MODEL, pin.revision, list(pin.files), {})]  # no force_download: partial files resume


@pytest.mark.parametrize("error, advice", [
    (httpx.RemoteProtocolError("peer closed connection without sending complete message body"), "run the same command again"),
    (httpx.ReadTimeout("The read operation timed out"), "run the same command again"),
    (OSError("Consistency check failed: file should be of size 2 but has size 1 (unet/x.safetensors)."),
     "run the same command again"),
    (LocalEntryNotFoundError("Cannot find the requested files in the disk cache"), "not all in the local Hub cache"),
])
def test_an_interrupted_or_missing_download_is_a_message_with_what_to_do(monkeypatch, error, advice):
    """What huggingface_hub raises when the link drops mid-file (after its own retries), when a file arrives short,
    or when it is offline without the files: a ModelLoadError saying what to do, never a traceback."""
    def snapshot_download(*args, **kwargs):
        raise error

    monkeypatch.setattr(models, "snapshot_download", snapshot_download)
    with pytest.raises(ModelLoadError) as caught:
        load_components(DEFAULT_MODEL, device="cpu")
    message = str(caught.value)
    assert advice in message and "--model mini" in message and "\n" not in message
