"""Time-budgeted runs as the Train tab starts them: does each end on time, and what does it score?

Each budget is the Train tab's run (``resnet.config.QUICK_RUN``: the quick preset, every training image, its
probes) with that budget, started through the server's own run queue (``resnet.studio.jobs.RunQueue``: a child
``python -m resnet train`` process, as Start does). The wall time counts from the moment the child leaves the
queue to the moment its run reads ``finished``, which is what the budget promises. Reports, for each budget: the
plan (where the trainer meant its seconds to go, and where it re-fitted its length to its pace), the wall time and
its ratio to the budget, the final test accuracy on all 10,000 test images (eval mode, the training precision, no
test-time augmentation), the probes' share of the training time, and the machine.

    python bench/bench_budget.py --data-dir ../shared/data/cifar10 --budgets 1m 2m 5m 15m --json bench/results/budget.json

A run plans from the speeds an earlier run of its kind met on this machine, where one is kept (resnet.speeds), and
measures otherwise; ``--fresh-speeds --budgets 1m 1m`` shows both, the first run measuring and the second not.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from machine import machine, report  # bench/, beside this file

from resnet import runs
from resnet.config import QUICK_RUN, parse_budget
from resnet.data import DATA_DIR_HELP, load_split
from resnet.studio import jobs
from resnet.train import resolve_precision
from resnet.weights import load_weights

POLL_S = 0.05  # how precisely the moment the child leaves the queue is seen
# While it trains, look rarely: a poll costs this process some CPU that the run would otherwise have, and the end
# is read from the status file's own time stamp, not from when the poll sees it.
WATCH_S = 2.0
ENDED = ("finished", "diverged", "failed", "stopped")


def budget_run(text: str, timeout_s: float) -> dict:
    with tempfile.TemporaryDirectory() as root:
        queue = jobs.RunQueue(root)
        try:
            settings = {**QUICK_RUN["size"], **QUICK_RUN["watch"], "budget": text}
            run_id = queue.start(QUICK_RUN["preset"], owner="bench", **settings)
            while queue.active() != run_id:
                time.sleep(POLL_S)
            left_queue = time.time()
            run_dir = Path(root) / run_id
            while runs.read_status(run_dir)["status"] not in ENDED and time.time() - left_queue < timeout_s:
                time.sleep(WATCH_S)
            status = runs.read_status(run_dir)
            rows = runs.read_metrics(run_dir)
            card = json.loads((run_dir / runs.CARD).read_text()) if (run_dir / runs.CARD).is_file() else {}
            stored = runs.read_config(run_dir)
            plan = stored.get("plan") or {}
            all_test = None
            if (run_dir / runs.WEIGHTS).is_file():  # the run's weights on every test image, whatever its plan scored
                images, labels = load_split(None, train=False)
                all_test = load_weights(run_dir / runs.WEIGHTS).evaluate(
                    images, labels, amp_dtype=resolve_precision("auto", torch.device("cpu")), channels_last=True)["acc"]
        finally:
            queue.close()
    wall = status["updated_at"] - left_queue
    train_s = sum(r.get("train_s", 0) for r in rows if r["kind"] == "epoch")
    probe_s = sum(r["probe_s"] for r in rows if r["kind"] == "probe")
    return {
        "budget": text, "budget_s": parse_budget(text), "status": status["status"], "message": status.get("message"),
        "wall_s": round(wall, 1), "wall_over_budget": round(wall / parse_budget(text), 3),
        "test_acc": card.get("test_acc"), "test_images": card.get("test_images"), "all_10000_test_acc": all_test,
        "planned_steps": plan.get("steps"), "steps": stored.get("steps"), "epochs": stored.get("epochs"),
        # The training loop starts once the plan is made: from the data loaded to there, measuring (where the run
        # had no speeds of its kind kept from an earlier one) and building the network.
        "speeds": plan.get("rates_from"),
        "data_to_first_step_s": round(plan["spent_s"] - plan["data_s"], 2) if "data_s" in plan else None,
        "images": rows[-1]["images"] if rows else None,
        "plan": plan, "train_s": round(train_s, 1), "probes": sum(r["kind"] == "probe" for r in rows),
        "probe_share_of_training": round(probe_s / train_s, 4) if train_s else None,
        "device": card.get("provenance", {}).get("device"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    parser.add_argument("--budgets", nargs="+", default=["1m", "2m", "5m", "15m"])
    parser.add_argument("--json", help="write the results here (each budget as it ends)")
    parser.add_argument("--fresh-speeds", action="store_true",
                        help="start with no speeds kept from earlier runs (resnet.speeds): the first run measures")
    args = parser.parse_args()
    if args.fresh_speeds:  # the children read it, as the app's do
        os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="bench-speeds-")
    if args.data_dir:
        os.environ["CIFAR10_DIR"] = str(Path(args.data_dir).resolve())  # the child reads it, as the app's children do
    results = {"machine": machine(), "command": "python bench/bench_budget.py " + " ".join(sys.argv[1:]), "runs": []}
    for text in args.budgets:
        results["runs"].append(budget_run(text, timeout_s=3 * parse_budget(text) + 120))
        results["machine"]["load_average_1m"] = machine()["load_average_1m"]
        report(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
