"""Strangers sharing one app, without a server: each visitor's library, jobs and limits, and the deployment policy."""

import os
import time

import pytest

from pacgen.app import library_tab
from pacgen.app.jobs import TrainingJob
from pacgen.app.session import Studio
from pacgen.app.visitors import Caller, LimitError, Policy, acting_as, choose_policy, generation_cost, parse_logins
from pacgen.concepts import ConceptLibrary
from pacgen.errors import PACGenError
from pacgen.layout import Box, boxed_concepts
from pacgen.mini.kit import KIT, kit_photos
from pacgen.mini.stand_ins import write_random_concept
from pacgen.settings import SampleSettings
from pacgen.training import TrainEvent

FAST = dict(steps=4, num_class_images=1, class_image_steps=2, preview_every=0)
ANN, BOB = Caller(session="session-of-ann"), Caller(session="session-of-bob")


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A public-policy studio with one read-only example concept."""
    root = tmp_path_factory.mktemp("shared")
    studio = Studio("tiny", root / "home", device="cpu", policy=Policy.public().with_limits("max_concepts=2"),
                    shared_dir=root / "examples")
    examples = ConceptLibrary(root / "examples")
    with examples.staging() as staged:
        made = write_random_concept(studio.pipe, staged / "x", "example star", "ohwx", "star", seed=1)
        examples.commit(staged / "x", made)
    return studio


def train(studio, name, caller, photos):
    with acting_as(caller):
        settings = studio.defaults.training.override(**FAST)
        return list(studio.train(photos, name, "star", settings))


def test_each_visitor_sees_only_their_own_concepts_and_the_shared_ones(shared, tmp_path):
    photos = kit_photos(KIT[0], n=3, size=64)
    assert train(shared, "ann's star", ANN, photos)[-1].concept is not None
    with acting_as(ANN):
        assert shared.concept_names() == ["ann's star", "example star"]
    with acting_as(BOB):
        assert shared.concept_names() == ["example star"]
        assert [c["name"] for c in shared.list_concepts()] == ["example star"]
        with pytest.raises(PACGenError, match="no concept named"):
            shared.delete("ann's star", True)
        with pytest.raises(PACGenError, match="no concept named"):
            shared.export("ann's star")
        with pytest.raises(PACGenError, match="unknown concept"):
            shared.generate("a photo", "", [Box("<ann's star>", (0, 0, 1, 1))], shared.pipe.settings(seed=0))
        assert shared.cancel() == "Nothing of yours is training."
        with pytest.raises(PACGenError, match="shared example concept: it cannot be deleted"):
            shared.delete("example star", True)
        image = shared.generate("a photo", "", [Box("<example star>", (0, 0, 0.5, 0.5))],
                                shared.pipe.settings(seed=0, num_inference_steps=2)).images[0]
    assert image.size == (shared.size, shared.size)
    with acting_as(ANN):
        shared.delete("ann's star", True)
        assert shared.concept_names() == ["example star"]


def test_quotas_and_request_limits_are_refused_with_the_limit(shared):
    photos = kit_photos(KIT[1], n=3, size=64)
    carol = Caller(login="carol")
    assert train(shared, "one", carol, photos)[-1].concept is not None
    assert train(shared, "two", carol, photos)[-1].concept is not None
    with pytest.raises(LimitError, match="most this app keeps per visitor is 2"):
        train(shared, "three", carol, photos)
    with acting_as(carol):
        box = [Box("a ball", (0, 0, 1, 1))]
        with pytest.raises(LimitError, match="allows 1000"):
            shared.generate("x" * 1001, "", box, shared.pipe.settings())
        with pytest.raises(LimitError, match=r"costs [0-9.]+× a default generation.*allows 8×"):
            shared.generate("a", "", box, shared.pipe.settings(num_images=4, num_inference_steps=200))


def test_a_concept_in_several_boxes_costs_as_one_since_it_is_one_unet_row():
    boxes = [Box("<dog>", (0, 0, 0.4, 0.4)), Box("a ball", (0.5, 0.5, 1, 1)), Box("<dog>", (0.6, 0, 1, 0.4))]
    assert boxed_concepts(boxes) == ["dog"]
    default = SampleSettings(width=64, height=64)
    assert generation_cost(default, boxes, default) == 1.0
    assert generation_cost(default, boxes + [Box("<cat>", (0, 0.5, 0.4, 1))], default) > 1.0


def test_the_hourly_training_quota_says_when_the_next_one_may_start(shared):
    for _ in range(2):
        shared.visitors.start_training("dave")
    with pytest.raises(LimitError, match="2 trainings per visitor per hour; the next one can start in 60 min"):
        shared.visitors.start_training("dave")


def test_idle_visitors_expire_but_busy_ones_stay(shared):
    for name in ("idle", "busy", "recent"):
        (shared.root / "visitors" / name).mkdir(parents=True)  # each has stored something
        shared.visitors.seen(name)
    old = time.time() - 25 * 3600
    for name in ("idle", "busy"):
        os.utime(shared.root / "visitors" / name / ".last_seen", (old, old))
    assert shared.visitors.sweep(busy={"busy"}) == ["idle"]
    assert {"busy", "recent"} <= {p.name for p in (shared.root / "visitors").iterdir()}


def test_a_visitor_who_only_looks_leaves_nothing_on_disk_until_they_store_something(shared, tmp_path):
    looker = Caller(session="session-of-a-looker")
    folder = shared.root / "visitors" / shared.visitors.key(looker)
    with acting_as(looker):
        assert [c["name"] for c in shared.list_concepts()] == ["example star"]
        assert shared.concept_names() == ["example star"]
    assert not folder.exists()
    source = ConceptLibrary(tmp_path / "elsewhere")
    with source.staging() as staged:
        source.commit(staged, write_random_concept(shared.pipe, staged, "looker's star", "ohwx", "star", seed=3))
    with acting_as(looker):
        shared.import_zip(str(source.export_zip("looker's star", tmp_path / "out")))
        shared.list_concepts()  # the next request notes the visitor as active: their data now expires when idle
    assert (folder / ".last_seen").is_file()


def test_a_training_outlives_the_page_that_started_it(tmp_path):
    studio = Studio("tiny", tmp_path, device="cpu")
    settings = studio.defaults.training.override(**{**FAST, "steps": 12})
    stream = studio.train(kit_photos(KIT[0], n=3, size=64), "kept", "star", settings)
    next(stream)
    stream.close()  # the tab closes
    assert studio.training_active()
    events = list(studio.follow_training())  # the page opens again: everything from the first event
    assert events[0].phase != "done" and events[-1].phase == "done" and events[-1].concept.name == "kept"
    assert not studio.training_active() and "kept" in studio.concept_names()


def test_a_failed_job_is_reported_to_its_followers():
    def failing(cancel):
        yield TrainEvent("preparing", 0, 1, message="encoding")
        raise PACGenError("photo 2 is not an image")

    job = TrainingJob("someone", failing)
    job.wait(5)
    with pytest.raises(PACGenError, match="photo 2 is not an image"):
        list(job.follow())
    assert [e.message for e in job.events] == ["encoding"]


@pytest.mark.parametrize("limits, message", [("max_concepts=0", "positive"), ("speed=3", "unknown limit"),
                                              ("max_cost=lots", "expected a float"),
                                              ("max_prompt_chars=none", "cannot be lifted")])
def test_bad_limits_are_named(limits, message):
    with pytest.raises(LimitError, match=message):
        choose_policy(shared=True, limits=limits)


def test_deployment_policy():
    assert not choose_policy(shared=False).isolated
    public = choose_policy(shared=True, limits="max_concepts=10,idle_expiry_h=none")
    assert public.isolated and public.max_concepts == 10 and public.idle_expiry_h is None
    assert parse_logins("ann:pw1, bob:pw2") == [("ann", "pw1"), ("bob", "pw2")]
    with pytest.raises(LimitError, match="USER:PASSWORD"):
        parse_logins("ann")


def test_a_broken_concept_on_disk_never_stops_the_app(tmp_path):
    from safetensors.torch import load_file, save_file

    from pacgen.lora import LORA_FILE
    from pacgen.sampling import PACGenPipeline

    concepts = tmp_path / "home" / "concepts"
    pipe = PACGenPipeline.from_pretrained("tiny", device="cpu")
    write_random_concept(pipe, concepts / "good-one", "good one", "sks")
    bad = write_random_concept(pipe, concepts / "bad-one", "bad one", "ohwx", seed=1)
    state = load_file(bad.lora_path)
    key = next(iter(state))
    state[key] = state[key][:, :1].contiguous()  # a rank that does not match its partner
    save_file(state, bad.path / LORA_FILE)
    (concepts / "good-one" / "thumbnail.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not the rest")  # truncated
    (concepts / "garbage").mkdir()
    (concepts / "garbage" / "concept.json").write_text('{"name": "garbage", "created": 5}')

    studio = Studio("tiny", tmp_path / "home", device="cpu")
    assert studio.concept_names() == ["good one"]
    notices = " ".join(studio.notices())
    assert "'bad one'" in notices and "'garbage'" in notices and str(tmp_path) not in notices
    cards = library_tab.cards(studio.library_view())  # the Library tab says it too
    assert "not usable: " in cards and "<li>garbage: " in cards and "<b>good one</b>" in cards
    result = studio.generate("<good one>", "", [Box("<good one>", (0.1, 0.1, 0.6, 0.6))],
                             studio.pipe.settings(seed=0, num_inference_steps=2))
    assert result.images


def test_prompts_with_control_characters_are_refused_by_name(tmp_path):
    studio = Studio("tiny", tmp_path, device="cpu")
    box = [Box("a ball", (0, 0, 1, 1))]
    with pytest.raises(PACGenError, match=r"the prompt contains .*U\+202E"):
        studio.generate("a \u202eball", "", box, studio.pipe.settings(num_inference_steps=2))
    assert studio.generate("a red\nball", "", box, studio.pipe.settings(num_inference_steps=2)).images
