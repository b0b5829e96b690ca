"""The Space's runtime requirements pin every package the app and the library import, and nothing they do not."""

import ast
import re
import sys

from helpers import REPO

DISTRIBUTIONS = {"PIL": "pillow"}  # import name -> the name it is installed by, where the two differ


def imported_packages() -> set:
    names = set()
    for path in [REPO / "app.py", *sorted((REPO / "resnet").rglob("*.py"))]:  # the subpackages too
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.partition(".")[0])
    third_party = names - set(sys.stdlib_module_names) - {"resnet"}
    return {DISTRIBUTIONS.get(name, name).lower() for name in third_party}


def pinned() -> dict:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.partition("#")[0].strip()
        if line:
            name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9][A-Za-z0-9.]*)", line).groups()
            pins[name.lower()] = version
    return pins


def test_the_pins_are_exactly_the_imported_packages():
    """A package imported only through another's dependencies would move when that one does; a pin nothing
    imports is weight the Space installs for nothing (the scripts' and tests' tools have files of their own)."""
    packages, pins = imported_packages(), set(pinned())
    assert packages - pins == set(), "imported but not pinned in requirements.txt"
    assert pins - packages == set(), "pinned in requirements.txt but imported nowhere in app.py or resnet/"
