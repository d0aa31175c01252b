"""The Train tab: photos, a name and a class noun in; streamed progress, loss and previews out."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import pandas as pd

from ..layout import enlarge
from ..settings import TrainSettings, surfaced
from . import views
from .fields import UI_ONLY, component, endpoint
from .session import Studio
from .zerogpu import gpu_task

FIELDS = surfaced(TrainSettings)


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
    photo_gallery: gr.Gallery
    aug_preview: gr.Image
    status: gr.Markdown
    loss_plot: gr.LinePlot
    previews: gr.Gallery
    log: gr.Textbox


def build(studio: Studio) -> TrainTab:
    defaults = studio.defaults.training.override(resolution=studio.defaults.training.resolution or studio.size)
    with gr.Row():
        with gr.Column():
            photos = gr.File(label="3–5 photos of your object", file_count="multiple", file_types=["image"],
                             type="filepath")
            photo_gallery = gr.Gallery(label="Your photos", columns=5, height=150, allow_preview=False)
            name = gr.Textbox(label="Concept name", placeholder="my dog", max_length=40)
            noun = gr.Textbox(label="Class noun (what it is)", placeholder="dog")
            with gr.Accordion("Advanced settings", open=False):
                settings = [component(f, getattr(defaults, f.name)) for f in FIELDS]
            estimate = gr.Markdown(estimate_text(studio, [], "", *[getattr(defaults, f.name) for f in FIELDS]))
            with gr.Row():
                aug_button = gr.Button("Preview augmentation")
                train_button = gr.Button("Train", variant="primary")
                cancel_button = gr.Button("Cancel", variant="stop")
            examples = studio.example_objects()
            if examples:
                gr.Examples([[list(map(str, e.photos)), e.name, e.class_noun] for e in examples],
                            inputs=[photos, name, noun], label="Example objects")
        with gr.Column():
            aug_preview = gr.Image(label="Augmented samples (dimmed parts are not learned)", interactive=False)
            status = gr.Markdown()
            loss_plot = gr.LinePlot(pd.DataFrame({"step": [], "loss": []}), x="step", y="loss",
                                    label="Training loss", height=220)
            previews = gr.Gallery(label="Previews at random boxes", columns=4, height=200, elem_id="previews")
            log = gr.Textbox(label="Log", lines=6, interactive=False)
    return TrainTab(photos, name, noun, settings, estimate, aug_button, train_button, cancel_button, photo_gallery,
                    aug_preview, status, loss_plot, previews, log)


def settings_of(studio: Studio, values) -> TrainSettings:
    """The model's training defaults with the tab's values on top."""
    return studio.defaults.training.override(**dict(zip([f.name for f in FIELDS], values)))


def estimate_text(studio: Studio, files, class_noun, *values) -> str:
    settings = settings_of(studio, values)
    return views.estimate(studio.estimate(class_noun or "", settings), settings.steps, len(files or []))


def wire(tab: TrainTab, studio: Studio, refresh, refresh_outputs: list) -> None:
    names = ["photos", "name", "class_noun", *[f.name for f in FIELDS]]
    inputs = [tab.photos, tab.name, tab.noun, *tab.settings]

    tab.photos.change(lambda files: files or [], tab.photos, tab.photo_gallery, queue=False, **UI_ONLY)
    show_estimate = endpoint(lambda *values: estimate_text(studio, *values), names)
    for source in [tab.photos, tab.noun, *tab.settings]:
        source.change(show_estimate, inputs, tab.estimate, queue=False, show_progress="hidden", **UI_ONLY)

    def preview(files, augment_strength):
        return enlarge(studio.preview_augmentation(files, augment_strength), 512)

    strength = tab.settings[[f.name for f in FIELDS].index("augment_strength")]
    tab.aug_button.click(endpoint(preview, ["photos", "augment_strength"]), [tab.photos, strength], tab.aug_preview,
                         api_name="preview_augmentation")

    @gpu_task(duration=1200)
    def train(files, concept_name, class_noun, *values, progress=gr.Progress()):
        shown = views.TrainView()
        for event in studio.train(files, concept_name, class_noun, settings_of(studio, values)):
            shown.add(event)
            progress(shown.progress, desc=shown.status)
            frame = pd.DataFrame(shown.losses, columns=["step", "loss"])
            yield shown.status, frame, shown.previews, "\n".join(shown.log)

    # Not in the model's queue: a second training is refused at once, and generation waits on the model lock.
    tab.train_button.click(
        endpoint(train, names), inputs, [tab.status, tab.loss_plot, tab.previews, tab.log],
        concurrency_limit=None, api_name="train",
    ).then(refresh, outputs=refresh_outputs, **UI_ONLY)
    tab.cancel_button.click(studio.cancel, outputs=tab.status, queue=False, api_name="cancel_training")
