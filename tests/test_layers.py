"""The package's layers, held: the core (resnet/) imports neither the experiments nor the studio and reads no
server setting; the experiments import nothing of the studio; no module imports itself back through others.
The command line (cli.py, __main__.py) sits on top of all three, as app.py does."""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "resnet"
ENTRY_POINTS = {"resnet.cli", "resnet.__main__"}
# A server setting read from the environment: os.environ["STUDIO_..."], os.environ.get("STUDIO_..."), os.getenv(...)
READS_SERVER_SETTING = re.compile(r"""(environ\s*(\[|\.get\()|getenv\()\s*["']STUDIO_""")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set:
    """Every resnet module ``path`` imports, at its top or inside a function, relative imports resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from . import runs` imports a module
    return {module for module in found if module.split(".")[0] == "resnet"}


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: {module for module in imported(path) if module in MODULES and module != name} for name, path in MODULES.items()}


def layer(name: str) -> str:
    if name in ENTRY_POINTS:
        return "entry"
    for sub in ("experiments", "studio"):
        if name == f"resnet.{sub}" or name.startswith(f"resnet.{sub}."):
            return sub
    return "core"


ALLOWED = {"core": {"core"}, "experiments": {"core", "experiments"}, "studio": {"core", "experiments", "studio"},
           "entry": {"core", "experiments", "studio", "entry"}}


def test_the_walk_finds_the_layers():
    assert {layer(name) for name in MODULES} == set(ALLOWED)
    assert GRAPH["resnet.studio.jobs"] >= {"resnet.train", "resnet.studio.limits"}  # relative imports resolved
    assert "resnet.runs" in GRAPH["resnet.experiments.runner"]  # `from .. import runs`


@pytest.mark.parametrize("name", sorted(MODULES))
def test_each_module_imports_only_its_own_layer_and_those_below(name):
    crossing = sorted(module for module in GRAPH[name] if layer(module) not in ALLOWED[layer(name)])
    assert not crossing, f"{name} ({layer(name)}) imports {crossing}"


@pytest.mark.parametrize("name", sorted(name for name in MODULES if layer(name) == "core"))
def test_the_core_reads_no_server_setting(name):
    """A server's limits reach library code as arguments (resnet.caps.DecodeCaps), never from STUDIO_* variables."""
    assert not READS_SERVER_SETTING.search(MODULES[name].read_text())


def cycle_through(start: str) -> list | None:
    """A path of imports from ``start`` back to itself, or None."""
    stack, seen = [(start, [start])], set()
    while stack:
        name, path = stack.pop()
        for nxt in sorted(GRAPH[name]):
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def test_the_package_has_no_import_cycle():
    cycles = [" -> ".join(cycle) for name in MODULES if (cycle := cycle_through(name))]
    assert not cycles, cycles


def test_a_cycle_and_a_crossing_would_be_seen(monkeypatch):
    """The checks above can fail: a core module importing the studio, and two modules importing each other."""
    monkeypatch.setitem(GRAPH, "resnet.data", {*GRAPH["resnet.data"], "resnet.studio.limits"})
    monkeypatch.setitem(GRAPH, "resnet.studio.limits", {*GRAPH["resnet.studio.limits"], "resnet.data"})
    assert cycle_through("resnet.data") == ["resnet.data", "resnet.studio.limits", "resnet.data"]
    with pytest.raises(AssertionError, match="imports"):
        test_each_module_imports_only_its_own_layer_and_those_below("resnet.data")
    assert READS_SERVER_SETTING.search('os.environ.get("STUDIO_MAX_PIXELS")')
