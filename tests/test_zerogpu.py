"""ZeroGPU's process model on `tiny`: training in resumable chunks, each in a worker forked by a stand-in for
`spaces.GPU` (tests/fake_spaces.py) that enforces the declared duration; durations from the call's arguments; and
refusals up front where a training cannot fit."""

import sys
import threading
from dataclasses import replace

import numpy as np
import pytest
import torch

from pacgen import lora
from pacgen.app import zerogpu
from pacgen.concepts import ConceptLibrary
from pacgen.layout import Box
from pacgen.sampling import PACGenPipeline
from pacgen.settings import SampleSettings, TrainSettings
from pacgen.training import TrainingCancelled, class_image_dir, train_concept

from tests import fake_spaces

FAST = dict(steps=6, learning_rate=5e-3, num_class_images=2, class_image_steps=2, samples_per_photo=2,
            preview_every=3)
SHORT = dict(call_s=20.25, margin_s=20.0)  # 0.25 s of training per call: several calls on tiny


@pytest.fixture
def spaces(monkeypatch):
    monkeypatch.setitem(sys.modules, "spaces", fake_spaces)
    fake_spaces.record.calls.clear()
    return fake_spaces.record


@pytest.fixture
def one_thread():
    """Float sums in one order, and no threads spinning against other jobs on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def same_lora(a, b, atol=0.0):
    first, second = lora.read_lora_file(a.lora_path), lora.read_lora_file(b.lora_path)
    return first.keys() == second.keys() and all(torch.allclose(first[k], second[k], rtol=0, atol=atol) for k in first)


def draw(pipe, name="my star"):
    return pipe(f"a photo of <{name}> on grass", boxes=[Box(f"<{name}>", (0.2, 0.2, 0.8, 0.8))],
                num_inference_steps=3, seed=1, output_type="np").images[0]


@pytest.mark.parametrize("ema_steps", [0, 10])
def test_a_run_in_many_calls_ends_with_the_same_concept_as_one_run(one_thread, pipe, photos, tmp_path, ema_steps):
    """In one process, one step per call (budget 0): bit-identical LoRA, the weights' average too where one is kept;
    steps, previews and the ETA continue."""
    config = TrainSettings(**{**FAST, "steps": 4, "preview_every": 2, "ema_steps": ema_steps})
    whole = list(train_concept(PACGenPipeline.from_pretrained("tiny", device="cpu"), photos, "my star", "star", config,
                               ConceptLibrary(tmp_path / "one")))
    library, checkpoint, events, calls = ConceptLibrary(tmp_path / "chunks"), tmp_path / "checkpoint", [], 0
    while not events or events[-1].phase != "done":
        calls += 1
        events += train_concept(pipe, photos, "my star", "star", config, library, checkpoint=checkpoint, budget_s=0)
    assert calls == 2 + 4  # one call per class image, then one per step
    assert [e.step for e in events if e.phase == "training"] == list(range(1, 5))
    assert [e.step for e in events if e.preview is not None] == [2, 4]
    paused = [e for e in events if e.phase == "paused"]
    assert len(paused) == calls - 1 and paused[-1].step == 3 and paused[-1].eta_s > 0
    assert [e.phase for e in events].count("saving") == 1 and not checkpoint.exists()
    assert same_lora(whole[-1].concept, events[-1].concept)  # bit for bit
    training = [e.elapsed_s for e in events if e.phase == "training"]
    assert training == sorted(training) and events[-1].concept.duration_s >= training[-1]  # time of every call


def test_cancel_between_calls_removes_the_checkpoint_and_saves_nothing(pipe, photos, library, tmp_path):
    config, checkpoint = TrainSettings(prior_preservation=False, **{**FAST, "preview_every": 0}), tmp_path / "ck"
    list(train_concept(pipe, photos, "my star", "star", config, library, checkpoint=checkpoint, budget_s=0))
    assert checkpoint.exists()
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(TrainingCancelled):
        list(train_concept(pipe, photos, "my star", "star", config, library, cancel, checkpoint=checkpoint,
                           budget_s=0))
    assert not checkpoint.exists() and library.list() == [] and "my star" not in pipe.concepts


def test_class_images_are_cached_across_visitor_libraries(pipe, photos, tmp_path):
    config, cache = TrainSettings(**{**FAST, "steps": 1, "preview_every": 0}), tmp_path / "shared"
    list(train_concept(pipe, photos, "mine", "star", config, ConceptLibrary(tmp_path / "alice"), cache_dir=cache))
    folder = class_image_dir(cache, pipe.components, "a photo of a star", 64)
    made = {p: p.stat().st_mtime_ns for p in folder.glob("*.png")}
    events = list(train_concept(pipe, photos, "yours", "star", config, ConceptLibrary(tmp_path / "bob"),
                                cache_dir=cache))
    assert len(made) == 2 and not [e for e in events if e.phase == "class-images"]
    assert {p: p.stat().st_mtime_ns for p in folder.glob("*.png")} == made
    assert not (tmp_path / "bob" / "class_images").exists()


def test_a_concept_trained_in_forked_workers_reaches_the_main_process(spaces, one_thread, pipe, photos, library,
                                                                     tmp_path):
    config = TrainSettings(**FAST)
    events = list(zerogpu.train_in_chunks(pipe, library, tmp_path / "cache", photos, "my star", "star", config,
                                          threading.Event(), **SHORT))
    pids = {call.pid for call in spaces.calls}
    assert len(spaces.calls) >= 2 and len(pids) == len(spaces.calls) and None not in pids  # a fresh worker each call
    assert all(call.duration <= zerogpu.MAX_CALL_S for call in spaces.calls)
    assert [e.step for e in events if e.phase == "training"] == list(range(1, 7))
    assert "paused" in [e.phase for e in events] and events[-1].phase == "done"
    # The worker loaded the concept on its copy of the pipeline; that copy is gone. The library on disk has it.
    assert "my star" not in pipe.concepts and [c.name for c in library.list()] == ["my star"]
    pipe.load_concept(library.get("my star"))

    other = PACGenPipeline.from_pretrained("tiny", device="cpu")
    whole = list(train_concept(other, photos, "my star", "star", config, ConceptLibrary(tmp_path / "one")))
    assert same_lora(whole[-1].concept, events[-1].concept)  # bit for bit, across workers and calls
    np.testing.assert_allclose(draw(pipe), draw(other), atol=1e-4)

    @zerogpu.gpu_task(duration=lambda name: 30)
    def generate_in_worker(name):
        if name not in pipe.concepts:  # idempotent: load from the library on disk
            pipe.load_concept(library.get(name))
        return draw(pipe, name)

    first, second = generate_in_worker("my star"), generate_in_worker("my star")
    assert spaces.calls[-1].pid != spaces.calls[-2].pid  # recycled: each call a new worker
    np.testing.assert_allclose(first, draw(pipe), atol=1e-5)
    np.testing.assert_allclose(second, first, atol=1e-6)


def test_the_vae_is_hashed_before_workers_fork_not_in_each_call(spaces, pipe, tmp_path):
    """Each call's resume key names the VAE's digest: hashed in the main process, a worker inherits it instead of
    hashing the whole VAE again on the visitor's GPU time."""
    fresh = PACGenPipeline(replace(pipe.components))
    assert "vae_digest" not in vars(fresh.components)
    zerogpu.chunk_runner(fresh)
    assert vars(fresh.components)["vae_digest"] == pipe.components.vae_digest


