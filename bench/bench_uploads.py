"""What the costliest uploads the server accepts cost to decode: peak memory and time of resnet.images.prepare.

A measurement, not a test (tests/test_upload_memory.py holds the memory to a budget with these same files).
Each file is as large as the pixel cap allows (STUDIO_MAX_PIXELS, a square), of all zeros so that it is small on
disk, in each format and mode whose decoder holds the most per pixel: WebP's and AVIF's decoders keep whole
frames besides the image, RGBA is copied premultiplied to be averaged, a palette becomes RGBA, a progressive
JPEG keeps every DCT coefficient. Each is decoded in a fresh Python process; its peak RSS is compared with the
same process decoding a 32 x 32 PNG.

    python bench/bench_uploads.py --json bench/results/uploads.json
"""

import argparse
import math
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from machine import machine, report  # noqa: E402  (bench/, beside this file)
from resnet import limits  # noqa: E402

DECODE = """
import resource, sys, time
from resnet.images import prepare
data = open(sys.argv[1], "rb").read()
began = time.perf_counter()
prepare(data)
print(time.perf_counter() - began, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: the image is turned, a copy, before it is shrunk
    return exif.tobytes()


def worst_uploads(folder: Path, max_pixels: int) -> dict:
    """{name: path} of the costliest files at the pixel cap, plus ``baseline``: a 32 x 32 PNG."""
    side = math.isqrt(max_pixels)
    files = {"baseline": (Image.new("RGB", (32, 32)), "PNG", {}),
             "png-rgba": (Image.new("RGBA", (side, side)), "PNG", {}),
             "png-palette": (Image.new("P", (side, side)), "PNG", {}),
             "gif": (Image.new("P", (side, side)), "GIF", {}),
             "tiff-rgba-deflate": (Image.new("RGBA", (side, side)), "TIFF", {"compression": "tiff_adobe_deflate"}),
             "webp-rgba-lossless-rotated": (Image.new("RGBA", (side, side)), "WEBP", {"lossless": True, "exif": exif_rotated()}),
             "avif-rgba": (Image.new("RGBA", (side, side)), "AVIF", {"quality": 10, "speed": 10}),
             "jpeg-cmyk-progressive-444": (Image.new("CMYK", (side, side)), "JPEG",
                                           {"progressive": True, "subsampling": 0, "quality": 50})}
    paths = {}
    for name, (image, kind, options) in files.items():
        paths[name] = folder / name
        image.save(paths[name], kind, **options)
    return paths


def decode_cost(path: Path) -> tuple:
    """(seconds, peak RSS in bytes) of a fresh Python process that decodes ``path`` with resnet.images.prepare."""
    done = subprocess.run([sys.executable, "-c", DECODE, str(path)], cwd=REPO, capture_output=True, text=True, timeout=300,
                          check=True)
    seconds, peak_kib = done.stdout.split()
    return float(seconds), int(peak_kib) * 1024


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="decodes of each file, each in its own process (default 3)")
    parser.add_argument("--json", metavar="OUT", help="also write the results here")
    args = parser.parse_args(argv)
    max_pixels = limits.current().pixels
    result = {"machine": machine(), "max_pixels": max_pixels, "files": {}}
    with tempfile.TemporaryDirectory(prefix="bench-uploads-") as folder:
        paths = worst_uploads(Path(folder), max_pixels)
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
