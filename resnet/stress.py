"""Stress one image: corruptions of a uint8 [3, 32, 32] tensor at severity 1-5, with torch and Pillow only.

The Space's runtime stays lean, so nothing here needs the benchmark's packages. Where CIFAR-10-C
(Hendrycks & Dietterich 2019) has the same corruption, the five levels are its own, so what a
visitor sees matches the robustness panel (scripts/robustness.py scores those five through these
very functions); blur uses CIFAR-10-C's extra Gaussian blur. Flip and shift are the two changes
the network was trained to shrug off (random flips, and crops of up to 4 pixels of zero padding).
"""

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import UserError

SEVERITIES = (1, 2, 3, 4, 5)
DEFAULT_SEED = 0  # the same noise for the same request: a stressed image can be shown again and compared


class StressError(UserError, ValueError):
    """A corruption, severity or image this module cannot stress, with the reason in words."""


@dataclass(frozen=True)
class Corruption:
    label: str
    levels: tuple  # one parameter per severity 1..5
    apply: Callable  # (float image [3, H, W] in [0, 1], level, torch.Generator) -> float image, or uint8 in, uint8 out
    on_pixels: bool = False  # True: ``apply`` takes and returns the uint8 tensor (codecs and resampling work on 8 bits)


def _gaussian_noise(x, std, generator):
    return x + torch.randn(x.shape, generator=generator) * std


def _gaussian_blur(x, sigma, generator):
    radius = max(1, int(4 * sigma + 0.5))  # the kernel reaches 4 sigma, as scikit-image's default
    taps = torch.exp(-(torch.arange(-radius, radius + 1, dtype=torch.float32) ** 2) / (2 * sigma**2))
    taps = taps / taps.sum()
    padded = F.pad(x[None], (radius, radius, radius, radius), mode="replicate")
    rows = F.conv2d(padded, taps.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
    return F.conv2d(rows, taps.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)[0]


def _brightness(x, amount, generator):
    # CIFAR-10-C adds ``amount`` to the HSV value; hue and saturation fixed, that scales each pixel's RGB by V'/V.
    value = x.amax(0, keepdim=True)
    brighter = (value + amount).clamp(max=1)
    return torch.where(value > 0, x * brighter / value.clamp(min=1e-12), brighter.expand_as(x))


def _contrast(x, kept, generator):
    mean = x.mean((1, 2), keepdim=True)
    return (x - mean) * kept + mean


def _jpeg(pixels, quality, generator):
    buffer = io.BytesIO()
    _to_pil(pixels).save(buffer, "JPEG", quality=quality)
    return _from_pil(Image.open(buffer).convert("RGB"))


def _pixelate(pixels, factor, generator):
    size = pixels.shape[1:][::-1]
    small = _to_pil(pixels).resize((int(size[0] * factor), int(size[1] * factor)), Image.Resampling.BOX)
    return _from_pil(small.resize(size, Image.Resampling.BOX))


def _horizontal_flip(pixels, level, generator):
    return pixels.flip(2)


def _shift(pixels, offset, generator):
    # Right and down by ``offset`` pixels, the uncovered edge black: the zero padding the training crops used.
    shifted = torch.zeros_like(pixels)
    shifted[:, offset:, offset:] = pixels[:, : pixels.shape[1] - offset, : pixels.shape[2] - offset]
    return shifted


def _to_pil(pixels: torch.Tensor) -> Image.Image:
    return Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy(), "RGB")


def _from_pil(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


# The one list of what can be stressed: the app's choices and the API's accepted names come from it.
CORRUPTIONS = {
    "gaussian_noise": Corruption("Gaussian noise", (0.04, 0.06, 0.08, 0.09, 0.10), _gaussian_noise),
    "gaussian_blur": Corruption("Blur", (0.4, 0.6, 0.7, 0.8, 1.0), _gaussian_blur),
    "jpeg_compression": Corruption("JPEG compression", (80, 65, 58, 50, 40), _jpeg, on_pixels=True),
    "brightness": Corruption("Brightness", (0.05, 0.1, 0.15, 0.2, 0.3), _brightness),
    "contrast": Corruption("Low contrast", (0.75, 0.5, 0.4, 0.3, 0.15), _contrast),
    "pixelate": Corruption("Pixelation", (0.95, 0.9, 0.85, 0.75, 0.65), _pixelate, on_pixels=True),
    "horizontal_flip": Corruption("Horizontal flip (no severity)", (None,) * 5, _horizontal_flip, on_pixels=True),
    "shift": Corruption("Shift (1-5 pixels)", (1, 2, 3, 4, 5), _shift, on_pixels=True),
}


def choices() -> list:
    """(label, name) pairs for a picker, in the registry's order."""
    return [(corruption.label, name) for name, corruption in CORRUPTIONS.items()]


def check(corruption, severity) -> int:
    """The severity as an int, or StressError naming what is wrong and what is accepted."""
    if corruption not in CORRUPTIONS:
        raise StressError(f"unknown corruption {str(corruption)[:40]!r}; choose one of {', '.join(CORRUPTIONS)}")
    whole = isinstance(severity, int) or (isinstance(severity, float) and severity.is_integer())
    if isinstance(severity, bool) or not whole or int(severity) not in SEVERITIES:
        raise StressError(f"severity must be a whole number from {SEVERITIES[0]} to {SEVERITIES[-1]}, not {str(severity)[:20]!r}")
    return int(severity)


def stress(image: torch.Tensor, corruption: str, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 [3, H, W] -> the same image under ``corruption`` at ``severity`` (uint8, same shape); pure.

    Noise comes from ``generator``, else from a fresh one seeded with DEFAULT_SEED.
    """
    severity = check(corruption, severity)
    if not (isinstance(image, torch.Tensor) and image.dtype == torch.uint8 and image.dim() == 3 and image.shape[0] == 3):
        raise StressError("the image must be a uint8 tensor of shape [3, height, width]")
    spec = CORRUPTIONS[corruption]
    level = spec.levels[severity - 1]
    generator = generator or torch.Generator().manual_seed(DEFAULT_SEED)
    if spec.on_pixels:
        return spec.apply(image, level, generator)
    out = spec.apply(image.float() / 255, level, generator)
    return (out.clamp(0, 1) * 255).round().to(torch.uint8)


def stress_predict(classifier, image: torch.Tensor, corruption: str, severity: int) -> tuple:
    """(stressed image, clean probabilities, stressed probabilities): the Predict tab's stress handler in one call.

    The probabilities are a resnet.classifier.Classifier's ({class: probability}, best first, calibrated when
    its card can be).
    """
    stressed = stress(image, corruption, severity)
    return stressed, classifier.predict(image), classifier.predict(stressed)
