"""This machine's speeds for a kind of run, kept between runs: a budgeted run plans from the pace an earlier run of
the same kind met here, and starts training at once instead of spending its first seconds measuring.

A run of the same kind is one whose steps cost the same: the same device (its model and threads), torch, network
size, batch, precision, memory layout, optimizer, augmentation and stem. The speeds are those the earlier run met:
each size's seconds a step at its last re-fit (else the speeds it planned from), and its final scoring's pace. They
are kept once the run has finished, not when it stopped, failed, diverged or was resumed. A machine
slower today than then (another process on its cores) is caught by the run's own re-fits, as a measurement's
errors are (resnet.budget). The file lives in the user's cache folder (``$XDG_CACHE_HOME``, else ``~/.cache``);
where it cannot be read or written, the run measures, as it would without it.
"""

import json
import os
from pathlib import Path

import torch

from .atomic import atomic_write_json
from .budget import Rates

# The settings that change what a training step or a scoring pass costs.
COST_SETTINGS = ("blocks", "batch_size", "eval_batch_size", "precision", "channels_last", "compile", "optimizer", "augment",
                 "alternate_flip", "whiten_stem", "ema")


def cache_file() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cifar-resnet-studio" / "speeds.json"


def kind(config, device_name: str) -> str:
    """The key of a run's kind: its device and torch, and the settings that set a step's cost."""
    return json.dumps({"device": device_name, "torch": torch.__version__,
                       **{name: getattr(config, name) for name in COST_SETTINGS}}, sort_keys=True, default=str)


def _read() -> dict:
    try:
        stored = json.loads(cache_file().read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return stored if isinstance(stored, dict) else {}


def recall(key: str, sizes) -> Rates | None:
    """The speeds an earlier run of this kind met here, where they cover every size in ``sizes``; else None."""
    entry = _read().get(key)
    try:
        train = {int(size): float(rate) for size, rate in entry["train"].items()}
        rates = Rates(train=train, score=float(entry["score"]), checkpoint_s=float(entry["checkpoint_s"]))
    except (TypeError, KeyError, ValueError, AttributeError):
        return None
    usable = all(rate > 0 for rate in train.values()) and rates.score > 0 and rates.checkpoint_s >= 0
    return rates if usable and set(sizes) <= set(train) else None


def remember(key: str, rates: Rates) -> None:
    """Keep ``rates`` for the next run of this kind; a cache that cannot be written costs that run a measurement."""
    stored = _read()
    stored[key] = {"train": {str(size): rate for size, rate in rates.train.items()}, "score": rates.score,
                   "checkpoint_s": rates.checkpoint_s}
    try:
        cache_file().parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cache_file(), stored)
    except OSError:
        pass
