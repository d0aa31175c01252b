"""The Compose tab: draw boxes on a canvas (or edit them as a table), label each, and generate."""

from __future__ import annotations

import os
from dataclasses import dataclass

import gradio as gr
from gradio_image_annotation import image_annotator

from ..errors import PACGenError
from ..scene import load_scene
from ..settings import SampleSettings, surfaced
from . import views
from .fields import UI_ONLY, component, endpoint, refused
from .session import Studio
from .visitors import Caller, acting_as
from .zerogpu import ZERO_GPU_RATES, generation_seconds, gpu_task

FIELDS = surfaced(SampleSettings)


@dataclass
class ComposeTab:
    canvas: image_annotator
    scene: gr.Image
    table: gr.Dataframe
    table_message: gr.Markdown
    concept_example: gr.Button  # the newest concept's example, following the library (`concept_example_button`)
    examples: list  # the model's worked examples the buttons show
    example_buttons: list
    prompt: gr.Textbox
    negative: gr.Textbox
    settings: list
    reuse_seed: gr.Button
    generate_button: gr.Button
    generate_status: gr.Markdown
    show_boxes: gr.Checkbox
    results: gr.Gallery
    info: gr.Markdown
    last: gr.State
    last_seed: gr.State
    checked_rows: gr.State  # the table as last checked, so a refused edit gets its exact previous values back

    def setting(self, name: str):
        return self.settings[[f.name for f in FIELDS].index(name)]

    @property
    def redraw_inputs(self) -> list:
        """What `redraw` needs to draw the canvas: the table, the output size and the scene photo."""
        return [self.table, self.setting("width"), self.setting("height"), self.scene]


def fitted_scene(scene: str | None, width, height):
    """The scene photo as the generator will use it (cropped and resized to the output), or None."""
    try:
        return load_scene(scene, int(width), int(height)) if scene else None
    except PACGenError as error:  # page-internal events have no endpoint wrapper to turn it into a message
        raise refused(error) from None


def redraw(rows, width, height, scene: str | None) -> dict:
    """The canvas for the box table as it stands, on the scene photo if there is one (`ComposeTab.redraw_inputs`)."""
    return views.annotations_from_rows(rows, int(width), int(height), fitted_scene(scene, width, height))


def concept_example_button(newest: str | None) -> dict:
    """The example button for the newest concept: its prompt, shown once there is a concept (after every change to
    the library, so a concept trained or imported now is there at once)."""
    return dict(value=views.concept_example(newest).prompt if newest else "", visible=bool(newest))


