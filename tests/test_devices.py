"""The app on several devices (`--devices`): the flag's checks, the pool that lends one replica per job, and a
studio on two CPU replicas (the second in a worker process) serving two requests at once with the images one replica
makes, training on either, and surviving a request stopped or a worker killed half-way."""

import os
import shutil
import signal
import threading
import time
from contextlib import ExitStack, contextmanager
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import app
from pacgen.app.replicas import ReplicaPool
from pacgen.app.session import Studio
from pacgen.app.visitors import Caller, Policy, acting_as
from pacgen.app.worker import ProcessReplica, WorkerError
from pacgen.checkpoints import CHECKPOINT_FILE, checkpoint_dir
from pacgen.devices import DeviceError, parse_devices
from pacgen.errors import PACGenError
from pacgen.layout import Box
from pacgen.lora import read_lora_file, write_lora_file
from pacgen.mini.stand_ins import write_random_concept
from pacgen.settings import TrainSettings

BOXES = [Box("a red ball", (0.1, 0.1, 0.5, 0.6)), Box("a blue star", (0.55, 0.5, 0.95, 0.9))]


def test_devices_are_read_as_torch_names_them():
    assert parse_devices(None) == [None] and parse_devices("") == [None]  # the one device the model picks
    assert parse_devices("cpu,cpu") == ["cpu", "cpu"]  # cpu may repeat: pipelines on their own threads
    assert parse_devices("cuda:0, CUDA:1", cuda_count=2) == ["cuda:0", "cuda:1"]
    assert parse_devices("cuda", cuda_count=1) == ["cuda:0"]
    assert parse_devices("all", cuda_count=3) == ["cuda:0", "cuda:1", "cuda:2"]
    assert parse_devices("all", cuda_count=0) == ["cpu"]
    assert parse_devices("mps", cuda_count=0, mps=True) == ["mps"]


