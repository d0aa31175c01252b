"""Batch jobs: many layouts and scenes from a JSONL file, on one process or shared out over several.

One line is one request: `{"prompt": "<my mug> on a desk", "boxes": [["<my mug>", 0.1, 0.4, 0.5, 0.9]], "seed": 1,
"num_images": 4}`, with optional `negative_prompt`, `concepts` (names or folders), `scene` (a photo path, relative
to the jobs file) and any sampling setting by its name. The whole file is checked before any work, and every
problem is reported by line number and field.

Each image is its own unit of work, sampled alone from its own seed (line seed + index; a line without a seed gets
one derived from its text), so an image is the same bit for bit whichever process makes it and however many there
are. It is written atomically under a name made from its line and index, with A1111-style `parameters` text (what
PNG-info readers show) and a row in `manifest.jsonl`; a rerun skips what exists, so a killed job continues.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from PIL import Image, PngImagePlugin

from .concepts import Concept, ConceptLibrary
from .errors import PACGenError
from .layout import Box, LayoutError, concept_refs
from .sampling import PACGenPipeline
from .scene import load_scene
from .settings import MAX_SEED, SampleSettings, SettingsError, check_value, surfaced

MANIFEST = "manifest.jsonl"
JOB_FIELDS = ("prompt", "negative_prompt", "boxes", "concepts", "scene")
SETTING_FIELDS = {f.name: f for f in surfaced(SampleSettings)}
MAX_LINE_BYTES = 1 << 20
MAX_SHOWN_PROBLEMS = 20  # problems printed one per line; the rest are counted
DIGEST_KEY = "pacgen-job"  # PNG text chunk: which job and model an image was made from
# A1111's names for our schedulers (PNDM is A1111's PLMS), so PNG-info readers show a familiar sampler.
A1111_SAMPLERS = {"dpm++": "DPM++ 2M", "ddim": "DDIM", "euler": "Euler", "pndm": "PLMS"}


class BatchError(PACGenError):
    """A jobs file or output folder that cannot be run; the message names the line and field, or the file."""


@dataclass(frozen=True)
class Problem:
    """One bad line of a jobs file: where, which field, what is wrong."""

    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}, {self.field}: {self.message}"


@dataclass
class Job:
    """One checked line of a jobs file."""

    line: int
    text: str  # the line as written: its digest names the images it makes
    prompt: str
    negative_prompt: str = ""
    boxes: list[Box] = field(default_factory=list)
    concepts: list[str] = field(default_factory=list)
    scene: Path | None = None
    settings: dict = field(default_factory=dict)  # sampling settings by name, checked one by one

    @property
    def seed(self) -> int:
        """The line's seed, or one derived from its text: the same on every process and every rerun."""
        if self.settings.get("seed") is not None:
            return self.settings["seed"]
        digest = int(hashlib.sha256(self.text.encode()).hexdigest(), 16)
        return digest % (MAX_SEED - SETTING_FIELDS["num_images"].metadata["high"])

    @property
    def num_images(self) -> int:
        return self.settings.get("num_images", 1)


@dataclass
class PlannedImage:
    """One image of a job: its seed and the file it goes to."""

    job: Job
    index: int
    seed: int
    path: Path
    digest: str  # the job's line and the model: an existing file with another digest was made from something else

    def exists(self) -> bool:
        return self.path.is_file()


# ----------------------------------------------------------------------------------- reading and checking


def read_jobs(path: str | Path) -> tuple[list[Job], list[Problem]]:
    """Every line of a jobs file parsed and checked field by field (no model needed); blank lines and lines
    starting with `#` are skipped. Returns the good jobs and the problems of the bad lines."""
    path = Path(path)
    if not path.is_file():
        raise BatchError(f"jobs file not found: '{path.name}'")
    jobs, problems = [], []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                jobs.extend(_job(number, raw, path.parent))
            except _LineProblem as problem:
                problems.append(problem.problem)
    return jobs, problems


class _LineProblem(Exception):
    def __init__(self, line: int, where: str, message: str):
        super().__init__(message)
        self.problem = Problem(line, where, message)


