"""Folder prediction, batched (``python -m resnet predict FOLDER``) against one image at a time.

Both paths decode every PNG the same way (resnet.images.prepare); they differ only in how many
images go through the model per forward pass. Prints one JSON line.

    python bench/bench_batch_predict.py --n 2000 [--weights FILE] [--batch-size 256]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from resnet import Classifier, batch, build_model, load_weights
from resnet.images import prepare
from resnet.weights import make_card


def write_images(folder: Path, n: int, side: int) -> None:
    rng = np.random.default_rng(0)
    for index in range(n):
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(folder / f"{index:06d}.png")


def batched(classifier, folder: Path, batch_size: int) -> int:
    with batch.Sources([folder]) as sources:
        return sum(1 for _ in batch.predict_sources(classifier, sources, batch_size))


def one_at_a_time(classifier, folder: Path) -> int:
    for path in sorted(folder.iterdir()):
        classifier.logits(prepare(path))
    return len(list(folder.iterdir()))


def timed(function, *args) -> tuple:
    start = time.perf_counter()
    count = function(*args)
    return count, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="images to generate (default 2000)")
    parser.add_argument("--side", type=int, default=32, help="side of the generated images in pixels")
    parser.add_argument("--weights", help="weights file (default: a randomly initialized published-size model)")
    parser.add_argument("--batch-size", type=int, default=batch.BATCH_SIZE)
    args = parser.parse_args()
    if args.weights:
        model = load_weights(args.weights)
    else:
        net = build_model().eval()  # speed does not depend on the weights' values
        model = Classifier(net, make_card(net))
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        write_images(folder, args.n, args.side)
        batched(model, folder, args.batch_size)  # warm-up: first-call allocations, file cache
        batched_count, batched_s = timed(batched, model, folder, args.batch_size)
        single_count, single_s = timed(one_at_a_time, model, folder)
    assert batched_count == single_count == args.n
    print(json.dumps({
        "images": args.n, "side": args.side, "batch_size": args.batch_size, "torch_threads": torch.get_num_threads(),
        "batched_images_per_s": round(args.n / batched_s, 1), "one_at_a_time_images_per_s": round(args.n / single_s, 1),
        "speedup": round(single_s / batched_s, 2),
    }))


if __name__ == "__main__":
    main()
