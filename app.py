"""PACGen Studio: the Gradio app. Layout and event wiring only; every action lives in `pacgen.studio.Studio`.

Run `python app.py` (flags below, or their PACGEN_* environment variables). Endpoints keep stable
`api_name`s for gradio_client: train, cancel_training, preview_augmentation, generate, list_concepts,
delete_concept, export_concept, import_concept.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import os
import tempfile

import gradio as gr
import pandas as pd
from gradio_image_annotation import image_annotator

from pacgen.errors import PACGenError
from pacgen.studio import TABLE_HEADERS, Studio, TrainSettings, gpu_task

GPU = "gpu"  # one concurrency group for every job that uses the model: they run one at a time
CSS = """
#banner {background: #fff7e6; border: 1px solid #f0c36d; border-radius: 8px; padding: 4px 12px;}
#banner:empty {display: none;}
.concept-cards img {image-rendering: pixelated;}
#results img {image-rendering: pixelated;}
"""


def friendly(fn):
    """Show a user-fixable problem as a Gradio error message instead of a stack trace."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def stream(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except PACGenError as error:
                raise gr.Error(str(error)) from None

        return stream

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PACGenError as error:
            raise gr.Error(str(error)) from None

    return call


def build_ui(studio: Studio) -> gr.Blocks:
    size = studio.size
    defaults = studio.default_train_settings()
    export_dir = tempfile.mkdtemp(prefix="pacgen-export-")

    with gr.Blocks(title="PACGen Studio") as demo:
        gr.Markdown("# PACGen Studio\nPut *your own* objects into generated images, exactly where you want them.")
        header = gr.Markdown(studio.header())
        banner = gr.Markdown(studio.banner(), elem_id="banner")

        with gr.Tabs():
            # ------------------------------------------------------------------------------ Train
            with gr.Tab("Train", id="train"):
                with gr.Row():
                    with gr.Column():
                        photos = gr.File(label="3–5 photos of your object", file_count="multiple",
                                         file_types=["image"], type="filepath")
                        photo_gallery = gr.Gallery(label="Your photos", columns=5, height=150, allow_preview=False)
                        name = gr.Textbox(label="Concept name", placeholder="my dog", max_length=40)
                        noun = gr.Textbox(label="Class noun (what it is)", placeholder="dog")
                        with gr.Accordion("Advanced settings", open=False):
                            steps = gr.Slider(1, 2000, value=defaults.steps, step=1, label="Training steps")
                            lr = gr.Number(value=defaults.learning_rate, label="Learning rate", minimum=1e-6)
                            rank = gr.Slider(1, 64, value=defaults.rank, step=1, label="LoRA rank")
                            prior = gr.Checkbox(value=defaults.prior_preservation, label="Prior preservation")
                            n_class = gr.Slider(1, 200, value=defaults.num_class_images, step=1,
                                                label="Class images")
                            strength = gr.Slider(0, 1, value=defaults.augment_strength, step=0.05,
                                                 label="Augmentation strength (0 = plain DreamBooth)")
                            preview_every = gr.Slider(0, 500, value=defaults.preview_every, step=1,
                                                      label="Preview every K steps (0 = off)")
                        estimate = gr.Markdown(studio.estimate(0, "", defaults))
                        with gr.Row():
                            aug_button = gr.Button("Preview augmentation")
                            train_button = gr.Button("Train", variant="primary")
                            cancel_button = gr.Button("Cancel", variant="stop")
                        examples = studio.train_examples()
                        if examples:
                            gr.Examples(examples, inputs=[photos, name, noun], label="Example objects")
                    with gr.Column():
                        aug_preview = gr.Image(label="Augmented samples (dimmed parts are not learned)",
                                               interactive=False)
                        train_status = gr.Markdown()
                        loss_plot = gr.LinePlot(pd.DataFrame({"step": [], "loss": []}), x="step", y="loss",
                                                label="Training loss", height=220)
                        previews = gr.Gallery(label="Previews at random boxes", columns=4, height=200)
                        log = gr.Textbox(label="Log", lines=6, interactive=False)

            # ------------------------------------------------------------------------------ Compose
            with gr.Tab("Compose", id="compose"):
                with gr.Row():
                    with gr.Column():
                        canvas = image_annotator(
                            {"image": studio.canvas(), "boxes": []}, label_list=studio.label_choices(),
                            image_type="pil", sources=[], show_download_button=False, show_clear_button=False,
                            label="Draw boxes; label each with a concept or a phrase", elem_id="canvas",
                        )
                        table = gr.Dataframe(headers=TABLE_HEADERS, datatype=["str"] + ["number"] * 4,
                                             column_count=(5, "fixed"), row_count=(0, "dynamic"), interactive=True,
                                             elem_id="boxes",
                                             label="Boxes (edit, then 'Show on canvas'; delete a row to drop a box)")
                        table_button = gr.Button("Show table on canvas", size="sm")
                        with gr.Row():
                            example_buttons = [gr.Button(e["prompt"], size="sm") for e in studio.examples()]
                    with gr.Column():
                        prompt = gr.Textbox(label="Prompt", placeholder="a photo of <my dog> on the beach", elem_id="prompt",
                                            info="Concepts are written <name>; boxed concepts are added if missing.")
                        negative = gr.Textbox(label="Negative prompt")
                        with gr.Accordion("Advanced settings", open=False):
                            gen_steps = gr.Slider(1, 100, value=25, step=1, label="Steps")
                            guidance = gr.Slider(0, 20, value=7.5, step=0.5, label="Guidance scale")
                            grounding = gr.Slider(0, 1, value=studio.default_grounding_fraction(), step=0.05,
                                                  label="Grounding fraction")
                            regional = gr.Checkbox(value=True, label="Regional guidance (concepts only in their box)")
                            with gr.Row():
                                seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)")
                                reuse_seed = gr.Button("Reuse last seed", size="sm")
                            num_images = gr.Slider(1, 4, value=1, step=1, label="Images")
                            step = studio.size_step()
                            width = gr.Slider(step, size * 2, value=size, step=step, label="Width")
                            height = gr.Slider(step, size * 2, value=size, step=step, label="Height")
                        generate_button = gr.Button("Generate", variant="primary")
                        show_boxes = gr.Checkbox(value=False, label="Overlay boxes and labels")
                        results = gr.Gallery(label="Results", columns=2, height=420, elem_id="results",
                                             format="png")
                        result_info = gr.Markdown()
                last = gr.State(None)
                last_seed = gr.State(None)

            # ------------------------------------------------------------------------------ Library
            with gr.Tab("Library", id="library"):
                gr.Markdown("Concepts you trained or imported. Each card: name · identifier and class noun · "
                            "base model · date.")
                cards = gr.Gallery(studio.cards(), label="Concepts", columns=4, height=300, allow_preview=False,
                                   elem_classes=["concept-cards"])
                with gr.Row():
                    chosen = gr.Dropdown(studio.concept_names(), label="Concept", value=None, allow_custom_value=True)
                    confirm = gr.Checkbox(label="Yes, delete it (cannot be undone)")
                with gr.Row():
                    delete_button = gr.Button("Delete", variant="stop")
                    export_button = gr.Button("Download as zip")
                with gr.Row():
                    download = gr.File(label="Download", interactive=False, height=120)
                    with gr.Column():
                        upload = gr.File(label="Import a concept zip", file_types=[".zip"], type="filepath",
                                         height=120)
                        import_button = gr.Button("Import")
                library_status = gr.Markdown()

        # ---------------------------------------------------------------------------------- events
        def refreshed():
            studio.sync_library()
            names = studio.concept_names()
            return (studio.header(), studio.banner(), studio.cards(), gr.update(choices=names, value=None),
                    gr.update(label_list=studio.label_choices()))

        refresh_outputs = [header, banner, cards, chosen, canvas]
        demo.load(refreshed, outputs=refresh_outputs, queue=False)

        settings_inputs = [steps, lr, rank, prior, n_class, strength, preview_every]

        def settings_of(*values) -> TrainSettings:
            return TrainSettings(*values)

        @friendly
        def show_estimate(files, class_noun, *values):
            return studio.estimate(len(files or []), class_noun or "", settings_of(*values))

        photos.change(lambda files: files or [], photos, photo_gallery, queue=False)
        for component in [photos, noun, *settings_inputs]:
            component.change(show_estimate, [photos, noun, *settings_inputs], estimate, queue=False,
                             show_progress="hidden")

        aug_button.click(friendly(studio.preview_augmentation), [photos, strength], aug_preview,
                         api_name="preview_augmentation")

        @gpu_task(duration=1200)
        @friendly
        def train(files, concept_name, class_noun, *values, progress=gr.Progress()):
            for update in studio.train(files, concept_name, class_noun, settings_of(*values)):
                progress(update.progress, desc=update.status)
                frame = pd.DataFrame(update.losses, columns=["step", "loss"])
                yield update.status, frame, update.previews, "\n".join(update.log)

        # Not in the GPU queue: a second training is refused at once, and generation waits on the model lock.
        train_button.click(
            train, [photos, name, noun, *settings_inputs], [train_status, loss_plot, previews, log],
            concurrency_limit=None, api_name="train",
        ).then(refreshed, outputs=refresh_outputs)
        cancel_button.click(studio.cancel, outputs=train_status, queue=False, api_name="cancel_training")

        canvas.change(studio.boxes_from_annotations, canvas, table, queue=False, show_progress="hidden")
        table_button.click(friendly(studio.annotations_from_boxes), [table, width, height], canvas)
        for dimension in (width, height):
            dimension.change(friendly(studio.annotations_from_boxes), [table, width, height], canvas,
                             show_progress="hidden")
        for button, example in zip(example_buttons, studio.examples()):
            button.click(lambda e=example: (e["prompt"], e["rows"]), outputs=[prompt, table], queue=False).then(
                friendly(studio.annotations_from_boxes), [table, width, height], canvas)

        @gpu_task(duration=120)
        @friendly
        def generate(text, negative_text, rows, n_steps, scale, fraction, use_regional, chosen_seed, count, w, h,
                     overlay, progress=gr.Progress()):
            result = studio.generate(text, negative_text, rows, n_steps, scale, fraction, use_regional, chosen_seed,
                                     count, w, h, lambda i, total: progress((i, total), desc="denoising"))
            return studio.gallery(result, overlay), studio.describe(result), result, result.seeds[0]

        generate_button.click(
            generate, [prompt, negative, table, gen_steps, guidance, grounding, regional, seed, num_images, width,
                       height, show_boxes], [results, result_info, last, last_seed],
            concurrency_id=GPU, api_name="generate",
        )
        show_boxes.change(studio.gallery, [last, show_boxes], results, queue=False)
        reuse_seed.click(lambda s: -1 if s is None else s, last_seed, seed, queue=False)

        gr.api(studio.list_concepts, api_name="list_concepts")
        delete_button.click(friendly(studio.delete), [chosen, confirm], library_status,
                            api_name="delete_concept").then(refreshed, outputs=refresh_outputs)
        export_button.click(friendly(lambda n: str(studio.export(n, export_dir))), chosen, download,
                            api_name="export_concept")
        import_button.click(friendly(studio.import_zip), upload, library_status, api_name="import_concept").then(
            refreshed, outputs=refresh_outputs)
    return demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    on_space = bool(env("SPACE_ID"))
    parser = argparse.ArgumentParser(description="PACGen Studio")
    parser.add_argument("--model", default=env("PACGEN_MODEL", "auto"),
                        help="auto (Hub model on a GPU, else the embedded one), mini, tiny, a Hub id or a folder")
    parser.add_argument("--data-dir", default=env("PACGEN_HOME"), help="concept library (default ~/.pacgen)")
    parser.add_argument("--host", default=env("PACGEN_HOST", "0.0.0.0" if on_space else "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env("PACGEN_PORT", env("GRADIO_SERVER_PORT", "7860"))))
    parser.add_argument("--share", action="store_true", default=env("PACGEN_SHARE", "") == "1",
                        help="also serve on a public *.gradio.live link")
    parser.add_argument("--auth", default=env("PACGEN_AUTH"), metavar="USER:PASSWORD",
                        help="require this login (recommended with --share)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    auth = None
    if args.auth:
        user, sep, password = args.auth.partition(":")
        if not sep or not user or not password:
            raise SystemExit("--auth must look like USER:PASSWORD")
        auth = (user, password)
    studio = Studio(args.model, args.data_dir)
    demo = build_ui(studio)
    demo.queue(default_concurrency_limit=1).launch(
        server_name=args.host, server_port=args.port, share=args.share, auth=auth, css=CSS,
        theme=gr.themes.Soft(), show_error=True,
    )


if __name__ == "__main__":
    main()
