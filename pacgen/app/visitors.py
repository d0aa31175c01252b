"""Who is asking, and what they may cost: per-visitor libraries for shared deployments, quotas and request limits.

Locally one person uses the app and everything is theirs (`Policy.local()`). Behind a public link or on a Space
(`Policy.public()`), each visitor gets a library of their own, keyed to their login (`--auth` users, Hugging Face
login) or, for anonymous visitors, to a random token their browser keeps; nobody can list, use, export, delete or
cancel what is not theirs. Example concepts in a read-only shared library are usable by everyone.
"""

from __future__ import annotations

import contextvars
import hashlib
import math
import secrets
import shutil
import threading
import time
from collections import OrderedDict, deque
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable, Iterator

from ..checkpoints import checkpoints_root
from ..concepts import ConceptLibrary
from ..errors import PACGenError
from ..layout import Box
from ..settings import SampleSettings

LOCAL = "local"  # the one visitor of a single-user app
NOBODY = "nobody"  # a shared app's call with no login and no session (the page being built): an empty library
LAST_SEEN_FILE = ".last_seen"
MAX_PAGES = 100_000  # page sessions remembered (the oldest are forgotten: their visitor reloads to come back)


class LimitError(PACGenError):
    """A request over what this deployment allows a visitor: the message says the limit and how to stay under it."""


@dataclass(frozen=True)
class Policy:
    """What a visitor may do and cost. `None` means unlimited."""

    isolated: bool = False  # one library per visitor
    max_concepts: int | None = None  # concepts a visitor keeps
    max_disk_mb: float | None = None  # disk a visitor's library may use
    trainings_per_hour: int | None = None
    idle_expiry_h: float | None = None  # a visitor's data is removed after this long without a request
    max_upload_mb: float | None = None  # any one uploaded file (Gradio's max_file_size)
    max_prompt_chars: int = 2000
    max_cost: float | None = None  # per request, in default generations (see `generation_cost`)
    request_timeout_s: float | None = None  # a generation stops with a message after this long
    queue_size: int | None = None  # requests waiting at once; more are turned away by Gradio
    cache_hours: float = 24  # Gradio's cached uploads and results older than this are deleted

    @classmethod
    def local(cls) -> Policy:
        return cls()

    @classmethod
    def public(cls) -> Policy:
        """Defaults for strangers sharing one GPU: a handful of concepts each, a day's retention, bounded requests."""
        return cls(isolated=True, max_concepts=5, max_disk_mb=200, trainings_per_hour=2, idle_expiry_h=24,
                   max_upload_mb=20, max_prompt_chars=1000, max_cost=8, request_timeout_s=300, queue_size=20, cache_hours=2)

    def with_limits(self, text: str) -> Policy:
        """This policy with `name=value,…` overrides (`none` lifts a limit), each checked, for `--limits`."""
        changes = {}
        for item in filter(None, (part.strip() for part in (text or "").split(","))):
            name, sep, value = item.partition("=")
            name, value = name.strip(), value.strip()
            if not sep or name not in LIMIT_NAMES:
                raise LimitError(f"unknown limit '{item}': use NAME=VALUE with NAME one of {', '.join(LIMIT_NAMES)}")
            changes[name] = _limit_value(name, value)
        return replace(self, **changes)


LIMIT_NAMES = [f.name for f in fields(Policy) if f.name != "isolated"]


def _limit_value(name: str, value: str) -> float | int | None:
    if value.lower() == "none":
        if name in ("max_prompt_chars", "cache_hours"):
            raise LimitError(f"limit {name} cannot be lifted, only changed")
        return None
    number_type = float if "_mb" in name or "_h" in name or name in ("max_cost", "request_timeout_s") else int
    try:
        number = number_type(value)
    except ValueError:
        raise LimitError(f"limit {name}={value}: expected a {number_type.__name__}") from None
    if not math.isfinite(number) or number <= 0:
        raise LimitError(f"limit {name}={value}: must be a positive number (or 'none')")
    return number


def choose_policy(shared: bool, limits: str = "") -> Policy:
    """The public policy where strangers share the app (a share link, a Space, several logins), else local."""
    return (Policy.public() if shared else Policy.local()).with_limits(limits)


def parse_logins(text: str | None) -> list[tuple[str, str]]:
    """`USER:PASSWORD[,USER:PASSWORD…]` as Gradio's `auth` list; several users each get their own library."""
    logins = []
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        user, sep, password = item.partition(":")
        if not sep or not user or not password:
            raise LimitError("--auth must look like USER:PASSWORD, several separated by commas")
        logins.append((user, password))
    return logins


def folder_mb(folder: Path) -> float:
    """Megabytes of the files under `folder` (0 when it does not exist)."""
    if not folder.is_dir():
        return 0.0
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def generation_cost(settings: SampleSettings, boxes: list[Box], default: SampleSettings) -> float:
    """A request's cost in default generations: UNet rows over all steps × images × pixels, relative to the model's
    default settings with one concept in one box. Rows: see `SampleSettings.row_steps` (one per concept, however many
    boxes place it, and a detail pass per concept box)."""

    def units(s: SampleSettings, placed: list[Box]) -> float:
        return s.row_steps(placed) * s.num_images * s.width * s.height

    return units(settings, boxes) / units(default, [Box("<concept>", (0.0, 0.0, 0.5, 0.5))])


@dataclass(frozen=True)
class Caller:
    """Who made the current request, as the web layer knows it: a login (an `--auth` user or a Hugging Face
    account) and the page's session id. Resolved to a visitor key by `Visitors.key`."""

    login: str | None = None
    session: str | None = None
    visitor: str | None = None  # already resolved: work done on a visitor's behalf off their request (a job)


