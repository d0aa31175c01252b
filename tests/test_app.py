"""The app as an API client sees it: launched on 127.0.0.1 with the tiny model, driven by gradio_client."""

import re
import socket
import tempfile
import time
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from PIL import Image

import app
from pacgen.app.session import Studio

pytestmark = pytest.mark.slow  # launches the app and trains

KIT = Path(__file__).resolve().parent.parent / "assets" / "concepts"
PHOTOS = sorted(str(p) for p in (KIT / "ruby_checker_star").glob("photo_*.png"))[:3]
FAST = dict(steps=6, learning_rate=1e-3, num_class_images=2, preview_every=3)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    studio = Studio("tiny", tmp_path_factory.mktemp("home"), device="cpu")
    demo = app.build_ui(studio)
    demo.queue(default_concurrency_limit=1).launch(server_name="127.0.0.1", server_port=free_port(),
                                                   prevent_thread_lock=True, quiet=True)
    client = Client(demo.local_url, verbose=False)
    yield studio, client
    client.close()
    demo.close()


def broken_png() -> str:
    """A file with an image name whose bytes are not an image."""
    path = Path(tempfile.mkdtemp()) / "broken.png"
    path.write_text("not really a PNG")
    return str(path)


def table(*rows):
    return {"headers": ["label", "x0", "y0", "x1", "y1"], "data": [list(r) for r in rows]}


def generate(client, prompt, rows, width=64, height=64, seed=1):
    return client.predict(prompt=prompt, boxes=rows, num_inference_steps=4, seed=seed, width=width, height=height,
                          api_name="/generate")


def train(client, name, photos=PHOTOS, noun="star", **settings):
    return client.submit(photos=[handle_file(p) for p in photos], name=name, class_noun=noun, **{**FAST, **settings},
                         api_name="/train")


def test_training_streams_progress_and_the_concept_is_usable(served):
    studio, client = served
    job = train(client, "my star")
    updates = list(job)
    assert len(updates) >= 4
    status, losses, previews, log = updates[-1]
    assert "saved 'my star'" in status and len(previews) == 2
    assert f"at step {FAST['steps']}\"" in losses  # the loss curve, to the last step
    assert [c["name"] for c in client.predict(api_name="/list_concepts")] == ["my star"]

    gallery, info, *_ = generate(client, "<my star> and a red ball on grass",
                                 table(["<my star>", 0.1, 0.1, 0.5, 0.6], ["a red ball", 0.6, 0.6, 0.9, 0.9]),
                                 width=64, height=48)
    assert len(gallery) == 1
    assert Image.open(gallery[0]["image"]).size == (64, 48)
    assert "sks" not in info and "&lt;my star&gt;" in info  # Markdown source: shown as typed on the page


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda c: train(c, "two", PHOTOS[:2]).result(), "2 photo(s) given"),
        (lambda c: train(c, "broken", PHOTOS[:2] + [broken_png()]).result(), "broken.png is not a readable image"),
        (lambda c: train(c, "my star").result(), "already exists"),
        (lambda c: generate(c, "a red ball", table()), "draw at least one box"),
        (lambda c: generate(c, "a <cat>", table(["<cat>", 0.1, 0.1, 0.5, 0.5])), "unknown concept '&lt;cat&gt;'"),  # escaped: Gradio shows errors as HTML
        (lambda c: generate(c, "a ball", table(["a ball", 0.5, 0.5, 1.4, 0.9])), "outside [0, 1]"),
        (lambda c: generate(c, "a ball", table(["a ball", 0.1, 0.1, 0.5, 0.5]), seed=1.5),
         "seed must be a whole number, got 1.5"),
    ],
)
def test_bad_input_is_an_error_and_the_next_request_still_works(served, call, message):
    studio, client = served
    if not studio.library.list():
        list(train(client, "my star"))
    with pytest.raises(Exception, match=re.escape(message)):
        call(client)
    gallery, *_ = generate(client, "a red ball", table(["a red ball", 0.2, 0.2, 0.7, 0.7]))
    assert len(gallery) == 1


def test_a_second_training_is_refused_while_one_runs(served):
    studio, client = served
    long_job = train(client, "long one", steps=400, prior_preservation=False, preview_every=0)
    deadline = time.time() + 60
    while not studio.training_lock.locked() and time.time() < deadline:
        time.sleep(0.1)
    with pytest.raises(Exception, match="training is (still )?running"):
        train(client, "second").result()
    client.predict(api_name="/cancel_training")
    status = long_job.result()[0]
    assert "cancelled" in status
    assert "long one" not in [c["name"] for c in client.predict(api_name="/list_concepts")]


def test_export_delete_import_round_trip(served, tmp_path):
    studio, client = served
    if "my star" not in studio.concept_names():
        list(train(client, "my star"))
    exported = client.predict(name="my star", api_name="/export_concept")
    with pytest.raises(Exception, match="tick 'confirm'"):
        client.predict(name="my star", confirm=False, api_name="/delete_concept")
    client.predict(name="my star", confirm=True, api_name="/delete_concept")
    assert "my star" not in [c["name"] for c in client.predict(api_name="/list_concepts")]
    message = client.predict(zip_file=handle_file(exported), api_name="/import_concept")
    assert "Imported 'my star'" in message
    bad = tmp_path / "bad.zip"
    bad.write_text("not a zip")
    with pytest.raises(Exception, match="not a zip file"):
        client.predict(zip_file=handle_file(str(bad)), api_name="/import_concept")
