"""Every torch call of the app runs on its one model thread (off it, torch ran at half speed: docs/benchmarks.md)."""

import contextvars
import threading

import pytest

from pacgen.app.model_thread import ModelThread, app_threads
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


def test_the_app_leaves_a_core_to_its_server_and_browser_unless_told_otherwise():
    assert app_threads("auto", cores=2, environ={}) == 1  # the 2-core CPU: a browser on it stalls a second thread
    assert app_threads("auto", cores=16, environ={}) == 15
    assert app_threads("auto", cores=16, environ={}, replicas=2) == 7  # --devices cpu,cpu: torch's count is per process
    assert app_threads("auto", cores=2, environ={}, replicas=2) == 1
    assert app_threads("auto", cores=1, environ={}) == 1
    assert app_threads("auto", cores=8, environ={"OMP_NUM_THREADS": "4"}) is None  # torch already follows it
    assert app_threads("3", cores=2, environ={}) == 3
    for bad in ["0", "-2", "many", "1.5"]:
        with pytest.raises(ValueError, match=f"threads must be 'auto' or a whole number of at least 1, not '{bad}'"):
            app_threads(bad, cores=2, environ={})


def test_app_py_refuses_a_bad_thread_count_before_loading_anything():
    import app

    with pytest.raises(SystemExit, match="error: threads must be 'auto' or a whole number"):
        app.main(["--model", "tiny", "--threads", "none"])


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
    assert threads == {studio.replicas[0].model.call(threading.get_ident)}