def _job(number: int, raw: bytes, folder: Path) -> list[Job]:
    def bad(where: str, message: str) -> _LineProblem:
        return _LineProblem(number, where, message)

    if len(raw) > MAX_LINE_BYTES:
        raise bad("line", f"longer than {MAX_LINE_BYTES // 2**10} KiB")
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise bad("line", "not UTF-8 text") from None
    if not text or text.startswith("#"):
        return []
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise bad("line", f"not valid JSON ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise bad("line", f"must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(JOB_FIELDS) - set(SETTING_FIELDS))
    if unknown:
        raise bad(unknown[0], f"unknown field; known: {', '.join([*JOB_FIELDS, *SETTING_FIELDS])}")
    for name in ("prompt", "negative_prompt"):
        if name in data and not isinstance(data[name], str):
            raise bad(name, f"must be text, got {json.dumps(data[name])[:40]}")
    if not data.get("prompt", "").strip():
        raise bad("prompt", "missing or empty")
    settings = {}
    for name, value in data.items():
        if name in SETTING_FIELDS:
            try:
                settings[name] = check_value(SETTING_FIELDS[name], value)
            except SettingsError as error:
                raise bad(name, str(error)) from None
    concepts = data.get("concepts", [])
    if not isinstance(concepts, list) or not all(isinstance(c, str) and c.strip() for c in concepts):
        raise bad("concepts", "must be a list of concept names or folders")
    scene = data.get("scene")
    if scene is not None:
        if not isinstance(scene, str) or not scene.strip():
            raise bad("scene", "must be the path of a photo")
        scene = folder / scene
        if not scene.is_file():
            raise bad("scene", f"photo not found: '{Path(data['scene']).name}'")
    return [Job(number, text, data["prompt"], data.get("negative_prompt", ""), _boxes(data.get("boxes", []), bad),
                [c.strip() for c in concepts], scene, settings)]


def _boxes(value: object, bad: Callable[[str, str], _LineProblem]) -> list[Box]:
    if not isinstance(value, list):
        raise bad("boxes", "must be a list of [label, x0, y0, x1, y1]")
    boxes = []
    for index, item in enumerate(value, start=1):
        if not (isinstance(item, list) and len(item) == 5 and isinstance(item[0], str)
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in item[1:])):
            raise bad("boxes", f"box {index} must be [label, x0, y0, x1, y1], got {json.dumps(item)[:60]}")
        boxes.append(Box(item[0].strip(), tuple(float(v) for v in item[1:])))
    return boxes


def check_jobs(pipe: PACGenPipeline, library: ConceptLibrary, jobs: list[Job]) -> list[Problem]:
    """Check each job against the model: load the concepts it names (its `concepts`, and any `<name>` of its prompt
    and boxes from the library), its settings on top of the model's defaults, its boxes and scene photo. Returns the
    problems; the concepts of good lines stay loaded on `pipe`."""
    problems, loaded = [], {}
    for job in jobs:
        try:
            for ref in _concept_refs(job):
                if ref not in loaded:
                    loaded[ref] = pipe.load_concept(library.resolve(ref))
            settings = pipe.settings(**job.settings)
        except PACGenError as error:
            problems.append(Problem(job.line, "concepts" if not isinstance(error, SettingsError) else "settings",
                                    str(error)))
            continue
        try:
            pipe.check_inputs(job.prompt, job.boxes, job.negative_prompt, settings)
            if job.scene is not None:
                load_scene(job.scene, settings.width, settings.height)
        except PACGenError as error:
            problems.append(Problem(job.line, _field_of(error, job), str(error)))
    return problems


def _concept_refs(job: Job) -> list[str]:
    """The concepts a job loads: those it lists, then each `<name>` of its prompt and boxes that no listed folder
    provides (looked up by name in the library)."""
    listed = list(job.concepts)
    named = {Path(ref).name for ref in listed} | set(listed)
    for name in concept_refs(job.prompt) + [b.concept for b in job.boxes if b.concept]:
        if name not in named:
            named.add(name)
            listed.append(name)
    return listed


def _field_of(error: PACGenError, job: Job) -> str:
    text = str(error)
    if isinstance(error, SettingsError):
        return next((name for name in SETTING_FIELDS if text.startswith(name) or f" {name} " in text), "settings")
    if text.startswith("box") or "coordinates" in text:
        return "boxes"
    if "scene photo" in text:
        return "scene"
    if isinstance(error, LayoutError) and "concept" in text:
        return "prompt" if "<" in job.prompt else "boxes"
    return "prompt"


# ----------------------------------------------------------------------------------- planning and writing


def job_digest(job: Job, fingerprint: str) -> str:
    return hashlib.sha256(f"{fingerprint}|{job.text}".encode()).hexdigest()[:16]


def plan_images(jobs: list[Job], out: Path, fingerprint: str) -> list[PlannedImage]:
    """Every image of every job, in file order, each with its seed (the line's seed + index) and file name."""
    planned = []
    for job in jobs:
        digest = job_digest(job, fingerprint)
        planned += [PlannedImage(job, k, job.seed + k, out / f"line{job.line:05d}-{k}.png", digest)
                    for k in range(job.num_images)]
    return planned


def stale(planned: list[PlannedImage]) -> list[PlannedImage]:
    """Images already in the folder that another job line or model made: a rerun must not mistake them for done."""
    found = []
    for image in planned:
        if image.exists():
            with Image.open(image.path) as existing:
                if existing.text.get(DIGEST_KEY) != image.digest:
                    found.append(image)
    return found


