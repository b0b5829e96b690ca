"""Fit the shipped model's temperature on one half of the test set, report it on the other, and write it to the card.

    python scripts/calibrate_shipped.py [--weights weights/cifar10-resnet.safetensors] [--data-dir D]

The shipped weights saw all 50,000 training images, so held-out logits can only come from the
10,000 test images. They are split into two fixed, interleaved halves: A, the 5,000 with an even
index in test_batch, and B, the 5,000 with an odd one. The temperature and the low-confidence
threshold are fitted on A and every figure in the card's ``calibration`` and ``low_confidence``
blocks is measured on B; the same is done the other way round (fit on B, report on A) and kept
as ``calibration.reverse``, to show how much the choice of half matters. Only the card (.json) is
rewritten, every other field kept: the predictor reads the temperature from it, and the
safetensors file is left as it is. Scoring is fp32 in eval mode, as the card's test accuracy.
"""

import argparse
import json
import sys
from pathlib import Path

from resnet.atomic import atomic_write_json
from resnet.calibration import calibration_fields, halves
from resnet.data import DATA_DIR_HELP, load_split
from resnet.weights import DEFAULT_WEIGHTS, card_path, load_weights

HALVES = ("the {:,} even-index test images", "the {:,} odd-index test images")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    args = parser.parse_args(argv)

    classifier = load_weights(args.weights)
    card = classifier.card
    images, labels = load_split(args.data_dir, train=False)
    logits = classifier.logits(images)
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    recorded = card.get("test_acc") if len(labels) == card.get("test_images") else None
    if isinstance(recorded, (int, float)) and abs(accuracy - recorded) > 1e-4:
        parser.error(f"these weights score {accuracy:.4%} here but their card says {recorded:.4%}: not the card's weights")

    a, b = halves(len(labels))
    name_a, name_b = HALVES[0].format(len(a)), HALVES[1].format(len(b))
    forward = calibration_fields(logits[a], labels[a], logits[b], labels[b], fitted_on=name_a, evaluated_on=name_b)
    reverse = calibration_fields(logits[b], labels[b], logits[a], labels[a], fitted_on=name_b, evaluated_on=name_a)
    forward["calibration"]["reverse"] = {
        "fitted_on": name_b, "evaluated_on": name_a, "temperature": reverse["temperature"],
        "before": reverse["calibration"]["before"], "after": reverse["calibration"]["after"],
        "threshold": reverse["low_confidence"]["threshold"],
    }
    card.update(forward)
    atomic_write_json(card_path(args.weights), card)

    report = {}
    for direction, fields in (("fit_A_report_B", forward), ("fit_B_report_A", reverse)):
        block = fields["calibration"]
        low = {k: v for k, v in fields["low_confidence"].items() if k not in ("rule", "measured_on")}
        report[direction] = {"temperature": fields["temperature"], "fitted_on": block["fitted_on"],
                             "evaluated_on": block["evaluated_on"], "before": block["before"], "after": block["after"],
                             "low_confidence": low}
    print(json.dumps({"card": str(card_path(args.weights)), "test_acc": accuracy, **report}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
