"""Which weights to predict with, loaded once each, and the top classes for one image (calibrated when the card says how)."""

import hashlib
import math
import os
import threading
from collections import OrderedDict
from pathlib import Path

import torch

from . import limits, runs
from .calibration import calibrated_probabilities
from .evaluate import predict_logits
from .weights import DEFAULT_WEIGHTS, MAX_WEIGHTS_BYTES, WeightsError, load_weights

SHIPPED = "shipped"
UPLOADED = "uploaded"
LOW_CONFIDENCE = 0.5  # the threshold for a card that chose none: below it the picture may show none of the classes
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
            raise WeightsError("the shipped weights are not here yet (a training run is making them); "
                               "pick a run or upload weights")
        raise WeightsError(f"{choice.removeprefix('run:')} has no finished weights yet")
    stat = path.stat()
    return _cached((str(path), stat.st_mtime_ns, stat.st_size), lambda: load_weights(path))


def load_upload(data: bytes):
    """(key, model, card) for uploaded weights; the key (a hash) finds them again later."""
    cap = min(MAX_WEIGHTS_BYTES, limits.current().weights_bytes)  # a public server may accept less than weights could be
    if len(data) > cap:
        raise WeightsError(f"the file is larger than this server's {cap / 2**20:g} MB limit for weights")
    key = "upload:" + hashlib.sha256(data).hexdigest()
    model, card = _cached(key, lambda: load_weights(data))
    return key, model, card


def uploaded(key: str):
    """(model, card) of weights uploaded earlier in this server's life, by key."""
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    raise WeightsError("the uploaded weights are no longer loaded; upload them again")


def card_temperature(card: dict) -> float | None:
    """The card's calibration temperature, or None for a card without one (uploaded or published .pt weights)."""
    value = card.get("temperature")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise WeightsError(f"card field 'temperature' must be a positive number, not {str(value)[:40]!r}")
    return float(value)


def calibrated(logits: torch.Tensor, card: dict) -> torch.Tensor:
    """Probabilities along the last axis: softmax(logits / T) with the card's temperature, plain softmax without one."""
    return calibrated_probabilities(logits, card_temperature(card) or 1.0)


def class_logits(model, card: dict, image) -> torch.Tensor:
    """uint8 [3, 32, 32] -> the raw logits [num_classes], before any calibration."""
    return predict_logits(model, image[None], card["mean"], card["std"])[0]


def class_probabilities(model, card: dict, image) -> dict:
    """uint8 [3, 32, 32] -> {class name: probability}, every class, best first; calibrated when the card has a temperature."""
    return ranked(calibrated(class_logits(model, card, image), card), card)


def ranked(probabilities: torch.Tensor, card: dict) -> dict:
    """[num_classes] probabilities -> {class name: probability}, best first."""
    return dict(sorted(zip(card["classes"], probabilities.tolist()), key=lambda item: -item[1]))


def low_confidence_threshold(card: dict | None) -> float:
    """The card's chosen threshold (its ``low_confidence.threshold``), else the LOW_CONFIDENCE default."""
    threshold = ((card or {}).get("low_confidence") or {}).get("threshold")
    return float(threshold) if isinstance(threshold, (int, float)) and 0 <= threshold <= 1 else LOW_CONFIDENCE


def confidence_note(probabilities: dict, card: dict | None = None) -> str:
    """A warning in words when the best class is a weak guess, at the card's threshold.

    With ``card`` the note also says whether the percentage is calibrated: only a calibrated one can be
    read as how often such a guess is right.
    """
    if not probabilities:
        return ""
    name, top = max(probabilities.items(), key=lambda item: item[1])
    if card is None:
        kind = ""
    elif card.get("temperature") is not None:
        kind = "; calibrated on CIFAR-10 test images, where guesses this sure are right roughly that often"
    else:
        kind = "; uncalibrated: this model's confidence was not checked on held-out images"
    if top < low_confidence_threshold(card):
        return (f"Low confidence: the best guess, {name}, has only {top:.0%}{kind}. "
                f"This may be none of the {len(probabilities)} classes it knows.")
    return f"Best guess: {name} ({top:.0%}{kind})."


def describe_calibration(card: dict) -> str:
    """Calibrated (T, ECE before and after on held-out images) or uncalibrated, in one phrase."""
    try:
        temperature = card_temperature(card)
    except WeightsError as error:
        return f"uncalibrated ({error})"
    ece = card.get("ece")
    if temperature is None:
        raw = ""
        if isinstance(ece, (int, float)):
            raw = f"; calibration error (ECE) {ece:.3f}: its stated confidence is off by {ece:.1%} on average"
        return f"uncalibrated (no temperature in its card){raw}"
    block = card.get("calibration") or {}
    before, after = (block.get(key) or {} for key in ("before", "after"))
    text = f"calibrated (T={temperature:.3f}"
    if isinstance(before.get("ece"), (int, float)) and isinstance(after.get("ece"), (int, float)):
        text += f"; ECE {before['ece']:.3f} before, {after['ece']:.3f} after"
        if block.get("evaluated_on"):
            text += f", on {block['evaluated_on']}"
    return text + ")"


def describe_card(card: dict) -> str:
    """One paragraph about a model for the picker: accuracy, calibration, architecture."""
    parts = [f"blocks {card.get('blocks')}"]
    if isinstance(card.get("test_acc"), (int, float)):
        parts.append(f"test accuracy {card['test_acc']:.2%}")
    parts.append(describe_calibration(card))
    low = card.get("low_confidence")
    numbers = ("threshold", "share_below", "accuracy_below", "accuracy_above")
    if isinstance(low, dict) and all(isinstance(low.get(key), (int, float)) for key in numbers):
        images = low.get("measured_on") or "test images"
        parts.append(f"below {low['threshold']:.0%} confidence ({low['share_below']:.1%} of {images}) it is right "
                     f"{low['accuracy_below']:.0%} of the time, above it {low['accuracy_above']:.0%}")
    if card.get("source"):
        parts.append(card["source"])
    return "; ".join(parts)
