"""Hostile input to the core library: zips, names, numbers and boxes a stranger might send.

Each is refused with one line that names the problem and shows no server path, nothing enters the library, the
staging folder is left empty, and the concepts already there still list.
"""

import io
import json
import math
import os
import re
import struct
import threading
import time
import warnings
import zipfile

import pytest
import torch
from PIL import Image
from safetensors.torch import load as load_tensors, save as save_tensors

from pacgen import concepts as concepts_module
from pacgen.app.cli import main
from pacgen.concepts import Concept, ConceptError, ConceptLibrary, check_class_noun, check_name, slugify
from pacgen.layout import Box, LayoutError, check_boxes, parse_box
from pacgen.lora import LORA_FILE, LoraFileError, check_lora_fits, extract_lora, read_lora_file, write_lora_file
from pacgen.mini.stand_ins import write_random_concept
from pacgen.settings import MAX_SEED, SampleSettings, SettingsError, TrainSettings, from_mapping, kind
from pacgen.text import check_text

def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png()
Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"


def folder_files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def write_zip(path, files):
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        warnings.simplefilter("ignore")  # duplicate names are one of the cases
        for name, data in files:
            archive.writestr(name, data)
    return path


@pytest.fixture
def world(pipe, library, tmp_path):
    """A library holding one good concept, the files of a second one to import, and the fit check the app uses."""
    kept = write_random_concept(pipe, tmp_path / "src-kept", "kept one", "sks")
    (kept.path / "thumbnail.png").write_bytes(PNG)
    fingerprint = pipe.components.fingerprint

    def check(concept, state):
        check_lora_fits(pipe.components.unet, state)

    library.import_zip(write_zip(tmp_path / "kept.zip", folder_files(kept.path).items()), fingerprint, check)
    new = write_random_concept(pipe, tmp_path / "src-new", "new one", "ohwx", seed=1)
    files = {**folder_files(new.path), "thumbnail.png": PNG, "README.md": b"# new one\n", "photos/0.png": PNG}
    return {"library": library, "files": files, "fingerprint": fingerprint, "check": check, "tmp": tmp_path}


def assert_refused(world, path, match):
    library = world["library"]
    with pytest.raises(ConceptError, match=match) as caught:
        library.import_zip(path, world["fingerprint"], world["check"])
    message = str(caught.value)
    assert "\n" not in message and str(world["tmp"]) not in message and path.name in message
    assert [c.name for c in library.list()] == ["kept one"]
    assert [p.name for p in library.concepts_dir.iterdir()] == ["kept-one"]
    assert list(library.staging_dir.iterdir()) == []
    return message


def with_lora(files, change):
    state = load_tensors(files[LORA_FILE])
    change(state)
    return {**files, LORA_FILE: save_tensors(state)}


def with_meta(files, **changes):
    meta = {**json.loads(files["concept.json"]), **changes}
    return {**files, "concept.json": json.dumps(meta).encode()}


def grow_first_down(state):
    key = next(k for k in state if k.endswith("lora_A.weight"))
    state[key] = torch.zeros(state[key].shape[0], state[key].shape[1] + 1)


def add_unknown_layer(state):
    state[f"unet.{Q[:-5]}.to_zz.lora_A.weight"] = torch.zeros(4, 8)
    state[f"unet.{Q[:-5]}.to_zz.lora_B.weight"] = torch.zeros(8, 4)


def poison(state):
    key = next(iter(state))
    state[key] = state[key].clone()
    state[key][0, 0] = math.nan


