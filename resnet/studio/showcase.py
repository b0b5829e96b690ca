"""The committed files the studio shows: example and mistake galleries, reference curves, results files.

Each is read as it is on disk (nothing is recomputed when a page loads); a missing or unreadable
file reads as None, and the page says so instead of failing.
"""

import functools
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES, MISTAKES = ROOT / "assets" / "examples", ROOT / "assets" / "mistakes"
STUDY, ABLATION = ROOT / "results" / "study.json", ROOT / "results" / "ablation.json"
TIME_TO_ACCURACY = ROOT / "results" / "time-to-accuracy.json"
ROBUSTNESS = ROOT / "results" / "robustness.json"
REFERENCES = ROOT / "results" / "reference-curves.json"
SERVED = (EXAMPLES, MISTAKES)  # the only folders whose files the app hands out as they are


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def example_gallery() -> tuple:
    """(paths, captions: the true class) of the committed CIFAR-10 test images; each file's name holds its index in
    the test set."""
    index = read_json(EXAMPLES / "index.json") or {"images": []}
    entries = [e for e in index["images"] if (EXAMPLES / e["file"]).is_file()]
    return [str(EXAMPLES / e["file"]) for e in entries], [e["label"] for e in entries]


def mistakes_gallery() -> list:
    """(path, caption) of the shipped model's most confident mistakes on the test set."""
    index = read_json(MISTAKES / "index.json") or {"mistakes": []}
    return [(str(MISTAKES / e["file"]), f"true {e['true']}, predicted {e['predicted']} ({e['confidence']:.0%})")
            for e in index["mistakes"] if (MISTAKES / e["file"]).is_file()]


def reference_curves() -> dict:
    """Faint curves to compare a run with (name -> metrics rows), from results/reference-curves.json, read once."""
    return {name: entry["rows"] for name, entry in (_references() or {}).get("references", {}).items()}


@functools.lru_cache(maxsize=1)
def _references():
    return read_json(REFERENCES)
