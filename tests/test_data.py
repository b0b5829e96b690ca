"""Data: the official batch format, the missing-data message, the validation split and augmentation."""

import pickle

import pytest
import torch
import torchvision.transforms.functional as TF

from resnet.data import (
    BATCHES_FOLDER,
    ORIGINAL_PADDING,
    DataMissingError,
    augment,
    load_split,
    normalize,
    split_validation,
)


def label_from_pattern(image: torch.Tensor) -> int:
    """Undo conftest.pattern_images: the bright 8x8 square's place names the class."""
    full = (image == 255).all(0) | (image == 255).any(0)
    ys, xs = torch.nonzero(full, as_tuple=True)
    row, col = (int(ys.min()) - 4) // 8, (int(xs.min()) - 2) // 7
    return row * 4 + col


def test_training_and_test_split_shapes_and_types(tiny_data):
    train_x, train_y = load_split(tiny_data, train=True)
    test_x, test_y = load_split(tiny_data, train=False)
    assert train_x.shape == (320, 3, 32, 32)
    assert test_x.shape == (100, 3, 32, 32)
    assert train_x.dtype == test_x.dtype == torch.uint8
    assert train_y.dtype == test_y.dtype == torch.int64
    assert train_y.shape == (320,)
    assert test_y.shape == (100,)
    assert 0 <= int(train_y.min())
    assert int(train_y.max()) <= 9


def test_images_keep_their_labels_and_channel_layout(tiny_data):
    images, labels = load_split(tiny_data, train=True)
    for image, label in zip(images[:40], labels[:40], strict=True):
        assert label_from_pattern(image) == int(label)
        assert (image[int(label) % 3] == 255).sum() == 64  # the square is in channel label % 3


def test_data_dir_defaults_to_environment_variable(tiny_data, monkeypatch):
    monkeypatch.setenv("CIFAR10_DIR", str(tiny_data))
    assert load_split(None, train=False)[0].shape == (100, 3, 32, 32)


def test_missing_data_names_the_folder_and_download(tmp_path):
    with pytest.raises(DataMissingError) as caught:
        load_split(tmp_path / "nowhere", train=True)
    message = str(caught.value)
    assert str(tmp_path / "nowhere" / BATCHES_FOLDER) in message
    assert "--download" in message
    assert "data_batch_1" in message


def test_real_test_batch_loads(real_data):
    images, labels = load_split(real_data, train=False)
    assert images.shape == (10_000, 3, 32, 32)
    assert torch.bincount(labels).tolist() == [1000] * 10


def test_the_unpickler_refuses_other_globals(tmp_path):
    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    folder = tmp_path / BATCHES_FOLDER
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({"data": Payload(), "labels": [0]}))
    with pytest.raises(pickle.UnpicklingError, match="is not allowed in a CIFAR-10 batch file"):
        load_split(tmp_path, train=False)
    assert not (tmp_path / "pwned").exists()


# ---- validation split -------------------------------------------------------------------------
def test_split_validation_is_seeded_and_disjoint():
    images = torch.arange(100).view(100, 1, 1, 1).expand(100, 3, 2, 2).contiguous()
    labels = torch.arange(100)
    train_x, train_y, val_x, val_y = split_validation(images, labels, 20, seed=3)
    assert len(val_y) == 20
    assert len(train_y) == 80
    assert set(train_y.tolist()).isdisjoint(val_y.tolist())
    assert sorted(train_y.tolist() + val_y.tolist()) == list(range(100))
    assert torch.equal(train_x[:, 0, 0, 0], train_y)
    assert torch.equal(val_x[:, 0, 0, 0], val_y)
    assert torch.equal(split_validation(images, labels, 20, seed=3)[3], val_y)
    assert not torch.equal(split_validation(images, labels, 20, seed=4)[3], val_y)


@pytest.mark.parametrize("size", [0, 100, -1])
def test_split_validation_refuses_impossible_sizes(size):
    with pytest.raises(ValueError, match="val_size"):
        split_validation(torch.zeros(100, 3, 2, 2), torch.zeros(100), size, seed=0)


# ---- augmentation -----------------------------------------------------------------------------
def coordinate_images(n: int) -> torch.Tensor:
    """Channel 0 holds row + 1, channel 1 col + 1, channel 2 ones: every pixel says where it came from."""
    rows = torch.arange(1, 33, dtype=torch.uint8).view(32, 1).expand(32, 32)
    cols = torch.arange(1, 33, dtype=torch.uint8).view(1, 32).expand(32, 32)
    return torch.stack([rows, cols, torch.ones(32, 32, dtype=torch.uint8)]).expand(n, 3, 32, 32).contiguous()


