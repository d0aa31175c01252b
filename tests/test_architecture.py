"""The layers' imports point one way: core <- app layer, core <- toy layer, and nothing imports `app.py`.

Read from the source (every `import` and `from ... import`, top level or inside a function), so a lazy import
against the direction fails too. The composition roots, `app.py` and the CLI, may import the toy layer, to
register its `tiny` model under a name.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPOSITION_ROOTS = {"app", "pacgen.app.cli", "pacgen.__main__"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> str:
    if module in ("app", "pacgen.__main__") or module.startswith("pacgen.app"):
        return "app"
    if module.startswith("pacgen.mini"):
        return "toy"
    return "core"


def imports(source: str, own: str, is_package: bool = False) -> set[str]:
    """Absolute names of the pacgen/app modules that module `own` imports."""
    package = own if is_package else own.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in found if name == "app" or name.startswith("pacgen")}


SOURCES = sorted([ROOT / "app.py", *(ROOT / "pacgen").rglob("*.py")])
ALLOWED = {"core": {"core"}, "toy": {"core", "toy"}, "app": {"core", "app"}}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_from_the_app_and_toy_layers_to_the_core(path):
    own = module_name(path)
    allowed = ALLOWED[layer(own)] | ({"toy"} if own in COMPOSITION_ROOTS else set())
    found = imports(path.read_text(), own, path.name == "__init__.py")
    wrong = sorted(name for name in found if layer(name) not in allowed or name == "app")
    assert wrong == [], f"{own} ({layer(own)} layer) imports against the direction: {wrong}"


def test_the_check_sees_a_lazy_relative_import_against_the_direction():
    source = "def f():\n    from .app.session import Studio\n    import pacgen.mini.kit\n"
    assert {"pacgen.app.session", "pacgen.mini.kit"} <= imports(source, "pacgen.sampling")


def runtime_imports(path: Path) -> set[str]:
    """The core modules a core module imports when it runs (imports only a type checker reads left out)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            node.body = [ast.Pass()]
    own = module_name(path)
    modules = {module_name(p) for p in SOURCES if layer(module_name(p)) == "core"}
    found = imports(ast.unparse(tree), own, path.name == "__init__.py")
    return {max((m for m in modules if name == m or name.startswith(m + ".")), key=len) for name in found
            if any(name == m or name.startswith(m + ".") for m in modules)} - {own, "pacgen"}


def test_no_two_core_modules_import_each_other():
    core = {module_name(p): p for p in SOURCES if layer(module_name(p)) == "core"}
    deps = {name: runtime_imports(path) for name, path in core.items()}
    pairs = sorted({tuple(sorted((a, b))) for a in deps for b in deps[a] if a in deps.get(b, set())
                    and not (a.startswith(b + ".") or b.startswith(a + "."))})  # a package and its own modules
    assert pairs == [], f"core modules that import each other: {pairs}"
