"""Copy a finished run's weights into weights/, stored in the smallest dtype that costs no accuracy.

    python scripts/ship_weights.py runs/weights-fast [--out weights/cifar10-resnet.safetensors] [--data-dir D]

Scores the run's final weights on the full test set (eval mode, fp32 compute) stored as fp32 and
as fp16, keeps fp16 only if it predicts every test image the same way, and writes the card's
metrics from the weights actually shipped, so `python -m resnet evaluate --json` reproduces them.

A run that held out a validation split (``--val-size``) gets its calibration from it: the
temperature and the low-confidence threshold are fitted on the whole split, and every calibration
figure is measured on the test set, which neither saw. A run without one ships uncalibrated (its
low-confidence figures from the raw softmax); scripts/calibrate_shipped.py can then fit on half
of the test set.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from resnet import runs
from resnet.calibration import calibration_fields, confidence_split
from resnet.classifier import Classifier
from resnet.config import PRESETS, config_from_dict, make_config, validation_seed
from resnet.data import load_split
from resnet.evaluate import metrics_from_logits
from resnet.studio.jobs import cli_command
from resnet.studio.model_card import LOW_CONFIDENCE
from resnet.train import load_data, measured_on
from resnet.weights import DEFAULT_WEIGHTS, load_weights, save_weights


def stored_as(model, dtype):
    """A copy of ``model`` whose floating-point tensors went through ``dtype`` and back."""
    copy = type(model)(model.blocks, model.dropout, model.num_classes)
    copy.load_state_dict({k: v.to(dtype).to(v.dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()})
    return copy.eval()


def reproduce_command(training: dict, out: str) -> str:
    """The shortest `python -m resnet train` line that recreates ``training``: a preset and its differences."""
    local = ("data_dir", "device")  # where the data was and what ran it, not part of the recipe
    differences = {
        preset: {k: v for k, v in training.items() if k not in local and getattr(make_config(preset), k) != v
                 and not (isinstance(v, list) and list(getattr(make_config(preset), k)) == v)}
        for preset in PRESETS
    }
    preset = min(differences, key=lambda name: len(differences[name]))
    return cli_command(preset, differences[preset], out)


def validation_calibration(classifier, training: dict, data_dir, test_logits, test_labels) -> dict:
    """The card's temperature, calibration and low_confidence fields, fitted on the run's validation split and
    measured on the test set; {} for a run that held none out."""
    config = config_from_dict({**training, "data_dir": data_dir})  # the test set's data folder, not the training machine's
    if not config.val_size:
        return {}
    data = load_data(config, torch.device("cpu"))  # the run's own split: its val_size and split seed
    return calibration_fields(classifier.logits(data.val_x), data.val_y, test_logits, test_labels,
                              fitted_on=f"the {len(data.val_y):,} validation images held out of training "
                                        f"(split seed {validation_seed(config)})",
                              evaluated_on=f"the {len(test_labels):,} test images")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS, help="the weights file to write, its card beside it "
                        "(default: %(default)s)")
    parser.add_argument("--data-dir")
    args = parser.parse_args(argv)

    if runs.read_status(args.run_dir)["status"] != "finished":
        parser.error(f"{args.run_dir} is not a finished run")
    trained = load_weights(args.run_dir / runs.WEIGHTS)
    card = trained.card
    images, labels = load_split(args.data_dir, train=False)

    scored = {}
    for dtype in (torch.float32, torch.float16):
        candidate = Classifier(stored_as(trained.net, dtype), card)
        logits = candidate.logits(images)
        tta_logits = candidate.logits(images, tta=True)
        scored[dtype] = (candidate, logits, metrics_from_logits(logits, labels), metrics_from_logits(tta_logits, labels))
    same = bool((scored[torch.float32][1].argmax(1) == scored[torch.float16][1].argmax(1)).all())
    dtype = torch.float16 if same else torch.float32
    candidate, logits, final, tta = scored[dtype]

    card.update(
        test_acc=final["acc"], test_loss=final["loss"], tta_test_acc=tta["acc"],
        per_class_acc=final["per_class_acc"], confusion=final["confusion"], ece=final["ece"], test_images=final["count"],
        scored_on="test", measured=measured_on("test"),  # a run that scored only its validation split said so
        storage_comparison={
            str(d).removeprefix("torch."): {"test_acc": s[2]["acc"], "test_loss": s[2]["loss"]} for d, s in scored.items()
        },
        storage_choice=f"{str(dtype).removeprefix('torch.')}: "
        + ("fp16 storage predicts all test images exactly as fp32" if same else "fp16 storage changed predictions"),
        source_run=args.run_dir.name,
        reproduce=reproduce_command(card["training"], f"runs/{args.run_dir.name}"),
    )
    # A run's own calibration (fitted and measured on halves of its validation split) is replaced by one fitted on
    # the whole split and measured on the test set.
    calibrated = validation_calibration(candidate, card["training"], args.data_dir, logits, labels)
    card.update(calibrated or {"low_confidence": confidence_split(logits.softmax(1), labels, LOW_CONFIDENCE)})
    card.pop("storage_dtype", None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(candidate.net, args.out, card, dtype=dtype)
    print(json.dumps({"weights": str(args.out), "dtype": str(dtype), "test_acc": final["acc"], "tta_test_acc": tta["acc"],
                      "storage_comparison": card["storage_comparison"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
