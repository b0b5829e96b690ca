"""A CIFAR-10 ResNet studio: the published ResNet, a fast trainer, evaluation and prediction.

The names below are imported when first used, so that a module that needs no torch (reading a run's status,
the server's limits) can be imported without it."""

import importlib

_HOMES = {"Classifier": "classifier", "CLASSES": "constants", "MEAN": "constants", "STD": "constants",
          "build_model": "model", "count_parameters": "model", "load_weights": "weights", "save_weights": "weights"}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'resnet' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)


def __dir__() -> list:
    return [*globals(), *__all__]
