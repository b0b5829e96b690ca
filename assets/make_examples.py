"""Write the examples gallery: the first 3 CIFAR-10 test images of each class, as 32 x 32 PNGs.

Chosen by position in the test batch, never by how a model does on them. Run once from the
repository root:  python -m assets.make_examples [--data-dir ../shared/data/cifar10]
"""

import argparse
from pathlib import Path

from PIL import Image

from resnet.atomic import atomic_write_json
from resnet.constants import CLASSES
from resnet.data import DATA_DIR_HELP, load_split

PER_CLASS = 3
OUT = Path(__file__).resolve().parent / "examples"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    args = parser.parse_args()
    images, labels = load_split(args.data_dir, train=False)
    OUT.mkdir(exist_ok=True)
    entries = []
    for label, name in enumerate(CLASSES):
        for index in (labels == label).nonzero().flatten()[:PER_CLASS].tolist():
            file = f"{name}-{index}.png"
            Image.fromarray(images[index].permute(1, 2, 0).numpy()).save(OUT / file, optimize=True)
            entries.append({"file": file, "label": name, "test_index": index})
    atomic_write_json(OUT / "index.json", {"source": "CIFAR-10 test_batch", "per_class": PER_CLASS, "images": entries})
    print(f"wrote {len(entries)} images to {OUT}")


if __name__ == "__main__":
    main()
