"""PACGen Studio: the Gradio app. It assembles one module per tab (`pacgen/app/`) around one `Studio` session.

Run `python app.py` (flags below, or their PACGEN_* environment variables). Endpoints keep stable
`api_name`s for gradio_client, and their parameters carry the settings' own names (`pacgen/settings.py`):
train, cancel_training, preview_augmentation, generate, list_concepts, delete_concept, export_concept,
import_concept.
"""

from __future__ import annotations

import argparse
import functools
import os

import gradio as gr
import torch

from pacgen.quiet import hide_torchvision_fallback_notice

hide_torchvision_fallback_notice()  # before the imports below bring in diffusers

import pacgen.mini  # noqa: E402,F401  (registers the `tiny` test model for --model tiny)
from pacgen.app import compose_tab, library_tab, train_tab, views
from pacgen.app.fields import UI_ONLY, endpoint
from pacgen.app.gradio_files import own_gradio_files
from pacgen.app.guard import launch_options
from pacgen.app.model_thread import app_threads
from pacgen.app.session import Studio
from pacgen.app.visitors import LimitError, choose_policy, parse_logins
from pacgen.devices import DeviceError, parse_devices

CSS = """
#banner {background: #fff7e6; border: 1px solid #f0c36d; border-radius: 8px; padding: 4px 12px;}
#banner:empty {display: none;}
/* Gradio's dark theme writes light text: the boxes given a light background of their own get a dark one there. */
.dark #banner {background: #3d2e0f; border-color: #b5832a;}
.dark #library-status .md:not(:empty) {background: #0b3b25; border-color: #2f7d57;}
.dark .concept-card .card-thumb {background: #344054;}
.dark .concept-card {border-color: #475467;}
#results img, #previews img, .example-objects img {image-rendering: pixelated;}
#path-guide {font-size: 1.05em;}
.concept-cards {display: flex; flex-wrap: wrap; gap: 12px;}
.concept-card {width: 132px; margin: 0; border: 1px solid #e4e7ec; border-radius: 8px; padding: 6px; cursor: pointer;}
.concept-card .card-thumb {width: 96px; height: 96px; object-fit: contain; image-rendering: pixelated;
                           display: block; margin: 0 auto; background: #f2f4f7;}
.concept-card figcaption {display: flex; flex-direction: column; font-size: 0.85em; overflow-wrap: anywhere;}
.concept-card figcaption b {font-size: 1.05em;}
.card-note {color: #b54708;}
.empty-library {padding: 24px; border: 1px dashed #98a2b3; border-radius: 8px; text-align: center;}
.example-objects {flex-wrap: wrap; gap: 6px;}
.example-objects button {white-space: normal; height: auto;}
.example-objects button img {width: 32px; height: 32px; max-height: none;}
.concept-card:hover {border-color: #98a2b3;}
.concept-card.chosen {border: 2px solid var(--color-accent); padding: 5px; background: var(--color-accent-soft);}
/* The Library's one message stays in view while the tab scrolls to an import (clip, unlike Gradio's hidden, leaves
   the page the scroll container that sticky follows). */
.gradio-container {overflow: clip;}
#library-status {position: sticky; top: 0; z-index: 10;}
#library-status .md:not(:empty) {display: block; padding: 4px 12px; border: 1px solid #abefc6; border-radius: 8px;
                                 background: #ecfdf3;}
/* The canvas's and the loss curve's labels above them, not over them; no rotate buttons (they turned the boxes on
   the canvas only, not in the table that generation reads). */
#canvas > label[data-testid="block-label"],
#loss-plot > label[data-testid="block-label"] {position: static; margin-bottom: 4px;}
#canvas button[aria-label^="Rotate"] {display: none;}
/* The loss curve (views.TrainView.loss_html): values and steps beside a box the line stays inside. */
#loss-plot .prose:empty::before {content: "Drawn from the first training step.";
                                 color: var(--body-text-color-subdued);}
.loss-plot {display: grid; grid-template-columns: auto 1fr; gap: 2px 6px; margin: 0; font-size: var(--text-sm);
            color: var(--body-text-color-subdued); font-variant-numeric: tabular-nums;}
.loss-plot svg {width: 100%; height: 140px; box-sizing: border-box; padding: 8px 4px;
                border: 1px solid var(--border-color-primary); border-radius: var(--radius-sm);}
.loss-plot polyline {fill: none; stroke: var(--color-accent); stroke-width: 2; vector-effect: non-scaling-stroke;
                     stroke-linejoin: round; stroke-linecap: round;}
.loss-y {display: flex; flex-direction: column; justify-content: space-between; text-align: right;}
.loss-x {grid-column: 2; display: flex; justify-content: space-between;}
/* Room for Generate's wait and step progress while it runs (an error is the toast's to show). */
#generate-status:has([data-testid="status-tracker"] .progress-text) {min-height: 72px;}
"""


