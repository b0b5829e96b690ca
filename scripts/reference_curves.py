"""Write results/reference-curves.json: the faint curves the Train tab draws behind a visitor's run.

Trains the Train tab's default run (``resnet.config.QUICK_RUN``: the quick preset on its budget, with
its step rows and probe) and the published recipe on the same budget, and adds the shipped model's
per-epoch curve from its card. Nothing is recomputed when the page loads: the app reads this file.

    python scripts/reference_curves.py --data-dir ../shared/data/cifar10
    python scripts/reference_curves.py --shipped-only  # new shipped weights: only their curve changes
"""

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

from resnet import runs
from resnet.config import QUICK_RUN, config_from_dict, make_config
from resnet.data import DATA_DIR_HELP
from resnet.flops import steps_per_epoch
from resnet.train import Trainer, describe_device
from resnet.weights import DEFAULT_WEIGHTS, card_path

REPO = Path(__file__).resolve().parent.parent

KEPT = ("kind", "epoch", "step", "images", "train_loss", "train_acc", "probe_acc", "probe_loss", "probe_images", "probe_split",
        "test_loss", "test_acc", "elapsed_s")
# (name shown in the legend, preset) trained on the quick run's budget
TRAINED = (("quick preset", "quick"), ("published recipe", "original"))


def trimmed(rows: list) -> list:
    return [{key: row[key] for key in KEPT if key in row} for row in rows]


def train_reference(preset: str, data_dir) -> dict:
    config = make_config(preset, data_dir=data_dir, **QUICK_RUN["size"], **QUICK_RUN["watch"])
    with tempfile.TemporaryDirectory() as run_dir:
        outcome = Trainer(config, run_dir, command=f"scripts/reference_curves.py ({preset})").run()
        rows = runs.read_metrics(run_dir)
    return {"preset": preset, "status": outcome["status"], "final_test_acc": outcome.get("acc"),
            "test_images": outcome.get("count"), "settings": {**QUICK_RUN["size"], **QUICK_RUN["watch"]}, "rows": trimmed(rows)}


def shipped_reference() -> dict | None:
    """The shipped model's per-epoch curve, against images seen (its card has no step rows)."""
    try:
        card = json.loads(card_path(DEFAULT_WEIGHTS).read_text())
    except (OSError, ValueError):
        return None
    training = config_from_dict(card["training"])
    per_epoch = steps_per_epoch(training) * training.batch_size  # whole batches: the trainer drops the last partial one
    rows = [{"kind": "epoch", **row, "images": row["epoch"] * per_epoch} for row in card.get("curve", [])]
    return {"preset": "fast (shipped weights)", "final_test_acc": card.get("test_acc"),
            "source": f"{card_path(DEFAULT_WEIGHTS).relative_to(REPO)}: its card's per-epoch curve", "rows": trimmed(rows)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    parser.add_argument("--out", default=str(REPO / "results" / "reference-curves.json"))
    parser.add_argument("--shipped-only", action="store_true",
                        help="replace only the shipped model's curve in --out, keeping the trained references")
    args = parser.parse_args(argv)
    if args.shipped_only:
        return refresh_shipped(Path(args.out))
    references = {}
    for name, preset in TRAINED:
        started = time.perf_counter()
        references[name] = {**train_reference(preset, args.data_dir), "wall_s": round(time.perf_counter() - started, 1)}
        print(f"{name}: {references[name]['status']}, test accuracy {references[name]['final_test_acc']:.2%} "
              f"on {references[name]['test_images']} test images, {references[name]['wall_s']} s", flush=True)
    shipped = shipped_reference()
    if shipped:
        references["shipped model"] = shipped
    report = {"command": shlex.join(["python", "scripts/reference_curves.py", *(argv if argv is not None else sys.argv[1:])]),
              "device": describe_device(torch.device("cpu")), "date": time.strftime("%Y-%m-%d"), "references": references}
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


def refresh_shipped(out: Path) -> int:
    try:
        report = json.loads(out.read_text())
    except (OSError, ValueError) as error:
        print(f"{out}: cannot read the references to refresh ({error}); run without --shipped-only", file=sys.stderr)
        return 2
    shipped = shipped_reference()
    if shipped is None:
        print(f"{card_path(DEFAULT_WEIGHTS)}: no shipped card to take the curve from", file=sys.stderr)
        return 2
    report["references"]["shipped model"] = shipped
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote the shipped model's curve into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