def test_a_call_past_its_duration_is_killed_reported_and_the_next_training_resumes(
        spaces, monkeypatch, pipe, photos, library, tmp_path):
    config = TrainSettings(**{**FAST, "steps": 150, "preview_every": 0, "prior_preservation": False})
    chunk = zerogpu.chunk_runner(pipe)

    def second_call_overruns(**kwargs):
        if len(spaces.calls) == 1:  # the second call asks for 1 s (the cap) but would train for 60
            monkeypatch.setattr(zerogpu, "MAX_CALL_S", 1)
            kwargs["budget_s"] = 60.0
        return chunk(**kwargs)

    seen = []
    with pytest.raises(zerogpu.ZeroGPUError, match="GPUTaskAborted.*train again with the same name") as error:
        for event in zerogpu.train_in_chunks(pipe, library, tmp_path, photos, "my star", "star", config,
                                             threading.Event(), runner=second_call_overruns, **SHORT):
            seen.append(event)
    assert spaces.calls[1].killed and str(tmp_path) not in str(error.value)
    kept = max(e.step for e in seen if e.phase == "paused")
    assert 0 < kept < 150 and library.list() == []

    monkeypatch.setattr(zerogpu, "MAX_CALL_S", 300)
    events = list(zerogpu.train_in_chunks(pipe, library, tmp_path, photos, "my star", "star", config,
                                          threading.Event(), call_s=60, margin_s=30))
    assert [e.step for e in events if e.phase == "training"][0] == kept + 1 and events[-1].phase == "done"


