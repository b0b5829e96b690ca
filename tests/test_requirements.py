"""The Space's runtime requirements pin every package the app and the library import, and nothing they do not; a
package imported only inside ``try: ... except ImportError`` (a tool of the studies, which the Space never runs) is
pinned in requirements-dev.txt instead."""

import ast
import re
import sys

from helpers import REPO

DISTRIBUTIONS = {"PIL": "pillow"}  # import name -> the name it is installed by, where the two differ


def _imported(nodes) -> set:
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.partition(".")[0])
    return names


def _catches_import_error(node: ast.Try) -> bool:
    return any(isinstance(handler.type, ast.Name) and handler.type.id in ("ImportError", "ModuleNotFoundError")
               for handler in node.handlers)


def _packages(names: set) -> set:
    return {DISTRIBUTIONS.get(name, name).lower() for name in names - set(sys.stdlib_module_names) - {"resnet"}}


def imported_packages() -> tuple:
    """(the packages app.py and resnet/ import, those of them imported only where an ImportError is caught)."""
    required, optional = set(), set()
    for path in [REPO / "app.py", *sorted((REPO / "resnet").rglob("*.py"))]:  # the subpackages too
        tree = ast.parse(path.read_text())
        guarded = [n for t in ast.walk(tree) if isinstance(t, ast.Try) and _catches_import_error(t)
                   for statement in t.body for n in ast.walk(statement)]
        optional |= _imported(guarded)
        required |= _imported(n for n in ast.walk(tree) if all(n is not g for g in guarded))
    return _packages(required), _packages(optional)


def pinned(name: str = "requirements.txt") -> dict:
    pins = {}
    for line in (REPO / name).read_text().splitlines():
        line = line.partition("#")[0].strip()
        if line and not line.startswith("-r"):
            package, version = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[a-z,]+\])?==([0-9][A-Za-z0-9.]*)", line).groups()
            pins[package.lower()] = version
    return pins


def test_the_pins_are_exactly_the_imported_packages():
    """A package imported only through another's dependencies would move when that one does; a pin nothing
    imports is weight the Space installs for nothing (the scripts' and tests' tools have files of their own)."""
    packages, optional = imported_packages()
    pins = set(pinned())
    assert packages - pins == set(), "imported but not pinned in requirements.txt"
    assert pins - packages == set(), "pinned in requirements.txt but imported nowhere in app.py or resnet/ (outside a try)"
    assert optional - set(pinned("requirements-dev.txt")) == set(), "imported as optional, not pinned in requirements-dev.txt"
