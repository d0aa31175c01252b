"""Gradio's own routes on a shared app: each visitor's requests, page sessions and cached files are theirs alone.

Every route the running app serves (its FastAPI app's route list, so a Gradio upgrade that adds one fails here until
`pacgen/app/owners.py` covers it) is probed with no login, with another visitor's login, and with another visitor's
session hash, event id and file; then the attacks of issue 26 are replayed end to end, and gradio's own client is
shown to work through the guard.
"""

import json
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file
from test_app import free_port
from test_browser import ARGS, CHROMIUM, draw_box

import app
from pacgen.app.guard import launch_options
from pacgen.app.owners import Owners, Request, find_route
from pacgen.app.session import Studio
from pacgen.app.visitors import Policy

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = sorted((ROOT / "assets" / "concepts" / "ruby_checker_star").glob("photo_*.png"))[:3]
LOGINS = [("ann", "ann-secret"), ("bob", "bob-secret")]
BOXES = {"headers": ["label", "x0", "y0", "x1", "y1"], "data": [["a red ball", 0.2, 0.2, 0.7, 0.7]]}
TIMEOUT = 120  # seconds for one answer under load


def launch(home: Path, auth: list[tuple[str, str]]):
    """The app as `app.py` launches it when shared (a public policy), with these logins."""
    studio = Studio("tiny", home, device="cpu", policy=Policy.public())
    demo = app.build_ui(studio)
    demo.queue(default_concurrency_limit=1, api_open=False).launch(
        server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
        **launch_options(studio.policy, auth))
    return demo


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    demo = launch(tmp_path_factory.mktemp("home"), LOGINS)
    yield demo
    demo.close()


class Visitor:
    """A raw HTTP visitor of the app: logged in as `login` (None: anonymous), with a page session of its own."""

    def __init__(self, url: str, login: tuple[str, str] | None, session: str):
        self.http = httpx.Client(base_url=url, timeout=TIMEOUT)
        self.session = session
        if login:
            answer = self.http.post("/login", data={"username": login[0], "password": login[1]})
            assert answer.status_code == 200, answer.text

    def call(self, api: str, **params) -> str:
        """Start `api` as `POST /call/v2/<api>` (parameters by name, no session hash): its event id."""
        answer = self.http.post(f"/gradio_api/call/v2/{api}", json=params)
        assert answer.status_code == 200, answer.text
        return answer.json()["event_id"]

    def result(self, api: str, event: str) -> tuple[str, object]:
        """The last message of a call's event stream: its kind ('complete', 'error') and data."""
        kind = ""
        with self.http.stream("GET", f"/gradio_api/call/v2/{api}/{event}") as stream:
            assert stream.status_code == 200, stream.read()
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    kind = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and kind in ("complete", "error"):
                    return kind, json.loads(line[5:])
        return kind, None

    def upload(self, path: Path) -> str:
        answer = self.http.post("/gradio_api/upload", files={"files": (path.name, path.read_bytes(), "image/png")})
        assert answer.status_code == 200, answer.text
        return answer.json()[0]

    def join(self, fn_index: int, data: list) -> str:
        answer = self.http.post("/gradio_api/queue/join", json={"data": data, "fn_index": fn_index,
                                                                "session_hash": self.session})
        assert answer.status_code == 200, answer.text
        return answer.json()["event_id"]


def fn_index(demo, api: str) -> int:
    return next(d["id"] for d in demo.config["dependencies"] if d.get("api_name") == api)


def app_routes(demo) -> list[tuple[str, str]]:
    """(method, path template) of every route the running app serves, included routers opened up."""
    found = []

    def walk(routes):
        for route in routes:
            if hasattr(route, "original_router"):
                walk(route.original_router.routes)
            elif hasattr(route, "routes"):  # a mounted app
                found.append(("GET", route.path + "/{path:path}"))
            else:
                found.extend((method, route.path) for method in sorted(getattr(route, "methods", None) or {"GET"}))

    walk(demo.app.routes)
    return found


def probe(visitor: Visitor, method: str, template: str, session: str, event: str, file: str) -> tuple[int, str]:
    """Call one route with another visitor's session hash, event id and file wherever the route takes one: the
    answer's status and (the start of) its text."""
    names = {"session_hash": session, "event_id": event, "path_or_url": file, "path": file, "api_name": "list_concepts",
             "url_path": "x", "size": "16", "ext": "ts", "component_id": "1", "key": "x"}
    path = template
    for name, value in names.items():
        path = path.replace(f"{{{name}:path}}", value).replace(f"{{{name}}}", value)
    while "{" in path:  # any other parameter
        path = path[:path.index("{")] + "x" + path[path.index("}") + 1:]
    body = {"session_hash": session, "event_id": event, "fn_index": 0, "data": []}
    try:
        answer = visitor.http.request(method, path, params={"session_hash": session, "upload_id": "x"},
                                      json=body if method == "POST" else None, timeout=10)
    except httpx.ReadTimeout:  # an event stream that stayed open: served
        return 200, ""
    return answer.status_code, answer.text[:200]


