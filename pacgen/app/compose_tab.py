"""The Compose tab: draw boxes on a canvas (or edit them as a table), label each, and generate."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
from gradio_image_annotation import image_annotator

from ..settings import SampleSettings, surfaced
from . import views
from .fields import UI_ONLY, component, endpoint
from .session import Studio
from .zerogpu import gpu_task

FIELDS = surfaced(SampleSettings)


@dataclass
class ComposeTab:
    canvas: image_annotator
    table: gr.Dataframe
    table_button: gr.Button
    examples: list  # the worked examples the buttons show, as computed once when the page was built
    example_buttons: list
    prompt: gr.Textbox
    negative: gr.Textbox
    settings: list
    reuse_seed: gr.Button
    generate_button: gr.Button
    show_boxes: gr.Checkbox
    results: gr.Gallery
    info: gr.Markdown
    last: gr.State
    last_seed: gr.State

    def setting(self, name: str):
        return self.settings[[f.name for f in FIELDS].index(name)]


def build(studio: Studio) -> ComposeTab:
    defaults = studio.pipe.settings()  # the model's sampling defaults, sizes filled in
    size, step = studio.size, studio.size_step()
    with gr.Row():
        with gr.Column():
            canvas = image_annotator(
                {"image": views.canvas(size, size), "boxes": []},
                label_list=views.label_choices(studio.concept_names(), list(studio.defaults.examples)),
                image_type="pil", sources=[], show_download_button=False, show_clear_button=False,
                label="Draw boxes; label each with a concept or a phrase", elem_id="canvas",
            )
            table = gr.Dataframe(headers=views.TABLE_HEADERS, datatype=["str"] + ["number"] * 4,
                                 column_count=(5, "fixed"), row_count=(0, "dynamic"), interactive=True,
                                 elem_id="boxes", label="Boxes (edit, then 'Show on canvas'; delete a row to drop a box)")
            table_button = gr.Button("Show table on canvas", size="sm")
            examples = views.examples(studio.defaults.examples, studio.newest_concept())
            with gr.Row():
                example_buttons = [gr.Button(e.prompt, size="sm") for e in examples]
        with gr.Column():
            prompt = gr.Textbox(label="Prompt", placeholder="a photo of <my dog> on the beach", elem_id="prompt",
                                info="Concepts are written <name>; boxed concepts are added if missing.")
            negative = gr.Textbox("", label="Negative prompt")
            with gr.Accordion("Advanced settings", open=False):
                settings = []
                for f in FIELDS:
                    if f.name in ("width", "height"):
                        settings.append(component(f, getattr(defaults, f.name), low=step, high=size * 2, step=step))
                    else:
                        settings.append(component(f, getattr(defaults, f.name)))
                reuse_seed = gr.Button("Reuse last seed", size="sm")
            generate_button = gr.Button("Generate", variant="primary")
            show_boxes = gr.Checkbox(value=False, label="Overlay boxes and labels")
            results = gr.Gallery(label="Results", columns=2, height=420, elem_id="results", format="png")
            info = gr.Markdown()
    return ComposeTab(canvas, table, table_button, examples, example_buttons, prompt, negative, settings, reuse_seed,
                      generate_button, show_boxes, results, info, gr.State(None), gr.State(None))


def wire(tab: ComposeTab, studio: Studio) -> None:
    width, height = tab.setting("width"), tab.setting("height")

    def to_canvas(rows, w, h):
        return views.annotations_from_boxes(views.boxes_from_rows(rows, studio.concept_names()), int(w), int(h))

    show_table = endpoint(to_canvas, ["boxes", "width", "height"])
    tab.canvas.change(views.rows_from_annotations, tab.canvas, tab.table, queue=False, show_progress="hidden", **UI_ONLY)
    tab.table_button.click(show_table, [tab.table, width, height], tab.canvas, **UI_ONLY)
    for dimension in (width, height):
        dimension.change(show_table, [tab.table, width, height], tab.canvas, show_progress="hidden", **UI_ONLY)
    for button, example in zip(tab.example_buttons, tab.examples):
        button.click(lambda e=example: (e.prompt, views.rows_from_boxes(e.boxes)), outputs=[tab.prompt, tab.table],
                     queue=False, **UI_ONLY).then(show_table, [tab.table, width, height], tab.canvas, **UI_ONLY)

    @gpu_task(duration=120)
    def generate(prompt, negative_prompt, boxes, *values, progress=gr.Progress()):
        *values, show_boxes = values
        settings = studio.pipe.settings(**dict(zip([f.name for f in FIELDS], values)))
        result = studio.generate(prompt, negative_prompt, views.boxes_from_rows(boxes, studio.concept_names()),
                                 settings, lambda i, total: progress((i, total), desc="denoising"))
        return views.gallery(result, show_boxes), views.describe(result), result, result.seeds[0]

    names = ["prompt", "negative_prompt", "boxes", *[f.name for f in FIELDS], "show_boxes"]
    tab.generate_button.click(
        endpoint(generate, names), [tab.prompt, tab.negative, tab.table, *tab.settings, tab.show_boxes],
        [tab.results, tab.info, tab.last, tab.last_seed], api_name="generate",
    )
    tab.show_boxes.change(views.gallery, [tab.last, tab.show_boxes], tab.results, queue=False, **UI_ONLY)
    tab.reuse_seed.click(lambda s: -1 if s is None else s, tab.last_seed, tab.setting("seed"), queue=False, **UI_ONLY)
