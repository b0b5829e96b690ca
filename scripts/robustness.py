"""Accuracy of a model under the 15 common corruptions x 5 severities of Hendrycks & Dietterich (2019).

    python scripts/robustness.py [--weights FILE] [--data-dir D] [--limit 2000] [--parameters cifar-10-c] [--out FILE]

Needs ``pip install -r scripts/requirements-robustness.txt``: ``imagecorruptions-imaug``, the maintained fork of
``imagecorruptions`` (same module name; the original 1.1.2 fails on numpy 2 and scikit-image >= 0.19).

``--parameters cifar-10-c`` (the default) corrupts at the severities CIFAR-10-C was made with, as published
with the benchmark, built on imagecorruptions' helpers (disk kernel, plasma fractal, motion-blur kernel,
glass-blur shuffle, frost pictures); the figures can then be read against published CIFAR-10-C results.
Where CIFAR-10-C used ImageMagick (motion blur, the snow streaks) the package's numpy motion blur stands
in, and the random draws differ, so they are close to CIFAR-10-C, not its exact images.
``--parameters imagenet-c`` calls ``imagecorruptions.corrupt`` as it is: ImageNet-C's severities, made
for 224-pixel pictures and far harsher on 32 x 32 ones (defocus blur radius 3-10 pixels).

Scoring is fp32 in eval mode. Every corruption and severity gets its own seed (numpy's global generator,
which the package's helpers draw from, or a torch generator for resnet.stress), so a rerun corrupts every
image the same way.
"""

import argparse
import importlib.metadata
import importlib.resources
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from resnet.atomic import atomic_write_json
from resnet.constants import IMAGE_SIZE
from resnet.data import DATA_DIR_HELP, load_split
from resnet.stress import stress
from resnet.train import cpu_model
from resnet.weights import DEFAULT_WEIGHTS, load_weights

SEVERITIES = (1, 2, 3, 4, 5)
PARAMETER_SETS = ("cifar-10-c", "imagenet-c")
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "results" / "robustness.json"
# Cost measured on the 2-core CPU: ~1-2 ms to corrupt and ~5.4 ms to score an image when idle, so all 10,000 x 75
# would take ~80 min (far more while training shares the cores); 2,000 took 40 min beside another engineer's jobs.
DEFAULT_LIMIT = 2000
PACKAGES = ("imagecorruptions-imaug", "numpy", "scipy", "scikit-image", "opencv-python", "numba", "torch")
# What this benchmark is read against: CIFAR-10-C itself, all 10,000 test images (Kireev et al.'s evaluation files).
REFERENCE = {
    "model": "standard ResNet-18 (no robustness training)",
    "data": "CIFAR-10-C (Hendrycks & Dietterich 2019), all 10,000 test images",
    "source": "Kireev et al.'s evaluation files",
    "mean_acc": 0.7465,
    "per_severity_mean": [0.8760, 0.8234, 0.7620, 0.6917, 0.5793],
    "worst_corruption": {"name": "gaussian_noise", "mean_acc": 0.4706},
}

# CIFAR-10-C's severity parameters, one per severity 1..5 (Hendrycks & Dietterich's CIFAR-10-C generator). Gaussian
# noise, brightness, contrast, pixelation and JPEG are scored through resnet.stress, the Predict tab's own functions,
# which hold CIFAR-10-C's levels for them.
SHARED = ("gaussian_noise", "brightness", "contrast", "pixelate", "jpeg_compression")
CIFAR10C = {
    "shot_noise": (500, 250, 100, 75, 50),  # photons at full brightness
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),  # share of salt-and-pepper values
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),  # disk radius, its antialiasing blur
    "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),  # sigma, max shift, passes
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),  # radius, sigma
    "zoom_blur": (1.06, 1.11, 1.16, 1.21, 1.26),  # zooms 1, 1.01, ... below this are averaged
    "snow": ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
             (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)),
    # ^ flake mean, std, zoom, cut-off, streak radius, streak sigma, share of the picture kept
    "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),  # image weight, frost weight
    "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),  # fog strength, fractal roughness decay
    "elastic_transform": ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)),
    # ^ displacement strength, its smoothing, affine jitter; all times the image size
}
FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")  # CIFAR-10-C drew from the first five


def _clipped_zoom(array: np.ndarray, factor: float) -> np.ndarray:
    """Zoom the centre of an [H, W, C] array by ``factor`` and crop back to H x W."""
    from scipy.ndimage import zoom

    size = array.shape[0]
    crop = int(np.ceil(size / factor))
    top = (size - crop) // 2
    zoomed = zoom(array[top : top + crop, top : top + crop], (factor, factor, 1), order=1)
    trim = (zoomed.shape[0] - size) // 2
    return zoomed[trim : trim + size, trim : trim + size]