def generate(pipe: PACGenPipeline, image: PlannedImage, callback: Callable[[int, int], None] | None = None):
    """Sample one planned image alone, from its own seed: the same bits whichever process runs it."""
    job = image.job
    settings = pipe.settings(**{**job.settings, "seed": image.seed, "num_images": 1})
    return pipe(job.prompt, boxes=job.boxes, negative_prompt=job.negative_prompt, settings=settings,
                callback=callback, scene=job.scene)


def a1111_parameters(prompt: str, negative_prompt: str, settings: dict, seed: int, model: str, fingerprint: str,
                     boxes: list[Box]) -> str:
    """The `parameters` text A1111 writes, which PNG-info readers (A1111, Forge, ComfyUI, Civitai) show; our own
    settings follow as extra `Key: value` pairs, quoted as A1111 quotes values holding commas or colons."""
    pairs = {
        "Steps": settings["num_inference_steps"], "Sampler": A1111_SAMPLERS[settings["scheduler"]],
        "CFG scale": settings["guidance_scale"], "Seed": seed, "Size": f"{settings['width']}x{settings['height']}",
        "Model hash": fingerprint[:10], "Model": model,
        "PACGen boxes": json.dumps([[b.label, *b.xyxy] for b in boxes]),
    }
    shown = ("num_inference_steps", "scheduler", "guidance_scale", "width", "height", "model", "negative_prompt",
             "num_images", "seed")
    pairs.update({k.replace("_", " ").capitalize(): v for k, v in settings.items() if k not in shown and v is not None})
    text = ", ".join(f"{key}: {_a1111_value(value)}" for key, value in pairs.items())
    lines = [prompt] + ([f"Negative prompt: {negative_prompt}"] if negative_prompt else []) + [text]
    return "\n".join(lines)


def _a1111_value(value: object) -> str:
    text = str(value)
    return json.dumps(text) if any(c in text for c in ',:"\n') else text


def write_png(image: Image.Image, path: Path, texts: dict[str, str]) -> None:
    """Written whole to a temporary file beside it, then renamed: a killed job never leaves half an image."""
    meta = PngImagePlugin.PngInfo()
    for key, value in texts.items():
        meta.add_text(key, value)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    image.save(temp, format="PNG", pnginfo=meta)
    temp.replace(path)


def concept_versions(pipe: PACGenPipeline) -> dict[str, str]:
    """Each loaded concept's LoRA file digest: which weights made an image, even after a concept is retrained."""
    return {name: _file_digest(concept) for name, concept in pipe.concepts.items()}


def _file_digest(concept: Concept) -> str:
    return hashlib.sha256(concept.lora_path.read_bytes()).hexdigest()[:16]


def manifest_row(pipe: PACGenPipeline, image: PlannedImage, settings: dict, versions: dict[str, str],
                 made: float, seconds: float | None) -> dict:
    job = image.job
    used = {**settings, "seed": image.seed}
    return {
        "file": image.path.name, "line": job.line, "index": image.index, "prompt": job.prompt,
        "negative_prompt": job.negative_prompt, "boxes": [[b.label, *b.xyxy] for b in job.boxes],
        "scene": None if job.scene is None else str(job.scene), "seed": image.seed, "settings": used,
        "model": pipe.components.model_id, "model_fingerprint": pipe.components.fingerprint,
        "concepts": {n: versions[n] for n in sorted(_used_concepts(job))},
        "time": datetime.fromtimestamp(made, timezone.utc).isoformat(timespec="seconds"), "seconds": seconds,
    }


def _used_concepts(job: Job) -> set[str]:
    return set(concept_refs(job.prompt)) | {b.concept for b in job.boxes if b.concept}