_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("caller", default=Caller())


def current_caller() -> Caller:
    return _caller.get()


@contextmanager
def acting_as(caller: Caller) -> Iterator[None]:
    """Run the enclosed code on behalf of `caller` (set around each call, or each step of a streaming call)."""
    token = _caller.set(caller)
    try:
        yield
    finally:
        _caller.reset(token)


def _hashed(kind: str, value: str) -> str:
    """A folder-safe key for a login or a token that reveals neither."""
    return hashlib.sha256(f"{kind}:{value}".encode()).hexdigest()[:24]


class Visitors:
    """Per-visitor libraries under `<root>/visitors/`, their quotas, and the clean-up of idle ones."""

    def __init__(self, root: Path, policy: Policy):
        self.root = Path(root)
        self.policy = policy
        self._trainings: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        self._swept = 0.0
        self._last_seen: dict[str, float] = {}
        self._browsers: OrderedDict[str, str] = OrderedDict()  # page session id -> its browser's token

    def bind_browser_token(self, token: str | None) -> str:
        """On page load: tie the page's session to the token its browser keeps (a new token on a first visit), so
        an anonymous visitor keeps their library and training across reloads. Returns the token to keep."""
        if not isinstance(token, str) or len(token) < 16:
            token = secrets.token_urlsafe(24)
        session = current_caller().session
        if session:
            with self._lock:
                self._browsers[session] = token
                self._browsers.move_to_end(session)
                while len(self._browsers) > MAX_PAGES:
                    self._browsers.popitem(last=False)
        return token

    def browser_secret(self) -> str:
        """The key the browser's token is encrypted with, kept with the data so tokens outlive a restart."""
        path = self.root / "browser_secret"
        if not path.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(24))
            path.chmod(0o600)
        return path.read_text().strip()

    def key(self, caller: Caller) -> str:
        """The visitor a request acts for: everyone is `LOCAL` unless isolated; then a login, else the browser's
        token, else the page session (an API client keeps one session across its calls)."""
        if not self.policy.isolated:
            return LOCAL
        if caller.visitor:
            return caller.visitor
        if caller.login:
            return _hashed("login", caller.login)
        if caller.session in self._browsers:
            return _hashed("browser", self._browsers[caller.session])
        if caller.session:
            return _hashed("session", caller.session)
        return NOBODY

    def library(self, visitor: str) -> ConceptLibrary:
        if not self.policy.isolated:
            return ConceptLibrary(self.root)
        if visitor == NOBODY:  # nothing to see, and nowhere anyone else's data is
            return ConceptLibrary(self.root / "nobody")
        return ConceptLibrary(self.root / "visitors" / visitor)

    def seen(self, visitor: str, busy: Callable[[], set[str]] = set) -> list[str]:
        """Note activity (for expiry, at most once a minute per visitor) and, as often, remove visitors idle for
        too long, except those `busy()` names (a training of theirs runs). Returns the visitors removed.

        Only a visitor who has stored something has a folder: one who only looks (an API client listing an empty
        library, say) leaves nothing on disk, and their first store creates it."""
        if not self.policy.isolated or visitor in (LOCAL, NOBODY):
            return []
        now = time.time()
        folder = self.root / "visitors" / visitor
        if now - self._last_seen.get(visitor, 0) > 60 and folder.is_dir():
            self._last_seen[visitor] = now
            (folder / LAST_SEEN_FILE).touch()
        return self.sweep(busy()) if now - self._swept > 60 else []

    def sweep(self, busy: set[str] = frozenset()) -> list[str]:
        """Delete the data of visitors idle longer than the policy allows (never one in `busy`)."""
        self._swept = time.time()
        if not self.policy.idle_expiry_h or not (self.root / "visitors").is_dir():
            return []
        cutoff = time.time() - self.policy.idle_expiry_h * 3600
        removed = []
        for folder in (self.root / "visitors").iterdir():
            if not folder.is_dir() or folder.name in busy:
                continue
            stamp = folder / LAST_SEEN_FILE
            if (stamp if stamp.exists() else folder).stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder.name)
        return removed

    def disk_mb(self, visitor: str) -> float:
        """A visitor's concepts, and the checkpoints of their stopped trainings."""
        library = self.library(visitor)
        return folder_mb(library.concepts_dir) + folder_mb(checkpoints_root(library))

    def check_can_add(self, visitor: str, kept: int, adding_mb: float = 0.0) -> None:
        """Refuse a new concept over the visitor's concept count or disk quota."""
        policy = self.policy
        if policy.max_concepts is not None and kept >= policy.max_concepts:
            raise LimitError(f"you have {kept} concepts, the most this app keeps per visitor is "
                             f"{policy.max_concepts}: delete one in the Library tab first")
        if policy.max_disk_mb is not None:
            used = self.disk_mb(visitor)
            if used + adding_mb > policy.max_disk_mb:
                raise LimitError(f"your concepts and stopped trainings use {used:.0f} MB; with this one they would pass the "
                                 f"{policy.max_disk_mb:.0f} MB this app allows per visitor: delete one first")

    def start_training(self, visitor: str) -> None:
        """Count a training against the hourly quota, or refuse it saying when the next one is allowed."""
        limit = self.policy.trainings_per_hour
        if limit is None:
            return
        now = time.time()
        with self._lock:
            recent = self._trainings.setdefault(visitor, deque())
            while recent and recent[0] < now - 3600:
                recent.popleft()
            if len(recent) >= limit:
                wait_min = (recent[0] + 3600 - now) / 60
                raise LimitError(f"this app allows {limit} trainings per visitor per hour; "
                                 f"the next one can start in {wait_min:.0f} min")
            recent.append(now)
