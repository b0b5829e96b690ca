"""Remove-one ablation of the `fast` preset: what each part of the recipe buys, on a validation split.

    python scripts/ablation.py --out ablation-runs --results results/ablation.json [--epochs 5] [--train-size 20000]

Every variant trains on the same images (the first --train-size left after a seeded 5,000-image
validation split) for the same epochs and is scored by final validation accuracy; the test set
is never looked at. Rerunning skips finished variants and resumes interrupted ones.
"""

import argparse
import dataclasses
import json
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from resnet import runs  # noqa: E402
from resnet.study import DONE, run_status  # noqa: E402
from resnet.train import PRESETS, Trainer, load_data, make_config, resolve_device  # noqa: E402
from resnet.weights import atomic_write_json  # noqa: E402

# Each variant changes one thing of the fast preset (the first is the preset itself).
VARIANTS = {
    "fast": {},
    "no-onecycle": {"schedule": "constant", "warmup": 0.0},
    "no-label-smoothing": {"label_smoothing": 0.0},
    "no-alternate-flip": {"alternate_flip": False},
    "small-batch": {"batch_size": 128, "lr": PRESETS["fast"]["lr"] / 4},
    "no-weight-decay": {"weight_decay": 0.0},
    "no-nesterov": {"nesterov": False},
    "plus-ema": {"ema": 0.99},
    "published-recipe": None,  # the original preset at the same budget, for scale
}


def config_for(name: str, args):
    budget = dict(epochs=args.epochs, val_size=args.val_size, limit_train=args.train_size, limit_test=1000,
                  seed=args.seed, data_dir=args.data_dir)
    if VARIANTS[name] is None:
        return make_config("original", **budget)
    return make_config("fast", **budget, **VARIANTS[name])


def result(run_dir: Path, name: str, config) -> dict:
    epochs = [r for r in runs.read_metrics(run_dir) if r["kind"] == "epoch"]
    status = runs.read_status(run_dir)["status"]
    final = epochs[-1] if epochs and status == "finished" else {}
    return {
        "variant": name, "change": VARIANTS[name], "status": status,
        "final_val_acc": final.get("val_acc"), "final_val_loss": final.get("val_loss"),
        "train_images_per_s": sum(r["images_per_s"] for r in epochs) / len(epochs) if epochs else None,
        "elapsed_s": final.get("elapsed_s"), "config": dataclasses.asdict(config),
        "curve": [{k: r.get(k) for k in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc")} for r in epochs],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("ablation-runs"))
    parser.add_argument("--results", type=Path, default=Path("results/ablation.json"))
    parser.add_argument("--data-dir")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--train-size", type=int, default=20_000)
    parser.add_argument("--val-size", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", choices=sorted(VARIANTS), help="train only these variants")
    args = parser.parse_args()

    stop = threading.Event()  # Ctrl-C or SIGTERM: the current variant checkpoints and reads `stopped`
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    data, rows = None, []
    for name in VARIANTS:
        config = config_for(name, args)
        run_dir = args.out / name
        status = run_status(args.out, name)
        if status not in DONE and (not args.only or name in args.only):
            if data is None:  # one copy of the images for every variant: the split depends on the seed only
                data = load_data(config, resolve_device(config.device))
            resume = status in runs.RESUMABLE and (run_dir / runs.CHECKPOINT).is_file()
            print(f"{name}: {'resuming' if resume else 'training'}", flush=True)
            Trainer(config, run_dir, stop_event=stop, data=data, command="python scripts/ablation.py").run(resume=resume)
            if stop.is_set():
                break
        if (run_dir / runs.CONFIG).is_file():
            rows.append(result(run_dir, name, config))
    budget = {"epochs": args.epochs, "train_size": args.train_size, "val_size": args.val_size, "seed": args.seed,
              "score": "validation accuracy at the final epoch (eval mode); the test set is never used"}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.results, {"budget": budget, "variants": rows})
    print(json.dumps([{k: r[k] for k in ("variant", "status", "final_val_acc", "train_images_per_s")} for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
