"""The docs hold together: every page in docs/ is reachable from the README, and no relative link or #anchor is dead.

A reader who lands on the README should be able to reach every page, and a link that moved with its text should
still lead somewhere. Anchors follow GitHub's heading slugs, so a renamed heading breaks the links into it here
rather than on the rendered site.
"""

import re
from pathlib import Path

import pytest
from helpers import REPO

README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md")), REPO / "bench" / "README.md"]

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def prose(text: str) -> str:
    """The page without its code blocks, whose brackets and hashes are not links or headings."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, each space a hyphen."""
    heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its words
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set:
    """Every heading's slug, numbered as GitHub numbers repeats (-1, -2, ...)."""
    seen, result = {}, set()
    for heading in HEADING.findall(prose(page.read_text())):
        base = slug(heading)
        count = seen.get(base, 0)
        result.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return result


def relative_links(page: Path):
    for target in LINK.findall(prose(page.read_text())):
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ... are not ours to check
            yield target


def dead_links(page: Path) -> list:
    dead = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            dead.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            where = file.relative_to(REPO) if file.is_relative_to(REPO) else file
            dead.append(f"{target}: no heading with that anchor in {where}")
    return dead


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / target.partition("#")[0]).resolve() for target in relative_links(README)}
    unlinked = [page.name for page in sorted((REPO / "docs").glob("*.md")) if page.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link to: {unlinked}"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_relative_link_and_anchor_leads_somewhere(page):
    assert not dead_links(page)


def test_slugs_follow_githubs_rules():
    assert slug("Limits for a public host") == "limits-for-a-public-host"
    assert slug("`gpu_check.py`: what only a CUDA GPU can show") == "gpu_checkpy-what-only-a-cuda-gpu-can-show"
    assert slug("The studio (`app.py`)") == "the-studio-apppy"
    assert slug("Using the model from programs: the HTTP API, `gradio_client` and ONNX") == (
        "using-the-model-from-programs-the-http-api-gradio_client-and-onnx")


def test_a_dead_link_or_anchor_is_caught(tmp_path):
    (tmp_path / "there.md").write_text("# There\n\n## A section\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](there.md#a-section) [gone](missing.md) [moved](there.md#no-such-section)\n"
                    "```\n[in code](not-checked.md)\n```\n[web](https://example.com/x.md)\n")
    assert dead_links(page) == ["missing.md: no such file",
                                f"there.md#no-such-section: no heading with that anchor in {(tmp_path / 'there.md').resolve()}"]
