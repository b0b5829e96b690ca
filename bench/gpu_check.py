"""The GPU check: what only a CUDA GPU can show about the trainer, in one run.

1. The hot loop has no hidden host syncs: 30 steps of ``Trainer.train_one`` (the trainer's own step:
   augmentation, lr, resolution, forward, backward, optimizer) under
   ``torch.cuda.set_sync_debug_mode("error")``, which raises on any synchronizing call.
2. bf16 and fp16 (with its GradScaler) both learn: a short run of each on 10,000 images, scored on a
   validation split carved from the training set.
3. Grad-CAM of the shipped weights on the GPU.
4. Training images/s at batch 512, with ``cudnn.benchmark`` on (the trainer's choice) and off,
   side by side.
5. A one-minute budget (``--budget 60s``) of the fast recipe with a whitened stem, through the command line as
   a visitor's run goes: its wall time from the command's start, and its accuracy on all 10,000 test images
   (the target: 94 %).
6. The time-to-accuracy experiment (``python -m resnet time-to-accuracy``): every recipe on the
   validation split, its wall time, images and FLOPs to 90, 93 and 94 %, into its own results file
   and run folders (skipped with ``--quick``). Not the CPU's: a recipe finished there would be read
   back as done and skipped, and the GPU's rows would land beside the CPU's in one table.

It writes one JSON file of results with the GPU's name:

    python bench/gpu_check.py --data-dir ../shared/data/cifar10 --json bench/results/gpu_check.json
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_train import our_steps, race

from resnet.config import make_config
from resnet.data import DATA_DIR_HELP, load_split
from resnet.experiments import storage
from resnet.experiments.runner import Options
from resnet.experiments.time_to_accuracy import TIME_TO_ACCURACY, table
from resnet.train import Trainer, describe_device
from resnet.weights import DEFAULT_WEIGHTS, load_weights


def no_hidden_syncs(data_dir, device, steps: int = 30) -> dict:
    """Run the trainer's step under the sync debugger; a synchronizing call raises instead of passing silently."""
    config = make_config("fast", data_dir=data_dir, device=str(device), limit_train=512 * (steps + 1), limit_test=500,
                         log_every=10_000)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(config, run_dir)
        parts, _ = trainer.build()
        order, flips = trainer.epoch_order(1)
        trainer.train_one(parts, order, flips, 1, 0)  # the first step allocates and autotunes: not the loop's steady state
        torch.cuda.synchronize(device)
        torch.cuda.set_sync_debug_mode("error")
        try:
            for step in range(1, steps + 1):
                trainer.train_one(parts, order, flips, 1, step)
            error = None
        except RuntimeError as caught:
            error = str(caught).splitlines()[0]
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return {"steps": steps, "passed": error is None, "error": error}


def learns(data_dir, device, precision: str) -> dict:
    config = make_config("quick", data_dir=data_dir, device=str(device), precision=precision, limit_train=10_000, val_size=5_000,
                         epochs=3, limit_test=1_000, log_every=50)
    with tempfile.TemporaryDirectory() as run_dir:
        started = time.perf_counter()
        outcome = Trainer(config, run_dir).run()
        rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    return {"precision": precision, "status": outcome["status"], "val_acc": [round(r["val_acc"], 4) for r in epochs],
            "learned": outcome["status"] == "finished" and epochs[-1]["val_acc"] > 0.4,
            "wall_s": round(time.perf_counter() - started, 1)}


def grad_cam_on_gpu(device) -> dict:
    classifier = load_weights(DEFAULT_WEIGHTS).to(device)
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    cam, target = classifier.explain(image)
    return {"passed": cam.device.type == "cpu" and cam.shape == (32, 32) and bool(torch.isfinite(cam).all()), "class": target}


def speed(data_dir, device, steps: int) -> dict:
    args = argparse.Namespace(warmup=5, steps=steps, rounds=2)
    result = {}
    for benchmark in (True, False):
        torch.backends.cudnn.benchmark = benchmark
        result[f"cudnn_benchmark_{'on' if benchmark else 'off'}"] = race(
            {"ours": our_steps(device, data_dir, "auto", (1, 1, 1, 1), 512)}, args, device)["ours"]
    torch.backends.cudnn.benchmark = True
    return result


ONE_MINUTE = ["--preset", "fast", "--whiten-stem", "--budget", "60s"]


def one_minute(data_dir) -> dict:
    """A 60-second budget run, started as a process of its own so that its start-up counts too."""
    repo = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as root:
        out = Path(root) / "run"
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "resnet", "train", *ONE_MINUTE, "--out", str(out),
                               *(["--data-dir", str(data_dir)] if data_dir else [])], cwd=repo, capture_output=True, text=True)
        wall = time.perf_counter() - started
        card = json.loads((out / "model.json").read_text()) if (out / "model.json").is_file() else {}
        plan = json.loads((out / "config.json").read_text()).get("plan") if (out / "config.json").is_file() else None
    return {"command": "python -m resnet train " + " ".join(ONE_MINUTE), "exit_code": done.returncode, "wall_s": round(wall, 1),
            "test_acc": card.get("test_acc"), "reached_94": (card.get("test_acc") or 0) >= 0.94, "plan": plan,
            "error": done.stderr[-600:] if done.returncode else None}


GPU_RESULTS, GPU_RUNS = "bench/results/time-to-accuracy-gpu.json", "time-to-accuracy-gpu-runs"


def time_to_accuracy(data_dir, root, results) -> dict:
    """Every recipe of the experiment on this GPU (each run's device is 'auto'): its rows as docs/results.md shows them,
    or the error that stopped it (the checks before it are kept either way)."""
    try:
        # One worker on the journal in its run folders, as `python -m resnet time-to-accuracy` runs.
        return {"table": table(storage.run_study(TIME_TO_ACCURACY, TIME_TO_ACCURACY.budget, Options(root, results, data_dir),
                                                 None, None))}
    except Exception as error:  # a refused results file or a failed run: reported beside the other checks
        return {"error": f"{type(error).__name__}: {error}"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    parser.add_argument("--json", metavar="OUT", default="bench/results/gpu_check.json")
    parser.add_argument("--time-to-accuracy", metavar="RESULTS", default=GPU_RESULTS,
                        help="the time-to-accuracy results file of this GPU's runs (default: %(default)s)")
    parser.add_argument("--runs", default=GPU_RUNS,
                        help="their run folders, so an interrupted check resumes (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="leave out the time-to-accuracy experiment (the longest part)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: the GPU check needs a CUDA GPU; this machine has none", file=sys.stderr)
        return 2
    load_split(args.data_dir, train=False)  # a missing data set fails here, with its message, before any work
    device = torch.device("cuda")
    report = {"device": describe_device(device), "torch": torch.__version__, "cuda": torch.version.cuda,
              "no_hidden_syncs": no_hidden_syncs(args.data_dir, device),
              "learns": [learns(args.data_dir, device, precision) for precision in ("bf16", "fp16")],
              "grad_cam": grad_cam_on_gpu(device), "images_per_s_batch_512": speed(args.data_dir, device, 50),
              "one_minute_budget": one_minute(args.data_dir)}
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")  # before the longest part, which may not finish
    if not args.quick:
        report["time_to_accuracy"] = time_to_accuracy(args.data_dir, args.runs, args.time_to_accuracy)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    passed = report["no_hidden_syncs"]["passed"] and all(r["learned"] for r in report["learns"]) and report["grad_cam"]["passed"]
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