def crop_shifts(out: torch.Tensor):
    """Per image (shift_y, shift_x): the source pixel of output (i, j) is (i + shift_y, j + shift_x)."""
    shifts = []
    for image in out:
        inside = image[2] == 1
        ys, xs = torch.nonzero(inside, as_tuple=True)
        dy = image[0][inside].long() - 1 - ys
        dx = image[1][inside].long() - 1 - xs
        assert (dy == dy[0]).all(), "a crop must be a plain translation"
        assert (dx == dx[0]).all(), "a crop must be a plain translation"
        assert (image[:, ~inside] == 0).all(), "the border must be zero padding"
        shifts.append((int(dy[0]), int(dx[0])))
    return shifts


@pytest.mark.parametrize(("mode", "padding"), [("standard", (4, 4, 4, 4)), ("light", (2, 2, 2, 2)), ("original", (0, 2, 3, 4))])
def test_crop_offsets_cover_exactly_the_padding(mode, padding):
    left, top, right, bottom = padding
    images = coordinate_images(600)
    out = augment(images, torch.Generator().manual_seed(0), mode, flip=torch.zeros(600, dtype=torch.bool))
    assert out.shape == images.shape
    assert out.dtype == torch.uint8
    shifts = crop_shifts(out)
    assert {dy for dy, _ in shifts} == set(range(-top, bottom + 1))
    assert {dx for _, dx in shifts} == set(range(-left, right + 1))


def test_original_crop_leaves_black_only_on_the_allowed_sides():
    out = augment(coordinate_images(400), torch.Generator().manual_seed(1), "original", flip=torch.zeros(400, dtype=torch.bool))
    black = out[:, 2] == 0  # channel 2 is 1 everywhere in the source, 0 only in padding
    black_rows, black_cols = black.all(2), black.all(1)  # [N, 32]: a whole row / column of padding
    assert black_rows[:, :2].any(), "every allowed side shows up: the top"
    assert black_rows[:, -4:].any(), "every allowed side shows up: the bottom"
    assert black_cols[:, -3:].any(), "every allowed side shows up: the right"
    assert not black_rows[:, 2:28].any(), "at most 2 rows at the top, 4 at the bottom"
    assert not black_cols[:, :29].any(), "at most 3 columns, on the right only: no padding on the left"
    assert not black[:, 2:28, :29].any()


def test_original_crop_matches_torchvision_padding_semantics():
    # torchvision RandomCrop(32, padding=[0, 2, 3, 4]) pads left 0, top 2, right 3, bottom 4 and crops at a random
    # offset: every output of ours must equal one such crop of torchvision's padded image.
    source = torch.randint(1, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    padded = TF.pad(source, list(ORIGINAL_PADDING))
    assert padded.shape == (3, 38, 35)
    crops = [TF.crop(padded, y, x, 32, 32) for y in range(7) for x in range(4)]
    out = augment(source.expand(50, 3, 32, 32), torch.Generator().manual_seed(3), "original",
                  flip=torch.zeros(50, dtype=torch.bool))
    for image in out:
        assert any(torch.equal(image, crop) for crop in crops)


def test_flip_mirrors_the_crop_and_is_a_fair_coin():
    images = coordinate_images(1000)
    plain = augment(images, torch.Generator().manual_seed(5), "standard", flip=torch.zeros(1000, dtype=torch.bool))
    mirrored = augment(images, torch.Generator().manual_seed(5), "standard", flip=torch.ones(1000, dtype=torch.bool))
    assert torch.equal(mirrored, plain.flip(3))
    random = augment(images, torch.Generator().manual_seed(5), "standard")
    flipped = torch.tensor([not torch.equal(r, p) for r, p in zip(random, plain, strict=True)])
    assert 0.4 < flipped.float().mean() < 0.6


def test_augment_is_a_function_of_the_generator_seed():
    images = coordinate_images(64)
    a = augment(images, torch.Generator().manual_seed(9), "original")
    assert torch.equal(a, augment(images, torch.Generator().manual_seed(9), "original"))
    assert not torch.equal(a, augment(images, torch.Generator().manual_seed(10), "original"))


def test_augment_none_is_the_identity():
    images = coordinate_images(4)
    assert torch.equal(augment(images, torch.Generator(), "none"), images)


def test_normalize_scales_and_standardizes():
    images = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 2, 2)
    out = normalize(images, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.5), channels_last=True)
    assert out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([-1.0, -2.0, -1.0]))
    torch.testing.assert_close(out[1, :, 0, 0], torch.tensor([1.0, 2.0, 1.0]))
