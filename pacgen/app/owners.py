"""Who may call which web route of a shared app, and who owns the requests, page sessions and cached files that
routes name. No Gradio here: `guard` feeds each request in (`Owners.admit`) and each response out (`Owners.record`).

Gradio's own routes know a request by its event id, a page by its session hash and a result by its cached file's
path, and serve any of them to whoever names it. Here each has an owner, the visitor it was made for:

- where the app has logins, the login (`login:<user>`): every route but the login page and static assets needs
  one, and a page session belongs to the first login that uses it;
- without logins (an anonymous shared app), the page session that started the request (`session:<hash>`), or, for a
  request started without one (`POST /call/<api>`), the event id itself (`event:<id>`), which only its maker knows.

Files are bound to logins only: a browser fetches a file with its cookies but no session, so without logins a
cached file's unguessable path is all that guards it.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterator
from urllib.parse import unquote

MAX_ENTRIES = 100_000  # requests, sessions and files remembered each (the oldest are forgotten)


@dataclass(frozen=True)
class Access:
    """What one route asks of its caller on a shared app. A name's place is `path:<param>`, `query:<param>` or
    `body:<field>` (of the JSON body)."""

    login: bool = True  # needs the app's login, where it has one
    closed: bool = False  # this app has no use for it: refused to everyone
    session: str = ""  # names a page session: it must be the caller's
    event: str = ""  # names a request: it must be the caller's
    file: str = ""  # names a file: a cached one must be the caller's
    inputs: bool = False  # the JSON body may name cached files as inputs: they must be the caller's
    new_event: bool = False  # answers with a new request's event id: the caller owns it
    gives_files: bool = False  # answers with cached files made or uploaded for the caller


PUBLIC = Access(login=False)
LOGIN = Access()
CLOSED = Access(closed=True)
JOIN = Access(session="body:session_hash", inputs=True, new_event=True)
GET, POST = frozenset({"GET", "HEAD"}), frozenset({"POST"})  # as in Starlette, a GET route answers HEAD too
API = "/gradio_api"

# Every route Gradio 6.31 serves for a launched Blocks (`tests/test_routes.py` lists the running app's routes and
# fails on one missing here). Closed: streaming media and inputs, deep links, component server functions, the
# run-history, monitoring, recording and vibe-editing tools: nothing in this app uses them.
ROUTES: list[tuple[frozenset[str], str, Access]] = [
    # The login page, logging in and out (also with Hugging Face), static assets.
    (GET, "/", PUBLIC), (POST, "/login", PUBLIC), (POST, "/login/", PUBLIC), (GET, "/logout", PUBLIC),
    (GET, "/login/huggingface", PUBLIC), (GET, "/login/callback", PUBLIC),
    (GET, "/svelte/{path:path}", PUBLIC), (GET, "/static/{path:path}", PUBLIC), (GET, "/assets/{path:path}", PUBLIC),
    (GET, "/favicon.ico", PUBLIC), (GET, "/theme.css", PUBLIC), (GET, f"{API}/theme.css", PUBLIC),
    (GET, "/robots.txt", PUBLIC), (GET, "/pwa_icon", PUBLIC), (GET, "/pwa_icon/{size}", PUBLIC),
    (GET, "/manifest.json", PUBLIC), (GET, f"{API}/startup-events", PUBLIC),
    *((GET, f"{API}/{name}{slash}", PUBLIC) for name in ("login_check", "user", "token", "app_id") for slash in ("", "/")),
    # The app's description and plumbing that names nobody's data.
    (GET, "/config", LOGIN), (GET, "/config/", LOGIN), (GET, f"{API}/info", LOGIN), (GET, f"{API}/info/", LOGIN),
    (GET, "/openapi.json", LOGIN), (GET, f"{API}/openapi.json", LOGIN), (GET, f"{API}/queue/status", LOGIN),
    (GET, f"{API}/custom_component/{{id}}/{{environment}}/{{type}}/{{file_name}}", LOGIN),
    (GET, f"{API}/proxy={{url_path:path}}", LOGIN), (GET, f"{API}/upload_progress", LOGIN),
    (POST, f"{API}/reset", LOGIN), (POST, f"{API}/reset/", LOGIN),  # a no-op in Gradio 6 (cancel does the work)
    (POST, f"{API}/upload", Access(gives_files=True)),
    # Starting a request, following it, cancelling it; a page's heartbeat (its end closes the page's requests).
    (POST, f"{API}/queue/join", JOIN),
    *((POST, f"{API}/call/{v2}{{api_name}}{slash}", JOIN) for v2 in ("", "v2/") for slash in ("", "/")),
    *((POST, f"{API}/{kind}/{{api_name}}{slash}", Access(session="body:session_hash", inputs=True, gives_files=True))
      for kind in ("run", "api") for slash in ("", "/")),
    (GET, f"{API}/queue/data", Access(session="query:session_hash", gives_files=True)),
    *((GET, f"{API}/call/{v2}{{api_name}}/{{event_id}}", Access(event="path:event_id", gives_files=True))
      for v2 in ("", "v2/")),
    (POST, f"{API}/cancel", Access(session="body:session_hash", event="body:event_id")),
    (GET, f"{API}/heartbeat/{{session_hash}}", Access(session="path:session_hash")),
    (GET, f"{API}/file={{path_or_url:path}}", Access(file="path:path_or_url")),
    (GET, f"{API}/file/{{path:path}}", Access(file="path:path")),
    # Closed.
    (POST, f"{API}/stream/{{event_id}}", CLOSED), (POST, f"{API}/stream/{{event_id}}/close", CLOSED),
    *((GET, f"{API}/stream/{{session_hash}}/{{run}}/{{component_id}}/{tail}", CLOSED)
      for tail in ("playlist.m3u8", "{segment_id}.{ext}", "playlist-file")),
    (GET, f"{API}/deep_link", CLOSED), (POST, f"{API}/component_server", CLOSED),
    (POST, f"{API}/component_server/", CLOSED), (GET, f"{API}/dev/reload", CLOSED),
    (GET, f"{API}/runs", CLOSED), (GET, f"{API}/runs/", CLOSED), (POST, f"{API}/run-history/connect", CLOSED),
    (GET, f"{API}/run-history/buckets", CLOSED), (GET, f"{API}/run-history/records", CLOSED),
    (GET, f"{API}/run-history/records/{{endpoint}}/{{record_id}}/assets/{{asset_id}}", CLOSED),
    (GET, "/monitoring", CLOSED), (GET, "/monitoring/summary", CLOSED), (GET, "/monitoring/{key}", CLOSED),
    (POST, f"{API}/process_recording", CLOSED),
    *((methods, f"{API}/{name}{slash}", CLOSED) for methods, name in
      ((POST, "vibe-edit"), (POST, "undo-vibe-edit"), (GET | POST, "vibe-code"), (POST, "vibe-starter-queries"))
      for slash in ("", "/")),
]


def _pattern(template: str) -> re.Pattern[str]:
    """A route template (`/file={path:path}`, `/call/{api_name}`) as a regular expression, as Starlette reads it."""
    parts, end = [], 0
    for match in re.finditer(r"{(\w+)(?::(\w+))?}", template):
        parts.append(re.escape(template[end:match.start()]))
        parts.append(f"(?P<{match[1]}>{'.*' if match[2] == 'path' else '[^/]+'})")
        end = match.end()
    return re.compile("".join(parts) + re.escape(template[end:]))


_COMPILED = [(methods, template, _pattern(template), access) for methods, template, access in ROUTES]


def find_route(method: str, path: str) -> tuple[str, Access, dict[str, str]] | None:
    """The route a request reaches: its template, its access rule and its path parameters (None: no such route)."""
    for methods, template, pattern, access in _COMPILED:
        match = pattern.fullmatch(path)
        if match and method in methods:
            return template, access, match.groupdict()
    return None


@dataclass(frozen=True)
class Request:
    """One request as the guard sees it: `login` is the app's logged-in user (None without one), `body` the JSON
    body where the route reads one."""

    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    login: str | None = None
    body: Any = None


@dataclass(frozen=True)
class Refusal:
    status: int
    message: str


@dataclass(frozen=True)
class Admission:
    """A request let through: who it acts for, and what its answer must record."""

    access: Access
    owner: str  # the principal new requests and files of this call belong to ("" where none is known)
    session: str | None  # the page session the call names


class _Recent(OrderedDict):
    """A mapping that forgets its oldest entries past `MAX_ENTRIES`."""

    def remember(self, key: str, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > MAX_ENTRIES:
            self.popitem(last=False)


class Owners:
    """The owner of each request, page session and cached file, and the decision on each request. `logins`: the
    app has logins; `cache_dirs`: where Gradio keeps uploads and results. Used from the server's event loop only."""

    def __init__(self, logins: bool, cache_dirs: list[str]):
        self.logins = logins
        self.cache_dirs = sorted({os.path.realpath(d) for d in cache_dirs})
        self._events: _Recent = _Recent()  # event id -> owner
        self._sessions: _Recent = _Recent()  # session hash -> login that first used it
        self._files: _Recent = _Recent()  # real path -> logins it was given to
        self._public: set[str] = set()  # cached files in the app's page itself (examples, initial values)

    def publish(self, config: Any) -> None:
        """Cached files that the app's page shows everyone (found in its config) are everyone's."""
        self._public |= set(self.cached_files(config))

    def admit(self, request: Request) -> Admission | Refusal:
        found = find_route(request.method, request.path)
        if found is None or found[1].closed:
            return Refusal(404, "Not Found: this route is not available on this app")
        _, access, params = found
        if self.logins and access.login and request.login is None:
            return Refusal(401, "Not authenticated: log in first")
        session = _named(access.session, params, request)
        event = _named(access.event, params, request)
        caller = f"login:{request.login}" if self.logins else ""
        if self.logins and session is not None:
            if self._sessions.get(session, caller) != caller:
                return Refusal(403, "this page session belongs to another visitor")
            self._sessions.remember(session, caller)
        if access.event and event is None:
            return Refusal(400, "this request names no event id")
        if event is not None:
            mine = {caller} if self.logins else {f"event:{event}"} | ({f"session:{session}"} if session else set())
            if self._events.get(event) not in mine:
                return Refusal(403, "this request belongs to another visitor, or does not exist")
        if self.logins and access.file:
            if not self._readable(_named(access.file, params, request) or "", caller):
                return Refusal(403, "this file belongs to another visitor, or does not exist")
        if self.logins and access.inputs:
            if not all(self._readable(path, caller) for path in self.cached_files(request.body)):
                return Refusal(403, "a file in this request belongs to another visitor")
        owner = caller or (f"session:{session}" if session else "")
        return Admission(access, owner, session)

    def record(self, admission: Admission, answer: Any) -> None:
        """Note what an admitted request's answer (a JSON body, or one message of its event stream) gave out."""
        if admission.access.new_event and isinstance(answer, dict) and isinstance(answer.get("event_id"), str):
            event = answer["event_id"]
            self._events.remember(event, admission.owner or f"event:{event}")
            if self.logins and admission.session is None:  # Gradio makes the event id its session: the owner's
                self._sessions.remember(event, admission.owner)
        if self.logins and admission.access.gives_files:
            for path in self.cached_files(answer):
                self._files.remember(path, self._files.get(path, frozenset()) | {admission.owner})

    def _readable(self, path: str, caller: str) -> bool:
        real = os.path.realpath(path)
        return not self._cached(real) or real in self._public or caller in self._files.get(real, ())

    def _cached(self, path: str) -> bool:
        return any(path == d or path.startswith(d + os.sep) for d in self.cache_dirs)

    def cached_files(self, value: Any) -> Iterator[str]:
        """The real paths of Gradio's cached files that a JSON value names, as a path (relative ones from the working
        folder, as Gradio reads them) or as a `file=` URL."""
        for text in _strings(value):
            if "file=" in text:
                text = unquote(text.split("file=", 1)[1].split("?", 1)[0])
            if text and len(text) <= 4096 and "\0" not in text:
                real = os.path.realpath(text)
                if self._cached(real):
                    yield real


def _named(place: str, params: dict[str, str], request: Request) -> str | None:
    """The value at `path:<param>`, `query:<param>` or `body:<field>` of a request (None where absent)."""
    if not place:
        return None
    kind, _, name = place.partition(":")
    source = {"path": params, "query": request.query}.get(kind)
    if source is None:
        source = request.body if isinstance(request.body, dict) else {}
    value = source.get(name)
    return value if isinstance(value, str) else None


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)