def newest_example(studio: Studio) -> tuple:
    """The prompt, box table and (empty) box message of the newest concept's example, as it is when asked; the
    model's first example when there is no concept."""
    example = views.examples(studio.defaults.examples, studio.newest_concept())[0]
    return example.prompt, views.rows_from_boxes(example.boxes), ""


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
                                 # Every column in view in a half-page column at 800 px; long labels wrap.
                                 column_widths=["28%"] + ["18%"] * 4, wrap=True, elem_id="boxes",
                                 label="Boxes, in drawing order (edits show on the canvas at once; delete a row to "
                                       "drop a box)")
            table_message = gr.Markdown(elem_id="box-message")
            examples = list(studio.defaults.examples)
            with gr.Row():
                concept_example = gr.Button(size="sm", elem_id="concept-example",
                                            **concept_example_button(studio.newest_concept()))
                example_buttons = [gr.Button(e.prompt, size="sm") for e in examples]
            scene = gr.Image(label="Scene photo (optional): generate into your own photo, only inside the boxes",
                             type="filepath", sources=["upload"], height=160, elem_id="scene")
        with gr.Column():
            prompt = gr.Textbox(label="Prompt", placeholder=views.placeholder(list(studio.defaults.examples)),
                                elem_id="prompt", lines=3,
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
            generate_status = gr.Markdown(elem_id="generate-status")
            show_boxes = gr.Checkbox(value=False, label="Overlay boxes and labels (in the canvas's colours)")
            # Whole images (contain, not cover) at their own pixels, with what made them in plain text below.
            results = gr.Gallery(label="Results", columns=2, height="auto", object_fit="contain", elem_id="results",
                                 format="png")
            info = gr.Markdown(label="Info", elem_id="result-info")  # labels name API outputs
    return ComposeTab(canvas, scene, table, table_message, concept_example, examples, example_buttons, prompt, negative,
                      settings, reuse_seed, generate_button, generate_status, show_boxes, results, info, gr.State(None),
                      gr.State(None), gr.State([]))


def wire(tab: ComposeTab, studio: Studio) -> None:
    width, height = tab.setting("width"), tab.setting("height")

    def table_edited(rows, previous, w, h, scene):
        """A table edit, checked as typed and drawn at once; the message says what was changed and why."""
        rows, messages = views.check_rows(rows, previous)
        # The table is sent back only when a value was changed, so the canvas's own change reads what was typed.
        return rows if messages else gr.skip(), redraw(rows, w, h, scene), views.plain("  \n".join(messages)), rows

    def canvas_changed(value, rows):
        """A box drawn, moved or deleted: the table follows, and the box takes its overlay colour."""
        again = views.recoloured(value)
        rows = views.rows_after_drawing(value, rows)
        return rows, gr.skip() if again is None else again, rows

    quiet = dict(queue=False, show_progress="hidden", **UI_ONLY)
    tab.canvas.change(canvas_changed, [tab.canvas, tab.table], [tab.table, tab.canvas, tab.checked_rows], **quiet)
    tab.table.input(table_edited,
                    [tab.table, tab.checked_rows, width, height, tab.scene],
                    [tab.table, tab.canvas, tab.table_message, tab.checked_rows], **quiet)
    for source in (width, height, tab.scene):
        source.change(redraw, tab.redraw_inputs, tab.canvas, **quiet)
    tab.concept_example.click(endpoint(lambda: newest_example(studio), []), outputs=[
        tab.prompt, tab.table, tab.table_message], **quiet).then(redraw, tab.redraw_inputs, tab.canvas, **quiet)
    for button, example in zip(tab.example_buttons, tab.examples):
        button.click(lambda e=example: (e.prompt, views.rows_from_boxes(e.boxes), ""), outputs=[
            tab.prompt, tab.table, tab.table_message], **quiet).then(redraw, tab.redraw_inputs, tab.canvas, **quiet)

    def settings_of(values) -> SampleSettings:
        return studio.pipe.settings(**dict(zip([f.name for f in FIELDS], values)))

    def seconds_needed(caller, prompt, negative_prompt, boxes, settings, scene, progress=None) -> float:
        """The GPU time a call declares on ZeroGPU, from its own arguments."""
        return generation_seconds(settings, boxes, ZERO_GPU_RATES.sample_step_s, ZERO_GPU_RATES.size)

    @gpu_task(duration=seconds_needed)
    def run(caller, prompt, negative_prompt, boxes, settings, scene, progress=None):
        """The GPU part: on ZeroGPU a forked worker, so the caller travels as an argument (context does not) and
        the result is CPU objects only; `generate` syncs the visitor's concepts from disk on every call."""
        steps = waiting = None
        if progress is not None:
            def steps(i, total):
                progress((i, total), desc="denoising")

            def waiting(message):
                progress(0, desc=message)

        with acting_as(caller):
            return studio.generate(prompt, negative_prompt, boxes, settings, steps, waiting=waiting,
                                   scene=scene or None)

    # Settings with no value of their own (unset: the model decides) are optional for API clients, so they come
    # last, with the scene photo; the handler puts the values back in the settings' order.
    unset = [i for i, box in enumerate(tab.settings) if box.value is None]
    kept = [i for i in range(len(FIELDS)) if i not in unset]

    def generate(prompt, negative_prompt, boxes, *values, progress=gr.Progress()):
        values = list(values)
        scene = values.pop()
        show_boxes = values[len(kept)]
        by_field = dict(zip(kept + unset, values[:len(kept)] + values[len(kept) + 1:]))
        values = [by_field[i] for i in range(len(FIELDS))]
        boxes = views.boxes_from_rows(boxes, studio.concept_names())
        settings = settings_of(values)
        # Before any GPU call: refuse what is over the limits, and resolve the visitor here (a worker's copy of the
        # page-to-browser table may be older than this page).
        studio.check_request(prompt, negative_prompt, boxes, settings)
        result = run(Caller(visitor=studio.visitor()), prompt, negative_prompt, boxes, settings, scene,
                     None if os.environ.get("SPACES_ZERO_GPU") else progress)
        return views.gallery(result, show_boxes), views.describe(result), result, result.seeds[0]

    optional = (*[FIELDS[i].name for i in unset], "scene")
    names = ["prompt", "negative_prompt", "boxes", *[FIELDS[i].name for i in kept], "show_boxes", *optional]
    tab.generate_button.click(
        endpoint(generate, names, optional=optional),
        [tab.prompt, tab.negative, tab.table, *[tab.settings[i] for i in kept], tab.show_boxes,
         *[tab.settings[i] for i in unset], tab.scene],
        [tab.results, tab.info, tab.last, tab.last_seed], api_name="generate",
        concurrency_limit=len(studio.replicas),  # one request per device at once (`--devices`)
        # Progress, waiting and errors show next to the button; the previous results stay in view meanwhile.
        show_progress_on=[tab.generate_status],
    )
    tab.show_boxes.change(views.gallery, [tab.last, tab.show_boxes], tab.results, queue=False, **UI_ONLY)
    tab.reuse_seed.click(lambda s: -1 if s is None else s, tab.last_seed, tab.setting("seed"), queue=False, **UI_ONLY)
