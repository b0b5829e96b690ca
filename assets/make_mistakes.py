"""Write the gallery of the shipped model's most confident mistakes on the CIFAR-10 test set.

Run once the weights exist, from the repository root:
    python -m assets.make_mistakes [--weights weights/cifar10-resnet.safetensors] [--data-dir DIR]
"""

import argparse
from pathlib import Path

from PIL import Image

from resnet.atomic import atomic_write_json
from resnet.data import DATA_DIR_HELP, load_split
from resnet.weights import DEFAULT_WEIGHTS, load_weights

COUNT = 12
OUT = Path(__file__).resolve().parent / "mistakes"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    parser.add_argument("--count", type=int, default=COUNT)
    args = parser.parse_args()
    classifier = load_weights(args.weights)
    images, labels = load_split(args.data_dir, train=False)
    probs = classifier.probabilities(classifier.logits(images))
    confidence, predicted = probs.max(1)
    wrong = (predicted != labels).nonzero().flatten()
    worst = wrong[confidence[wrong].argsort(descending=True)][: args.count].tolist()
    OUT.mkdir(exist_ok=True)
    for old in OUT.glob("*.png"):
        old.unlink()
    classes, entries = classifier.classes, []
    for index in worst:
        file = f"test-{index}.png"
        Image.fromarray(images[index].permute(1, 2, 0).numpy()).save(OUT / file, optimize=True)
        entries.append({"file": file, "test_index": index, "true": classes[labels[index]],
                        "predicted": classes[predicted[index]], "confidence": round(confidence[index].item(), 4)})
    atomic_write_json(OUT / "index.json", {"weights": Path(args.weights).name, "test_acc": classifier.card.get("test_acc"),
                                           "mistakes": entries})
    print(f"wrote {len(entries)} mistakes to {OUT}")


if __name__ == "__main__":
    main()