def test_cancel_reaches_the_worker_and_leaves_nothing(spaces, pipe, photos, library, tmp_path):
    config, cancel = TrainSettings(**{**FAST, "steps": 300, "preview_every": 0}), threading.Event()
    with pytest.raises(TrainingCancelled):
        for event in zerogpu.train_in_chunks(pipe, library, tmp_path, photos, "my star", "star", config, cancel,
                                             call_s=60, margin_s=30):
            if event.phase == "training" and event.step == 2:
                cancel.set()
    assert len(spaces.calls) == 1 and library.list() == [] and not (library.root / "checkpoints" / "my-star").exists()


def test_a_training_that_cannot_fit_the_quota_or_a_call_is_refused_up_front(spaces, pipe, photos, library):
    config = TrainSettings(steps=2000, prior_preservation=False)
    with pytest.raises(zerogpu.ZeroGPUError) as error:
        list(zerogpu.train_in_chunks(pipe, library, library.root, photos, "my star", "star", config,
                                     threading.Event(), quota_s=20))
    message = str(error.value)
    assert "min of ZeroGPU time" in message and "duplicate this Space" in message and "run it locally" in message
    assert "\n" not in message and str(library.root) not in message
    assert spaces.calls == []


def test_full_trains_in_chunks_on_a_small_model_and_is_refused_where_its_checkpoint_is_too_big(
        spaces, one_thread, pipe, photos, library, tmp_path, monkeypatch):
    config = TrainSettings(method="full", prior_preservation=False, ema_steps=10,
                           **{**FAST, "steps": 3, "preview_every": 0})
    before = {k: v.clone() for k, v in pipe.components.unet.state_dict().items()}
    whole = list(train_concept(PACGenPipeline.from_pretrained("tiny", device="cpu"), photos, "my star", "star", config,
                               ConceptLibrary(tmp_path / "one")))[-1].concept
    chunked = list(zerogpu.train_in_chunks(pipe, library, library.root, photos, "my star", "star", config,
                                           threading.Event(), **SHORT))[-1].concept
    assert len(spaces.calls) > 1 and same_lora(whole, chunked, atol=1e-6)
    assert all(torch.equal(before[k], v) for k, v in pipe.components.unet.state_dict().items())  # workers' changes
    averaged = zerogpu.checkpoint_bytes(pipe, config)
    last = zerogpu.checkpoint_bytes(pipe, replace(config, ema_steps=0))
    assert averaged == last * 4 // 3  # the average is one more fp32 copy beside the master and AdamW's two moments
    monkeypatch.setattr(zerogpu, "CHECKPOINT_LIMIT", averaged - 1)
    with pytest.raises(zerogpu.ZeroGPUError, match=r"'full' method cannot train on ZeroGPU with this model.*GB\); "
                                                   "choose 'lora-all'"):
        list(zerogpu.train_in_chunks(pipe, library, library.root, photos, "my other star", "star", config,
                                     threading.Event()))


def test_durations_come_from_the_arguments_and_stay_within_a_call(spaces):
    one, two, three = ([Box(f"<c{k}>", (0.1 * k, 0.1, 0.1 * k + 0.3, 0.4)) for k in range(n)] for n in (1, 2, 3))
    small = zerogpu.generation_seconds(SampleSettings(num_inference_steps=25), one, step_s=0.05)
    bigger = zerogpu.generation_seconds(SampleSettings(num_inference_steps=25, num_images=4, width=768), two, 0.05)
    assert zerogpu.GENERATION_MARGIN_S < small < bigger <= zerogpu.MAX_CALL_S
    with pytest.raises(zerogpu.ZeroGPUError, match="more than one ZeroGPU call allows"):
        zerogpu.generation_seconds(SampleSettings(num_inference_steps=200, num_images=16), three, 0.05)

    @zerogpu.gpu_task(duration=lambda steps: steps * 10.0)
    def work(steps):
        return steps

    assert work(2) == 2 and work(100) == 100
    assert [c.duration for c in spaces.calls] == [20, zerogpu.MAX_CALL_S]  # computed per call, capped


def test_a_worker_forked_while_a_training_holds_the_model_can_still_generate(spaces, tmp_path):
    from pacgen.app.session import Studio

    studio = Studio("tiny", tmp_path / "home", device="cpu")

    @zerogpu.gpu_task(duration=lambda: 30)
    def generate_in_worker():
        box = [Box("a ball", (0.2, 0.2, 0.8, 0.8))]
        return studio.generate("a ball", "", box, studio.pipe.settings(seed=0, num_inference_steps=2)).images[0].size

    with studio.replicas.take(), studio.training_lock:  # this process is busy training
        assert generate_in_worker() == (studio.size, studio.size)