def _frost_pictures() -> list:
    import cv2

    pictures = []
    for name in FROST_FILES:
        with importlib.resources.as_file(importlib.resources.files("imagecorruptions") / "frost" / name) as path:
            picture = cv2.imread(str(path))
        pictures.append(cv2.resize(picture, (0, 0), fx=0.2, fy=0.2)[..., ::-1])  # BGR -> RGB, at CIFAR-10-C's scale
    return pictures


def cifar10c_corrupt(picture: np.ndarray, name: str, severity: int, frost=None) -> np.ndarray:
    """uint8 [32, 32, 3] -> the picture under one of the CIFAR10C corruptions at its severity (uint8, same shape)."""
    import cv2
    import skimage
    from imagecorruptions import corruptions as helpers
    from scipy.ndimage import map_coordinates
    from skimage.filters import gaussian

    c = CIFAR10C[name][severity - 1]
    x = picture.astype(np.float32) / 255
    size = picture.shape[0]
    if name == "shot_noise":
        x = np.random.poisson(x * c) / c
    elif name == "impulse_noise":
        x = skimage.util.random_noise(x, mode="s&p", amount=c, rng=np.random.randint(2**31))
    elif name == "defocus_blur":
        x = cv2.filter2D(x, -1, helpers.disk(radius=c[0], alias_blur=c[1]))
    elif name == "glass_blur":
        shuffled = np.uint8(gaussian(x, sigma=c[0], channel_axis=-1) * 255)
        shuffled = helpers._shuffle_pixels_njit_glass_blur(size, size, shuffled, c, np.random.randint(2**31))
        x = gaussian(shuffled / 255, sigma=c[0], channel_axis=-1)
    elif name == "motion_blur":
        x = helpers._motion_blur(picture, radius=c[0], sigma=c[1], angle=np.random.uniform(-45, 45)) / 255
    elif name == "zoom_blur":
        factors = np.arange(1, c, 0.01)
        x = (x + sum(_clipped_zoom(x, f) for f in factors)) / (len(factors) + 1)
    elif name == "snow":
        flakes = np.random.normal(size=x.shape[:2], loc=c[0], scale=c[1])
        flakes = _clipped_zoom(flakes[..., None], c[2])[..., 0]
        flakes[flakes < c[3]] = 0
        flakes = np.round(np.clip(flakes, 0, 1) * 255)  # CIFAR-10-C streaked an 8-bit layer
        streaked = helpers._motion_blur(flakes, radius=c[4], sigma=c[5], angle=np.random.uniform(-135, -45))
        flakes = np.round(np.clip(streaked, 0, 255))
        flakes = flakes[..., None] / 255
        gray = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)[..., None]
        x = c[6] * x + (1 - c[6]) * np.maximum(x, gray * 1.5 + 0.5)
        x = x + flakes + np.rot90(flakes, k=2)
    elif name == "frost":
        layer = frost[np.random.randint(len(frost))]
        top, left = np.random.randint(0, layer.shape[0] - size), np.random.randint(0, layer.shape[1] - size)
        x = c[0] * x + c[1] * layer[top : top + size, left : left + size] / 255
    elif name == "fog":
        top = x.max()
        x = x + c[0] * helpers.plasma_fractal(mapsize=size, wibbledecay=c[1])[:size, :size, None]
        x = x * top / (top + c[0])
    elif name == "elastic_transform":
        alpha, sigma, jitter = (value * size for value in c)
        centre, third = np.float32([size // 2, size // 2]), size // 3
        corners = np.float32([centre + third, [centre[0] + third, centre[1] - third], centre - third])
        moved = corners + np.random.uniform(-jitter, jitter, size=corners.shape).astype(np.float32)
        x = cv2.warpAffine(x, cv2.getAffineTransform(corners, moved), (size, size), borderMode=cv2.BORDER_REFLECT_101)
        dx, dy = (gaussian(np.random.uniform(-1, 1, size=(size, size)), sigma, mode="reflect", truncate=3) * alpha
                  for _ in range(2))
        rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
        x = np.stack([map_coordinates(x[..., k], (rows + dy, cols + dx), order=1, mode="reflect") for k in range(3)], axis=-1)
    else:
        raise KeyError(name)
    return np.uint8(np.clip(x, 0, 1) * 255)  # truncation, as CIFAR-10-C and imagecorruptions store their images


def corrupted_batch(images: torch.Tensor, name: str, severity: int, seed: int, parameters: str, frost=None) -> torch.Tensor:
    """uint8 [N, 3, 32, 32] -> the same images under one corruption at one severity (uint8, same shape)."""
    from imagecorruptions import corrupt

    if parameters == "cifar-10-c" and name in SHARED:
        generator = torch.Generator().manual_seed(seed)
        return torch.stack([stress(image, name, severity, generator) for image in images])
    np.random.seed(seed)  # the package's helpers draw from numpy's global generator
    pictures = images.permute(0, 2, 3, 1).numpy()  # both take height x width x channels
    if parameters == "cifar-10-c":
        out = [cifar10c_corrupt(picture, name, severity, frost) for picture in pictures]
    else:
        out = [corrupt(picture, corruption_name=name, severity=severity) for picture in pictures]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def accuracy(classifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    logits = classifier.logits(images, batch_size=batch_size, channels_last=True)
    return (logits.argmax(1) == labels).float().mean().item()


def summarize(table: dict) -> dict:
    """Means over corruptions, severities and both, and the corruption the model handles worst."""
    per_corruption = {name: float(np.mean(row)) for name, row in table.items()}
    worst = min(per_corruption, key=per_corruption.get)
    return {
        "mean_acc": float(np.mean(list(table.values()))),
        "per_severity_mean": [float(np.mean([row[i] for row in table.values()])) for i in range(len(SEVERITIES))],
        "per_corruption_mean": per_corruption,
        "worst_corruption": {"name": worst, "mean_acc": per_corruption[worst]},
    }


def package_versions() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def machine() -> str:
    return f"{cpu_model()}, {torch.get_num_threads()} torch threads, {platform.system()} {platform.release()}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help="score the first N test images (0 = all 10,000)")
    parser.add_argument("--parameters", choices=PARAMETER_SETS, default=PARAMETER_SETS[0],
                        help="the severities: CIFAR-10-C's (default) or imagecorruptions' own (ImageNet-C's)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=250)
    args = parser.parse_args(argv)
    if args.limit < 0:
        parser.error("--limit must be 0 (all images) or a positive number")
    try:
        from imagecorruptions import get_corruption_names
    except ImportError:
        parser.error("imagecorruptions is not installed: pip install -r scripts/requirements-robustness.txt")
    names = get_corruption_names("common")  # the 15 benchmark corruptions, in the paper's order
    assert set(names) == set(CIFAR10C) | set(SHARED), "imagecorruptions names other corruptions than CIFAR-10-C"

    classifier = load_weights(args.weights)
    images, labels = load_split(args.data_dir, train=False)
    if args.limit:
        images, labels = images[: args.limit], labels[: args.limit]
    if tuple(images.shape[2:]) != (IMAGE_SIZE, IMAGE_SIZE):
        parser.error(f"the test images are {tuple(images.shape[2:])}, not {IMAGE_SIZE} x {IMAGE_SIZE}")
    frost = _frost_pictures() if args.parameters == "cifar-10-c" else None
    started = time.perf_counter()
    seconds = {"corrupt": 0.0, "predict": 0.0}
    clean = accuracy(classifier, images, labels, args.batch_size)
    table = {}
    for index, name in enumerate(names):
        table[name] = []
        for severity in SEVERITIES:
            tick = time.perf_counter()
            corrupted = corrupted_batch(images, name, severity, args.seed * 1000 + index * 10 + severity, args.parameters, frost)
            tock = time.perf_counter()
            table[name].append(accuracy(classifier, corrupted, labels, args.batch_size))
            seconds["corrupt"] += tock - tick
            seconds["predict"] += time.perf_counter() - tock
        print(f"{name}: {' '.join(f'{a:.1%}' for a in table[name])}", file=sys.stderr, flush=True)

    corrupted_images = len(images) * len(table) * len(SEVERITIES)
    results = {
        "benchmark": "15 common corruptions x 5 severities (Hendrycks & Dietterich 2019)",
        "parameters": args.parameters,
        "parameters_note": (
            "CIFAR-10-C's severity parameters on imagecorruptions' helpers; motion blur and snow streaks use the package's "
            "numpy motion blur where CIFAR-10-C used ImageMagick, and the random draws differ: close to CIFAR-10-C, "
            "not its images"
            if args.parameters == "cifar-10-c" else
            "imagecorruptions' own ImageNet-C severities, made for 224-pixel images: far harsher on 32 x 32 images than "
            "CIFAR-10-C, so not comparable with CIFAR-10-C figures"
        ),
        "weights": args.weights.name,
        "images": len(images),
        "image_selection": f"the first {len(images)} of the CIFAR-10 test images, in test_batch order",
        "clean_acc": clean,
        "severities": list(SEVERITIES),
        "accuracy": table,
        **summarize(table),
        "scoring": "fp32, eval mode, no test-time augmentation",
        "seed": args.seed,
        "machine": machine(),
        "packages": package_versions(),
        "command": "python scripts/robustness.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "elapsed_s": time.perf_counter() - started,
        "seconds_per_image": {step: value / corrupted_images for step, value in seconds.items()},
        "reference": REFERENCE,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, results)
    print(json.dumps({key: results[key] for key in ("images", "clean_acc", "mean_acc", "per_severity_mean", "worst_corruption")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