@pytest.mark.parametrize("spec, cuda, message", [
    ("gpu0", 2, "--devices: unknown device 'gpu0'; expected cpu, cuda, cuda:N, mps, or all"),
    ("cpu:1", 2, "--devices: unknown device 'cpu:1'"),
    ("cuda:0,cuda:0", 2, "--devices: cuda:0 is named twice; one pipeline per device (only cpu may repeat)"),
    ("cuda,cuda:0", 2, "--devices: cuda:0 is named twice"),
    ("cuda:2", 2, "--devices: cuda:2 does not exist; this machine has 2 CUDA devices (cuda:0 to cuda:1)"),
    ("cuda:1", 1, "--devices: cuda:1 does not exist; this machine has 1 CUDA device (cuda:0)"),
    ("cuda:0,cpu", 0, "--devices: cuda:0 named, but torch sees no CUDA device on this machine"),
    ("cpu,,cpu", 0, "--devices: an empty name between commas"),
    ("all,cpu", 2, "--devices: 'all' stands alone"),
    ("mps", 0, "--devices: mps named, but torch sees no Apple GPU"),
])
def test_a_device_that_cannot_be_used_is_named_in_one_line(spec, cuda, message):
    with pytest.raises(DeviceError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_devices(spec, cuda_count=cuda, mps=False)


def test_the_app_refuses_a_bad_device_before_loading_anything(monkeypatch):
    monkeypatch.setattr(app, "Studio", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(SystemExit, match="error: --devices: unknown device 'gpu'"):
        app.main(["--model", "tiny", "--devices", "gpu"])


def test_a_zerogpu_space_refuses_several_devices_before_loading_anything(monkeypatch):
    monkeypatch.setenv("SPACES_ZERO_GPU", "1")
    monkeypatch.setattr(app, "Studio", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(SystemExit, match="error: --devices: a ZeroGPU Space lends one GPU to each call"):
        app.main(["--model", "tiny", "--devices", "cpu,cpu"])


def fakes(n):
    return [SimpleNamespace(visitor=None) for _ in range(n)]


def test_the_pool_lends_each_replica_to_one_job_and_takes_it_back_however_the_job_ends():
    pool = ReplicaPool(fakes(2))
    with pool.take() as first, pool.take() as second:
        assert first is not second and pool.busy == 2
        with pool.take(blocking=False) as third:
            assert third is None  # all busy: no waiting when asked not to
    assert pool.busy == 0
    with pytest.raises(RuntimeError, match="failed"):
        with pool.take():
            raise RuntimeError("the generation failed")
    assert pool.busy == 0  # given back after the exception


def test_a_visitor_gets_the_replica_that_last_served_them_where_it_is_free():
    pool = ReplicaPool(fakes(3))
    pool[2].visitor, pool[0].visitor = "ann", "bob"
    with pool.take(prefer="ann") as replica:
        assert replica is pool[2]
    with pool.take(prefer="carol") as replica:
        assert replica is pool[1]  # nobody's yet: nothing of another visitor to unload


def test_a_job_waits_for_the_first_replica_given_back_and_is_told_it_waits():
    pool = ReplicaPool(fakes(1))
    told, got = [], []
    with pool.take() as held:
        waiter = threading.Thread(target=lambda: got.append(pool.take(on_wait=lambda: told.append(1)).__enter__()))
        waiter.start()
        deadline = time.monotonic() + 30
        while not told and time.monotonic() < deadline:
            time.sleep(0.01)
        assert told and not got  # told at once, still waiting
    waiter.join(30)
    assert got == [held]


def generate(studio, prompt, boxes=BOXES, seed=1, waiting=None):
    settings = studio.pipe.settings(num_inference_steps=3, seed=seed)
    return studio.generate(prompt, "", boxes, settings, waiting=waiting).images[0]


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    return Studio("tiny", tmp_path_factory.mktemp("home"), devices=["cpu", "cpu"])


def test_every_device_after_the_first_runs_in_a_worker_process_of_its_own(two):
    first, second = two.replicas
    assert first.pid == os.getpid() and isinstance(second, ProcessReplica) and second.pid != os.getpid()
    assert two.status()["replicas"] == 2 and two.status()["memory"].endswith("GiB RAM")


@pytest.mark.parametrize("trainer", [0, 1])
def test_a_training_holds_one_device_while_the_other_generates(two, photos, trainer):
    events = two.train(photos, "long one", "star", TrainSettings(steps=3000, prior_preservation=False,
                                                                 preview_every=0))
    with only_free(two, two.replicas[trainer]):  # the training starts on this one
        while next(events).phase != "training":
            pass
    assert two.replicas.busy == 1
    waits = []
    image = generate(two, "a red ball and a blue star", waiting=waits.append)  # the other device, at once
    assert image.size == (two.size, two.size) and waits == []
    assert two.cancel() == "Training cancelled: nothing was saved."
    assert two.replicas.busy == 0
    assert "long one" not in two.concept_names()


def test_a_concept_trained_in_a_worker_is_saved_and_draws_alike_on_both_devices(two, photos):
    with only_free(two, two.replicas[1]):
        events = list(two.train(photos, "worker star", "star", TrainSettings(steps=3, prior_preservation=False,
                                                                             preview_every=0)))
    assert [e.phase for e in events if e.phase == "training"] and events[-1].phase == "done"
    assert events[-1].concept.name == "worker star" and "worker star" in two.concept_names()
    star = [Box("<worker star>", (0.2, 0.2, 0.8, 0.8))]
    drawn = []
    for replica in two.replicas:
        with only_free(two, replica):
            drawn.append(np.asarray(generate(two, "a photo of <worker star>", star)))
    assert np.array_equal(*drawn)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the job's trace, for the log
def test_a_fault_in_a_workers_job_is_reported_as_in_this_process_and_the_worker_lives_on(two, photos):
    folder = checkpoint_dir(two.library, "broken star")
    folder.mkdir(parents=True)
    (folder / CHECKPOINT_FILE).write_bytes(b"")  # torch.load raises EOFError on it: the job's own fault
    said = []
    for replica in two.replicas:
        with only_free(two, replica):
            with pytest.raises(PACGenError) as error:
                list(two.train(photos, "broken star", "star", TrainSettings(steps=3, prior_preservation=False)))
            pid = replica.pid
            generate(two, "a red ball")
        said.append(str(error.value))
        assert pid is not None and replica.pid == pid  # the worker was not mistaken for gone, nor started again
    assert said[0] == said[1] and "EOFError" in said[0]
    shutil.rmtree(folder)


class PageClosed(Exception):
    """What a page's progress raises when its visitor goes away."""


def test_a_generation_stopped_half_way_in_a_worker_leaves_it_ready_for_the_next(two):
    second = two.replicas[1]
    told = []

    def closed_at_two(i, total):
        told.append(i)
        if i == 2:
            raise PageClosed

    with only_free(two, second), pytest.raises(PageClosed):
        two.generate("a red ball", "", BOXES, two.pipe.settings(num_inference_steps=20, seed=1),
                     progress=closed_at_two)
    assert told[-1] == 2  # stopped there: the worker's remaining steps never reached the page
    with only_free(two, second):
        after = generate(two, "a red ball and a blue star")
    with only_free(two, two.replicas[0]):
        assert np.array_equal(np.asarray(after), np.asarray(generate(two, "a red ball and a blue star")))


def test_a_concept_a_worker_cannot_load_is_reported_as_not_usable_with_why(two):
    library = two.library
    with library.staging() as staged:
        concept = write_random_concept(two.pipe, staged / "x", "half star", "sks", "star", seed=4)
        state = read_lora_file(concept.lora_path)
        write_lora_file({k: v for k, v in state.items() if k.endswith("lora_A.weight")}, staged / "x")
        library.commit(staged / "x", concept)
    try:
        with only_free(two, two.replicas[1]):
            two.sync_library()  # on the worker
        assert "half star" not in two.concept_names()
        with pytest.raises(PACGenError) as here:  # what this process says of it
            two.pipe.load_concept(library.get("half star"))
        assert [why for name, why in two.library_view().problems if name == "half star"] == [str(here.value)]
    finally:
        library.delete("half star")


def test_a_worker_killed_mid_generation_fails_that_request_in_one_line_and_is_started_again(two):
    studio = two
    second = studio.replicas[1]
    killed = second.pid

    def kill(i, total):
        if i == 1:
            os.kill(killed, signal.SIGKILL)

    with only_free(studio, second):
        with pytest.raises(WorkerError, match=r"the pipeline on cpu stopped \(exit code -9\); it is loaded again "
                                              r"for the next job"):
            studio.generate("a red ball", "", BOXES, studio.pipe.settings(num_inference_steps=20, seed=1),
                            progress=kill)
        image = generate(studio, "a red ball and a blue star")
    assert second.pid != killed and image.size == (studio.size, studio.size)


def test_on_one_device_a_generation_waits_behind_a_training_and_says_so(tmp_path, photos):
    one = Studio("tiny", tmp_path / "home", device="cpu")
    events = one.train(photos, "long one", "star", TrainSettings(steps=3000, prior_preservation=False,
                                                                 preview_every=0))
    while next(events).phase != "training":
        pass
    waits, done = [], []
    worker = threading.Thread(target=lambda: done.append(generate(one, "a red ball", waiting=waits.append)))
    worker.start()
    deadline = time.monotonic() + 60
    while not waits and time.monotonic() < deadline:
        time.sleep(0.05)
    assert waits == ["waiting for a training to finish: the model runs one job at a time"] and not done
    one.cancel()
    worker.join(120)
    assert done and done[0].size == (one.size, one.size)


def test_a_training_in_a_worker_keeps_its_checkpoint_when_the_app_closes_and_can_be_resumed(two, photos):
    """The last test on `two`: it closes the worker (the next job would start it again, at a cost)."""
    settings = TrainSettings(steps=3000, prior_preservation=False, preview_every=0, checkpoint_minutes=0.002)
    events = two.train(photos, "closing star", "star", settings)
    with only_free(two, two.replicas[1]):
        while next(events).phase != "training":
            pass
    saved = checkpoint_dir(two.library, "closing star") / CHECKPOINT_FILE
    deadline = time.monotonic() + 60
    while not saved.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    two.replicas[1].close()  # what the app's exit does: as if the process were killed, not a cancel
    with pytest.raises(WorkerError, match="the pipeline on cpu stopped"):
        list(events)
    assert saved.exists() and [t.name for t in two.stopped_trainings()] == ["closing star"]
    two.discard_training("closing star")


@contextmanager
def only_free(studio, wanted):
    """Every replica but `wanted` held, so that the next job runs on `wanted`."""
    wanted.visitor = None  # never taken for one of the held ones
    with ExitStack() as stack:
        for replica in studio.replicas:
            if replica is not wanted:
                replica.visitor = "held by the test"
                assert stack.enter_context(studio.replicas.take(prefer="held by the test")) is replica
        yield


def test_a_replica_that_served_one_visitor_holds_none_of_their_concepts_for_the_next(tmp_path):
    studio = Studio("tiny", tmp_path / "home", devices=["cpu", "cpu"], policy=Policy.public())
    ann, bob = Caller(session="session-of-ann"), Caller(session="session-of-bob")
    for caller, seed in ((ann, 1), (bob, 2)):  # the same name, different weights
        with acting_as(caller):
            library = studio.library
            with library.staging() as staged:
                library.commit(staged / "x", write_random_concept(studio.pipe, staged / "x", "my star", "sks",
                                                                  "star", seed=seed, strength=1.0))
    star = [Box("<my star>", (0.1, 0.1, 0.9, 0.9))]
    first, second = studio.replicas[0], studio.replicas[1]
    with acting_as(ann), only_free(studio, first):
        anns = generate(studio, "a photo of <my star>", star)
    with acting_as(bob), only_free(studio, first):  # where ann's star was loaded
        bobs_after_ann = generate(studio, "a photo of <my star>", star)
    with acting_as(bob), only_free(studio, second):  # never held ann's
        bobs = generate(studio, "a photo of <my star>", star)
    assert np.array_equal(np.asarray(bobs_after_ann), np.asarray(bobs))
    assert not np.array_equal(np.asarray(anns), np.asarray(bobs))


@pytest.mark.slow  # launches the app
def test_the_app_on_two_cpu_replicas_serves_two_requests_at_once_with_one_replicas_images(tmp_path):
    from gradio_client import Client

    from test_app import free_port, table

    studio = Studio("tiny", tmp_path / "home", devices=["cpu", "cpu"])
    with studio.library.staging() as staged:
        studio.library.commit(staged / "x", write_random_concept(studio.pipe, staged / "x", "my star", "sks", "star",
                                                                 seed=3, strength=1.0))
    # Each replica's generation waits for the other's to start: both requests must hold their devices at once.
    both = threading.Barrier(2, timeout=300)

    def meeting(generate):
        def wait_for_the_other(*args):
            both.wait()
            return generate(*args)
        return wait_for_the_other

    for replica in studio.replicas:
        replica.generate = meeting(replica.generate)
    demo = app.build_ui(studio)
    demo.queue(default_concurrency_limit=1).launch(server_name="127.0.0.1", server_port=free_port(),
                                                   prevent_thread_lock=True, quiet=True)
    requests = [("a photo of <my star> on grass", [["<my star>", 0.1, 0.1, 0.6, 0.6]], 5),
                ("a red ball and a blue star", [["a red ball", 0.1, 0.1, 0.5, 0.6], ["a blue star", 0.5, 0.5, 1, 1]],
                 6)]
    try:
        client = Client(demo.local_url, verbose=False)
        jobs = [client.submit(prompt=prompt, boxes=table(*rows), num_inference_steps=4, seed=seed,
                              api_name="/generate") for prompt, rows, seed in requests]
        served = [Image.open(job.result(timeout=600)[0][0]["image"]) for job in jobs]
        client.close()
    finally:
        demo.close()
    assert not both.broken and {replica.visitor for replica in studio.replicas} == {"local"}  # both served

    one = Studio("tiny", tmp_path / "home", device="cpu")
    for (prompt, rows, seed), image in zip(requests, served):
        boxes = [Box(label, tuple(box)) for label, *box in rows]
        alone = one.generate(prompt, "", boxes, one.pipe.settings(num_inference_steps=4, seed=seed)).images[0]
        assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(alone))  # bit for bit
