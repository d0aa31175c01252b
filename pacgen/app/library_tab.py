"""The Library tab: the concepts on disk as cards; delete, download as zip, import a zip or a kohya/A1111 LoRA,
push to the Hub."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from . import views
from .fields import UI_ONLY, caller_of, concept_choice, endpoint
from .visitors import acting_as
from .session import LibraryView, Studio


@dataclass
class LibraryTab:
    cards: gr.HTML
    chosen: gr.Dropdown
    confirm: gr.Checkbox
    delete_button: gr.Button
    export_button: gr.Button
    download: gr.File
    upload: gr.File
    import_button: gr.Button
    status: gr.Markdown  # next to Delete and Download
    import_status: gr.Markdown  # next to Import
    kohya_file: gr.File
    kohya_name: gr.Textbox
    kohya_class: gr.Textbox
    kohya_trigger: gr.Textbox
    kohya_button: gr.Button
    kohya_status: gr.Markdown
    hub_repo: gr.Textbox
    hub_token: gr.Textbox
    hub_button: gr.Button
    hub_status: gr.Markdown


def cards(view: LibraryView) -> str:
    return views.cards(view.listed, view.problems)


def build(studio: Studio) -> LibraryTab:
    gr.Markdown("Concepts you trained or imported. Each card: name · identifier and class noun · base model · date. "
                "Use one in **2 · Compose** by labelling a box with its name.")
    gallery = gr.HTML(cards(studio.library_view()), elem_id="library-cards")
    with gr.Row():
        chosen = concept_choice(studio.concept_names(), label="Concept", value=None,
                             elem_id="library-concept")
        confirm = gr.Checkbox(label="Yes, delete it (cannot be undone)", elem_id="library-confirm")
    with gr.Row():
        delete_button = gr.Button("Delete", variant="stop")
        export_button = gr.Button("Download as zip")
    status = gr.Markdown(label="Message", elem_id="library-status")  # labels name API outputs
    with gr.Row():
        download = gr.File(label="Download", interactive=False, height=120)
        with gr.Column():
            upload = gr.File(label="Import a concept zip", file_types=[".zip"], type="filepath", height=120)
            import_button = gr.Button("Import")
            import_status = gr.Markdown(label="Import message", elem_id="import-status")
    with gr.Row():
        with gr.Column():
            gr.Markdown("#### Import a kohya/A1111 LoRA\nAn SD-1.x LoRA from kohya's scripts or civitai that changes "
                        "only the UNet; prompts call it up with its trigger word.")
            kohya_file = gr.File(label="LoRA file (.safetensors)", file_types=[".safetensors"], type="filepath",
                                 height=120)
            kohya_name = gr.Textbox(label="Concept name", elem_id="kohya-name")
            kohya_class = gr.Textbox(label="Class noun", placeholder="dog", elem_id="kohya-class")
            kohya_trigger = gr.Textbox(label="Trigger word", placeholder="sks", elem_id="kohya-trigger")
            kohya_button = gr.Button("Import LoRA")
            kohya_status = gr.Markdown(label="Kohya import message", elem_id="kohya-status")
        with gr.Column():
            gr.Markdown("#### Push to the Hub\nUploads the chosen concept (its LoRA, kohya copy, model card and "
                        "thumbnail, which is made from your photos; not the photos themselves) to a private model "
                        "repo.")
            hub_repo = gr.Textbox(label="Repo id", placeholder="your-name/my-dog", elem_id="hub-repo")
            hub_token = gr.Textbox(label="Hugging Face write token", type="password", elem_id="hub-token",
                                   info="Needed on a shared app; on your own machine HF_TOKEN or `hf auth login` "
                                        "is used when this is empty")
            hub_button = gr.Button("Push")
            hub_status = gr.Markdown(label="Push message", elem_id="hub-status")
    return LibraryTab(gallery, chosen, confirm, delete_button, export_button, download, upload, import_button, status,
                      import_status, kohya_file, kohya_name, kohya_class, kohya_trigger, kohya_button, kohya_status,
                      hub_repo, hub_token, hub_button, hub_status)


def wire(tab: LibraryTab, studio: Studio, refresh, refresh_outputs: list) -> None:
    def list_concepts(request: gr.Request, profile: gr.OAuthProfile | None) -> list[dict]:
        """The caller's concepts as plain data (name, identifier, class noun, base model, created, usable, shared)."""
        with acting_as(caller_of(request, profile)):
            return studio.list_concepts()

    gr.api(list_concepts, api_name="list_concepts")
    delete = endpoint(lambda name, confirm: views.plain(studio.delete(name, confirm)), ["name", "confirm"])
    tab.delete_button.click(delete, [tab.chosen, tab.confirm], tab.status, api_name="delete_concept",
                            ).then(refresh, outputs=refresh_outputs, **UI_ONLY
                                   ).then(lambda: False, outputs=tab.confirm, queue=False, **UI_ONLY)
    # The confirmation is for one delete of one concept: cleared after every delete and when the choice changes.
    tab.chosen.change(lambda: False, outputs=tab.confirm, queue=False, **UI_ONLY)
    tab.export_button.click(endpoint(lambda name: str(studio.export(name)), ["name"]), tab.chosen,
                            tab.download, api_name="export_concept")
    tab.import_button.click(endpoint(lambda path: views.plain(studio.import_zip(path)), ["zip_file"]), tab.upload,
                            tab.import_status,
                            api_name="import_concept").then(refresh, outputs=refresh_outputs, **UI_ONLY)
    tab.kohya_button.click(endpoint(lambda *values: views.plain(studio.import_kohya(*values)),
                                    ["lora_file", "name", "class_noun", "trigger_word"]),
                           [tab.kohya_file, tab.kohya_name, tab.kohya_class, tab.kohya_trigger], tab.kohya_status,
                           api_name="import_kohya").then(refresh, outputs=refresh_outputs, **UI_ONLY)
    tab.hub_button.click(endpoint(lambda *values: views.plain(studio.push_to_hub(*values)),
                                  ["name", "repo_id", "token"], optional=("token",)),
                         [tab.chosen, tab.hub_repo, tab.hub_token], tab.hub_status, api_name="push_to_hub")
