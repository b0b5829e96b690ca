"""CIFAR-10 as whole tensors, with batched augmentation on the training device.

The official python batches are read directly (the same files torchvision's ``CIFAR10`` reads),
because torchvision insists on the official md5 sums and our tests use tiny data sets written in
the same format. The pickles are read with an unpickler that admits only the numpy types the
format needs, so a tampered data folder cannot run code.
"""

import functools
import io
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from .constants import IMAGE_SIZE
from .errors import UserError
from .runs import persistent_storage

BATCHES_FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)

# torchvision's RandomCrop(32, padding=[0, 2, 3, 4]) of the published code: left, top, right, bottom.
ORIGINAL_PADDING = (0, 2, 3, 4)
# Each crop mode's zero padding (left, top, right, bottom): the crop is a random translation within it. A short run
# underfits more than it overfits, so a 2-pixel translation ("light", airbench's) can beat the usual 4 there.
PADDINGS = {"standard": (4, 4, 4, 4), "original": ORIGINAL_PADDING, "light": (2, 2, 2, 2)}
AUGMENTATIONS = (*PADDINGS, "none")


class DataMissingError(UserError, FileNotFoundError):
    pass


DATA_DIR_HELP = ("folder containing cifar-10-batches-py/ (default: $CIFAR10_DIR, else /data/cifar10 on a Space's "
                 "persistent storage, else ./data)")


def resolve_data_dir(data_dir=None) -> Path:
    """The folder that contains ``cifar-10-batches-py/``: the argument, $CIFAR10_DIR, /data/cifar10 where a Space's
    persistent storage is mounted (so a fetched copy outlives a restart, as the runs do), else ./data."""
    if data_dir or os.environ.get("CIFAR10_DIR"):
        return Path(data_dir or os.environ["CIFAR10_DIR"])
    storage = persistent_storage()
    return storage / "cifar10" if storage else Path("data")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR-10 batch file")
        return super().find_class(module, name)


def _read_batch(path: Path):
    with open(path, "rb") as handle:
        entry = _NumpyOnlyUnpickler(io.BytesIO(handle.read()), encoding="latin1").load()
    data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE)
    labels = np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64)
    if len(data) != len(labels):
        raise ValueError(f"{path}: {len(data)} images but {len(labels)} labels")
    return data, labels


def load_split(data_dir=None, train: bool = True):
    """Return (images uint8 [N, 3, 32, 32], labels int64 [N]) as CPU tensors."""
    folder = resolve_data_dir(data_dir) / BATCHES_FOLDER
    names = TRAIN_FILES if train else TEST_FILES
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise DataMissingError(
            f"CIFAR-10 not found: {folder} lacks {', '.join(missing)}. Put the official python "
            f"batches (cifar-10-python.tar.gz, extracted) there, point --data-dir or $CIFAR10_DIR "
            f"at the folder that contains {BATCHES_FOLDER}/, or pass --download."
        )
    parts = [_read_batch(folder / name) for name in names]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return images, labels


def split_validation(images, labels, val_size: int, seed: int):
    """Carve a seeded validation split from the training set: (train_x, train_y, val_x, val_y)."""
    if not 0 < val_size < len(images):
        raise ValueError(f"val_size must be in 1..{len(images) - 1}, got {val_size}")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    val, train = order[:val_size], order[val_size:]
    return images[train], labels[train], images[val], labels[val]


def augment(images: torch.Tensor, generator: torch.Generator, mode: str = "standard", flip=None) -> torch.Tensor:
    """Random crop (zero padding) and horizontal flip of a uint8 batch, all images at once.

    ``flip`` (a bool per image) replaces the coin toss, for alternating flips across epochs.
    """
    if mode == "none":
        return images
    left, top, right, bottom = PADDINGS[mode]
    n, _, height, width = images.shape
    padded = torch.nn.functional.pad(images, (left, right, top, bottom))
    device = images.device
    dy = torch.randint(0, top + bottom + 1, (n,), generator=generator, device=device)
    dx = torch.randint(0, left + right + 1, (n,), generator=generator, device=device)
    rows = (dy[:, None] + torch.arange(height, device=device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(width, device=device))[:, None, None, :]
    batch = torch.arange(n, device=device)[:, None, None, None]
    channel = torch.arange(images.shape[1], device=device)[None, :, None, None]
    cropped = padded[batch, channel, rows, cols]
    if flip is None:
        flip = torch.rand(n, generator=generator, device=device) < 0.5
    return torch.where(flip[:, None, None, None], cropped.flip(3), cropped)


@functools.lru_cache(maxsize=16)
def _constants(mean: tuple, std: tuple, device: torch.device) -> tuple:
    """Mean and std as [1, 3, 1, 1] tensors on ``device``, built once: a new tensor on a GPU is a blocking
    copy, which would make the host wait for the previous step before it could queue the next."""
    return (torch.tensor(mean, device=device).view(1, -1, 1, 1), torch.tensor(std, device=device).view(1, -1, 1, 1))


def normalize(images: torch.Tensor, mean, std, channels_last: bool = False) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> float32, scaled to [0, 1] and standardized per channel."""
    # Under torch.compile or torch.export tracing the constants are fake tensors: never cache those.
    tracing = torch.compiler.is_compiling() or torch.compiler.is_exporting()
    mean, std = (_constants.__wrapped__ if tracing else _constants)(tuple(mean), tuple(std), images.device)
    out = (images.float() / 255.0 - mean) / std
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    return out
