"""Shared fixtures: tiny CIFAR-10-format data sets, so no test needs the real 178 MB download."""

import dataclasses
import importlib
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

import torch

from resnet import limits
from resnet.data import BATCHES_FOLDER, TEST_FILES, TRAIN_FILES, load_split
from resnet.evaluate import evaluate
from resnet.model import build_model
from resnet.weights import make_card, save_weights

REPO = Path(__file__).resolve().parent.parent
REAL_DATA = REPO.parent / "shared" / "data" / "cifar10"


def import_script(name: str):
    """A module of scripts/ (run as files, not installed), imported for its functions."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "scripts"))


def pattern_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Images whose class shows as a bright square at a class-dependent place, over noise."""
    images = rng.integers(0, 96, size=(len(labels), 3, 32, 32), dtype=np.uint8)
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 4)
        images[i, label % 3, 4 + row * 8 : 4 + row * 8 + 8, 2 + col * 7 : 2 + col * 7 + 8] = 255
    return images


def write_cifar_format(root: Path, train_per_file: int = 64, test_count: int = 100, seed: int = 0) -> Path:
    """Write the five training batches and the test batch in the official pickle layout."""
    rng = np.random.default_rng(seed)
    folder = root / BATCHES_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in [(n, train_per_file) for n in TRAIN_FILES] + [(n, test_count) for n in TEST_FILES]:
        labels = rng.integers(0, 10, size=count)
        data = pattern_images(labels, rng).reshape(count, -1)
        with open(folder / name, "wb") as handle:
            pickle.dump({"batch_label": name, "labels": labels.tolist(), "data": data, "filenames": [f"{i}.png" for i in range(count)]}, handle)
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A folder containing cifar-10-batches-py/ with 320 training and 100 test pattern images."""
    return write_cifar_format(tmp_path_factory.mktemp("cifar"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not (REAL_DATA / BATCHES_FOLDER / "test_batch").is_file():
        pytest.skip("the real CIFAR-10 test batch is not at ../shared/data/cifar10")
    return REAL_DATA


@pytest.fixture(autouse=True)
def default_limits(monkeypatch):
    """Every test starts from the default server limits, whatever this shell's STUDIO_* variables say."""
    monkeypatch.setattr(limits, "_current", limits.ServerLimits.defaults())


@pytest.fixture
def server_limits(monkeypatch):
    """``server_limits(batch_images=2)``: this process's limits for one test, the rest at their defaults."""

    def set_limits(**changes) -> limits.ServerLimits:
        chosen = dataclasses.replace(limits.ServerLimits.defaults(), **changes)
        monkeypatch.setattr(limits, "_current", chosen)
        return chosen

    return set_limits


# ---- the studio over tiny weights, tiny data and an empty runs folder ---------------------------------------
def tiny_card(model, data_dir) -> dict:
    """A card like a finished run's, with the evaluation fields the pages draw."""
    images, labels = load_split(data_dir, train=False)
    result = evaluate(model, images, labels, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    curve = [{"epoch": 1, "train_loss": 2.3, "train_acc": 0.1, "test_loss": result["loss"], "test_acc": result["acc"]}]
    return make_card(model, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), test_acc=result["acc"], ece=result["ece"],
                     per_class_acc=result["per_class_acc"], confusion=result["confusion"], test_images=result["count"], curve=curve)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory, tiny_data):
    """A randomly initialised model saved the way the shipped weights are: .safetensors + .json card."""
    torch.manual_seed(0)
    model = build_model().eval()
    return save_weights(model, tmp_path_factory.mktemp("weights") / "tiny.safetensors", tiny_card(model, tiny_data))


@pytest.fixture
def studio_env(monkeypatch, tmp_path, tiny_data, tiny_weights):
    """The app's environment: tiny weights as the shipped model, tiny data, an empty runs folder."""
    monkeypatch.setenv("STUDIO_WEIGHTS", str(tiny_weights))
    monkeypatch.setenv("CIFAR10_DIR", str(tiny_data))
    monkeypatch.setenv("RUNS_DIR", str(tmp_path / "runs"))
    return tmp_path / "runs"


@pytest.fixture
def studio(studio_env):
    import app  # the studio itself: only the tests that use it import gradio

    studio = app.Studio()
    yield studio
    studio.queue.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_data, tiny_weights):
    """(url, studio): the app on a free port, over tiny weights, tiny data and an empty runs folder (``runs`` in a
    folder of its own, so a test can watch what is next to it)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("STUDIO_WEIGHTS", str(tiny_weights))
        env.setenv("CIFAR10_DIR", str(tiny_data))
        env.setenv("RUNS_DIR", str(tmp_path_factory.mktemp("area") / "runs"))
        import app

        studio = app.Studio()
        demo = app.build_demo(studio)
        _, url, _ = demo.launch(prevent_thread_lock=True, ssr_mode=False, quiet=True, **app.launch_options())
        yield url, studio
        demo.close()
        studio.queue.close()
