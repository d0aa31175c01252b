"""The Library tab: the concepts on disk as cards; delete, download as zip, import a zip."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

import gradio as gr

from . import views
from .fields import UI_ONLY, endpoint
from .session import Studio


@dataclass
class LibraryTab:
    cards: gr.Gallery
    chosen: gr.Dropdown
    confirm: gr.Checkbox
    delete_button: gr.Button
    export_button: gr.Button
    download: gr.File
    upload: gr.File
    import_button: gr.Button
    status: gr.Markdown


def cards(studio: Studio) -> list[tuple[str, str]]:
    return views.cards(studio.concepts(), set(studio.concept_names()))


def build(studio: Studio) -> LibraryTab:
    gr.Markdown("Concepts you trained or imported. Each card: name · identifier and class noun · base model · date.")
    gallery = gr.Gallery(cards(studio), label="Concepts", columns=4, height=300, allow_preview=False,
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
            upload = gr.File(label="Import a concept zip", file_types=[".zip"], type="filepath", height=120)
            import_button = gr.Button("Import")
    status = gr.Markdown()
    return LibraryTab(gallery, chosen, confirm, delete_button, export_button, download, upload, import_button, status)


def wire(tab: LibraryTab, studio: Studio, refresh, refresh_outputs: list) -> None:
    export_dir = tempfile.mkdtemp(prefix="pacgen-export-")
    gr.api(studio.list_concepts, api_name="list_concepts")
    tab.delete_button.click(endpoint(studio.delete, ["name", "confirm"]), [tab.chosen, tab.confirm], tab.status,
                            api_name="delete_concept").then(refresh, outputs=refresh_outputs, **UI_ONLY)
    tab.export_button.click(endpoint(lambda name: str(studio.export(name, export_dir)), ["name"]), tab.chosen,
                            tab.download, api_name="export_concept")
    tab.import_button.click(endpoint(studio.import_zip, ["zip_file"]), tab.upload, tab.status,
                            api_name="import_concept").then(refresh, outputs=refresh_outputs, **UI_ONLY)