def build_ui(studio: Studio) -> gr.Blocks:
    # Gradio's cache (uploads, results) is emptied of files older than the policy says, every hour: this process's
    # own cache, so that no other app's clean-up removes what this one serves.
    own_gradio_files()
    with gr.Blocks(title="PACGen Studio", delete_cache=(3600, int(studio.policy.cache_hours * 3600))) as demo:
        gr.Markdown("# PACGen Studio\nPut *your own* objects into generated images, exactly where you want them.")
        header = gr.Markdown(views.header(studio.status()), elem_id="header")
        if os.environ.get("SPACE_ID"):  # Hugging Face login (hf_oauth): a visitor's library follows their account
            gr.LoginButton()
        banner = gr.Markdown(views.banner(studio.notices()), elem_id="banner")
        gr.Markdown(views.path_guide(), elem_id="path-guide")
        with gr.Tabs() as tabs:
            with gr.Tab(views.STEPS[0], id="train"):
                train = train_tab.build(studio)
            with gr.Tab(views.STEPS[1], id="compose"):
                compose = compose_tab.build(studio)
            with gr.Tab(views.STEPS[2], id="library"):
                library = library_tab.build(studio)

        @functools.partial(endpoint, names=[])
        def refreshed():
            """After anything that changes the library: every view of it, from disk, as this visitor sees it."""
            studio.sync_library()
            view = studio.library_view()  # read once: every output below derives from it
            labels = views.label_choices(view.names, list(studio.defaults.examples))
            return (views.header(studio.status(view)), views.banner(studio.notices(view)), library_tab.cards(view),
                    gr.update(choices=view.names, value=None), gr.update(label_list=labels),
                    gr.update(value=train_tab.use_label(view.newest), visible=bool(view.newest)),
                    gr.update(**compose_tab.concept_example_button(view.newest)))

        refresh_outputs = [header, banner, library.cards, library.chosen, compose.canvas, train.use_button,
                           compose.concept_example]
        follow, follow_outputs = train_tab.reattach(train, studio)
        browser = gr.BrowserState(None, storage_key="pacgen-visitor", secret=studio.visitors.browser_secret())
        demo.load(endpoint(studio.visitors.bind_browser_token, ["token"]), browser, browser, queue=False,
                  **UI_ONLY).then(refreshed, outputs=refresh_outputs, queue=False, **UI_ONLY
                                  ).then(follow, outputs=follow_outputs, concurrency_limit=None,  # a training
                                         **UI_ONLY  # still running: followed for as long as it runs, by any page
                                         ).then(refreshed, outputs=refresh_outputs, queue=False,  # then the
                                                **UI_ONLY)  # library as it left it, as on the page that started it

        def use_in_compose():
            """After training: Compose, with a box for the newest concept and a prompt that uses it."""
            return gr.Tabs(selected="compose"), *compose_tab.newest_example(studio)

        train.use_button.click(endpoint(use_in_compose, []), outputs=[tabs, compose.prompt, compose.table,
                                                                           compose.table_message],
                               queue=False, **UI_ONLY).then(
            compose_tab.redraw, compose.redraw_inputs, compose.canvas, queue=False, **UI_ONLY)
        train_tab.wire(train, studio, refreshed, refresh_outputs)
        compose_tab.wire(compose, studio)
        library_tab.wire(library, studio, refreshed, refresh_outputs)
    return demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    on_space = bool(env("SPACE_ID"))
    parser = argparse.ArgumentParser(description="PACGen Studio")
    parser.add_argument("--model", default=env("PACGEN_MODEL", "auto"),
                        help="auto (Hub model on a GPU, else the embedded one), mini, tiny, a Hub id, a folder or "
                             "one SD-1.x .safetensors file")
    parser.add_argument("--grounding", default=env("PACGEN_GROUNDING"), metavar="REPO_OR_FOLDER",
                        help="where a base without GLIGEN adapters gets them (default: "
                             "masterful/gligen-1-4-generation-text-box)")
    parser.add_argument("--data-dir", default=env("PACGEN_HOME"), help="concept library (default ~/.pacgen)")
    parser.add_argument("--host", default=env("PACGEN_HOST", "0.0.0.0" if on_space else "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env("PACGEN_PORT", env("GRADIO_SERVER_PORT", "7860"))))
    parser.add_argument("--share", action="store_true", default=env("PACGEN_SHARE", "") == "1",
                        help="also serve on a public *.gradio.live link")
    parser.add_argument("--auth", default=env("PACGEN_AUTH"), metavar="USER:PASSWORD[,USER:PASSWORD…]",
                        help="require a login; several users each get their own library (recommended with --share)")
    parser.add_argument("--multi-user", action="store_true", default=env("PACGEN_MULTI_USER", "") == "1",
                        help="one library per visitor, with quotas (implied by --share, --auth with several users "
                             "and on a Space)")
    parser.add_argument("--shared-concepts", default=env("PACGEN_SHARED_CONCEPTS"), metavar="FOLDER",
                        help="a read-only library of example concepts every visitor can use")
    parser.add_argument("--limits", default=env("PACGEN_LIMITS", ""), metavar="NAME=VALUE,…",
                        help="override limits, e.g. max_concepts=10,idle_expiry_h=48 (see README, Running it for "
                             "others); 'none' lifts one")
    parser.add_argument("--threads", default=env("PACGEN_THREADS", "auto"),
                        help="CPU threads for the model: a number, or auto (every core but one, left to the web "
                             "server and a browser on this machine, shared by the cpu pipelines of --devices; "
                             "OMP_NUM_THREADS where it is set)")
    parser.add_argument("--devices", default=env("PACGEN_DEVICES"), metavar="DEVICE[,DEVICE…]|all",
                        help="one pipeline per device, serving that many requests at once, e.g. cuda:0,cuda:1, or "
                             "all (every CUDA device); default: the one device the model picks")
    args = parser.parse_args(argv)
    args.on_space = on_space
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        devices = parse_devices(args.devices)
        if os.environ.get("SPACES_ZERO_GPU") and len(devices) > 1:
            raise DeviceError("--devices: a ZeroGPU Space lends one GPU to each call; leave --devices out there")
        threads = app_threads(args.threads, replicas=max(1, devices.count("cpu")))
        auth = parse_logins(args.auth)
        policy = choose_policy(shared=args.share or args.on_space or args.multi_user or len(auth) > 1,
                               limits=args.limits)
    except (LimitError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    if threads:
        torch.set_num_threads(threads)
    studio = Studio(args.model, args.data_dir, policy=policy, shared_dir=args.shared_concepts,
                    grounding=args.grounding, devices=devices)
    demo = build_ui(studio)
    # One job per endpoint at a time (Generate: one per device); the session lends each job a free device, and a
    # generation waits while a training holds the only one. Shared: no queue-bypassing /run routes (every call has
    # a session, so a visitor), and no internal error text on the page.
    # Shared or with logins: Gradio's routes serve each visitor's requests and files to that visitor only (guard).
    demo.queue(default_concurrency_limit=1, max_size=policy.queue_size, api_open=not policy.isolated).launch(
        server_name=args.host, server_port=args.port, share=args.share, **launch_options(policy, auth), css=CSS,
        theme=gr.themes.Soft(), show_error=not policy.isolated,
        max_file_size=f"{policy.max_upload_mb:g}mb" if policy.max_upload_mb else None,
    )


if __name__ == "__main__":
    main()
