"""A trained concept on disk: its LoRA, its metadata, and the folder layout that holds them.

A concept folder contains `pytorch_lora_weights.safetensors` (diffusers LoRA format, readable by a
plain `StableDiffusionPipeline.load_lora_weights`), `concept.json`, `thumbnail.png` and a `README.md`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from .errors import PACGenError
from .lora import LORA_FILE, LoraFileError, read_lora_file

logger = logging.getLogger(__name__)
META_FILE = "concept.json"
THUMBNAIL_FILE = "thumbnail.png"
IMPORT_SUFFIXES = {".json", ".safetensors", ".png", ".md"}
MAX_IMPORT_BYTES = 512 * 2**20


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
    path: Path | None = None

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
        return json.dumps(data, indent=2)

    @classmethod
    def load(cls, folder: str | Path) -> Concept:
        """Read a concept folder, checking its metadata and that its LoRA file is sound."""
        folder = Path(folder)
        meta = folder / META_FILE
        if not folder.is_dir():
            raise ConceptError(f"concept folder not found: {folder}")
        if not meta.is_file():
            raise ConceptError(f"{folder} is not a concept folder: it has no {META_FILE}")
        try:
            data = json.loads(meta.read_text())
            concept = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "path"})
        except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as error:
            raise ConceptError(f"{meta} is corrupt ({error})") from None
        concept.path = folder
        try:
            read_lora_file(concept.lora_path)
        except LoraFileError as error:
            raise ConceptError(f"concept '{concept.name}': {error}") from None
        return concept


_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
MAX_NAME = 40


def slugify(name: str) -> str:
    """A folder name for a concept: lowercase ASCII words joined by dashes, never a path trick."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def check_name(name: str) -> str:
    """Validate a user-given concept name and return it stripped; the message says what is wrong."""
    name = (name or "").strip()
    if not name:
        raise ConceptError("the concept name is empty")
    if len(name) > MAX_NAME:
        raise ConceptError(f"the concept name is {len(name)} characters long; the limit is {MAX_NAME}")
    if any(c in name for c in "<>/\\") or name.startswith("."):
        raise ConceptError(f"the concept name '{name}' may not contain '<', '>', '/', '\\' or start with '.'")
    slug = slugify(name)
    if not slug:
        raise ConceptError(f"the concept name '{name}' needs at least one letter or digit")
    if slug in _RESERVED:
        raise ConceptError(f"the concept name '{name}' is reserved by some file systems; choose another")
    return name


def default_home() -> Path:
    """`$PACGEN_HOME`, else `~/.pacgen`: where concepts and cached class images live."""
    return Path(os.environ.get("PACGEN_HOME") or Path.home() / ".pacgen")


