"""Every torch call of the app runs on its one model thread (off it, torch ran at half speed: docs/benchmarks.md)."""

import contextvars
import threading

import pytest

from pacgen.app.model_thread import ModelThread
from pacgen.app.session import Studio
from pacgen.layout import Box
from pacgen.settings import TrainSettings

WHO = contextvars.ContextVar("who", default="nobody")


def test_calls_run_on_one_thread_in_the_callers_context_and_bring_errors_back():
    model = ModelThread()
    token = WHO.set("visitor 7")
    try:
        idents = {model.call(threading.get_ident) for _ in range(3)}
        assert len(idents) == 1 and threading.get_ident() not in idents
        assert model.call(WHO.get) == "visitor 7"
        assert model.call(model.call, threading.get_ident) in idents  # nested: no deadlock
        with pytest.raises(ValueError, match="bad"):
            model.call(int, "bad")
    finally:
        WHO.reset(token)


def test_a_streamed_generator_runs_there_and_is_closed_there():
    model, seen = ModelThread(), []

    def events():
        try:
            for k in range(5):
                seen.append(threading.get_ident())
                yield k
        finally:
            seen.append(("closed", threading.get_ident()))

    stream = model.stream(events())
    assert [next(stream), next(stream)] == [0, 1]
    stream.close()
    thread = model.call(threading.get_ident)
    assert seen == [thread, thread, ("closed", thread)]


def test_the_apps_training_and_generation_run_on_the_model_thread(tmp_path, photos):
    studio = Studio("tiny", tmp_path, device="cpu")
    threads = set()
    unet = studio.pipe.components.unet
    hook = unet.register_forward_pre_hook(lambda *_: threads.add(threading.get_ident()))
    try:
        settings = TrainSettings(steps=2, num_class_images=1, class_image_steps=1, samples_per_photo=1)
        events = list(studio.train(photos, "my star", "star", settings))
        assert events[-1].phase == "done", events[-1].message
        studio.generate("a photo of <my star>", "", [Box("<my star>", (0.1, 0.1, 0.6, 0.6))],
                        studio.pipe.settings(num_inference_steps=2, seed=0))
    finally:
        hook.remove()
    assert threads == {studio.model.call(threading.get_ident)}