def append_row(out: Path, row: dict) -> None:
    """One line appended in one write to a file opened for appending: rows from several processes never mix."""
    data = (json.dumps(row, default=str) + "\n").encode()
    fd = os.open(out / MANIFEST, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def recorded(out: Path) -> set[str]:
    """The files the manifest has a row for (a torn last line, from a kill mid-write, is ignored)."""
    path = out / MANIFEST
    if not path.is_file():
        return set()
    names = set()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            names.add(json.loads(line)["file"])
        except (ValueError, KeyError, TypeError):
            continue
    return names


def make_image(pipe: PACGenPipeline, image: PlannedImage, versions: dict[str, str],
               callback: Callable[[int, int], None] | None = None) -> dict:
    """Generate one planned image, write it and its manifest row; returns the row."""
    result = generate(pipe, image, callback)
    settings = {k: v for k, v in result.settings.items() if k not in ("model", "negative_prompt", "num_images")}
    comp = pipe.components
    text = a1111_parameters(result.prompt, image.job.negative_prompt, result.settings, image.seed, comp.model_id,
                            comp.fingerprint, result.boxes)
    write_png(result.images[0], image.path, {"parameters": text, DIGEST_KEY: image.digest})
    row = manifest_row(pipe, image, settings, versions, time.time(), round(result.timings["total_s"], 3))
    append_row(image.path.parent, row)
    return row


def missing_rows(pipe: PACGenPipeline, planned: list[PlannedImage], versions: dict[str, str]) -> Iterator[dict]:
    """Rows for images written by a job killed before it wrote their row (the image was renamed in, then the kill)."""
    rows = recorded(planned[0].path.parent) if planned else set()
    for image in planned:
        if image.exists() and image.path.name not in rows:
            settings = asdict(pipe.settings(**{**image.job.settings, "seed": image.seed, "num_images": 1}))
            yield manifest_row(pipe, image, settings, versions, image.path.stat().st_mtime, None)


# ----------------------------------------------------------------------------------- one job on N processes


def processes(device: str | None):
    """accelerate's state of this process among those a launcher started (`torchrun --nproc_per_node N`,
    `accelerate launch --num_processes N`, or one when started plainly). Without CUDA (or with `device="cpu"`) the
    processes talk over gloo: a plain `PartialState()` there would see each process as alone."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=device == "cpu" or not torch.cuda.is_available())


@dataclass
class Summary:
    images: int
    written: int
    existed: int
    skipped_lines: int
    seconds: float
    processes: int

    def __str__(self) -> str:
        rate = self.written / self.seconds if self.seconds else 0.0
        skipped = f", {self.skipped_lines} invalid line(s) skipped" if self.skipped_lines else ""
        return (f"{self.images} image(s): {self.written} written, {self.existed} already there{skipped}; "
                f"{self.seconds:.1f} s, {rate:.2f} images/s on {self.processes} process(es)")


class BatchRun:
    """A jobs file checked whole against the model, planned image by image, and shared out over the processes.

    Every process reads and checks the whole file and plans the same images; `my_share` then gives this process its
    part of what is not yet in the folder, and `finish` waits for the others and sums up.
    """

    def __init__(self, jobs_file: str | Path, out: str | Path, model: str, device: str | None = None,
                 data_dir: str | Path | None = None):
        self.state = processes(device)
        self.out = Path(out)
        self.started = 0.0
        jobs, problems = read_jobs(jobs_file)
        on = device if device is not None and self.state.num_processes == 1 else self.state.device
        self.pipe = PACGenPipeline.from_pretrained(model, device=on)
        problems += check_jobs(self.pipe, ConceptLibrary(data_dir), jobs)
        self.problems = sorted(problems, key=lambda p: p.line)
        bad = {p.line for p in self.problems}
        self.jobs = [job for job in jobs if job.line not in bad]
        self.planned = plan_images(self.jobs, self.out, self.pipe.components.fingerprint)
        self.versions = concept_versions(self.pipe)
        self.pending: list[PlannedImage] = []

    @property
    def is_main(self) -> bool:
        return self.state.is_main_process

    def my_share(self) -> list[PlannedImage]:
        """This process's part of the images still missing, after every process has looked at the same folder.
        Refuses a folder holding images of other jobs under the names this one would write."""
        if self.out.exists() and not self.out.is_dir():
            raise BatchError(f"--out '{self.out.name}' is a file, not a folder")
        found = stale(self.planned)
        if found:
            more = f" and {len(found) - 1} more" if len(found) > 1 else ""
            raise BatchError(f"{found[0].path.name}{more} in '{self.out.name}' were made from another job line or "
                             "model: choose another --out folder, or delete them")
        self.out.mkdir(parents=True, exist_ok=True)
        if self.is_main:
            for row in missing_rows(self.pipe, self.planned, self.versions):
                append_row(self.out, row)
        self.state.wait_for_everyone()
        self.pending = [image for image in self.planned if not image.exists()]
        self.state.wait_for_everyone()  # all have listed the folder before any writes to it
        self.started = time.perf_counter()
        with self.state.split_between_processes(self.pending) as mine:
            return list(mine)

    def make(self, image: PlannedImage, callback: Callable[[int, int], None] | None = None) -> dict:
        return make_image(self.pipe, image, self.versions, callback)

    def finish(self) -> Summary:
        """Wait for every process, then count what the folder holds now."""
        self.state.wait_for_everyone()
        written = sum(image.exists() for image in self.pending)
        return Summary(len(self.planned), written, len(self.planned) - len(self.pending),
                       len({p.line for p in self.problems}), time.perf_counter() - self.started,
                       self.state.num_processes)
