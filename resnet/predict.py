"""Which weights to predict with, loaded once each, and the top classes for one image."""

import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path

from . import runs
from .evaluate import predict_logits
from .weights import DEFAULT_WEIGHTS, MAX_WEIGHTS_BYTES, WeightsError, load_weights

# A public server may accept less than any weights file could be ($STUDIO_MAX_WEIGHTS_MB).
MAX_UPLOAD_WEIGHTS_BYTES = min(MAX_WEIGHTS_BYTES, int(float(os.environ.get("STUDIO_MAX_WEIGHTS_MB", MAX_WEIGHTS_BYTES >> 20)) * 2**20))

SHIPPED = "shipped"
UPLOADED = "uploaded"
LOW_CONFIDENCE = 0.5  # below this top probability the picture may show none of the classes
_CACHE_SIZE = 4
_cache = OrderedDict()  # key -> (model, card), shared by every visitor
_cache_lock = threading.Lock()


def shipped_weights() -> Path:
    """The default model: $STUDIO_WEIGHTS, else the weights committed in weights/."""
    return Path(os.environ.get("STUDIO_WEIGHTS") or DEFAULT_WEIGHTS)


def weights_path(choice: str, root=None) -> Path:
    """The file behind a picker value: ``shipped`` or ``run:<id>``. User text never names a path."""
    if choice == SHIPPED:
        return shipped_weights()
    if isinstance(choice, str) and choice.startswith("run:"):
        return runs.run_path(root or runs.runs_dir(), choice.removeprefix("run:")) / runs.WEIGHTS
    raise WeightsError(f"unknown model {str(choice)[:80]!r}")


def model_choices(root=None) -> list:
    """(label, value) pairs for a picker: the shipped weights and every finished run's weights."""
    choices = [("Shipped model", SHIPPED)]
    for row in runs.list_runs(root):
        if row.get("has_weights"):
            accuracy = f" ({row['final_test_acc']:.1%})" if row.get("final_test_acc") is not None else ""
            choices.append((f"Run {row['run_id']}{accuracy}", f"run:{row['run_id']}"))
    return choices


def _cached(key, load):
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    loaded = load()
    with _cache_lock:
        _cache[key] = loaded
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return loaded


def load_choice(choice: str, root=None):
    """(model, card) for a picker value; reloaded when the file changes."""
    path = weights_path(choice, root)
    if not path.is_file():
        if choice == SHIPPED:
            raise WeightsError("the shipped weights are not here yet (a training run is making them); pick a run or upload weights")
        raise WeightsError(f"{choice.removeprefix('run:')} has no finished weights yet")
    stat = path.stat()
    return _cached((str(path), stat.st_mtime_ns, stat.st_size), lambda: load_weights(path))


def load_upload(data: bytes):
    """(key, model, card) for uploaded weights; the key (a hash) finds them again later."""
    if len(data) > MAX_UPLOAD_WEIGHTS_BYTES:
        raise WeightsError(f"the file is larger than this server's {MAX_UPLOAD_WEIGHTS_BYTES / 2**20:g} MB limit for weights")
    key = "upload:" + hashlib.sha256(data).hexdigest()
    model, card = _cached(key, lambda: load_weights(data))
    return key, model, card


def uploaded(key: str):
    """(model, card) of weights uploaded earlier in this server's life, by key."""
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    raise WeightsError("the uploaded weights are no longer loaded; upload them again")


def class_probabilities(model, card: dict, image) -> dict:
    """uint8 [3, 32, 32] -> {class name: probability}, every class, best first."""
    probs = predict_logits(model, image[None], card["mean"], card["std"]).softmax(1)[0].tolist()
    return dict(sorted(zip(card["classes"], probs), key=lambda item: -item[1]))


def confidence_note(probabilities: dict) -> str:
    """A warning in words when the best class is a weak guess."""
    if not probabilities:
        return ""
    name, top = max(probabilities.items(), key=lambda item: item[1])
    if top < LOW_CONFIDENCE:
        return (f"Low confidence: the best guess, {name}, has only {top:.0%}. "
                f"This may be none of the {len(probabilities)} classes it knows.")
    return f"Best guess: {name} ({top:.0%})."


def describe_card(card: dict) -> str:
    """One paragraph about a model for the picker: accuracy, calibration, architecture."""
    parts = [f"blocks {card.get('blocks')}"]
    if isinstance(card.get("test_acc"), (int, float)):
        parts.append(f"test accuracy {card['test_acc']:.2%}")
    if isinstance(card.get("ece"), (int, float)):
        parts.append(f"calibration error (ECE) {card['ece']:.3f}: its stated confidence is off by {card['ece']:.1%} on average")
    low = card.get("low_confidence")
    numbers = ("threshold", "share_below", "accuracy_below", "accuracy_above")
    if isinstance(low, dict) and all(isinstance(low.get(key), (int, float)) for key in numbers):
        parts.append(f"below {low['threshold']:.0%} confidence ({low['share_below']:.1%} of test images) it is right "
                     f"{low['accuracy_below']:.0%} of the time, above it {low['accuracy_above']:.0%}")
    if card.get("source"):
        parts.append(card["source"])
    return "; ".join(parts)
