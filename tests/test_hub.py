"""Model cards the Hub reads, and pushing a concept folder with the Hub client mocked (never the network)."""

from unittest import mock

import pytest
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import httpx

from pacgen.hub import TAGS, HubError, model_card, push_concept


@pytest.fixture
def concept(pipe, random_concept):
    made = random_concept(pipe, name="my dog", identifier="sks", class_noun="dog")
    made.base_model = "masterful/gligen-1-4-generation-text-box"
    made.training = {"method": "lora", "rank": 4, "steps": 30}
    (made.path / "concept.json").write_text(made.to_json())
    (made.path / "README.md").write_text(model_card(made, 3, augmented=True))
    (made.path / "photos").mkdir()
    (made.path / "photos" / "0.png").write_bytes(b"\x89PNG")
    return made


def test_the_card_carries_the_metadata_the_hub_reads(concept):
    text = (concept.path / "README.md").read_text()
    card = ModelCard(text)
    data = card.data.to_dict()
    assert data["base_model"] == "masterful/gligen-1-4-generation-text-box"
    assert data["library_name"] == "diffusers" and set(TAGS) <= set(data["tags"])
    assert {"text-to-image", "lora", "dreambooth", "pacgen", "gligen"} <= set(data["tags"])
    assert data["instance_prompt"] == "a photo of sks dog" and data["inference"] is False
    assert "license" not in data and text.startswith("---\n# license:")  # left for the user, who is told so
    assert "license: not chosen yet" in card.text
    assert "trigger word: `sks`" in card.text and "rank-" not in card.text  # a lora card, not a full finetune's


def test_a_base_model_that_is_not_on_the_hub_is_not_linked(concept):
    concept.base_model = "mini"
    assert "base_model" not in ModelCard(model_card(concept, 3, augmented=False)).data.to_dict()


def test_push_creates_the_repo_and_uploads_the_folder_without_the_photos_or_previews(concept):
    api = mock.create_autospec(HfApi, instance=True)
    api.create_repo.return_value = "https://huggingface.co/me/my-dog"
    url = push_concept(concept.path, "me/my-dog", token="hf_test", api=api)
    assert url == "https://huggingface.co/me/my-dog"
    api.create_repo.assert_called_once_with("me/my-dog", token="hf_test", repo_type="model", private=True,
                                            exist_ok=True)
    upload = api.upload_folder.call_args.kwargs
    assert upload["repo_id"] == "me/my-dog" and upload["folder_path"] == str(concept.path)
    assert set(upload["ignore_patterns"]) == {"photos/*", "previews/*"} and upload["token"] == "hf_test"


def test_push_without_a_token_says_how_to_configure_one(concept, monkeypatch):
    monkeypatch.setattr("pacgen.hub.get_token", lambda: None)
    api = mock.create_autospec(HfApi, instance=True)
    with pytest.raises(HubError, match="no Hugging Face token is configured: set HF_TOKEN or run `hf auth login`"):
        push_concept(concept.path, "me/my-dog", api=api)
    api.create_repo.assert_not_called()


def test_a_refused_push_is_a_one_line_message(concept):
    api = mock.create_autospec(HfApi, instance=True)
    response = httpx.Response(401, request=httpx.Request("POST", "https://huggingface.co/api/repos/create"))
    api.create_repo.side_effect = HfHubHTTPError("401 Client Error: Unauthorized for url\nmore detail",
                                                 response=response)
    with pytest.raises(HubError, match="refused or could not be reached while pushing to 'me/my-dog': 401") as caught:
        push_concept(concept.path, "me/my-dog", token="hf_bad", api=api)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("repo_id", ["", "no-owner", "a/b/c"])
def test_a_repo_id_must_be_owner_slash_name(concept, repo_id):
    with pytest.raises(HubError, match="owner/name"):
        push_concept(concept.path, repo_id, token="hf_test", api=mock.create_autospec(HfApi, instance=True))


# ----------------------------------------------------------------------------- the app's push (Studio.push_to_hub)


@pytest.fixture(scope="module")
def local_app(tmp_path_factory):
    return _studio(tmp_path_factory.mktemp("local"))


@pytest.fixture(scope="module")
def shared_app(tmp_path_factory):
    from pacgen.app.visitors import Policy

    return _studio(tmp_path_factory.mktemp("shared"), Policy.public())


def _studio(home, policy=None):
    """An app on `tiny` with one stand-in concept, 'my dog', in the library of the visitor `alice`."""
    from pacgen.app.session import Studio
    from pacgen.app.visitors import Caller, acting_as
    from pacgen.mini.stand_ins import write_random_concept

    studio = Studio("tiny", home, device="cpu", policy=policy)
    with acting_as(Caller(login="alice")), studio.library.staging() as staged:
        studio.library.commit(staged, write_random_concept(studio.pipe, staged, "my dog", "sks"))
    return studio


@pytest.fixture
def hub_api(monkeypatch):
    """The Hub client as the app builds it, mocked: every call is recorded and none reaches the network."""
    api = mock.create_autospec(HfApi, instance=True)
    api.create_repo.return_value = "https://huggingface.co/alice/my-dog"
    monkeypatch.setattr("pacgen.hub.HfApi", lambda: api)
    return api


def _push(studio, token=""):
    from pacgen.app.visitors import Caller, acting_as

    with acting_as(Caller(login="alice")):
        return studio.push_to_hub("my dog", " alice/my-dog ", token)


def test_the_local_app_pushes_with_the_configured_token(local_app, hub_api, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_server")
    message = _push(local_app)
    assert message == "Pushed 'my dog' to https://huggingface.co/alice/my-dog (a private repo; the photos stay here)."
    assert hub_api.create_repo.call_args.kwargs["token"] == "hf_server"
    assert hub_api.upload_folder.call_args.kwargs["repo_id"] == "alice/my-dog"


def test_a_shared_app_never_lends_its_token_to_visitors(shared_app, hub_api, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_server")
    with pytest.raises(HubError, match="paste your own Hugging Face write token to push: this app is shared"):
        _push(shared_app)
    hub_api.create_repo.assert_not_called()
    _push(shared_app, token=" hf_alice ")
    assert hub_api.create_repo.call_args.kwargs["token"] == "hf_alice"


def test_the_local_app_without_a_token_says_how_to_configure_one(local_app, hub_api, monkeypatch):
    monkeypatch.setattr("pacgen.hub.get_token", lambda: None)
    with pytest.raises(HubError, match="no Hugging Face token is configured"):
        _push(local_app)
    hub_api.create_repo.assert_not_called()


def test_pushing_needs_a_concept_that_exists(local_app, hub_api):
    from pacgen.concepts import ConceptError

    with pytest.raises(ConceptError, match="choose a concept to push"):
        local_app.push_to_hub("", "alice/my-dog", "hf_alice")
    with pytest.raises(ConceptError, match="no concept named 'my cat'"):
        local_app.push_to_hub("my cat", "alice/my-dog", "hf_alice")
    hub_api.create_repo.assert_not_called()
