"""What a visitor gets from the Train tab's Start button on this machine: the default quick run.

Starts ``resnet.config.QUICK_RUN`` through the server's own run queue (``resnet.jobs.RunQueue``: a child
``python -m resnet train`` process, as the app does) and reads the run folder as the page does. Reports:
seconds from Start to the first step row and to the first probe row, the run's wall time to
``finished``, its final test accuracy (on the run's own test images), the probe's share of the
training time (its rows time themselves), and images/s at each resolution of the schedule.

    python bench/bench_quick_run.py --data-dir ../shared/data/cifar10 --json bench/results/quick_run.json
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python bench/bench_quick_run.py ...   # an AVX2-only host's kernels
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without installing the package
from resnet import jobs, runs  # noqa: E402
from resnet.config import QUICK_RUN  # noqa: E402
from resnet.train import describe_device  # noqa: E402

POLL_S = 0.2


def quick_run(preset: str, data_dir, timeout_s: float) -> dict:
    if data_dir:
        os.environ["CIFAR10_DIR"] = str(data_dir)  # the child reads it, as the app's children do
    with tempfile.TemporaryDirectory() as root:
        queue = jobs.RunQueue(root)
        try:
            started = time.perf_counter()
            run_id = queue.start(preset, owner="bench", **QUICK_RUN["size"], **QUICK_RUN["watch"])
            run_dir = Path(root) / run_id
            first = {}
            while time.perf_counter() - started < timeout_s:
                for row in runs.read_metrics(run_dir):
                    first.setdefault(row["kind"], round(time.perf_counter() - started, 1))
                if runs.read_status(run_dir)["status"] in ("finished", "diverged", "failed"):
                    break
                time.sleep(POLL_S)
            wall = time.perf_counter() - started
            status = runs.read_status(run_dir)
            rows = runs.read_metrics(run_dir)
        finally:
            queue.close()
    steps = [r for r in rows if r["kind"] == "step"]
    probes = [r for r in rows if r["kind"] == "probe"]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    train_s = sum(r["train_s"] for r in epochs)
    by_size = {}
    for row in steps:
        by_size.setdefault(row["resolution"], []).append(row["images_per_s"])
    return {
        "preset": preset, "settings": {**QUICK_RUN["size"], **QUICK_RUN["watch"]}, "status": status["status"],
        "message": status.get("message"), "seconds_to_first_step_row": first.get("step"),
        "seconds_to_first_probe_row": first.get("probe"), "wall_s_to_end": round(wall, 1),
        "final_test_acc": epochs[-1]["test_acc"] if epochs else None, "test_images": QUICK_RUN["size"]["limit_test"],
        "probe_rows": len(probes), "probe_s": round(sum(r["probe_s"] for r in probes), 2), "train_s": round(train_s, 1),
        "probe_overhead": round(sum(r["probe_s"] for r in probes) / train_s, 3) if train_s else None,
        "images_per_s_by_resolution": {f"{size}px": round(statistics.median(speeds), 1) for size, speeds in sorted(by_size.items())},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="folder containing cifar-10-batches-py/ (default: $CIFAR10_DIR, else ./data)")
    parser.add_argument("--presets", nargs="+", default=[QUICK_RUN["preset"]], help="presets to time on the quick run's budget")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for each run")
    parser.add_argument("--json", metavar="OUT", help="also write the report to this JSON file")
    args = parser.parse_args(argv)
    report = {"device": describe_device(torch.device("cpu")), "torch": torch.__version__,
              "env": {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "OMP_NUM_THREADS") if k in os.environ},
              "runs": [quick_run(preset, args.data_dir, args.timeout) for preset in args.presets]}
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
