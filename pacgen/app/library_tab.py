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
    status: gr.Markdown  # the one message of the tab: the latest action's outcome, under the cards
    kohya_file: gr.File
    kohya_name: gr.Textbox
    kohya_class: gr.Textbox
    kohya_trigger: gr.Textbox
    kohya_button: gr.Button
    hub_repo: gr.Textbox
    hub_token: gr.Textbox
    hub_button: gr.Button


# A click (or Enter/Space) on a card sends its concept's name; the listener sits on the component, so it holds
# for the cards of every later render.
CARD_CLICKS = """
const choose = (event) => {
    const card = event.target.closest('[data-concept]');
    if (card) trigger('click', {concept: card.dataset.concept});
};
element.addEventListener('click', choose);
element.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' || event.key === ' ') { event.preventDefault(); choose(event); }
});
"""

CLOSE_TOASTS = "() => document.querySelectorAll('[data-testid=\"toast-close\"]').forEach((b) => b.click())"


def cards(view: LibraryView, chosen: str | None = None) -> str:
    return views.cards(view.listed, view.problems, chosen)


def build(studio: Studio) -> LibraryTab:
    gr.Markdown("Concepts you trained or imported. Each card: name · identifier and class noun · base model · date. "
                "Click a card to choose it for Delete, Download or Push. Use one in **2 · Compose** by labelling a "
                "box with its name.")
    gallery = gr.HTML(cards(studio.library_view()), elem_id="library-cards", js_on_load=CARD_CLICKS)
    status = gr.Markdown(label="Message", elem_id="library-status")  # labels name API outputs
    with gr.Row():
        chosen = concept_choice(studio.concept_names(), label="Concept", value=None,
                             elem_id="library-concept")
        confirm = gr.Checkbox(label="Yes, delete it (cannot be undone)", elem_id="library-confirm")
    with gr.Row():
        delete_button = gr.Button("Delete", variant="stop")
        export_button = gr.Button("Download as zip")
    with gr.Row():
        download = gr.File(label="Download", interactive=False, height=120)
        with gr.Column():
            upload = gr.File(label="Import a concept zip", file_types=[".zip"], type="filepath", height=120,
                             elem_id="library-import")
            import_button = gr.Button("Import")
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
        with gr.Column():
            gr.Markdown("#### Push to the Hub\nUploads the chosen concept (its LoRA, kohya copy, model card and "
                        "thumbnail, which is made from your photos; not the photos themselves) to a private model "
                        "repo.")
            hub_repo = gr.Textbox(label="Repo id", placeholder="your-name/my-dog", elem_id="hub-repo")
            hub_token = gr.Textbox(label="Hugging Face write token", type="password", elem_id="hub-token",
                                   info="Needed on a shared app; on your own machine HF_TOKEN or `hf auth login` "
                                        "is used when this is empty")
            hub_button = gr.Button("Push")
    return LibraryTab(gallery, chosen, confirm, delete_button, export_button, download, upload, import_button, status,
                      kohya_file, kohya_name, kohya_class, kohya_trigger, kohya_button, hub_repo, hub_token, hub_button)


def wire(tab: LibraryTab, studio: Studio, refresh, refresh_outputs: list) -> None:
    def list_concepts(request: gr.Request, profile: gr.OAuthProfile | None) -> list[dict]:
        """The caller's concepts as plain data (name, identifier, class noun, base model, created, usable, shared)."""
        with acting_as(caller_of(request, profile)):
            return studio.list_concepts()

    gr.api(list_concepts, api_name="list_concepts")

    def starting(button: gr.Button):
        """Each action's outcome replaces the one before it: as the action starts, the message and any error toast
        still open are cleared (an error shows as a toast, with no older outcome left beside it)."""
        return button.click(lambda: "", outputs=tab.status, js=CLOSE_TOASTS, queue=False, show_progress="hidden",
                            **UI_ONLY)

    delete = endpoint(lambda name, confirm: views.plain(studio.delete(name, confirm)), ["name", "confirm"])
    starting(tab.delete_button).then(delete, [tab.chosen, tab.confirm], tab.status, api_name="delete_concept",
                                     ).then(refresh, outputs=refresh_outputs, **UI_ONLY
                                            ).then(lambda: False, outputs=tab.confirm, queue=False, **UI_ONLY)
    # A card's click chooses its concept. The confirmation is for one delete of one concept: cleared after every
    # delete and when the choice changes, which the cards show.
    def card_clicked(event: gr.EventData) -> str | None:
        return getattr(event, "concept", None)

    tab.cards.click(card_clicked, outputs=tab.chosen, queue=False, **UI_ONLY)
    tab.chosen.change(endpoint(lambda name: (False, cards(studio.library_view(), name)), ["name"]), tab.chosen,
                      [tab.confirm, tab.cards], queue=False, **UI_ONLY)
    starting(tab.export_button).then(endpoint(lambda name: str(studio.export(name)), ["name"]), tab.chosen,
                                     tab.download, api_name="export_concept").success(
        lambda name: views.plain(f"'{name}' is ready: save it from Download below."), tab.chosen, tab.status,
        queue=False, **UI_ONLY)
    starting(tab.import_button).then(endpoint(lambda path: views.plain(studio.import_zip(path)), ["zip_file"]),
                                     tab.upload, tab.status, api_name="import_concept",
                                     ).then(refresh, outputs=refresh_outputs, **UI_ONLY)
    starting(tab.kohya_button).then(endpoint(lambda *values: views.plain(studio.import_kohya(*values)),
                                             ["lora_file", "name", "class_noun", "trigger_word"]),
                                    [tab.kohya_file, tab.kohya_name, tab.kohya_class, tab.kohya_trigger], tab.status,
                                    api_name="import_kohya").then(refresh, outputs=refresh_outputs, **UI_ONLY)
    starting(tab.hub_button).then(endpoint(lambda *values: views.plain(studio.push_to_hub(*values)),
                                           ["name", "repo_id", "token"], optional=("token",)),
                                  [tab.chosen, tab.hub_repo, tab.hub_token], tab.status, api_name="push_to_hub")