@pytest.fixture(scope="module")
def anns(served):
    """Ann's page session with a request in it, and a cached file of hers (an uploaded photo)."""
    ann = Visitor(served.local_url, LOGINS[0], "ann-page-session")
    event = ann.join(fn_index(served, "list_concepts"), [])
    return ann, event, ann.upload(PHOTOS[0])


@pytest.mark.slow  # launches a server
def test_every_route_of_the_running_app_has_a_rule(served):
    missing = [(method, path) for method, path in app_routes(served) if find_route(method, path) is None
               or find_route(method, path)[0] != path]
    assert missing == [], f"routes without a rule in pacgen/app/owners.py: {missing}"


@pytest.mark.slow  # launches a server
def test_without_a_login_only_the_login_page_and_static_assets_answer(served, anns):
    _, event, file = anns
    nobody = Visitor(served.local_url, None, "nobody-session")
    for method, template in app_routes(served):
        _, access, _ = find_route(method, template)
        status, text = probe(nobody, method, template, "ann-page-session", event, file)
        if access.closed:
            assert status == 404, (method, template, status)
        elif access.login:
            assert status == 401 and (method == "HEAD" or "log in first" in text), (method, template, status)
        else:  # Gradio's own answer (login_check says 401 itself), never the guard's refusal
            assert "log in first" not in text, (method, template)


@pytest.mark.slow  # launches a server
def test_another_login_cannot_reach_anns_session_request_or_file(served, anns):
    _, event, file = anns
    bob = Visitor(served.local_url, LOGINS[1], "bob-page-session")
    probed = 0
    for method, template in app_routes(served):
        _, access, _ = find_route(method, template)
        if access.closed:
            assert probe(bob, method, template, "ann-page-session", event, file)[0] == 404, template
        elif access.session or access.event or access.file:
            assert probe(bob, method, template, "ann-page-session", event, file)[0] == 403, template
            probed += 1
    assert probed >= 10  # join, call ×4, run/api ×4, queue/data, call results ×2, cancel, heartbeat, files ×2


@pytest.mark.slow  # launches a server
def test_nobody_can_cancel_or_take_anothers_request(served):
    url = served.local_url
    ann, bob, nobody = (Visitor(url, LOGINS[0], "a1"), Visitor(url, LOGINS[1], "b1"), Visitor(url, None, "n1"))
    generating = ann.call("generate", prompt="a ball", boxes=BOXES, num_inference_steps=2)
    cancel = {"session_hash": "x", "fn_index": fn_index(served, "generate"), "event_id": generating}
    assert nobody.http.post("/gradio_api/cancel", json=cancel).status_code == 401
    assert bob.http.post("/gradio_api/cancel", json=cancel).status_code == 403
    assert nobody.http.post("/gradio_api/reset", json={"event_id": generating}).status_code == 401
    listing = ann.call("list_concepts")
    assert bob.http.get(f"/gradio_api/call/list_concepts/{listing}").status_code == 403
    assert nobody.http.get(f"/gradio_api/call/list_concepts/{listing}").status_code == 401
    # A call started without a session hash has its event id as its session: that session is Ann's too.
    assert bob.http.get("/gradio_api/queue/data", params={"session_hash": listing}).status_code == 403
    assert bob.http.get(f"/gradio_api/heartbeat/{listing}").status_code == 403
    # Ann still receives both of her answers: the image (not null) and her list.
    kind, gallery = ann.result("generate", generating)
    assert kind == "complete" and gallery[0][0]["image"]["path"]
    assert ann.result("list_concepts", listing) == ("complete", [[]])


@pytest.mark.slow  # launches a server
def test_cached_files_are_served_to_their_visitor_only(served):
    url = served.local_url
    ann, bob, nobody = (Visitor(url, LOGINS[0], "a2"), Visitor(url, LOGINS[1], "b2"), Visitor(url, None, "n2"))
    # Ann's concept, trained and exported through gradio's own client (login, upload, streaming, download).
    client = Client(url, auth=LOGINS[0], verbose=False)
    trained = client.submit(photos=[handle_file(p) for p in PHOTOS], name="ann star", class_noun="star", steps=4,
                            num_class_images=1, preview_every=0, api_name="/train").result()
    assert "saved 'ann star'" in trained[0]
    assert Path(client.predict(name="ann star", api_name="/export_concept")).stat().st_size > 0
    photos = [ann.upload(path) for path in PHOTOS]
    photo = photos[0]
    _, exported = ann.result("export_concept", ann.call("export_concept", name="ann star"))
    _, generated = ann.result("generate", ann.call("generate", prompt="a ball", boxes=BOXES, num_inference_steps=2))
    for path in (photo, exported[0]["path"], generated[0][0]["image"]["path"]):
        assert ann.http.get(f"/gradio_api/file={path}").status_code == 200
        assert bob.http.get(f"/gradio_api/file={path}").status_code == 403
        assert bob.http.head(f"/gradio_api/file={path}").status_code == 403
        assert bob.http.get(f"/gradio_api/file/{path}").status_code == 403
        assert nobody.http.get(f"/gradio_api/file={path}").status_code == 401
    # Nor can another visitor hand Ann's photo to the app as theirs, to get something made of it back.
    photos = {"photos": [{"path": p, "meta": {"_type": "gradio.FileData"}} for p in photos], "augment_strength": 0.5}
    answer = bob.http.post("/gradio_api/call/v2/preview_augmentation", json=photos)
    assert answer.status_code == 403 and "belongs to another visitor" in answer.json()["detail"]
    assert ann.result("preview_augmentation", ann.call("preview_augmentation", **photos))[0] == "complete"


