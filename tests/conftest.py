"""Shared fixtures: every test runs offline on the `tiny` model, built in code in milliseconds."""

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no network here: never phone home

import pytest  # noqa: E402

import pacgen.mini  # noqa: E402,F401  (registers the `tiny` model)
from pacgen.concepts import ConceptLibrary  # noqa: E402
from pacgen.mini.kit import KIT, kit_photos  # noqa: E402
from pacgen.mini.stand_ins import write_random_concept  # noqa: E402
from pacgen.sampling import PACGenPipeline  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def temp_files_stay_in_the_session(tmp_path_factory):
    """gradio_client leaves an empty folder in the system's temp folder for every file it downloads; the suite keeps
    them (and any other temp file made in-process) under pytest's own folder, so a run leaves nothing in /tmp."""
    before, tempfile.tempdir = tempfile.tempdir, str(tmp_path_factory.mktemp("temp"))
    yield
    tempfile.tempdir = before


@pytest.fixture
def pipe() -> PACGenPipeline:
    return PACGenPipeline.from_pretrained("tiny", device="cpu")


@pytest.fixture
def random_concept(tmp_path):
    def make(pipe, name="my dog", identifier="sks", class_noun="dog", seed=0, strength=0.3):
        return write_random_concept(pipe, tmp_path / name.replace(" ", "-"), name, identifier, class_noun, seed, strength)

    return make


@pytest.fixture
def photos():
    """Three photos of the first kit concept, as a user would upload them."""
    return kit_photos(KIT[0], n=3, size=64)


@pytest.fixture
def library(tmp_path):
    return ConceptLibrary(tmp_path / "home")