class ConceptLibrary:
    """A folder of concept folders. Writes go through a staging folder and one rename, so a crash or a
    cancel never leaves half a concept behind, and a corrupt folder never stops the others from listing."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root else default_home()
        self.concepts_dir = self.root / "concepts"
        self.staging_dir = self.root / "staging"

    def list(self) -> list[Concept]:
        found = []
        if not self.concepts_dir.is_dir():
            return found
        for folder in sorted(self.concepts_dir.iterdir()):
            if not folder.is_dir():
                continue
            try:
                found.append(Concept.load(folder))
            except ConceptError as error:
                logger.warning("skipping concept folder %s: %s", folder.name, error)
        return found

    def get(self, name: str) -> Concept:
        folder = self.concepts_dir / slugify(name)
        if slugify(name) and folder.is_dir():
            return Concept.load(folder)
        known = ", ".join(c.name for c in self.list()) or "the library is empty"
        raise ConceptError(f"no concept named '{name}' in {self.concepts_dir} ({known})")

    def resolve(self, ref: str) -> Concept:
        """A concept folder path, or the name of a concept in this library."""
        looks_like_path = Path(ref).exists() or os.sep in ref
        return Concept.load(ref) if looks_like_path else self.get(ref)

    def identifiers(self) -> set[str]:
        return {c.identifier for c in self.list()}

    def check_new_name(self, name: str) -> str:
        name = check_name(name)
        if (self.concepts_dir / slugify(name)).exists():
            raise ConceptError(f"a concept named '{name}' already exists; delete it or choose another name")
        return name

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A private temporary folder; it is always removed, whether the work succeeds or not."""
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="concept-", dir=self.staging_dir))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def commit(self, staged: Path, concept: Concept) -> Concept:
        """Write the metadata into a staged folder and move it into the library in one rename."""
        self.check_new_name(concept.name)
        (staged / META_FILE).write_text(concept.to_json())
        self.concepts_dir.mkdir(parents=True, exist_ok=True)
        target = self.concepts_dir / slugify(concept.name)
        staged.rename(target)
        return Concept.load(target)

    def delete(self, name: str) -> None:
        concept = self.get(name)
        # Rename first: a crash mid-delete leaves a hidden leftover, never a broken concept.
        trash = self.staging_dir / f"deleted-{concept.path.name}-{os.getpid()}"
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        concept.path.rename(trash)
        shutil.rmtree(trash)

    def rename(self, name: str, new_name: str) -> Concept:
        concept = self.get(name)
        new_name = self.check_new_name(new_name)
        concept.name = new_name
        temp = concept.path / (META_FILE + ".tmp")
        temp.write_text(concept.to_json())
        os.replace(temp, concept.path / META_FILE)
        target = self.concepts_dir / slugify(new_name)
        concept.path.rename(target)
        return Concept.load(target)

    def export_zip(self, name: str, dest: str | Path) -> Path:
        """Pack a concept folder into `<dest>/<slug>.zip` for sharing or backup."""
        concept = self.get(name)
        target = Path(dest) / f"{concept.path.name}.zip"
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(concept.path.rglob("*")):
                if file.is_file():
                    archive.write(file, file.relative_to(concept.path).as_posix())
        return target

    def import_zip(self, archive_path: str | Path, fingerprint: str) -> Concept:
        """Add a concept from a zip made by `export_zip`, checking it before anything enters the library.

        Only plain relative paths, a bounded size, safetensors weights and a matching base model are accepted.
        """
        archive_path = Path(archive_path)
        try:
            archive = zipfile.ZipFile(archive_path)
        except (zipfile.BadZipFile, OSError):
            raise ConceptError(f"{archive_path.name} is not a zip file") from None
        with archive, self.staging() as staged:
            members = archive.infolist()
            names = {m.filename for m in members}
            if META_FILE not in names or LORA_FILE not in names:
                raise ConceptError(f"{archive_path.name} is not a concept export: it needs {META_FILE} and {LORA_FILE}")
            if sum(m.file_size for m in members) > MAX_IMPORT_BYTES:
                raise ConceptError(f"{archive_path.name} unpacks to more than {MAX_IMPORT_BYTES // 2**20} MB")
            for member in members:
                parts = Path(member.filename).parts
                if member.filename.startswith("/") or ".." in parts or ":" in member.filename:
                    raise ConceptError(f"{archive_path.name} contains an unsafe path: {member.filename}")
                if not member.is_dir() and Path(member.filename).suffix.lower() not in IMPORT_SUFFIXES:
                    raise ConceptError(f"{archive_path.name} contains {member.filename}: only "
                                       f"{', '.join(sorted(IMPORT_SUFFIXES))} files are accepted (no pickles)")
            archive.extractall(staged)
            concept = Concept.load(staged)
            if concept.base_fingerprint != fingerprint:
                raise ConceptError(f"concept '{concept.name}' was trained on '{concept.base_model}', a different "
                                   "base model from the one loaded; it cannot be used here")
            return self.commit(staged, concept)


@dataclass(frozen=True)
class ExampleObject:
    """Photos of an object to train on, with the name and class noun to give it (a model's example kit)."""

    name: str
    class_noun: str
    photos: tuple[Path, ...]


def example_objects(folder: Path | None) -> list[ExampleObject]:
    """Every `<folder>/<object>/` with `photo_*.png` and a `concept.txt` of `name:` and `class_noun:` lines."""
    if folder is None or not folder.is_dir():
        return []
    found = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        info_file = sub / "concept.txt"
        photos = tuple(sorted(sub.glob("photo_*.png")))
        if not info_file.is_file() or not photos:
            continue
        info = dict(line.split(":", 1) for line in info_file.read_text().splitlines() if ":" in line)
        found.append(ExampleObject(info.get("name", sub.name).strip(), info.get("class_noun", "").strip(), photos))
    return found
