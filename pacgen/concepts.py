"""A trained concept on disk: its LoRA, its metadata, and the folder layout that holds them.

A concept folder contains `pytorch_lora_weights.safetensors` (diffusers LoRA format, readable by a
plain `StableDiffusionPipeline.load_lora_weights`), its copy `kohya_lora.safetensors` (kohya/A1111 format, for
AUTOMATIC1111, Forge and ComfyUI; folders made before it may lack it), `concept.json`, `thumbnail.png`, a
`README.md` (the Hub model card) and the training photos as `photos/<k>.png`. Nothing else belongs in one, and an
import keeps nothing else.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from PIL import Image

from .cards import model_card
from .disk import DiskFullError, StorageError, full_message, is_full, os_error_message
from .errors import PACGenError
from .kohya import KOHYA_FILE, read_kohya_file, write_kohya_file
from .lora import LORA_FILE, LoraFileError, check_lora_header, read_lora_file, write_lora_file
from .processes import process_alive
from .text import check_text, has_visible_base, name_key

logger = logging.getLogger(__name__)
META_FILE = "concept.json"
THUMBNAIL_FILE = "thumbnail.png"
README_FILE = "README.md"
PHOTOS_DIR = "photos"
MAX_NAME = 40
# Import caps, per file kind, from what training writes. The largest real LoRA is a `full` concept at rank 64 on
# SD-1.4, 258 MiB (docs/benchmarks.md); metadata, thumbnails and photos (256 px PNGs) are kilobytes.
MAX_LORA_BYTES = 1024 * 2**20
MAX_META_BYTES = 2**20
MAX_IMAGE_BYTES = 8 * 2**20
MAX_README_BYTES = 256 * 2**10
MAX_IMPORT_ENTRIES = 32  # an export has 5 files, up to 5 photos and maybe a folder entry
_PHOTO = re.compile(rf"{PHOTOS_DIR}/\d{{1,2}}\.png")
MAX_PNG_SIDE = 4096  # thumbnails and photos in an import; real ones are a few hundred pixels
# What an OS adds when a user unzips and re-zips a folder (macOS Finder, Windows Explorer): skipped, not refused.
_OS_CLUTTER = re.compile(r"(__MACOSX/.*|(.*/)?(\.DS_Store|Thumbs\.db|desktop\.ini))")
STALE_STAGING_S = 600  # a staging folder this old whose process is gone is a leftover of a crash
ABANDONED_STAGING_S = 86400  # ... and one this old is a leftover whatever its pid says (pids get reused)
_STAGING_OWNER = re.compile(r"[a-z]+-(\d+)-")


class ConceptError(PACGenError):
    """A concept that cannot be used: bad name, missing or corrupt files, wrong base model."""


@dataclass
class Concept:
    name: str
    identifier: str
    class_noun: str
    base_model: str
    base_fingerprint: str
    training: dict = field(default_factory=dict)
    duration_s: float = 0.0
    created: str = ""
    adapters: str = ""  # where the base's grounding adapters came from (its own: the base's name); older: empty
    path: Path | None = None
    # Identifies the files as they were when loaded (inode, size, mtime of concept.json and the LoRA): a sync that
    # sees another version reloads, and a concept deleted and re-imported under its name never keeps old weights.
    version: str = field(default="", compare=False, repr=False)

    @property
    def adapter_name(self) -> str:
        """A PEFT adapter name: letters and digits, and all of one length, because PEFT and diffusers pick an
        adapter's keys by substring, so a name inside another ('c_dog' in 'c_dog_two') would take its weights."""
        return "concept" + hashlib.sha256(self.name.encode()).hexdigest()[:12]

    @property
    def lora_path(self) -> Path:
        if self.path is None:
            raise ConceptError(f"concept '{self.name}' has no folder")
        return self.path / LORA_FILE

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("path")
        data.pop("version")
        return json.dumps(data, indent=2)

    @classmethod
    def load(cls, folder: str | Path, where: str | None = None) -> Concept:
        """Read a concept folder, checking its metadata field by field and its LoRA file's header.

        Messages start with `where` (default: "concept folder '<folder name>'"; "" for none) and never show a
        path. The LoRA's values are checked by `read_lora_file` when it is loaded onto a model.
        """
        folder = Path(folder)
        where = f"concept folder '{folder.name}'" if where is None else where
        if not folder.is_dir():
            raise ConceptError(f"concept folder not found: '{folder.name}'")
        meta = folder / META_FILE
        if not meta.is_file():
            raise ConceptError(_at(where, f"it has no {META_FILE}, so it is not a concept folder"))
        version = _version(folder)  # before reading: a change made while reading shows as a new version next time
        if meta.stat().st_size > MAX_META_BYTES:
            raise ConceptError(_at(where, f"{META_FILE} is larger than {MAX_META_BYTES // 2**10} KiB"))
        try:
            data = json.loads(meta.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as error:
            raise ConceptError(_at(where, f"{META_FILE} is corrupt ({str(error).splitlines()[0]})")) from None
        concept = cls(**_checked_metadata(data, where), path=folder, version=version)
        try:
            check_lora_header(concept.lora_path)
        except LoraFileError as error:
            raise ConceptError(_at(where, str(error))) from None
        return concept


def _at(where: str, problem: str) -> str:
    return f"{where}: {problem}" if where else problem


def _version(folder: Path) -> str:
    parts = []
    for name in (META_FILE, LORA_FILE):
        try:
            stat = (folder / name).stat()
        except FileNotFoundError:
            parts.append("-")
            continue
        parts.append(f"{stat.st_ino:x}.{stat.st_size:x}.{stat.st_mtime_ns:x}")
    return "/".join(parts)


def _checked_metadata(data: object, where: str) -> dict:
    """The Concept fields of a parsed concept.json, each checked for its type and content; unknown keys (from a
    newer version) are ignored."""
    if not isinstance(data, dict):
        raise ConceptError(_at(where, f"{META_FILE} must hold a JSON object, not {_json_kind(data)}"))

    def given(key: str) -> object:
        if key not in data:
            raise ConceptError(_at(where, f"{META_FILE} has no '{key}'"))
        return data[key]

    def text(key: str, max_len: int) -> str:
        return check_text(_at(where, f"{META_FILE} field '{key}'"), given(key), max_len, ConceptError)

    name, class_noun = given("name"), given("class_noun")
    try:
        name, class_noun = check_name(name), check_class_noun(class_noun)
    except ConceptError as error:
        raise ConceptError(_at(where, str(error))) from None
    identifier = check_identifier(given("identifier"), _at(where, f"{META_FILE} field 'identifier'"))
    values = {"name": name, "identifier": identifier, "class_noun": class_noun,
              "base_model": text("base_model", 500), "base_fingerprint": text("base_fingerprint", 128)}
    training = data.get("training", {})
    if not isinstance(training, dict):
        raise ConceptError(_at(where, f"{META_FILE} field 'training' must be an object, not {_json_kind(training)}"))
    duration = data.get("duration_s", 0.0)
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not math.isfinite(duration) \
            or duration < 0:
        raise ConceptError(_at(where, f"{META_FILE} field 'duration_s' must be a number of seconds, 0 or more"))
    created = check_text(_at(where, f"{META_FILE} field 'created'"), data.get("created", ""), 64, ConceptError)
    if created:
        try:
            datetime.fromisoformat(created)
        except ValueError:
            raise ConceptError(_at(where, f"{META_FILE} field 'created' must be a date and time")) from None
    adapters = check_text(_at(where, f"{META_FILE} field 'adapters'"), data.get("adapters", ""), 500, ConceptError)
    return {**values, "training": training, "duration_s": float(duration), "created": created, "adapters": adapters}


def _json_kind(value: object) -> str:
    kinds = {bool: "true/false", int: "a number", float: "a number", str: "text", list: "a list", dict: "an object"}
    return kinds.get(type(value), "null")


_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


def slugify(name: str) -> str:
    """A folder name for a concept, never a path trick: its lowercase ASCII words joined by dashes, and for a name
    beyond ASCII (another script, emoji) a short hash of the name as well, so every script gets its own folder.

    ASCII names keep the folders they always had. Folders of non-ASCII names made before the hash are still
    found (`ConceptLibrary.get` falls back to the names inside the folders).
    """
    key = name_key(name)
    words = re.sub(r"[^a-z0-9]+", "-", key).strip("-")
    if key.isascii():
        return words
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return f"{words}-{digest}" if words else digest


def check_name(name: object) -> str:
    """Validate a user-given concept name and return it stripped; the message says what is wrong."""
    name = name.strip() if isinstance(name, str) else "" if name is None else name
    name = check_text("the concept name", name, MAX_NAME, ConceptError)
    if not name:
        raise ConceptError("the concept name is empty")
    if any(c in name for c in "<>/\\") or name.startswith("."):
        raise ConceptError(f"the concept name '{name}' may not contain '<', '>', '/', '\\' or start with '.'")
    slug = slugify(name)
    if not slug or not has_visible_base(name):  # a lone accent (U+0301) has a slug, but shows as nothing
        raise ConceptError(f"the concept name '{name}' needs at least one letter, digit or emoji")
    if slug in _RESERVED:
        raise ConceptError(f"the concept name '{name}' is reserved by some file systems; choose another")
    return name


def check_identifier(identifier: object, field: str = "the trigger word") -> str:
    """Validate the word a prompt uses for a concept (`sks`, a kohya LoRA's trigger word) and return it: one word,
    since PACGen writes it before the class noun, and no '<' or '>', which mark concept names in prompts."""
    identifier = check_text(field, identifier, MAX_NAME, ConceptError)
    if not re.fullmatch(r"[^\s<>]+", identifier):
        raise ConceptError(f"{field} must be one word without spaces, '<' or '>'")
    return identifier


def check_class_noun(noun: object) -> str:
    """Validate what the object is ('dog', 'mug', 'Hund', '犬') and return it stripped."""
    noun = noun.strip() if isinstance(noun, str) else "" if noun is None else noun
    noun = check_text("the class noun", noun, MAX_NAME, ConceptError)
    if not noun:
        raise ConceptError("the class noun is missing: say what the object is, e.g. 'dog' or 'mug'")
    if any(c in noun for c in "<>"):
        raise ConceptError(f"the class noun '{noun}' must be a short word without '<' or '>'")
    return noun


def default_home() -> Path:
    """`$PACGEN_HOME`, else `~/.pacgen`: where concepts and cached class images live."""
    return Path(os.environ.get("PACGEN_HOME") or Path.home() / ".pacgen")


def _import_cap(member_name: str) -> int | None:
    """The size cap of a file an export holds, by its path in the zip; None for anything else."""
    caps = {META_FILE: MAX_META_BYTES, LORA_FILE: MAX_LORA_BYTES, KOHYA_FILE: MAX_LORA_BYTES,
            THUMBNAIL_FILE: MAX_IMAGE_BYTES, README_FILE: MAX_README_BYTES}
    return caps.get(member_name, MAX_IMAGE_BYTES if _PHOTO.fullmatch(member_name) else None)


def _megabytes(size: int) -> str:
    return f"{size / 2**20:.1f} MB" if size >= 2**20 else f"{size / 2**10:.0f} KB"


class ConceptLibrary:
    """A folder of concept folders. Writes go through a staging folder and one rename, so a crash or a
    cancel never leaves half a concept behind, and a corrupt folder never stops the others from listing."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root else default_home()
        self.concepts_dir = self.root / "concepts"
        self.staging_dir = self.root / "staging"
        self._remove_stale_staging()

    def _remove_stale_staging(self) -> None:
        """Remove staging folders left by a killed process: its pid is gone and the folder is old enough, so a
        live import or training save of another process (`concept-<pid>-…`) is never touched."""
        if not self.staging_dir.is_dir():
            return
        now = time.time()
        for entry in self.staging_dir.iterdir():
            try:
                age = now - entry.lstat().st_mtime
            except FileNotFoundError:  # removed by its owner meanwhile
                continue
            owner = _STAGING_OWNER.match(entry.name)
            alive = owner is not None and process_alive(int(owner.group(1)))
            if (age > STALE_STAGING_S and not alive) or age > ABANDONED_STAGING_S:
                logger.info("removing a staging leftover %s", entry.name)
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)

    def scan(self) -> tuple[list[Concept], list[tuple[str, str]]]:
        """The usable concepts, and each broken folder as (folder name, one-line reason), so an app can report
        it. A folder whose concept has the name of an earlier one is broken too: names pick concepts."""
        found: list[Concept] = []
        broken: list[tuple[str, str]] = []
        seen: dict[str, str] = {}
        if not self.concepts_dir.is_dir():
            return found, broken
        for folder in sorted(self.concepts_dir.iterdir()):
            if not folder.is_dir():
                continue
            try:
                concept = Concept.load(folder, where="")
            except ConceptError as error:
                broken.append((folder.name, str(error)))
                logger.warning("skipping concept folder %s: %s", folder.name, error)
                continue
            key = name_key(concept.name)
            if key in seen:
                broken.append((folder.name, f"its concept '{concept.name}' has the name of folder '{seen[key]}'"))
                continue
            seen[key] = folder.name
            found.append(concept)
        return found, broken

    def list(self) -> list[Concept]:
        return self.scan()[0]

    def get(self, name: str) -> Concept:
        """The concept whose name is `name` as `name_key` compares names ('dog' finds 'Dog')."""
        name = check_name(name)
        key = name_key(name)
        folder = self.concepts_dir / slugify(name)
        if folder.is_dir():
            concept = Concept.load(folder)
            if name_key(concept.name) == key:
                return concept
        concepts = self.list()
        for concept in concepts:  # a folder named before slugs had hashes, or before today's name_key
            if name_key(concept.name) == key:
                return concept
        known = ", ".join(c.name for c in concepts) or "the library is empty"
        raise ConceptError(f"no concept named '{name}' in the library ({known})")

    def resolve(self, ref: str) -> Concept:
        """A concept folder path, or the name of a concept in this library."""
        looks_like_path = Path(ref).exists() or os.sep in ref
        return Concept.load(ref) if looks_like_path else self.get(ref)

    def identifiers(self) -> set[str]:
        return {c.identifier for c in self.list()}

    def check_new_name(self, name: str) -> str:
        """`name` checked, if no concept has it (as `name_key` compares names) or would share its folder; the
        message names the concept it collides with."""
        name = check_name(name)
        for concept in self.list():
            _refuse_collision(concept, name)
        folder = self.concepts_dir / slugify(name)
        if folder.exists():  # unreadable, or moved in by another import since the list was read
            try:
                concept = Concept.load(folder)
            except (ConceptError, OSError):
                raise ConceptError(f"a concept named '{name}' already exists as a folder that cannot be read; "
                                   "remove it or choose another name") from None
            _refuse_collision(concept, name)
            raise ConceptError(f"'{name}' is too close to the existing '{concept.name}'; choose another name")
        return name

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A private temporary folder, named for this process; it is always removed, whether the work succeeds
        or not (and by the next library opened, should the process be killed).

        A data folder that cannot be made, or a disk that fills up meanwhile, is a one-line StorageError naming the
        data folder (and for a full disk, DiskFullError: the room left and about what the concept needs)."""
        try:
            self.staging_dir.mkdir(parents=True, exist_ok=True)
            folder = Path(tempfile.mkdtemp(prefix=f"concept-{os.getpid()}-", dir=self.staging_dir))
        except OSError as error:
            raise (DiskFullError if is_full(error) else StorageError)(os_error_message(error, self.root)) from None
        try:
            yield folder
        except (OSError, DiskFullError) as error:
            if not is_full(error):
                raise
            written = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            needed = getattr(error, "needed_bytes", 0) or written + 2**20  # from the weights' writer, else a guess
            raise DiskFullError(full_message(self.root, needed), needed) from None
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _move_in(self, source: Path, name: str) -> Path:
        """Rename a complete folder into the library as `name`'s; of two at once with one name, the second fails
        cleanly (a directory rename never replaces a non-empty one)."""
        self.concepts_dir.mkdir(parents=True, exist_ok=True)
        target = self.concepts_dir / slugify(name)
        try:
            source.rename(target)
        except OSError as error:
            if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise ConceptError(f"a concept named '{name}' already exists; delete it or choose another name") \
                    from None
            raise
        return target

    def commit(self, staged: Path, concept: Concept) -> Concept:
        """Write the metadata into a staged folder and move it into the library in one rename."""
        self.check_new_name(concept.name)
        (staged / META_FILE).write_text(concept.to_json())
        return Concept.load(self._move_in(staged, concept.name))

    def delete(self, name: str) -> None:
        concept = self.get(name)
        # Rename first: a crash mid-delete leaves a hidden leftover, never a broken concept.
        trash = self.staging_dir / f"deleted-{os.getpid()}-{concept.path.name}"
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        try:
            concept.path.rename(trash)
        except FileNotFoundError:  # deleted by someone else meanwhile
            raise ConceptError(f"no concept named '{concept.name}' in the library (it was just deleted)") from None
        shutil.rmtree(trash)

    def rename(self, name: str, new_name: str) -> Concept:
        concept = self.get(name)
        new_name = self.check_new_name(new_name)
        concept.name = new_name
        temp = concept.path / (META_FILE + ".tmp")
        temp.write_text(concept.to_json())
        os.replace(temp, concept.path / META_FILE)
        return Concept.load(self._move_in(concept.path, new_name))

    def export_zip(self, name: str, dest: str | Path) -> Path:
        """Pack a concept folder's files (those an import accepts) into `<dest>/<slug>.zip`; a folder made before
        concepts carried a kohya copy gets one in the zip, so every download loads in A1111, Forge and ComfyUI."""
        concept = self.get(name)
        target = Path(dest) / f"{concept.path.name}.zip"
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(concept.path.rglob("*")):
                member = file.relative_to(concept.path).as_posix()
                if file.is_file() and not file.is_symlink() and _import_cap(member) is not None:
                    archive.write(file, member)
            if not (concept.path / KOHYA_FILE).is_file():
                with tempfile.TemporaryDirectory() as extra:  # not the library's staging: it may be read-only
                    archive.write(write_kohya_file(read_lora_file(concept.lora_path), extra), KOHYA_FILE)
        return target

    def import_zip(self, archive_path: str | Path, fingerprint: str,
                   check: Callable[[Concept, dict], None] | None = None) -> Concept:
        """Add a concept from a zip made by `export_zip`; nothing enters the library unless all of it is sound.

        Accepted: at most `MAX_IMPORT_ENTRIES` entries, each one of the files an export holds (concept.json, the
        LoRA and its kohya copy, thumbnail.png, README.md, photos/<k>.png), each under its size cap counted in bytes actually
        unpacked (a zip's size header can lie), plus a `photos/` folder entry. Files an OS adds when re-zipping
        (`__MACOSX/`, `.DS_Store`, `Thumbs.db`, `desktop.ini`) are skipped. Anything else is refused, naming the
        entry: an unknown file, a path that leaves the folder, a link, an encrypted or duplicate entry. Then the
        metadata is checked field by field, the LoRA read in full (finite values), the base model compared, and
        `check` (e.g. that the LoRA fits the loaded model) runs on the staged concept before the one rename that
        commits it. Every refusal is a ConceptError naming the zip; the staging folder is always removed.
        """
        zip_name = Path(archive_path).name
        try:
            archive = zipfile.ZipFile(archive_path)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError):
            raise ConceptError(f"{zip_name} is not a zip file") from None
        with archive, self.staging() as staged:
            for member, cap in _import_plan(archive, zip_name):
                _unpack(archive, member, staged, cap, zip_name)
            return self._admit(staged, zip_name, fingerprint, check)

    def import_kohya(self, path: str | Path, name: str, class_noun: str, trigger: str, fingerprint: str,
                     base_model: str, check: Callable[[Concept, dict], None] | None = None) -> Concept:
        """Add a kohya-format SD-1.x LoRA (kohya's scripts, civitai) as the concept `name`, a `class_noun` that a
        prompt calls up with its `trigger` word, on the loaded base model (`base_model`, `fingerprint`).

        The file may change only UNet layers a concept may change (`read_kohya_file`, which names a key it
        refuses); it is stored in our format at scale 1, with a kohya copy and a model card, and goes through the
        same checks and single rename as a zip import (`check`: e.g. that it fits the loaded model).
        """
        name, class_noun = self.check_new_name(name), check_class_noun(class_noun)
        identifier = check_identifier(trigger.strip() if isinstance(trigger, str) else trigger)
        path = Path(path)
        if path.is_file() and path.stat().st_size > MAX_LORA_BYTES:
            raise ConceptError(f"{path.name} is {_megabytes(path.stat().st_size)}; the limit is "
                               f"{_megabytes(MAX_LORA_BYTES)}")
        with self.staging() as staged:
            try:
                state = read_kohya_file(path)
                write_lora_file({k.removeprefix("unet."): v for k, v in state.items()}, staged)  # it adds "unet."
            except StorageError:
                raise  # the disk, not the file: `staging` says so
            except PACGenError as error:
                raise ConceptError(str(error)) from None
            ranks = {v.shape[0] for k, v in state.items() if k.endswith(".lora_A.weight")}
            concept = Concept(name, identifier, class_noun, base_model, fingerprint,
                              training={"imported_from": path.name, "rank": max(ranks)},
                              created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
            (staged / META_FILE).write_text(concept.to_json())
            (staged / README_FILE).write_text(model_card(concept, 0, augmented=False))
            return self._admit(staged, path.name, fingerprint, check)

    def _admit(self, staged: Path, where: str, fingerprint: str, check: Callable[[Concept, dict], None] | None) -> Concept:
        """What every import ends with, on a staged folder that holds all its files: the metadata checked field by
        field, the LoRA read in full, its kohya copy read (or written, for exports made before concepts had one),
        the base model compared and `check` run, then the one rename that commits it. Refusals start with `where`."""
        concept = Concept.load(staged, where=where)
        try:
            state = read_lora_file(concept.lora_path)
            if (staged / KOHYA_FILE).is_file():
                read_kohya_file(staged / KOHYA_FILE)
            else:
                write_kohya_file(state, staged)
            if concept.base_fingerprint != fingerprint:
                raise ConceptError(f"concept '{concept.name}' was trained on '{concept.base_model}', a "
                                   "different base model from the one loaded; it cannot be used here")
            if check is not None:
                check(concept, state)  # the weights as read above: never read twice
            return self.commit(staged, concept)
        except StorageError:
            raise  # the disk, not the import: `staging` says so
        except PACGenError as error:
            raise ConceptError(f"{where}: {error}") from None


def _refuse_collision(concept: Concept, name: str) -> None:
    """A ConceptError if `name` is `concept`'s name (as `name_key` compares names) or would share its folder."""
    if name_key(concept.name) == name_key(name):
        same = "" if concept.name == name else f" ('{name}' is the same name)"
        raise ConceptError(f"a concept named '{concept.name}' already exists{same}; delete it or choose another name")
    if slugify(concept.name) == slugify(name):
        raise ConceptError(f"'{name}' is too close to the existing '{concept.name}'; choose another name")


def _import_plan(archive: zipfile.ZipFile, zip_name: str) -> list[tuple[zipfile.ZipInfo, int]]:
    """The entries of an import to unpack, each with its size cap; refuses the zip as a whole otherwise."""
    members = archive.infolist()
    if len(members) > MAX_IMPORT_ENTRIES:
        raise ConceptError(f"{zip_name} has {len(members)} entries; a concept export has at most {MAX_IMPORT_ENTRIES}")
    plan, seen = [], set()
    for member in members:
        name = member.filename
        if name.startswith("/") or "\\" in name or ":" in name or ".." in name.split("/"):
            raise ConceptError(f"{zip_name} contains an unsafe path: {name!r}")
        if (member.external_attr >> 16) & 0o170000 == 0o120000:
            raise ConceptError(f"{zip_name} contains a symbolic link ({name!r}); a concept export has none")
        if name in seen:
            raise ConceptError(f"{zip_name} contains {name!r} twice")
        seen.add(name)
        if _OS_CLUTTER.fullmatch(name) or name == f"{PHOTOS_DIR}/":
            continue
        cap = _import_cap(name)
        if cap is None:
            raise ConceptError(f"{zip_name} contains {name!r}, which is not part of a concept export (only "
                               f"{META_FILE}, {LORA_FILE}, {KOHYA_FILE}, {THUMBNAIL_FILE}, {README_FILE} and "
                               f"{PHOTOS_DIR}/<k>.png are accepted)")
        if member.flag_bits & 0x1:
            raise ConceptError(f"{zip_name} is encrypted ({name!r}); export the concept again without a password")
        if member.file_size > cap:
            raise ConceptError(f"{zip_name}: {name} is {_megabytes(member.file_size)}; the limit is {_megabytes(cap)}")
        plan.append((member, cap))
    if META_FILE not in seen or LORA_FILE not in seen:
        raise ConceptError(f"{zip_name} is not a concept export: it needs {META_FILE} and {LORA_FILE}")
    return plan


def _unpack(archive: zipfile.ZipFile, member: zipfile.ZipInfo, folder: Path, cap: int, zip_name: str) -> None:
    """Write one entry into `folder`, counting the bytes as they come: past `cap` the import stops, whatever the
    zip's header claimed. The CRC is checked as the entry is read to its end."""
    target = folder / member.filename
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    try:
        with archive.open(member) as source, open(target, "xb") as out:
            while chunk := source.read(2**20):
                written += len(chunk)
                if written > cap:
                    raise ConceptError(f"{zip_name}: {member.filename} unpacks to more than {_megabytes(cap)}, "
                                       "the limit")
                out.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise ConceptError(f"{zip_name} is damaged ({member.filename}: {str(error).splitlines()[0]})") from None
    except NotImplementedError:
        raise ConceptError(f"{zip_name}: {member.filename} uses a compression this app cannot read; export the "
                           "concept again") from None
    if target.suffix == ".png" and not _sound_png(target):
        raise ConceptError(f"{zip_name}: {member.filename} is not a readable PNG image of at most "
                           f"{MAX_PNG_SIDE}×{MAX_PNG_SIDE} pixels")


def _sound_png(path: Path) -> bool:
    """A PNG that decodes completely, of a size a page can show: checked once at import, not on every page load."""
    try:
        with Image.open(path, formats=["PNG"]) as image:  # PIL's PNG decoder only: it checks the signature
            if max(image.size) > MAX_PNG_SIDE:
                return False
            image.load()
    except (OSError, ValueError, Image.DecompressionBombError):
        return False
    return True


@dataclass(frozen=True)
class ExampleObject:
    """Photos of an object to train on, with the name and class noun to give it (a model's example kit)."""

    name: str
    class_noun: str
    photos: tuple[Path, ...]
    composed: Path | None = None  # what it gives: its photos beside images composed at the model's defaults


COMPOSED_FILE = "composed.png"  # written by `python -m pacgen.mini.bench.first_example`


def example_objects(folder: Path | None) -> list[ExampleObject]:
    """Every `<folder>/<object>/` with `photo_*.png` and a `concept.txt` of `name:` and `class_noun:` lines (and,
    when it has one, `composed.png`: what training it with the defaults gives)."""
    if folder is None or not folder.is_dir():
        return []
    found = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        info_file = sub / "concept.txt"
        photos = tuple(sorted(sub.glob("photo_*.png")))
        if not info_file.is_file() or not photos:
            continue
        info = dict(line.split(":", 1) for line in info_file.read_text().splitlines() if ":" in line)
        composed = sub / COMPOSED_FILE
        found.append(ExampleObject(info.get("name", sub.name).strip(), info.get("class_noun", "").strip(), photos,
                                   composed if composed.is_file() else None))
    return found
