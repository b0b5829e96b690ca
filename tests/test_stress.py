"""Stress this image: lean corruptions of one uint8 image, their refusals, and the one-call prediction."""

import colorsys
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import REPO, pattern_images

from resnet import stress
from resnet.classifier import Classifier
from resnet.model import build_model
from resnet.stress import CORRUPTIONS, SEVERITIES, StressError, stress_predict
from resnet.weights import make_card

NO_SEVERITY = {"horizontal_flip"}  # a flip is a flip: every severity gives the same image


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    """A textured test picture: a bright square over noise, as the tiny data sets draw them, smoothed a little."""
    picture = torch.from_numpy(pattern_images(np.array([5]), np.random.default_rng(0))[0])
    return ((picture.float() + picture.roll(1, 2).float() + 40) / 2.2).clamp(0, 255).to(torch.uint8)


def change(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().mean().item()


def test_the_registry_offers_noise_blur_jpeg_light_pixels_flip_and_shift():
    assert {"gaussian_noise", "gaussian_blur", "jpeg_compression", "brightness", "contrast", "pixelate",
            "horizontal_flip", "shift"} <= set(CORRUPTIONS)
    assert [name for _, name in stress.choices()] == list(CORRUPTIONS)
    assert all(len(spec.levels) == len(SEVERITIES) for spec in CORRUPTIONS.values())


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_each_corruption_changes_the_image_and_keeps_its_shape(image, name):
    before = image.clone()
    outputs = [stress.stress(image, name, severity) for severity in SEVERITIES]
    assert torch.equal(image, before)  # pure: the input is left alone
    for out in outputs:
        assert out.shape == image.shape
        assert out.dtype == torch.uint8
        assert change(out, image) > 0.5
    if name not in NO_SEVERITY:
        assert change(outputs[-1], image) > change(outputs[0], image)
    assert torch.equal(stress.stress(image, name, 3), outputs[2])  # the same request gives the same image


@pytest.mark.parametrize("severity", [0, 6, -1, 2.5, "3", None, True])
def test_an_unknown_severity_is_refused_in_one_sentence(image, severity):
    with pytest.raises(StressError, match=r"^severity must be a whole number from 1 to 5, not "):
        stress.stress(image, "contrast", severity)


@pytest.mark.parametrize("name", ["fog", "", None, "GAUSSIAN_NOISE", "../etc/passwd"])
def test_an_unknown_corruption_is_refused_naming_the_choices(image, name):
    with pytest.raises(StressError, match=r"^unknown corruption .*; choose one of gaussian_noise, ") as refused:
        stress.stress(image, name, 1)
    assert "\n" not in str(refused.value)


def test_a_whole_float_severity_is_accepted_and_images_of_other_kinds_are_refused(image):
    assert torch.equal(stress.stress(image, "contrast", 2.0), stress.stress(image, "contrast", 2))
    with pytest.raises(StressError, match="uint8 tensor of shape"):
        stress.stress(image.float(), "contrast", 2)
    with pytest.raises(StressError, match="uint8 tensor of shape"):
        stress.stress(image[0], "contrast", 2)


def test_flip_and_shift_move_pixels_exactly(image):
    assert torch.equal(stress.stress(image, "horizontal_flip", 1), image.flip(2))
    shifted = stress.stress(image, "shift", 3)
    assert torch.equal(shifted[:, 3:, 3:], image[:, :-3, :-3])
    assert shifted[:, :3, :].eq(0).all()
    assert shifted[:, :, :3].eq(0).all()


def test_brightness_adds_to_the_hsv_value_as_cifar10c_does(image):
    out = stress.stress(image, "brightness", 5)
    amount = CORRUPTIONS["brightness"].levels[4]
    for row, col in [(0, 0), (5, 7), (20, 30), (31, 31)]:
        h, s, v = colorsys.rgb_to_hsv(*(image[:, row, col].double() / 255).tolist())
        expected = np.array(colorsys.hsv_to_rgb(h, s, min(v + amount, 1.0))) * 255
        assert np.abs(out[:, row, col].numpy() - expected).max() <= 0.51


def test_contrast_keeps_the_mean_and_noise_has_its_stated_spread(image):
    low = stress.stress(image, "contrast", 5)
    assert low.float().mean() == pytest.approx(image.float().mean(), abs=1)
    assert low.float().std() < 0.3 * image.float().std()
    flat = torch.full((3, 32, 32), 128, dtype=torch.uint8)
    noisy = stress.stress(flat, "gaussian_noise", 5)
    assert (noisy.float() - 128).std().item() / 255 == pytest.approx(CORRUPTIONS["gaussian_noise"].levels[4], rel=0.1)


def test_one_call_gives_the_stressed_image_and_both_predictions(image):
    torch.manual_seed(0)
    model = build_model().eval()
    classifier = Classifier(model, {**make_card(model), "temperature": 0.5})
    stressed, clean, hit = stress_predict(classifier, image, "gaussian_noise", 4)
    assert torch.equal(stressed, stress.stress(image, "gaussian_noise", 4))
    assert clean == classifier.predict(image)
    assert hit == classifier.predict(stressed)
    assert sum(hit.values()) == pytest.approx(1.0, abs=1e-5)
    assert list(clean) != []
    assert hit != clean
    with pytest.raises(StressError):
        stress_predict(classifier, image, "fog", 4)


def test_the_module_needs_no_benchmark_packages():
    code = ("import sys, resnet.stress; "
            "print(sorted(m for m in ('cv2', 'skimage', 'scipy', 'imagecorruptions', 'numba') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
