"""Choose the recipe behind each time budget on a validation split, never on the test set.

Each candidate is the Train tab's run (``resnet.config.QUICK_RUN``: the quick preset, all training
images, its probes) with a few settings changed, trained under one budget by the real command line,
carving a seeded 5,000-image validation split from the training images and scoring only that split
(``--val-size 5000 --no-score-test``). The wall time is counted from the command's start to its exit.
Results go to results/budget-search.json as each run ends; a rerun skips the candidates already there.

    python scripts/budget_search.py --data-dir ../shared/data/cifar10 [--only 1m-quick ...]
"""

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from resnet import runs
from resnet.config import QUICK_RUN, flag

REPO = Path(__file__).resolve().parent.parent

RESULTS = REPO / "results" / "budget-search.json"
VAL_SIZE = 5000

# Budget -> candidate name -> settings changed from the Train tab's run. The quick preset's recipe was chosen for one
# pass over 10,000 images; a budget of minutes sees several passes over 45,000, where crops and flips start to pay,
# and a longer budget can afford more of its steps at full size.
CANDIDATES = {
    "1m": {"1m-quick": {}, "1m-lowres": {"resolution": "16:0.75"}},
    "5m": {"5m-quick": {}, "5m-light": {"augment": "light"}},
    "15m": {"15m-light": {"augment": "light"}, "15m-quick": {}},
}


def command(budget: str, changes: dict, out: Path, data_dir: str) -> list:
    settings = {**QUICK_RUN["size"], **QUICK_RUN["watch"], "budget": budget, **changes}
    args = [sys.executable, "-m", "resnet", "train", "--preset", QUICK_RUN["preset"], "--out", str(out), "--data-dir", data_dir,
            "--val-size", str(VAL_SIZE), "--no-score-test"]
    for name, value in settings.items():
        args += [flag(name), str(value)]
    return args


def trained_rates(run_dir: Path) -> dict:
    """The median images/s of a run's step rows at each training size: what its plan's measured rates became."""
    by_size = {}
    for row in runs.read_metrics(run_dir):
        if row["kind"] == "step":
            by_size.setdefault(str(row["resolution"]), []).append(row["images_per_s"])
    return {size: round(statistics.median(rates), 1) for size, rates in sorted(by_size.items())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", default="runs/budget-search", help="folder of the run folders")
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME")
    args = parser.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"val_size": VAL_SIZE, "runs": {}}
    for budget, candidates in CANDIDATES.items():
        for name, changes in candidates.items():
            if (args.only and name not in args.only) or name in results["runs"]:
                continue
            out = Path(args.out) / name
            argv = command(budget, changes, out, args.data_dir)
            started = time.perf_counter()
            code = subprocess.run(argv, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}).returncode
            wall = time.perf_counter() - started
            card = json.loads((out / "model.json").read_text()) if (out / "model.json").is_file() else {}
            config = json.loads((out / "config.json").read_text())
            results["runs"][name] = {
                "budget": budget, "changes": changes, "exit_code": code, "wall_s": wall, "val_acc": card.get("val_acc"),
                "plan": config.get("plan"), "trained_rates": trained_rates(out),
                "device": card.get("provenance", {}).get("device"),
                "command": "python " + shlex.join(argv[1:]),
            }
            RESULTS.write_text(json.dumps(results, indent=1) + "\n")
            print(f"{name}: val {card.get('val_acc')} in {wall:.1f} s (exit {code})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
