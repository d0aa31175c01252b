"""Every code block in the README runs here, or is checked against what runs it, so the README cannot drift.

- Set-up and test commands: `.ci/run` runs them word for word (checked here line by line);
- the command-line examples: parsed exactly as written, then run (with fewer steps, to stay fast);
- the Python example: executed, on the concept the command-line example trained;
- the `gradio_client` example: executed against the app launched with `--model tiny`, whose `view_api()` must
  read like the README (typed parameters, named outputs).
"""

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client

from pacgen.app.cli import build_parser, main
from pacgen.mini.kit import KIT, kit_photos
from pacgen.settings import SampleSettings, TrainSettings, kind, surfaced

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"^```(\w*)\n(.*?)^```", README, re.M | re.S)
SETUP_KEY, CLI_KEY, API_KEY, PYTHON_KEY = "pip install torch", "python -m pacgen", "gradio_client", "PACGenPipeline"
BATCH_KEY, BASE_KEY = "pacgen batch", "--grounding"  # blocks of their own beside the command-line examples


def commands(block: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments dropped."""
    joined = block.replace("\\\n", " ")
    lines = [line.split("  #")[0].strip() for line in joined.splitlines()]
    return [" ".join(line.split()) for line in lines if line and not line.startswith("#")]


def block(lang: str, key: str) -> str:
    """The one block of `lang` holding `key` (the command-line examples' key is not the batch block's)."""
    (found,) = [body for language, body in BLOCKS
                if language == lang and key in body
                and all(key == own or own not in body for own in (BATCH_KEY, BASE_KEY))]
    return found


def test_every_block_is_one_this_module_runs_or_checks():
    checked = {("bash", SETUP_KEY), ("bash", CLI_KEY), ("python", API_KEY), ("python", PYTHON_KEY)}
    for language, body in BLOCKS:
        is_test_command = language == "bash" and all(c.startswith("python -m pytest") for c in commands(body))
        is_own = language == "bash" and (BATCH_KEY in body or BASE_KEY in body)
        assert is_test_command or is_own or sum(key in body for lang, key in checked if lang == language) == 1, body
    for lang, key in [*checked, ("bash", BATCH_KEY), ("bash", BASE_KEY)]:
        block(lang, key)  # exactly one of each


def test_the_own_base_examples_parse_as_written():
    import app

    ran = commands(block("bash", BASE_KEY))
    assert any(c.startswith("python app.py") for c in ran) and any(CLI_KEY in c for c in ran)
    for command in ran:
        words = shlex.split(command)
        if words[:2] == ["python", "app.py"]:
            assert app.parse_args(words[2:]).model, command
        else:
            assert words[:3] == ["python", "-m", "pacgen"], command
            build_parser().parse_args(words[3:])


def test_the_batch_example_is_a_valid_jobs_file_and_its_commands_parse(tmp_path):
    from pacgen.batch import read_jobs

    lines = [line for line in block("bash", BATCH_KEY).splitlines() if line.startswith("{")]
    assert lines
    (tmp_path / "photos").mkdir()
    kit_photos(KIT[0], n=1, size=64)[0].save(tmp_path / "photos" / "beach.jpg")
    (tmp_path / "jobs.jsonl").write_text("\n".join(lines) + "\n")
    jobs, problems = read_jobs(tmp_path / "jobs.jsonl")
    assert not problems and len(jobs) == len(lines)
    ran = [c for c in commands(block("bash", BATCH_KEY)) if not c.startswith("{")]
    assert ran
    for command in ran:
        words = shlex.split(command)
        args = build_parser().parse_args(words[words.index("pacgen") + 1:])  # exactly as written
        assert args.command == "batch", command


def test_ci_runs_the_readmes_setup_and_test_command_word_for_word():
    ci = (ROOT / ".ci" / "run").read_text()
    ran = commands(ci.split("# README commands begin\n")[1].split("# README commands end")[0])
    setup = commands(block("bash", SETUP_KEY))
    assert ran[:-1] == [c for c in setup if "pip install" in c or "venv" in c]
    assert ran[-1] == "python -m pytest -q" and "```bash\npython -m pytest -q\n```" in README
    assert "apt-get update" in ci and "apt-get install -y -qq chromium" in ci
    assert setup[-1] == "python app.py"
    fast = [c for language, body in BLOCKS for c in commands(body) if "not slow" in c]
    assert fast == ['python -m pytest -q -m "not slow"'] and "slow:" in (ROOT / "pyproject.toml").read_text()


@pytest.mark.slow  # trains a concept on mini and generates
def test_the_command_line_and_python_examples_run(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # the examples' library is ~/.pacgen
    monkeypatch.delenv("PACGEN_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    for photo, name in zip(kit_photos(KIT[0], n=3, size=64), ("a.png", "b.png", "c.png")):
        photo.save(name)
    faster = {"generate": ["--num-inference-steps", "2"], "train": ["--steps", "2"]}
    for command in commands(block("bash", CLI_KEY)):
        words = shlex.split(command)
        assert words[:3] == ["python", "-m", "pacgen"]
        build_parser().parse_args(words[3:])  # exactly as written
        assert main(words[3:] + faster[words[3]]) == 0, command
    assert {"out.png", "star.png"} <= {p.name for p in tmp_path.iterdir()}
    assert (tmp_path / ".pacgen" / "concepts" / "my-star" / "concept.json").is_file()
    (tmp_path / "star.png").unlink()
    exec(block("python", PYTHON_KEY), {})
    assert (tmp_path / "star.png").is_file()


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    """`python app.py --model tiny` on a free port, with a concept named as in the README's example; its log. Started
    outside the checkout (as an installed app is), with a Gradio temporary folder of the user's."""
    from test_app import free_port

    from pacgen.mini.stand_ins import write_random_concept
    from pacgen.sampling import PACGenPipeline

    home = tmp_path_factory.mktemp("home")
    write_random_concept(PACGenPipeline.from_pretrained("tiny", device="cpu"), home / "concepts" / "my-dog",
                         "my dog", "sks", "dog")
    port, log = free_port(), home / "server.log"
    env = {**os.environ, "PACGEN_MULTI_USER": "", "GRADIO_TEMP_DIR": str(home / "gradio")}
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--model", "tiny", "--data-dir", str(home),
                                    "--port", str(port)], cwd=home, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        try:
            Client(url, verbose=False)
            break
        except Exception:  # noqa: BLE001 - not up yet
            if time.time() > deadline or process.poll() is not None:
                process.kill()
                raise AssertionError("the app did not start:\n" + log.read_text()) from None
            time.sleep(0.5)
    yield url, log
    process.kill()
    process.wait()


