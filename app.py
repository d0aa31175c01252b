"""PACGen Studio: the Gradio app. It assembles one module per tab (`pacgen/app/`) around one `Studio` session.

Run `python app.py` (flags below, or their PACGEN_* environment variables). Endpoints keep stable
`api_name`s for gradio_client, and their parameters carry the settings' own names (`pacgen/settings.py`):
train, cancel_training, preview_augmentation, generate, list_concepts, delete_concept, export_concept,
import_concept.
"""

from __future__ import annotations

import argparse
import os

import gradio as gr

import pacgen.mini  # noqa: F401  (registers the `tiny` test model for --model tiny)
from pacgen.app import compose_tab, library_tab, train_tab, views
from pacgen.app.fields import UI_ONLY
from pacgen.app.session import Studio

CSS = """
#banner {background: #fff7e6; border: 1px solid #f0c36d; border-radius: 8px; padding: 4px 12px;}
#banner:empty {display: none;}
.concept-cards img {image-rendering: pixelated;}
#results img, #previews img {image-rendering: pixelated;}
"""


def build_ui(studio: Studio) -> gr.Blocks:
    with gr.Blocks(title="PACGen Studio") as demo:
        gr.Markdown("# PACGen Studio\nPut *your own* objects into generated images, exactly where you want them.")
        header = gr.Markdown(views.header(studio.status()))
        banner = gr.Markdown(views.banner(studio.notices()), elem_id="banner")
        with gr.Tabs():
            with gr.Tab("Train", id="train"):
                train = train_tab.build(studio)
            with gr.Tab("Compose", id="compose"):
                compose = compose_tab.build(studio)
            with gr.Tab("Library", id="library"):
                library = library_tab.build(studio)

        def refreshed():
            """After anything that changes the library: every view of it, from disk."""
            studio.sync_library()
            names = studio.concept_names()
            labels = views.label_choices(names, list(studio.defaults.examples))
            return (views.header(studio.status()), views.banner(studio.notices()), library_tab.cards(studio),
                    gr.update(choices=names, value=None), gr.update(label_list=labels))

        refresh_outputs = [header, banner, library.cards, library.chosen, compose.canvas]
        demo.load(refreshed, outputs=refresh_outputs, queue=False, **UI_ONLY)
        train_tab.wire(train, studio, refreshed, refresh_outputs)
        compose_tab.wire(compose, studio)
        library_tab.wire(library, studio, refreshed, refresh_outputs)
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
    # One job per endpoint at a time; the session's model lock then orders generation and training.
    demo.queue(default_concurrency_limit=1).launch(
        server_name=args.host, server_port=args.port, share=args.share, auth=auth, css=CSS,
        theme=gr.themes.Soft(), show_error=True,
    )


if __name__ == "__main__":
    main()
