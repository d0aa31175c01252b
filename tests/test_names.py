"""Concept names a person cannot tell apart are one name, for every action (issue 26, items 7, 8 and 10)."""

import json
import zipfile

import pytest

from pacgen.concepts import ConceptError, check_name, name_key
from pacgen.layout import Box
from pacgen.mini.stand_ins import write_random_concept
from pacgen.app.views import boxes_from_rows


def commit(pipe, library, name, identifier="sks", seed=0):
    with library.staging() as staged:
        return library.commit(staged, write_random_concept(pipe, staged, name, identifier, seed=seed))


@pytest.mark.parametrize("first, second", [
    ("🐶", "🐶\ufe0f"),  # the emoji, and the emoji with its presentation selector
    ("chien d'été", "chien d\u2019été"),  # a typewriter and a typographic apostrophe
    ("İstanbul", "istanbul"),
    ("Istanbul", "ıstanbul"),
    ("my dog", "My  Dog"),
    ("café", "cafe\u0301"),  # precomposed, and e + a combining accent
    ("ＤＯＧ", "dog"),  # full-width letters
    ("x\u2013ray", "x-ray"),  # an en dash and a hyphen
])
def test_names_that_look_the_same_are_one_concept(pipe, library, first, second):
    assert name_key(first) == name_key(second)
    commit(pipe, library, first)
    with pytest.raises(ConceptError, match="already exists"):
        library.check_new_name(second)
    assert library.get(second).name == first


def test_a_name_needs_a_character_that_shows():
    for invisible in ("\u0301", "\u0301\u0308", "!!", "'-'"):
        with pytest.raises(ConceptError, match="needs at least one letter, digit or emoji"):
            check_name(invisible)
    with pytest.raises(ConceptError, match="BRAILLE PATTERN BLANK"):  # a symbol by category, drawn as nothing
        check_name("\u2800")
    assert check_name("é") == "é" and check_name("🐶") == "🐶" and check_name("R2") == "R2"


def test_a_name_too_close_to_another_names_the_one_it_collides_with(pipe, library):
    commit(pipe, library, "my dog")
    with pytest.raises(ConceptError, match="^'my-dog' is too close to the existing 'my dog'; choose another name$"):
        library.check_new_name("my-dog")
    with pytest.raises(ConceptError, match=r"^a concept named 'my dog' already exists \('MY DOG' is the same name\)"):
        library.check_new_name("MY DOG")
    with pytest.raises(ConceptError, match="^a concept named 'my dog' already exists; delete it"):
        library.check_new_name("my dog")


def test_a_zip_without_a_name_says_so_once(pipe, library, tmp_path):
    made = write_random_concept(pipe, tmp_path / "src", "nameless", "sks")
    meta = json.loads((made.path / "concept.json").read_text())
    del meta["name"]
    with zipfile.ZipFile(tmp_path / "x.zip", "w") as archive:
        archive.writestr("concept.json", json.dumps(meta))
        archive.write(made.lora_path, made.lora_path.name)
    with pytest.raises(ConceptError) as caught:
        library.import_zip(tmp_path / "x.zip", pipe.components.fingerprint)
    assert str(caught.value) == "x.zip: concept.json has no 'name'"


def test_one_rule_for_prompts_box_labels_delete_and_export(pipe, library, tmp_path):
    concept = commit(pipe, library, "Dog")
    pipe.load_concept(library.get("dog"))
    assert boxes_from_rows([["dog", 0.1, 0.1, 0.6, 0.6]], ["Dog"])[0].label == "<Dog>"
    settings = dict(num_inference_steps=2, seed=3, width=64, height=64)
    typed = pipe("a photo of <dog>", boxes=[Box("<DOG>", (0.1, 0.1, 0.6, 0.6))], **settings)
    spelled = pipe("a photo of <Dog>", boxes=[Box("<Dog>", (0.1, 0.1, 0.6, 0.6))], **settings)
    assert typed.prompt == spelled.prompt == "a photo of <Dog>"
    assert typed.branch_prompts == spelled.branch_prompts
    assert library.export_zip("dog", tmp_path / "out").name == f"{concept.path.name}.zip"
    library.delete("DOG")
    assert library.list() == []