@pytest.mark.slow  # launches a server
def test_an_anonymous_shared_app_keeps_requests_to_their_page_session(tmp_path):
    demo = launch(tmp_path / "home", [])
    try:
        url = demo.local_url
        page, other = Visitor(url, None, "page-session-one"), Visitor(url, None, "page-session-two")
        event = page.join(fn_index(demo, "list_concepts"), [])
        cancel = {"session_hash": other.session, "fn_index": fn_index(demo, "list_concepts"), "event_id": event}
        assert other.http.post("/gradio_api/cancel", json=cancel).status_code == 403
        assert other.http.get(f"/gradio_api/call/list_concepts/{event}").status_code == 403
        with page.http.stream("GET", "/gradio_api/queue/data", params={"session_hash": page.session}) as stream:
            messages = [json.loads(line[5:]) for line in stream.iter_lines() if line.startswith("data:")]
        completed = next(m for m in messages if m.get("msg") == "process_completed")
        assert completed["success"] and completed["output"]["data"] == [[]]
        assert Client(url, verbose=False).predict(api_name="/list_concepts") == []
    finally:
        demo.close()


def test_a_local_single_user_app_is_not_guarded():
    options = launch_options(Policy.local(), [])
    assert options["auth"] is None and "app_kwargs" not in options


def test_a_request_is_its_owners_only_on_an_app_with_logins():
    owners = Owners(logins=True, cache_dirs=["/cache"])
    ann = owners.admit(Request("POST", "/gradio_api/call/generate", login="ann", body={"data": []}))
    owners.record(ann, {"event_id": "e1"})
    owners.record(owners.admit(Request("GET", "/gradio_api/call/generate/e1", login="ann")),
                  ["data", {"path": "/cache/h/image.png", "url": "http://x/gradio_api/file=/cache/h/image.png"}])
    for login, status in (("ann", None), ("bob", 403), (None, 401)):
        for request in (Request("GET", "/gradio_api/call/generate/e1", login=login),
                        Request("POST", "/gradio_api/cancel", login=login,
                                body={"session_hash": "x", "fn_index": 1, "event_id": "e1"}),
                        Request("GET", "/gradio_api/file=/cache/h/../h/image.png", login=login)):
            assert getattr(owners.admit(request), "status", None) == status, (login, request.path)
    assert owners.admit(Request("GET", "/gradio_api/file=/cache/other/x.png", login="ann")).status == 403
    relative = "../" * 40 + "cache/h/image.png"  # from the working folder, as Gradio reads an input's path
    assert owners.admit(Request("POST", "/gradio_api/queue/join", login="bob",
                                body={"session_hash": "s", "data": [{"path": relative}]})).status == 403
    assert owners.admit(Request("GET", "/gradio_api/file=/elsewhere/x.png", login="bob")).access.file


@pytest.mark.slow  # launches a browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")
def test_the_page_works_through_the_guard_after_logging_in(served):
    """The browser's own use of the routes (config, heartbeat, uploads, direct and queued calls, event streams,
    files) passes the guard once logged in: nothing the page asks for is refused, and the images it is given load."""
    from playwright.sync_api import expect, sync_playwright

    refused = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("response", lambda r: refused.append((r.status, r.url)) if r.status >= 400 else None)
        page.goto(served.local_url, wait_until="load")
        page.get_by_label("username").fill(LOGINS[0][0])
        page.get_by_label("password").fill(LOGINS[0][1])
        page.get_by_role("button", name="Login").click()
        expect(page.get_by_text("Put your own objects")).to_be_visible(timeout=60_000)
        page.locator("input[type=file]").first.set_input_files([str(p) for p in PHOTOS])  # uploaded, then shown
        page.get_by_role("button", name="Preview augmentation").click()  # a queued call, its answer streamed
        shown = page.locator("img[src*='file=']")  # the photos' gallery and the augmented samples
        expect(shown).to_have_count(len(PHOTOS) + 1, timeout=TIMEOUT * 1000)
        for image in shown.all():
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle(),
                                   timeout=TIMEOUT * 1000)
        browser.close()
    assert refused == []
