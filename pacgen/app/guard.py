"""The route guard of a shared or logged-in app: an ASGI middleware inside the FastAPI app Gradio builds, that puts
every request through `owners.Owners` before Gradio sees it (a login where the app has them; the page session,
request or cached file it names must be the caller's) and records what each answer gives out (new event ids, cached
files), as the answer passes: event streams are scanned message by message, never held back.

It sits inside Gradio's own middleware (passed to FastAPI's constructor through `launch(app_kwargs=...)`, where
Gradio adds its CORS and compression middleware outside it), so it reads answers before they are compressed.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qsl

from gradio.utils import get_cache_folder, get_upload_folder
from starlette.middleware import Middleware
from starlette.requests import cookie_parser
from starlette.responses import JSONResponse

from ..models import assets_dir
from .owners import Admission, Owners, Refusal, Request, find_route
from .visitors import Policy

MAX_BODY = 32 * 2**20  # the JSON body of a call, read whole to check it before Gradio reads it

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def launch_options(policy: Policy, auth: list[tuple[str, str]]) -> dict[str, Any]:
    """`Blocks.launch` keyword arguments: the shipped files the page may be given (the example objects' photos, from
    wherever the app was started: Gradio allows only the working and temporary folders), the app's logins and,
    where it is shared or has logins, its route guard. A local single-user app gets no guard."""
    shipped = {"allowed_paths": [str(assets_dir())]}
    if not (policy.isolated or auth):
        return {"auth": None, **shipped}
    owners = Owners(logins=bool(auth), cache_dirs=[get_upload_folder(), str(get_cache_folder())])
    return {"auth": auth or None, "app_kwargs": {"middleware": [Middleware(RouteGuard, owners=owners)]}, **shipped}


class RouteGuard:
    """ASGI middleware: admit or refuse each request (`Owners.admit`), record what admitted ones are given."""

    def __init__(self, app: Callable, owners: Owners):
        self.app = app
        self.owners = owners
        self._published = False

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, send)
        if scope["type"] != "http":  # Gradio serves no websockets
            return await send({"type": "websocket.close", "code": 1008})
        server = scope["app"]  # Gradio's FastAPI app
        if not self._published:
            self.owners.publish(server.get_blocks().config)
            self._published = True
        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        found = find_route(scope["method"], path)
        reads_body = found is not None and scope["method"] == "POST" and (
            found[1].inputs or "body:" in found[1].session + found[1].event)
        body = b""
        if reads_body:
            body = await _read_body(receive)
            if body is None:
                return await _refuse(scope, receive, send, Refusal(413, f"request body over {MAX_BODY // 2**20} MB"))
        request = Request(scope["method"], path, dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"))),
                          _login(scope, server), _json(body) if reads_body else None)
        verdict = self.owners.admit(request)
        if isinstance(verdict, Refusal):
            return await _refuse(scope, receive, send, verdict)
        if reads_body:
            receive = _replay(body, receive)
        if verdict.access.new_event or (self.owners.logins and verdict.access.gives_files):
            send = _Recorder(self.owners, verdict, send)
        await self.app(scope, receive, send)


def _login(scope: Message, server: Any) -> str | None:
    """The logged-in user of a request, from Gradio's login cookie (None without one)."""
    headers = dict(scope.get("headers", []))
    cookies = cookie_parser(headers.get(b"cookie", b"").decode("latin-1"))
    for name in (f"access-token-{server.cookie_id}", f"access-token-unsecure-{server.cookie_id}"):
        if cookies.get(name) in server.tokens:
            return server.tokens[cookies[name]]
    return None


async def _read_body(receive: Receive) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """Give Gradio the body already read, then whatever the connection sends next (a disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:  # not JSON: Gradio answers it with its own error
        return None


async def _refuse(scope: Message, receive: Receive, send: Send, refusal: Refusal) -> None:
    await JSONResponse({"detail": refusal.message}, status_code=refusal.status)(scope, receive, send)


class _Recorder:
    """Passes an answer on, recording what it gives out first: a JSON answer is held until complete, an event
    stream is read one complete message at a time (each is recorded before it is passed on)."""

    def __init__(self, owners: Owners, admission: Admission, send: Send):
        self.owners, self.admission, self.send = owners, admission, send
        self.ok = self.stream = False
        self.held: list[bytes] = []
        self.partial = b""

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.ok = message["status"] == 200
            content_type = dict(message.get("headers", [])).get(b"content-type", b"")
            self.stream = content_type.startswith(b"text/event-stream")
        elif message["type"] == "http.response.body" and self.ok:
            if self.stream:
                events = (self.partial + message.get("body", b"")).split(b"\n\n")
                self.partial = events.pop()
                for event in events:
                    for line in event.split(b"\n"):
                        if line.startswith(b"data:"):
                            self.owners.record(self.admission, _json(line[5:]))
            else:
                self.held.append(message.get("body", b""))
                if message.get("more_body"):
                    return
                body = b"".join(self.held)
                self.owners.record(self.admission, _json(body))
                message = {**message, "body": body}
        await self.send(message)
