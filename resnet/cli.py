"""``python -m resnet train|evaluate|predict ...``: the package's command line."""

import argparse
import json
import math
import shlex
import signal
import sys
import threading
from pathlib import Path

from tqdm import tqdm

from . import runs
from .constants import CLASSES
from .data import AUGMENTATIONS, DataMissingError, download, load_split
from .evaluate import evaluate, predict_logits
from .images import ImageError, prepare
from .train import OPTIMIZERS, PRECISIONS, PRESETS, SCHEDULES, ConfigError, Trainer, make_config, resume_config
from .weights import DEFAULT_WEIGHTS, WeightsError, load_model

EXPECTED_ERRORS = (ConfigError, DataMissingError, runs.RunError, WeightsError, ImageError, FileNotFoundError)


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _blocks(text: str) -> tuple:
    try:
        blocks = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give four whole numbers such as 1,1,1,1") from None
    if len(blocks) != 4:
        raise argparse.ArgumentTypeError(f"{text!r}: give four whole numbers such as 1,1,1,1")
    return blocks


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model into a run folder", description="Train the ResNet on CIFAR-10.")
    p.add_argument("--out", help="run folder to create (config, metrics.jsonl, checkpoints, weights)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped or interrupted run (only --epochs may be raised)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="fast", help="recipe to start from (default: fast)")
    p.add_argument("--data-dir", help="folder containing cifar-10-batches-py/ (default: $CIFAR10_DIR, else ./data)")
    p.add_argument("--download", action="store_true", help="download CIFAR-10 into --data-dir first")
    p.add_argument("--epochs", type=int)
    p.add_argument("--optimizer", choices=OPTIMIZERS)
    p.add_argument("--lr", type=_finite_float)
    p.add_argument("--momentum", type=_finite_float)
    p.add_argument("--weight-decay", type=_finite_float)
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--dropout", type=_finite_float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--blocks", type=_blocks, help="blocks per stage, e.g. 1,1,1,1 (published) or 2,2,2,2")
    p.add_argument("--schedule", choices=SCHEDULES)
    p.add_argument("--warmup", type=_finite_float, help="fraction of steps spent warming up")
    p.add_argument("--label-smoothing", type=_finite_float)
    p.add_argument("--ema", type=_finite_float, help="per-step decay of a weight average (0 = off)")
    p.add_argument("--augment", choices=AUGMENTATIONS)
    p.add_argument("--alternate-flip", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, mps")
    p.add_argument("--precision", choices=PRECISIONS)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--limit-train", type=int, help="train on the first N images only")
    p.add_argument("--limit-test", type=int, help="evaluate on the first N test images only")
    p.add_argument("--val-size", type=int, help="carve N seeded validation images from the training set")
    p.add_argument("--log-every", type=int, help="write a step record every N steps")
    p.add_argument("--weights-dtype", choices=("float32", "float16", "bfloat16"))


def _evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="score weights on the CIFAR-10 test set", description="Evaluate weights in eval mode, fp32.")
    p.add_argument("--weights", default=str(DEFAULT_WEIGHTS), help="a .safetensors (with its .json card) or a published .pt")
    p.add_argument("--data-dir")
    p.add_argument("--limit-test", type=int, default=0)
    p.add_argument("--tta", action="store_true", help="average the logits of each image and its mirror")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON line last")
    p.add_argument("--device", default="cpu")


def _predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="classify image files", description="Classify any images Pillow can read.")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    p.add_argument("--top", type=int, default=3)
    p.add_argument("--json", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m resnet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    _evaluate_parser(sub)
    _predict_parser(sub)
    return parser


TRAIN_FLAGS = ("epochs", "optimizer", "lr", "momentum", "weight_decay", "nesterov", "dropout", "batch_size", "blocks",
               "schedule", "warmup", "label_smoothing", "ema", "augment", "alternate_flip", "seed", "device", "precision",
               "channels_last", "compile", "limit_train", "limit_test", "val_size", "log_every", "weights_dtype")


def _progress_bar(trainer: Trainer, start_step: int):
    bar = tqdm(total=trainer.total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def on_record(record: dict) -> None:
        bar.update(max(0, record["step"] - bar.n))
        shown = {"epoch": record["epoch"], "loss": f"{record['train_loss']:.3f}", "img/s": f"{record['images_per_s']:.0f}"}
        if "test_acc" in record:
            shown["test"] = f"{record['test_acc']:.2%}"
            tqdm.write(json.dumps(record))
        bar.set_postfix(shown)

    return bar, on_record


def cmd_train(args, argv) -> int:
    if args.resume:
        given = [name for name in TRAIN_FLAGS if name != "epochs" and getattr(args, name) is not None]
        if given or args.out or args.data_dir:
            raise ConfigError(f"--resume takes only --epochs (got --{given[0].replace('_', '-') if given else 'out/--data-dir'})")
        run_dir = Path(args.resume)
        config = resume_config(run_dir, args.epochs)
    else:
        if not args.out:
            raise ConfigError("--out RUN_DIR is required (or --resume RUN_DIR)")
        run_dir = Path(args.out)
        if (run_dir / runs.CONFIG).exists():
            raise ConfigError(f"{run_dir} already holds a run; use --resume {run_dir} or another --out")
        if args.download:
            download(args.data_dir)
        config = make_config(args.preset, data_dir=args.data_dir, **{name: getattr(args, name) for name in TRAIN_FLAGS})
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    trainer = Trainer(config, run_dir, stop_event=stop, command="python -m resnet " + shlex.join(argv))
    start_step = 0
    if args.resume:
        start_step = max((r["step"] for r in runs.read_metrics(run_dir)), default=0)
    bar, on_record = _progress_bar(trainer, start_step)
    trainer.callbacks.append(on_record)
    with bar:
        outcome = trainer.run(resume=bool(args.resume))
    print(outcome["message"])
    return {"finished": 0, "stopped": 130, "diverged": 3}.get(outcome["status"], 1)


def cmd_evaluate(args) -> int:
    model = load_model(args.weights, args.device)
    images, labels = load_split(args.data_dir, train=False)
    if args.limit_test:
        images, labels = images[: args.limit_test], labels[: args.limit_test]
    result = evaluate(model, images, labels, model.card["mean"], model.card["std"], tta=args.tta)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"test accuracy {result['test_acc']:.2%}  loss {result['test_loss']:.4f}  ({result['count']} images"
              f"{', flip TTA' if args.tta else ''})")
        for name, acc in zip(model.card["classes"], result["per_class_acc"]):
            print(f"  {name:<11} {acc:.2%}")
    return 0


def cmd_predict(args) -> int:
    import torch

    model = load_model(args.weights)
    classes = model.card["classes"]
    failures = 0
    for path in args.images:
        try:
            image = prepare(path)
        except (ImageError, OSError) as error:
            print(f"{path}: {error}", file=sys.stderr)
            failures += 1
            continue
        probs = predict_logits(model, image[None], model.card["mean"], model.card["std"]).softmax(1)[0]
        top = torch.topk(probs, min(args.top, len(classes)))
        ranked = {classes[i]: round(p, 6) for p, i in zip(top.values.tolist(), top.indices.tolist())}
        print(json.dumps({"path": path, "top": ranked}) if args.json else
              f"{path}: " + ", ".join(f"{name} {p:.1%}" for name, p in ranked.items()))
    return 1 if failures else 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            return cmd_train(args, argv)
        if args.command == "evaluate":
            return cmd_evaluate(args)
        return cmd_predict(args)
    except EXPECTED_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
