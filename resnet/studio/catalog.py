"""The models a studio offers (the shipped weights, each finished run's, uploads), each loaded once as a Classifier.

A picker value is ``shipped``, ``run:<id>`` or ``uploaded``: user text never names a path."""

import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path

from .. import runs
from ..classifier import Classifier
from ..weights import DEFAULT_WEIGHTS, MAX_WEIGHTS_BYTES, WeightsError, is_safetensors, load_weights
from . import limits

SHIPPED = "shipped"
UPLOADED = "uploaded"
_CACHE_SIZE = 4
_cache = OrderedDict()  # key -> Classifier, shared by every visitor
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


def load_choice(choice: str, root=None) -> Classifier:
    """The Classifier of a picker value; reloaded when the file changes."""
    path = weights_path(choice, root)
    if not path.is_file():
        if choice == SHIPPED:
            raise WeightsError("the shipped weights are not here yet (a training run is making them); "
                               "pick a run or upload weights")
        raise WeightsError(f"{choice.removeprefix('run:')} has no finished weights yet")
    stat = path.stat()
    return _cached((str(path), stat.st_mtime_ns, stat.st_size), lambda: load_weights(path))


def load_upload(data: bytes) -> tuple:
    """(key, Classifier) of uploaded weights; the key (a hash) finds them again later."""
    cap = min(MAX_WEIGHTS_BYTES, limits.current().weights_bytes)  # a public server may accept less than weights could be
    if len(data) > cap:
        raise WeightsError(f"the file is larger than this server's {cap / 2**20:g} MB limit for weights")
    if not is_safetensors(data):  # a .pt is a pickle: a visitor's is never opened, even by torch's restricted loader
        raise WeightsError("not a weights file this server opens: uploads must be .safetensors (a .pt file is a pickle); "
                           "for a published .pt, run `python -m resnet convert project1_model.pt project1_model.safetensors` "
                           "where you trust the file, and upload that")
    key = "upload:" + hashlib.sha256(data).hexdigest()
    return key, _cached(key, lambda: load_weights(data))


def uploaded(key: str) -> Classifier:
    """The Classifier of weights uploaded earlier in this server's life, by key."""
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    raise WeightsError("the uploaded weights are no longer loaded; upload them again")
