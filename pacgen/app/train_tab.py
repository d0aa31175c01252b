"""The Train tab: photos, a name and a class noun in; streamed progress, loss and previews out."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Iterator

import gradio as gr

from ..errors import PACGenError
from ..layout import enlarge
from ..settings import TrainSettings, surfaced
from ..training import Phase
from . import views
from .fields import UI_ONLY, component, endpoint
from .session import Studio

FIELDS = surfaced(TrainSettings)
COLUMN_MIN_PX = 440  # the two columns stand side by side from about 1000 px wide, and stack below


@dataclass
class TrainTab:
    photos: gr.File
    name: gr.Textbox
    noun: gr.Textbox
    settings: list
    estimate: gr.Markdown
    aug_button: gr.Button
    train_button: gr.Button
    cancel_button: gr.Button
    use_button: gr.Button
    example_buttons: list  # one per example object, with its thumbnail and full name
    photo_gallery: gr.Gallery
    aug_preview: gr.Image
    status: gr.Markdown
    loss_plot: gr.HTML
    previews: gr.Gallery
    log: gr.Textbox
    stopped_row: gr.Row  # "'my dog' stopped at 340/500: Resume / Discard", shown while the visitor has one
    stopped_text: gr.Markdown
    resume_button: gr.Button
    discard_button: gr.Button


def build(studio: Studio) -> TrainTab:
    defaults = studio.defaults.training.override(resolution=studio.defaults.training.resolution or studio.size)
    with gr.Row(visible=False) as stopped_row:
        stopped_text = gr.Markdown(elem_id="stopped-training")
        resume_button = gr.Button("Resume", variant="primary", scale=0, min_width=100)
        discard_button = gr.Button("Discard", variant="stop", scale=0, min_width=100)
    # Left, in the order a user acts: photos (or an example object, for a newcomer without any), name, Train; all in
    # view at 1400×1000 without scrolling, before and after photos are chosen. Right: the chosen photos and what a
    # training shows. Narrower than two columns fit, they stack.
    with gr.Row():
        with gr.Column(min_width=COLUMN_MIN_PX):
            photos = gr.File(label="3–5 photos of your object", file_count="multiple", file_types=["image"],
                             type="filepath", height=120)
            example_buttons = []
            objects = studio.example_objects()
            if objects:
                gr.Markdown("No photos at hand? **Pick an example object** to fill in its photos, name and class noun:")
                with gr.Row(elem_classes=["example-objects"]):
                    for obj in objects:
                        button = gr.Button(views.example_label(obj), icon=str(obj.photos[0]), size="sm",
                                           scale=0, min_width=140)
                        example_buttons.append((button, obj))
            with gr.Row():
                name = gr.Textbox(label="Concept name", placeholder="my dog", max_length=40)
                noun = gr.Textbox(label="Class noun (what it is)", placeholder="dog")
            estimate = gr.Markdown(elem_id="train-estimate")  # once photos are chosen
            with gr.Row():
                train_button = gr.Button("Train", variant="primary")
                aug_button = gr.Button("Preview augmentation")
                cancel_button = gr.Button("Cancel", variant="stop", interactive=False,  # only while one runs
                                          scale=0, min_width=110)
            status = gr.Markdown(label="Status", elem_id="train-status")  # labels name API outputs
            newest = studio.newest_concept()
            use_button = gr.Button(use_label(newest), variant="primary", visible=bool(newest), elem_id="use-in-compose")
            with gr.Accordion("Advanced settings", open=False):
                settings = [component(f, getattr(defaults, f.name)) for f in FIELDS]
        with gr.Column(min_width=COLUMN_MIN_PX):
            shown = next((obj for obj in objects if obj.composed), None)
            if shown:
                gr.Image(str(shown.composed), label=f"What '{shown.name}' gives, trained with the defaults",
                         show_label=False, interactive=False, elem_id="example-composed",  # titled inside
                         alt_text=f"the photos of {shown.name}, and four images composed with it")
            photo_gallery = gr.Gallery(label="Your photos", columns=5, height=120, allow_preview=False, visible=False)
            aug_preview = gr.Image(label="Augmented samples (dimmed parts are not learned)", interactive=False)
            # Not a gr.LinePlot: views.TrainView.loss_html says why.
            loss_plot = gr.HTML("", label="Training loss (smoothed)", show_label=True, container=True,
                                elem_id="loss-plot")
            # Shown at their own pixels (enlarged by whole pixels, never scaled by the gallery).
            previews = gr.Gallery(label="Previews at random boxes", columns=4, height="auto", object_fit="none",
                                  elem_id="previews")
            log = gr.Textbox(label="Log", lines=6, interactive=False)
    return TrainTab(photos, name, noun, settings, estimate, aug_button, train_button, cancel_button, use_button,
                    example_buttons, photo_gallery, aug_preview, status, loss_plot, previews, log, stopped_row,
                    stopped_text, resume_button, discard_button)


def use_label(newest: str | None) -> str:
    """The 'Use in Compose' button names the concept it will place."""
    return f"Use '{newest}' in Compose →" if newest else "Use in Compose →"


# Plain step events are shown at most this often: every update re-sends the loss plot, and updating (previews
# included, then) after every step took half the CPU from the training (97 s against 54 s for mini's default,
# docs/benchmarks.md).
UPDATE_EVERY_S = 0.5


def shown(events, every_s: float = UPDATE_EVERY_S) -> Iterator[tuple]:
    """The tab's outputs (status, loss plot, previews, log) after each training event that changes more than the
    step count, and after plain steps at most every `every_s` seconds; every event still reaches the view. After a
    plain step the previews are left as they are (re-encoding every image for each update cost the training); the
    other updates, the last one included, carry them all. The loss plot has no data until it has a point."""
    view, last = views.TrainView(), -math.inf
    for event in events:
        view.add(event)
        plain_step = event.phase == Phase.TRAINING and event.preview is None
        if plain_step and time.monotonic() - last < every_s:
            continue
        last = time.monotonic()
        previews = gr.skip() if plain_step else view.previews
        yield view, (view.markdown(), view.loss_html(), previews, "\n".join(view.log))


def settings_of(studio: Studio, values) -> TrainSettings:
    """The model's training defaults with the tab's values on top."""
    return studio.defaults.training.override(**dict(zip([f.name for f in FIELDS], values)))


def estimate_text(studio: Studio, files, class_noun, *values) -> str:
    """The estimate for the tab's inputs (Train's, but the name: it does not change it); none, and nothing measured,
    before photos are chosen: the time depends on them."""
    if not files:
        return ""
    settings = settings_of(studio, values)
    return views.estimate(studio.estimate(class_noun or "", settings, len(files)), settings.steps, len(files))


def wire(tab: TrainTab, studio: Studio, refresh, refresh_outputs: list) -> None:
    names = ["photos", "name", "class_noun", *[f.name for f in FIELDS]]
    inputs = [tab.photos, tab.name, tab.noun, *tab.settings]

    tab.photos.change(lambda files: gr.Gallery(files or [], visible=bool(files)), tab.photos, tab.photo_gallery,
                      queue=False, **UI_ONLY)
    # Whenever an input that changes it does: speeds are measured then, with the visitor's browser running.
    show_estimate = endpoint(lambda *values: estimate_text(studio, *values),
                             ["photos", "class_noun", *[f.name for f in FIELDS]])
    gr.on(None, show_estimate, [tab.photos, tab.noun, *tab.settings], tab.estimate, queue=False,
          show_progress="hidden", **UI_ONLY)

    def preview(files, augment_strength, mirror_photos):
        return enlarge(studio.preview_augmentation(files, augment_strength, mirror_photos), 512)

    knobs = ["augment_strength", "mirror_photos"]
    setting = dict(zip([f.name for f in FIELDS], tab.settings))
    tab.aug_button.click(endpoint(preview, ["photos", *knobs]), [tab.photos, *(setting[knob] for knob in knobs)],
                         tab.aug_preview, api_name="preview_augmentation")

    # Not a GPU call itself: it follows the training job, whose work (on ZeroGPU, chunks of GPU calls) runs apart.
    def train(files, concept_name, class_noun, *values, progress=gr.Progress()):
        views.missing_fields(files, concept_name, class_noun)
        for view, outputs in shown(studio.train(files, concept_name, class_noun, settings_of(studio, values))):
            progress(view.progress, desc=view.status)
            yield outputs

    progress_outputs = [tab.status, tab.loss_plot, tab.previews, tab.log]
    show_cancel = endpoint(lambda: cancel_state(studio), [])
    # Not in the model's queue: a second training is refused at once, and a generation waits for a free device.
    training = tab.train_button.click(lambda: gr.update(interactive=True), outputs=tab.cancel_button, queue=False,
                                      **UI_ONLY).then(endpoint(train, names), inputs, progress_outputs,
                                                      concurrency_limit=None, api_name="train",
                                                      show_progress_on=[tab.status])
    training.then(refresh, outputs=refresh_outputs, **UI_ONLY).then(show_cancel, outputs=tab.cancel_button, **UI_ONLY)
    # After a refused or failed training Gradio (6.31) runs no `then`, only `failure`: Cancel goes off there.
    training.failure(show_cancel, outputs=tab.cancel_button, **UI_ONLY)
    tab.cancel_button.click(endpoint(lambda: cancel_message(studio), []), outputs=tab.status, queue=False,
                            api_name="cancel_training")

    def resume(progress=gr.Progress()):
        for view, outputs in shown(studio.resume(first_stopped(studio))):
            progress(view.progress, desc=view.status)
            yield outputs

    stopped_outputs = [tab.stopped_row, tab.stopped_text]
    resuming = tab.resume_button.click(lambda: (gr.update(interactive=True), gr.update(visible=False)),
                                       outputs=[tab.cancel_button, tab.stopped_row], queue=False, **UI_ONLY).then(
        endpoint(resume, []), outputs=progress_outputs, concurrency_limit=None, api_name="resume_training",
        show_progress_on=[tab.status],
    )
    after_resume = endpoint(lambda: (cancel_state(studio), *stopped_state(studio)), [])
    resuming.then(refresh, outputs=refresh_outputs, **UI_ONLY).then(
        after_resume, outputs=[tab.cancel_button, *stopped_outputs], **UI_ONLY)
    resuming.failure(after_resume, outputs=[tab.cancel_button, *stopped_outputs], **UI_ONLY)
    tab.discard_button.click(endpoint(lambda: studio.discard_training(first_stopped(studio)), []), outputs=tab.status,
                             queue=False, api_name="discard_training").then(
        endpoint(lambda: stopped_state(studio), []), outputs=stopped_outputs, queue=False, **UI_ONLY)
    for button, obj in tab.example_buttons:
        button.click(lambda o=obj: ([str(p) for p in o.photos], o.name, o.class_noun),
                     outputs=[tab.photos, tab.name, tab.noun], queue=False, **UI_ONLY)


def first_stopped(studio: Studio) -> str:
    """The stopped training the Resume and Discard buttons act on: the oldest, the one the tab shows."""
    stopped = studio.stopped_trainings()
    if not stopped:
        raise PACGenError("you have no stopped training")
    return stopped[0].name


def stopped_state(studio: Studio) -> tuple:
    """The stopped-training row: shown with the oldest one ("'my dog' stopped at 340/500") while there is any."""
    stopped = studio.stopped_trainings()
    more = f" (and {len(stopped) - 1} more)" if len(stopped) > 1 else ""
    text = f"**{stopped[0]}**{more}: resume it from there, or discard it." if stopped else ""
    return gr.update(visible=bool(stopped)), text


def cancel_message(studio: Studio) -> str:
    """What Cancel answers. For a training it stopped: what the training's own stream ends with, once it has
    stopped (the page keeps whichever reply comes last, so both must say the same). Otherwise the session's word
    that nothing is training, never how an earlier training ended."""
    stopping = studio.training_active()
    message = studio.cancel()
    if not stopping or studio.training_active():
        return message
    view = views.TrainView()
    for event in studio.follow_training():
        view.add(event)
    return view.markdown()


def cancel_state(studio: Studio):
    """Cancel is enabled only while this visitor's training runs."""
    return gr.update(interactive=studio.training_active())


def reattach(tab: TrainTab, studio: Studio) -> tuple[object, list]:
    """A page-load handler and its outputs: the visitor's running or last training, replayed from its first event
    then live, so a reloaded or reopened tab shows it again; nothing changes when there is none."""
    # The plot gets a value (none, then the replayed losses) in every update, never gr.update(): Gradio streams a
    # generator's outputs as diffs from its previous one, and a diff between an update and the LinePlot's data once
    # reached the page as data without its column types (an uncaught "reading 'step'" on each load after a training).
    def follow():
        plot = ""
        yield cancel_state(studio), gr.update(), plot, *[gr.update()] * 2, *stopped_state(studio)
        for _, outputs in shown(studio.follow_training()):
            plot = outputs[1]
            yield gr.update(), *outputs, gr.update(), gr.update()
        yield cancel_state(studio), gr.update(), plot, *[gr.update()] * 2, *stopped_state(studio)

    return endpoint(follow, []), [tab.cancel_button, tab.status, tab.loss_plot, tab.previews, tab.log,
                                  tab.stopped_row, tab.stopped_text]