def onto_fuser(state):
    state["unet.down_blocks.0.attentions.0.transformer_blocks.0.fuser.linear.lora_A.weight"] = torch.zeros(4, 8)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda f: with_lora(f, grow_first_down), r"does not fit this model: '.*' \(down\) has shape"),
        (lambda f: with_lora(f, add_unknown_layer), "names a layer this model does not have"),
        (lambda f: with_lora(f, poison), r"not finite numbers \(NaN or infinity\)"),
        (lambda f: with_lora(f, onto_fuser), "grounding adapters"),
        (lambda f: {**f, LORA_FILE: b"\x80\x04pickle"}, "not a readable safetensors file"),
        (lambda f: {**f, "concept.json": b"[1, 2]"}, "must hold a JSON object, not a list"),
        (lambda f: {**f, "concept.json": b"{"}, "concept.json is corrupt"),
        (lambda f: {**f, "concept.json": b"[" * 100000}, "concept.json is corrupt"),
        (lambda f: with_meta(f, created=5), "field 'created' must be text, got int"),
        (lambda f: with_meta(f, created="yesterday"), "field 'created' must be a date and time"),
        (lambda f: with_meta(f, name=7), "the concept name must be text"),
        (lambda f: with_meta(f, name="new\none"), r"a line break \(U\+000A\)"),
        (lambda f: with_meta(f, name="new\0one"), r"a NUL character \(U\+0000\)"),
        (lambda f: with_meta(f, name="new\tone"), r"a tab \(U\+0009\)"),
        (lambda f: with_meta(f, name="new\u202eeno"), r"a right-to-left override \(U\+202E\)"),
        (lambda f: with_meta(f, class_noun="dog\u200b"), r"class noun contains the character ZERO WIDTH SPACE"),
        (lambda f: with_meta(f, identifier="two words"), "'identifier' must be one word"),
        (lambda f: with_meta(f, duration_s=math.nan), "'duration_s' must be a number of seconds"),
        (lambda f: with_meta(f, duration_s=-3), "'duration_s' must be a number of seconds"),
        (lambda f: with_meta(f, training=[1]), "'training' must be an object, not a list"),
        (lambda f: with_meta(f, base_fingerprint="0123"), "a different base model"),
        (lambda f: {k: v for k, v in f.items() if k != LORA_FILE}, "is not a concept export: it needs"),
        (lambda f: {**f, "thumbnail.png": b"<svg onload=alert(1)>"}, "thumbnail.png is not a readable PNG image"),
        (lambda f: {**f, "thumbnail.png": PNG[:40]}, "thumbnail.png is not a readable PNG image"),  # truncated
        (lambda f: {**f, "README.md": b"\0" * (10 * 2**20)}, "README.md is 10.0 MB; the limit is 256 KB"),
        (lambda f: {**f, "evil.pkl": b"x"}, "'evil.pkl', which is not part of a concept export"),
        (lambda f: {**f, "photos/0.jpg": b"x"}, "'photos/0.jpg', which is not part of a concept export"),
        (lambda f: {**f, "notes/": b""}, "'notes/', which is not part of a concept export"),
        (lambda f: {**f, "../escape.png": PNG}, "unsafe path: '../escape.png'"),
        (lambda f: {**f, "/etc/concept.json": b"{}"}, "unsafe path"),
        (lambda f: {**f, "photos\\..\\..\\x.png": PNG}, "unsafe path"),
        (lambda f: {**f, "C:x.png": PNG}, "unsafe path"),
        (lambda f: {**f, "photos/0.png\n": PNG}, r"'photos/0.png\\n', which is not part"),
        (lambda f: {**f, **{f"junk/{k}.txt": b"" for k in range(20000)}}, "has 20005 entries; a concept export has"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_hostile_zips_are_refused_and_nothing_is_committed(world, build, match):
    path = write_zip(world["tmp"] / "hostile.zip", build(dict(world["files"])).items())
    assert_refused(world, path, match)


def test_duplicate_entries_and_symbolic_links_are_refused(world):
    files = world["files"]
    twice = write_zip(world["tmp"] / "twice.zip", [*files.items(), ("concept.json", files["concept.json"])])
    assert_refused(world, twice, "contains 'concept.json' twice")
    linked = world["tmp"] / "linked.zip"
    write_zip(linked, files.items())
    with zipfile.ZipFile(linked, "a") as archive:
        link = zipfile.ZipInfo("photos/1.png")
        link.external_attr = 0o120777 << 16
        archive.writestr(link, "/etc/passwd")
    assert_refused(world, linked, r"symbolic link \('photos/1.png'\)")


def test_a_zip_whose_size_header_lies_is_refused(world):
    files = {**world["files"], "README.md": b"padding " * 100000}
    path = write_zip(world["tmp"] / "liar.zip", files.items())
    data = bytearray(path.read_bytes())
    entry = data.find(b"PK\x01\x02")  # the first central directory record
    while entry >= 0:  # the README's record: claim it unpacks to 100 bytes
        name_len = struct.unpack_from("<H", data, entry + 28)[0]
        if data[entry + 46:entry + 46 + name_len] == b"README.md":
            struct.pack_into("<I", data, entry + 24, 100)
        entry = data.find(b"PK\x01\x02", entry + 4)
    path.write_bytes(bytes(data))
    assert_refused(world, path, r"liar.zip is damaged \(README.md: Bad CRC-32")


def test_not_a_zip_and_the_check_callable_are_honoured(world):
    junk = world["tmp"] / "junk.zip"
    junk.write_bytes(b"hello, not a zip")
    assert_refused(world, junk, "junk.zip is not a zip file")

    def refuse(concept, state):
        raise ConceptError(f"'{concept.name}' is taken by a shared example")

    path = write_zip(world["tmp"] / "fine.zip", world["files"].items())
    with pytest.raises(ConceptError, match="fine.zip: 'new one' is taken by a shared example"):
        world["library"].import_zip(path, world["fingerprint"], refuse)
    assert [c.name for c in world["library"].list()] == ["kept one"]


def test_an_export_imports_elsewhere_with_all_its_files_and_os_clutter_is_skipped(world, tmp_path):
    library = world["library"]
    path = write_zip(tmp_path / "fine.zip", [*world["files"].items(), ("photos/", b""), ("__MACOSX/._x", b"x"),
                                             (".DS_Store", b"x")])
    imported = library.import_zip(path, world["fingerprint"], world["check"])
    assert sorted(folder_files(imported.path)) == sorted(["concept.json", LORA_FILE, "README.md", "photos/0.png",
                                                          "thumbnail.png", "kohya_lora.safetensors"])  # made if absent
    (imported.path / "concept.json.tmp").write_text("left by a crash")
    other = ConceptLibrary(tmp_path / "elsewhere")
    again = other.import_zip(library.export_zip("new one", tmp_path / "out"), world["fingerprint"], world["check"])
    assert again.name == "new one" and (again.path / "photos" / "0.png").read_bytes() == PNG


def test_two_imports_of_one_name_at_once_commit_once(world, monkeypatch):
    library, results = world["library"], []
    path = write_zip(world["tmp"] / "twin.zip", world["files"].items())
    both_checked = threading.Barrier(2)

    def import_once():
        try:
            results.append(library.import_zip(path, world["fingerprint"], lambda c, state: both_checked.wait(10)).name)
        except ConceptError as error:
            results.append(str(error))

    threads = [threading.Thread(target=import_once) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == ["new one", "twin.zip: a concept named 'new one' already exists; delete it or choose "
                                          "another name"]
    # The rename itself refuses the second even when both passed the name check at the same moment.
    monkeypatch.setattr(ConceptLibrary, "check_new_name", lambda self, name: name)
    with pytest.raises(ConceptError, match="^twin.zip: a concept named 'new one' already exists"):
        library.import_zip(path, world["fingerprint"])
    assert sorted(c.name for c in library.list()) == ["kept one", "new one"]
    assert list(library.staging_dir.iterdir()) == []


def test_a_concept_moved_in_after_the_list_was_read_is_named_as_existing(world, monkeypatch):
    """The other import's rename can land between reading the library and looking at the folder: the message is
    the same as when it had landed before (CI saw "a folder that cannot be read" once)."""
    library = world["library"]
    library.import_zip(write_zip(world["tmp"] / "first.zip", world["files"].items()), world["fingerprint"])
    monkeypatch.setattr(ConceptLibrary, "list", lambda self: [])  # the list as read just before the rename
    with pytest.raises(ConceptError, match="^a concept named 'new one' already exists; delete it"):
        library.check_new_name("new one")
    (library.concepts_dir / slugify("broken")).mkdir()
    with pytest.raises(ConceptError, match="^a concept named 'broken' already exists as a folder that cannot be read"):
        library.check_new_name("broken")


def test_scan_reports_broken_folders_by_name_and_keeps_listing_the_good(world):
    library = world["library"]
    root = library.concepts_dir
    good = (root / "kept-one" / "concept.json").read_text()
    for folder, meta in [("created-five", json.dumps({**json.loads(good), "name": "five", "created": 5})),
                         ("a-list", "[1]"), ("twin", good)]:
        (root / folder).mkdir()
        (root / folder / "concept.json").write_text(meta)
        (root / folder / LORA_FILE).write_bytes((root / "kept-one" / LORA_FILE).read_bytes())
    (root / "empty").mkdir()
    concepts, broken = library.scan()
    assert [c.name for c in concepts] == ["kept one"]
    reasons = dict(broken)
    assert sorted(reasons) == ["a-list", "created-five", "empty", "twin"]
    assert reasons["created-five"] == "concept.json field 'created' must be text, got int"
    assert reasons["twin"] == "its concept 'kept one' has the name of folder 'kept-one'"
    assert all("\n" not in r and str(root) not in r for r in reasons.values())
    with pytest.raises(ConceptError, match="^concept folder 'a-list': concept.json must hold") as caught:
        Concept.load(root / "a-list")
    assert str(root) not in str(caught.value)


def test_a_concept_version_changes_with_its_files(world, pipe):
    library = world["library"]
    before = library.get("kept one")
    assert library.get("kept one").version == before.version
    os.utime(before.lora_path, ns=(time.time_ns(), time.time_ns() + 10**9))
    touched = library.get("kept one")
    assert touched.version != before.version
    library.delete("kept one")
    replacement = write_random_concept(pipe, world["tmp"] / "src-again", "kept one", "sks", seed=5)
    library.import_zip(write_zip(world["tmp"] / "again.zip", folder_files(replacement.path).items()),
                       world["fingerprint"])
    assert library.get("kept one").version not in (before.version, touched.version)


def test_stale_staging_is_removed_when_a_library_opens_and_live_staging_is_kept(library):
    library.staging_dir.mkdir(parents=True)
    dead_pid = 2**22 + 12345  # above Linux's pid_max default: no such process
    old = time.time() - concepts_module.STALE_STAGING_S - 60
    folders = {name: library.staging_dir / name for name in
               [f"concept-{dead_pid}-old", f"concept-{dead_pid}-fresh", f"concept-{os.getpid()}-mine", "concept-legacy"]}
    for name, folder in folders.items():
        folder.mkdir()
        (folder / LORA_FILE).write_bytes(b"half written")
        if not name.endswith("fresh"):
            os.utime(folder, (old, old))
    ConceptLibrary(library.root)
    assert sorted(p.name for p in library.staging_dir.iterdir()) == sorted([f"concept-{dead_pid}-fresh",
                                                                           f"concept-{os.getpid()}-mine"])


@pytest.mark.parametrize("name", ["猫", "Hund Müller", "🐶 dog", "👨\u200d👩\u200d👧 family", "سگ\u200cمن",
                                  "🏴\U000E0067\U000E0062\U000E0065\U000E006E\U000E0067\U000E007F", "Ђорђе", "犬-2 (big)"])
def test_names_in_any_script_and_with_emoji_are_accepted_and_get_their_own_folder(name, world, pipe):
    assert check_name(name) == name and check_class_noun(name) == name
    slug = slugify(name)
    assert slug and slug.isascii() and "/" not in slug and slug != slugify(name + "x")
    library = world["library"]
    made = write_random_concept(pipe, world["tmp"] / "src-script", name, "phol", seed=2)
    library.import_zip(write_zip(world["tmp"] / "script.zip", folder_files(made.path).items()), world["fingerprint"])
    assert library.get(name).path.name == slug
    with pytest.raises(ConceptError, match="already exists"):
        library.check_new_name(name.upper())


def test_a_folder_named_before_slugs_had_hashes_is_still_found(world):
    library = world["library"]
    legacy = library.concepts_dir / "caf"  # what 'café' used to map to
    (library.concepts_dir / "kept-one").rename(legacy)
    meta = json.loads((legacy / "concept.json").read_text())
    (legacy / "concept.json").write_text(json.dumps({**meta, "name": "café"}))
    assert library.get("Café").path.name == "caf"
    with pytest.raises(ConceptError, match="already exists"):
        library.check_new_name("café")
    library.delete("café")
    assert library.list() == []


@pytest.mark.parametrize(
    "text, described",
    [("a\nb", "a line break (U+000A)"), ("a\rb", "a carriage return (U+000D)"), ("a\0b", "a NUL character (U+0000)"),
     ("a\tb", "a tab (U+0009)"), ("a\u202eb", "a right-to-left override (U+202E)"),
     ("a\u2066b", "the character LEFT-TO-RIGHT ISOLATE (U+2066)"), ("a\u200bb", "the character ZERO WIDTH SPACE (U+200B)"),
     ("ab\u200d", "the character ZERO WIDTH JOINER (U+200D)"),
     ("a\u200cb", "the character ZERO WIDTH NON-JOINER (U+200C)"), ("a\u2028b", "the character LINE SEPARATOR (U+2028)"),
     ("a\ue000b", "an unassigned or private-use character (U+E000)"), ("a\ud800b", "a lone surrogate (U+D800)"),
     ("a\x7fb", "a control character (U+007F)"), ("a\ufeffb", "the character ZERO WIDTH NO-BREAK SPACE (U+FEFF)"),
     ("\u3164", "the character HANGUL FILLER (U+3164)")],
)
def test_control_and_invisible_characters_are_refused_naming_the_field_and_character(text, described):
    with pytest.raises(ConceptError, match=f"^the concept name contains {re.escape(described)}; "):
        check_name(text)
    with pytest.raises(ConceptError, match="^the class noun contains"):
        check_class_noun(text)
    with pytest.raises(SettingsError, match="^the prompt contains"):
        check_text("the prompt", text, 100, SettingsError)


def test_a_diverged_training_is_never_saved(tmp_path):
    state = {f"{Q}.lora_A.weight": torch.full((4, 8), math.inf), f"{Q}.lora_B.weight": torch.zeros(8, 4)}
    with pytest.raises(LoraFileError, match="^training diverged.*lower the learning rate"):
        write_lora_file(state, tmp_path)
    assert not (tmp_path / LORA_FILE).exists()
    layer = torch.nn.Linear(8, 8, bias=False)
    original = {"a.to_q": layer.weight.detach().clone()}
    with torch.no_grad():
        layer.weight[0, 0] = math.nan
    with pytest.raises(LoraFileError, match="^training diverged"):
        extract_lora({"a.to_q": layer}, original, rank=4)


def test_a_lora_for_the_model_fits_and_an_unpaired_one_does_not(pipe, random_concept):
    state = read_lora_file(random_concept(pipe).lora_path)
    check_lora_fits(pipe.components.unet, state)
    down = next(k for k in state if k.endswith("lora_A.weight"))
    with pytest.raises(LoraFileError, match="only one of the two factors"):
        check_lora_fits(pipe.components.unet, {down: state[down]})


@pytest.mark.parametrize(
    "cls, values, match",
    [
        (SampleSettings, {"seed": 2**70}, f"seed must be between 0 and {MAX_SEED}, got {2**70}"),
        (SampleSettings, {"seed": 10**400}, "seed must be between 0 and .*, got a number of about 401 digits"),
        (SampleSettings, {"seed": -2}, "seed must be between 0 and"),
        (SampleSettings, {"guidance_scale": math.nan}, "guidance_scale must be a finite number, got nan"),
        (SampleSettings, {"grounding_fraction": math.inf}, "grounding_fraction must be a finite number"),
        (SampleSettings, {"num_inference_steps": 10**400}, "num_inference_steps must be between 1 and 500"),
        (SampleSettings, {"width": 1e300}, "width must be between 8 and 4096"),
        (TrainSettings, {"learning_rate": math.inf}, "learning_rate must be a finite number, got inf"),
        (TrainSettings, {"learning_rate": 10**400}, "learning_rate must be between"),
        (TrainSettings, {"steps": "500"}, "steps must be a number"),
        (TrainSettings, {"augment": {"zoom": 1}}, "unknown setting.s. augment"),
    ],
)
def test_bad_numbers_are_refused_by_the_settings_check(cls, values, match):
    with pytest.raises(SettingsError, match=match) as caught:
        from_mapping(cls, values, "request")
    assert "\n" not in str(caught.value)


def test_every_number_setting_has_a_range():
    from dataclasses import fields
    unbounded = [f.name for cls in (SampleSettings, TrainSettings) for f in fields(cls)
                 if f.metadata and kind(f) in ("int", "float") and None in (f.metadata["low"], f.metadata["high"])]
    assert unbounded == []


def test_non_finite_boxes_are_refused_naming_the_box(capsys):
    with pytest.raises(LayoutError, match=r"^box 'dog=nan,0,1,1': coordinates must be finite numbers"):
        parse_box("dog=nan,0,1,1")
    with pytest.raises(LayoutError, match=r"^box 2 \('cat'\): coordinates must be four finite numbers"):
        check_boxes([Box("dog", (0, 0, 0.5, 0.5)), Box("cat", (0.1, math.inf, 0.5, 0.5))], (8, 8))
    with pytest.raises(LayoutError, match=r"^the label of box 1 contains a line break"):
        check_boxes([Box("a\ndog", (0, 0, 0.5, 0.5))], (8, 8))
    code = main(["generate", "--model", "tiny", "--device", "cpu", "--prompt", "a dog", "--box", "dog=0,0,inf,1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "coordinates must be finite numbers" in err[0]