@pytest.mark.slow  # launches the app
def test_the_api_example_runs_against_the_app(app_url):
    url, _ = app_url
    code = block("python", API_KEY)
    assert 'Client("http://127.0.0.1:7860")' in code  # the app's default address, here on a free port
    names: dict = {}
    exec(code.replace("http://127.0.0.1:7860", url), names)
    assert names["gallery"] and "Seeds:" in names["info"]


@pytest.mark.slow  # launches the app
def test_view_api_reads_like_the_readme(app_url):
    url, _ = app_url
    api = Client(url, verbose=False).view_api(return_format="dict", print_info=False)["named_endpoints"]
    documented = re.findall(r"^\| `(/\w+)`", README, re.M)
    assert sorted(api) == sorted(documented)
    whole = {f.name for cls in (SampleSettings, TrainSettings) for f in surfaced(cls) if kind(f) == "int"}
    for name, endpoint in api.items():
        for parameter in endpoint["parameters"]:
            typed = parameter["python_type"]["type"]
            assert typed != "Literal[]", (name, parameter["parameter_name"])
            if parameter["parameter_name"] in whole:
                assert typed == "int", (name, parameter["parameter_name"], typed)
        for output in endpoint["returns"]:
            assert not output["label"].startswith("value_"), (name, output)
    token = [p for p in api["/push_to_hub"]["parameters"] if p["parameter_name"] == "token"][0]
    assert token["parameter_has_default"]
    concept = [p for p in api["/export_concept"]["parameters"] if p["parameter_name"] == "name"][0]
    assert concept["python_type"]["type"] == "str"
    assert {"num_inference_steps", "seed", "num_images", "width", "height"} <= whole
    assert {"rank", "batch_size", "steps"} <= whole


@pytest.mark.slow  # launches the app
def test_a_refused_request_is_one_line_in_the_server_log(app_url):
    url, log = app_url
    client = Client(url, verbose=False)
    boxes = {"headers": ["label", "x0", "y0", "x1", "y1"], "data": [["a dog", 0.1, 0.1, 0.9, 0.9]]}
    for values in ({"width": 60}, {"num_inference_steps": 0}):  # refused by our check, and by Gradio's own
        with pytest.raises(Exception, match="multiples of 8|num_inference_steps"):
            client.predict(prompt="a dog", boxes=boxes, api_name="/generate", **values)
    text = log.read_text()
    refusals = [line for line in text.splitlines() if line.startswith("refused a request: ")]
    assert len(refusals) >= 2 and any("num_inference_steps" in line for line in refusals)
    assert "Traceback" not in text
    assert "torchvision" not in text  # transformers' notice about its PIL fallback (pacgen.quiet)


@pytest.mark.slow  # launches the app
def test_started_elsewhere_it_serves_the_example_photos_from_a_cache_of_its_own(app_url):
    """Gradio allows files from the working and temporary folders only: an app started outside the checkout could
    not give the page the example objects' photos (403). Its cached files are in a folder of its own inside the
    user's GRADIO_TEMP_DIR, so another app's clean-up on the machine never deletes them."""
    url, log = app_url
    photo = ROOT / "assets" / "concepts" / "ruby_checker_star" / "photo_0.png"
    answer = httpx.get(f"{url}/gradio_api/file={photo}", timeout=60)
    assert answer.status_code == 200 and answer.content == photo.read_bytes()
    boxes = {"headers": ["label", "x0", "y0", "x1", "y1"], "data": [["a dog", 0.1, 0.1, 0.9, 0.9]]}
    Client(url, verbose=False).predict(prompt="a dog", boxes=boxes, num_inference_steps=2, api_name="/generate")
    folders = list((log.parent / "gradio").iterdir())
    (own,) = [folder for folder in folders if folder.name.startswith("pacgen-files-")]
    assert any(own.rglob("*.*"))  # what it served (the image just made)
    assert not any(re.fullmatch("[0-9a-f]{64}", folder.name) for folder in folders)  # nothing cached beside it
