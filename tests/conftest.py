"""Shared fixtures: tiny CIFAR-10-format data sets, so no test needs the real 178 MB download."""

import pickle
from pathlib import Path

import numpy as np
import pytest

from resnet.data import BATCHES_FOLDER, TEST_FILES, TRAIN_FILES

REPO = Path(__file__).resolve().parent.parent
REAL_DATA = REPO.parent / "shared" / "data" / "cifar10"


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
