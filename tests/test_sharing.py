"""Two strangers on one shared app, as `gradio_client` visitors of a running server; and the app killed mid-work.

Each `Client` is its own page session, so on an isolated app it is its own visitor.
"""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from test_app import free_port

import app
from pacgen.app.guard import launch_options
from pacgen.app.session import Studio
from pacgen.app.visitors import Policy

pytestmark = pytest.mark.slow  # launches servers and trains

ROOT = Path(__file__).resolve().parent.parent
KIT = ROOT / "assets" / "concepts"
PHOTOS = sorted(str(p) for p in (KIT / "ruby_checker_star").glob("photo_*.png"))[:3]
FAST = dict(steps=4, num_class_images=1, preview_every=0)
BOXES = {"headers": ["label", "x0", "y0", "x1", "y1"], "data": [["a red ball", 0.2, 0.2, 0.7, 0.7]]}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    studio = Studio("tiny", tmp_path_factory.mktemp("home"), device="cpu",
                    policy=Policy.public().with_limits("max_concepts=1"))
    demo = app.build_ui(studio)
    demo.queue(default_concurrency_limit=1).launch(server_name="127.0.0.1", server_port=free_port(),
                                                   prevent_thread_lock=True, quiet=True,
                                                   **launch_options(studio.policy, []))  # guarded, as app.py does
    yield studio, demo.local_url
    demo.close()


def names(client) -> list[str]:
    return [c["name"] for c in client.predict(api_name="/list_concepts")]


def train(client, name, **settings):
    return client.submit(photos=[handle_file(p) for p in PHOTOS], name=name, class_noun="star",
                         **{**FAST, **settings}, api_name="/train")


def test_two_visitors_cannot_see_or_touch_each_others_concepts(server):
    studio, url = server
    ann, bob = Client(url, verbose=False), Client(url, verbose=False)
    assert "saved 'ann star'" in train(ann, "ann star").result()[0]
    assert names(ann) == ["ann star"] and names(bob) == []
    with pytest.raises(Exception, match="no concept named 'ann star'"):
        bob.predict(name="ann star", api_name="/export_concept")
    with pytest.raises(Exception, match="no concept named 'ann star'"):
        bob.predict(name="ann star", confirm=True, api_name="/delete_concept")
    with pytest.raises(Exception, match="unknown concept '&lt;ann star&gt;'"):
        bob.predict(prompt="<ann star>", boxes={**BOXES, "data": [["<ann star>", 0, 0, 1, 1]]},
                    num_inference_steps=2, api_name="/generate")
    # Bob may use his own name for a concept of his own: the two never mix.
    assert "saved 'ann star'" in train(bob, "ann star", seed=7).result()[0]
    assert names(bob) == ["ann star"] and names(ann) == ["ann star"]
    # Ann's quota is one concept; the limit is in the message.
    with pytest.raises(Exception, match="the most this app keeps per visitor is 1"):
        train(ann, "second").result()
    # A request over the cost budget is refused before it waits for the model.
    with pytest.raises(Exception, match="allows 8×"):
        ann.predict(prompt="a", boxes=BOXES, num_inference_steps=200, num_images=4, api_name="/generate")


def test_a_visitor_cannot_cancel_anothers_training(server):
    studio, url = server
    ann, bob = Client(url, verbose=False), Client(url, verbose=False)
    long_job = train(ann, "long one", steps=400)
    deadline = time.time() + 60
    while not studio.training_lock.locked() and time.time() < deadline:
        time.sleep(0.1)
    assert bob.predict(api_name="/cancel_training") == "Nothing of yours is training."
    assert studio.training_lock.locked()
    assert ann.predict(api_name="/cancel_training") == "Training cancelled: nothing was saved."  # once stopped
    assert "cancelled" in long_job.result()[0]


def test_generation_never_uses_a_concept_deleted_or_replaced_meanwhile(server, tmp_path):
    studio, url = server
    owner = Client(url, verbose=False)
    train(owner, "swap", seed=1).result()
    exported = owner.predict(name="swap", api_name="/export_concept")
    boxes = {**BOXES, "data": [["<swap>", 0.1, 0.1, 0.9, 0.9]]}

    def image(seed=3):
        gallery, *_ = owner.predict(prompt="<swap>", boxes=boxes, num_inference_steps=3, seed=seed,
                                    api_name="/generate")
        return Path(gallery[0]["image"]).read_bytes()

    first = image()
    errors: list[str] = []
    runs = [threading.Thread(target=lambda: errors.append(_quietly(image))) for _ in range(3)]
    for run in runs:
        run.start()
    owner.predict(name="swap", confirm=True, api_name="/delete_concept")
    for run in runs:
        run.join()
    # Each generation either ran before the delete or was refused cleanly after it.
    assert all(e in ("", "unknown concept '&lt;swap&gt;'") for e in errors), errors
    train(owner, "swap", seed=2).result()  # a different concept under the same name
    assert image() != first
    owner.predict(name="swap", confirm=True, api_name="/delete_concept")
    owner.predict(zip_file=handle_file(exported), api_name="/import_concept")
    assert image() == first


def _quietly(call) -> str:
    try:
        call()
    except Exception as error:  # noqa: BLE001 - the test inspects the message
        message = str(error)
        return "unknown concept '&lt;swap&gt;'" if "unknown concept '&lt;swap&gt;'" in message else message
    return ""


def test_killed_mid_training_the_app_restarts_with_the_library_intact(tmp_path):
    home, port = tmp_path / "home", free_port()
    command = [sys.executable, str(ROOT / "app.py"), "--model", "tiny", "--data-dir", str(home), "--port", str(port)]
    env = {**os.environ, "PACGEN_MULTI_USER": ""}

    def start():
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                return process, Client(f"http://127.0.0.1:{port}/", verbose=False)
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.5)
        process.kill()
        raise AssertionError("the app did not start")

    process, client = start()
    try:
        bare = dict(preview_every=0, prior_preservation=False)  # what is killed is the training, not its extras
        assert "saved 'kept'" in train(client, "kept", **bare).result()[0]
        job = train(client, "interrupted", steps=400, **bare)
        deadline = time.time() + 60
        while len(job.outputs()) < 3 and time.time() < deadline:  # training steps are streaming
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    process, client = start()
    try:
        assert names(client) == ["kept"]
        gallery, *_ = client.predict(prompt="<kept>", boxes={**BOXES, "data": [["<kept>", 0, 0, 1, 1]]},
                                     num_inference_steps=2, api_name="/generate")
        assert gallery
    finally:
        process.kill()
        process.wait()
