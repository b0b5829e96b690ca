"""What the costliest uploads the server accepts cost to decode: peak memory and time of resnet.images.prepare.

A measurement, not a test (tests/test_upload_memory.py holds the memory to a budget with these same files).
Each file is as large as the pixel caps allow (a square), of all zeros so that it is small on disk, in each
format and mode whose decoder holds the most per pixel: WebP's and AVIF's decoders keep whole frames besides
the image, RGBA is copied premultiplied to be averaged, a palette becomes RGBA. A JPEG is held to its own cap
on its full size (STUDIO_MAX_JPEG_PIXELS; it is decoded at 1/8 of that), and a progressive one keeps every DCT
coefficient of the full size: a CMYK one with no chroma subsampling keeps the most. Two JPEGs have detail
rather than zeros: a 12 MP phone photo (noise over a gradient, quality 90), and the slowest JPEG accepted, a
progressive CMYK one of noise at the full-size cap, its last scan repeated up to the scan cap, as near the
progressive byte cap as it gets (its decoding time is its bytes' and its scans'). Each is decoded in a fresh
Python process; the rise of its peak RSS over its RSS before decoding is compared with the same process
decoding a 32 x 32 PNG.

    python bench/bench_uploads.py --json bench/results/uploads.json
"""

import argparse
import io
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from machine import machine, report  # bench/, beside this file
from PIL import Image

from resnet.studio import limits

REPO = Path(__file__).resolve().parent.parent
PHONE = (4032, 3024)  # a phone camera's 12 MP photo

# The peak is VmHWM, reset just before decoding (clear_refs 5), over VmRSS then: getrusage's ru_maxrss would carry
# the parent's peak across fork and exec, and the imports' peak would hide a smaller decode's.
DECODE = """
import re, sys, time
from resnet.images import prepare
def kib(field):
    return int(re.search(field + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
data = open(sys.argv[1], "rb").read()
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")
before = kib("VmRSS")
began = time.perf_counter()
prepare(data)
print(time.perf_counter() - began, kib("VmHWM") - before)
"""


def exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: the image is turned, a copy, before it is shrunk
    return exif.tobytes()


def noise(mode: str, size: tuple, rng) -> Image.Image:
    """Noise over a gradient: detail in every block, as a camera's sensor gives."""
    bands = len(mode)
    ramp = np.linspace(0, 200, size[0] * size[1] * bands).reshape(size[1], size[0], bands)
    pixels = (ramp + rng.integers(0, 56, ramp.shape)).astype(np.uint8)
    return Image.frombytes(mode, size, pixels.tobytes())


def worst_uploads(folder: Path, allowed: limits.ServerLimits) -> dict:
    """{name: path} of the costliest files within ``allowed``'s caps, plus ``baseline``: a 32 x 32 PNG."""
    side, jpeg_side = math.isqrt(allowed.pixels), math.isqrt(allowed.jpeg_pixels)
    rng = np.random.default_rng(0)
    files = {"baseline": (Image.new("RGB", (32, 32)), "PNG", {}),
             "png-rgba": (Image.new("RGBA", (side, side)), "PNG", {}),
             "png-palette": (Image.new("P", (side, side)), "PNG", {}),
             "gif": (Image.new("P", (side, side)), "GIF", {}),
             "tiff-rgba-deflate": (Image.new("RGBA", (side, side)), "TIFF", {"compression": "tiff_adobe_deflate"}),
             "webp-rgba-lossless-rotated": (Image.new("RGBA", (side, side)), "WEBP", {"lossless": True, "exif": exif_rotated()}),
             "avif-rgba": (Image.new("RGBA", (side, side)), "AVIF", {"quality": 10, "speed": 10}),
             "jpeg-cmyk-progressive-444": (Image.new("CMYK", (jpeg_side, jpeg_side)), "JPEG",
                                           {"progressive": True, "subsampling": 0, "quality": 50}),
             "jpeg-phone-photo-12mp": (noise("RGB", PHONE, rng), "JPEG", {"quality": 90})}
    paths = {}
    for name, (image, kind, options) in files.items():
        paths[name] = folder / name
        image.save(paths[name], kind, **options)
    paths["jpeg-cmyk-progressive-slowest"] = folder / "jpeg-cmyk-progressive-slowest"
    paths["jpeg-cmyk-progressive-slowest"].write_bytes(slowest_jpeg(noise("CMYK", (jpeg_side, jpeg_side), rng), allowed))
    return paths


def slowest_jpeg(image: Image.Image, allowed: limits.ServerLimits) -> bytes:
    """``image`` as a progressive JPEG with as many scans as allowed (its last one repeated: each repeat is another
    pass over every block), at the best quality that keeps it within the progressive byte cap (found by bisection:
    its size grows with the quality)."""

    def encode(quality: int) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", progressive=True, subsampling=0, quality=quality)
        data = buffer.getvalue()
        last = data[data.rindex(b"\xff\xda"):-2]  # up to the end-of-image marker
        return data[:-2] + last * (allowed.jpeg_scans - data.count(b"\xff\xda")) + data[-2:]

    low, high, best = 1, 95, None
    while low <= high:
        quality = (low + high) // 2
        data = encode(quality)
        if len(data) <= allowed.progressive_bytes:
            low, best = quality + 1, data
        else:
            high = quality - 1
    if best is None:
        raise ValueError(f"no progressive JPEG of {image.size} fits in {allowed.progressive_bytes} bytes")
    return best


def decode_cost(path: Path) -> tuple:
    """(seconds, bytes its peak RSS rose by) of a fresh Python process that decodes ``path`` with
    resnet.images.prepare."""
    done = subprocess.run([sys.executable, "-c", DECODE, str(path)], cwd=REPO, capture_output=True, text=True, timeout=300,
                          check=True)
    seconds, peak_kib = done.stdout.split()
    return float(seconds), int(peak_kib) * 1024


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="decodes of each file, each in its own process (default 3)")
    parser.add_argument("--json", metavar="OUT", help="also write the results here")
    args = parser.parse_args(argv)
    allowed = limits.current()
    result = {"machine": machine(), "max_pixels": allowed.pixels, "max_jpeg_pixels": allowed.jpeg_pixels,
              "max_jpeg_scans": allowed.jpeg_scans, "max_progressive_bytes": allowed.progressive_bytes,
              "max_upload_bytes": allowed.upload_bytes, "files": {}}
    with tempfile.TemporaryDirectory(prefix="bench-uploads-") as folder:
        paths = worst_uploads(Path(folder), allowed)
        costs = {name: [decode_cost(path) for _ in range(args.rounds)] for name, path in paths.items()}
        base = min(peak for _, peak in costs["baseline"])
        for name, path in paths.items():
            result["files"][name] = {"bytes": path.stat().st_size,
                                     "seconds_min": round(min(s for s, _ in costs[name]), 3),
                                     "seconds_max": round(max(s for s, _ in costs[name]), 3),
                                     "peak_rss_growth_mib": round((max(p for _, p in costs[name]) - base) / 2**20, 1)}
    report(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
