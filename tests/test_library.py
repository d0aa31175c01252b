import io
import logging
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from pacgen.concepts import COMPOSED_FILE, ConceptError, example_objects
from pacgen.errors import PACGenError
from pacgen.mini.kit import KIT, kit_photos
from pacgen.photos import load_photo
from pacgen.settings import TrainSettings
from pacgen.training import train_concept

FAST = TrainSettings(steps=1, num_class_images=1, class_image_steps=1, samples_per_photo=1)


@pytest.fixture
def photo_files(tmp_path):
    paths = []
    for k, photo in enumerate(kit_photos(KIT[1], n=5, size=64)):
        paths.append(tmp_path / f"photo{k}.png")
        photo.save(paths[-1])
    return paths


def train(pipe, library, images, name="my circle", noun="circle"):
    return list(train_concept(pipe, images, name, noun, FAST, library))


def huge_png_header(path, width=20000, height=20000):
    """A PNG whose header claims width x height pixels: decoding it would need gigabytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda files, tmp: files[:2], "2 photo(s) given; a concept needs 3 to 5"),
        (lambda files, tmp: files + files[:1], "6 photo(s) given"),
        (lambda files, tmp: files[:2] + [tmp / "notes.png"], "notes.png is not a readable image"),
        (lambda files, tmp: files[:2] + [tmp / "tiny.png"], "tiny.png is 20x20; each side must be at least 32"),
        (lambda files, tmp: files[:2] + [tmp / "big.png"], "big.png is 8000x6000 (48 MP); the limit is 40 MP"),
        (lambda files, tmp: files[:2] + [tmp / "bomb.png"], "bomb.png has too many pixels to decode safely"),
    ],
)
def test_bad_photo_sets_are_refused_and_the_library_is_untouched(pipe, library, photo_files, tmp_path, mutate, message):
    (tmp_path / "notes.png").write_text("this is not an image")
    Image.new("RGB", (20, 20)).save(tmp_path / "tiny.png")
    huge_png_header(tmp_path / "bomb.png")
    huge_png_header(tmp_path / "big.png", 8000, 6000)
    with pytest.raises(PACGenError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train(pipe, library, mutate(photo_files, tmp_path))
    assert not library.root.exists() or library.list() == []


@pytest.mark.parametrize(
    "name, noun, message",
    [
        ("", "dog", "the concept name is empty"),
        ("x" * 41, "dog", "41 characters long; the limit is 40"),
        ("!!!", "dog", "needs at least one letter, digit or emoji"),
        ("../x", "dog", "may not contain"),
        ("/abs", "dog", "may not contain"),
        ("con", "dog", "reserved"),
        ("my <dog>", "dog", "may not contain"),
        ("my dog", "", "the class noun is missing"),
    ],
)
def test_bad_names_are_refused(pipe, library, photo_files, name, noun, message):
    with pytest.raises(ConceptError, match=message):
        train(pipe, library, photo_files[:3], name, noun)
    assert not (library.root / "concepts").exists()


@pytest.mark.slow  # trains
def test_duplicate_name_is_refused_and_the_first_concept_survives(pipe, library, photo_files):
    first = train(pipe, library, photo_files[:3])[-1].concept
    stamp = (first.path / "pytorch_lora_weights.safetensors").read_bytes()
    with pytest.raises(ConceptError, match="^'My Circle!' is too close to the existing 'my circle'"):
        train(pipe, library, photo_files[:3], "My Circle!")
    assert [c.name for c in library.list()] == ["my circle"]
    assert (first.path / "pytorch_lora_weights.safetensors").read_bytes() == stamp


def test_photos_are_normalised(tmp_path):
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    Image.new("RGB", (80, 64), "red").save(rotated, format="JPEG", exif=exif)
    assert load_photo(rotated.getvalue()).size == (64, 80)
    transparent = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    assert load_photo(transparent).getpixel((0, 0)) == (255, 255, 255)
    assert load_photo(Image.new("L", (64, 64), 128)).getpixel((0, 0)) == (128, 128, 128)
    cmyk = Image.new("CMYK", (64, 64), (0, 255, 255, 0))
    assert load_photo(cmyk).mode == "RGB" and load_photo(cmyk).getpixel((0, 0))[0] > 200


@pytest.mark.slow  # trains
def test_list_get_rename_delete(pipe, library, photo_files):
    train(pipe, library, photo_files[:3], "my circle")
    train(pipe, library, photo_files[:3], "second one")
    assert [c.name for c in library.list()] == ["my circle", "second one"]
    renamed = library.rename("my circle", "best circle")
    assert renamed.name == "best circle" and renamed.path.name == "best-circle"
    assert library.get("best circle").identifier == renamed.identifier
    with pytest.raises(ConceptError, match="already exists"):
        library.rename("best circle", "second one")
    library.delete("second one")
    assert [c.name for c in library.list()] == ["best circle"]
    with pytest.raises(ConceptError, match="no concept named 'second one'"):
        library.get("second one")


@pytest.mark.slow  # trains
def test_corrupt_folder_is_skipped_with_a_warning(pipe, library, photo_files, caplog):
    train(pipe, library, photo_files[:3])
    broken = library.root / "concepts" / "broken"
    broken.mkdir()
    (broken / "concept.json").write_text("{")
    (library.root / "concepts" / "no-lora").mkdir()
    (library.root / "concepts" / "no-lora" / "concept.json").write_text(
        (library.root / "concepts" / "my-circle" / "concept.json").read_text())
    with caplog.at_level(logging.WARNING):
        assert [c.name for c in library.list()] == ["my circle"]
    assert "broken" in caplog.text and "no-lora" in caplog.text


def test_an_example_object_shows_what_it_gives_when_its_folder_has_a_composed_picture(tmp_path):
    for name, composed in (("ruby", True), ("teal", False)):
        folder = tmp_path / name
        folder.mkdir()
        Image.new("RGB", (8, 8)).save(folder / "photo_0.png")
        (folder / "concept.txt").write_text(f"name: {name} thing\nclass_noun: star\n")
        if composed:
            Image.new("RGB", (8, 8)).save(folder / COMPOSED_FILE)
    ruby, teal = example_objects(tmp_path)
    assert ruby.composed == tmp_path / "ruby" / COMPOSED_FILE and teal.composed is None
    assert ruby.photos == (tmp_path / "ruby" / "photo_0.png",)  # the picture is not one of its photos
    shipped = {e.name: e for e in example_objects(Path(__file__).resolve().parent.parent / "assets" / "concepts")}
    assert shipped["ruby checker star"].composed is not None  # `python -m pacgen.mini.bench.first_example`
