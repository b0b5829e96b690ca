"""A search with pruning against the same search without it: how long each takes to find a learning rate within
0.5 points of the best that either found.

Runs ``python -m resnet search --plan lr`` (the quick preset's one pass over 10,000 images, its lr searched from
0.003 to 1 in its logarithm, scored on a 5,000-image validation split carved from the training set) twice on this
machine, one worker each and one after the other: with the search's pruner (resnet.experiments.search's
BehindBeyondNoise), then with ``--no-prune``. Both samplers
are seeded alike, so their first proposals are the same lrs; after that each proposes from what it has seen. The
target is the best final validation accuracy of either search less 0.5 points; each search's time to it runs
from its first trial's start to the end of its first finished trial that reaches it.

    python bench/bench_pruning.py --data-dir ../shared/data/cifar10 --json bench/results/pruning.json
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import machine, report  # bench/, beside this file

from resnet.experiments import search

REPO = Path(__file__).resolve().parent.parent
WITHIN = 0.005  # how close to the best an lr must score to count as found


def run_search(folder: Path, data_dir: str, trials: int, seed: int, prune: bool) -> dict:
    """One worker's whole search in a process of its own; its results file, with the command's wall time."""
    results = folder / "search.json"
    command = [sys.executable, "-m", "resnet", "search", "--plan", "lr", "--out", str(folder), "--results", str(results),
               "--data-dir", data_dir, "--trials", str(trials), "--seed", str(seed), *([] if prune else ["--no-prune"])]
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL)
    return {**json.loads(results.read_text()), "wall_s": time.perf_counter() - started}


def summary(results: dict, target: float) -> dict:
    rows = results["runs"]
    return {
        "wall_s": round(results["wall_s"], 1),
        "ran": len(rows),
        "pruned": sum(r["status"] == "pruned" for r in rows),
        "trial_seconds": round(sum(r["ended_s"] - r["started_s"] for r in rows), 1),
        "best": {key: results["best"][key] for key in ("run_id", "lr", "final_val_acc")} if results["best"] else None,
        "found_s": search.found_s(results, target),
        "trials": [{key: r[key] for key in ("run_id", "lr", "status", "final_val_acc", "started_s", "ended_s")}
                   | {"probes": len(r["probes"])} for r in rows],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--trials", type=int, default=search.SEARCHES["lr"].trials)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args()
    before = machine()
    with tempfile.TemporaryDirectory() as folder:
        arms = {name: run_search(Path(folder) / name, args.data_dir, args.trials, args.seed, prune)
                for name, prune in (("pruned", True), ("unpruned", False))}
    best = max(r["best"]["final_val_acc"] for r in arms.values() if r["best"])
    target = best - WITHIN
    result = {"search": search.SEARCHES["lr"].fields(), "trials": args.trials, "seed": args.seed, "best_val_acc": best,
              "target_val_acc": target, **{name: summary(r, target) for name, r in arms.items()},
              "machine": before, "load_average_1m_after": round(os.getloadavg()[0], 2)}
    pruned, unpruned = result["pruned"]["found_s"], result["unpruned"]["found_s"]
    if pruned and unpruned:
        result["found_ratio_pruned_to_unpruned"] = round(pruned / unpruned, 3)
    result["wall_ratio_pruned_to_unpruned"] = round(result["pruned"]["wall_s"] / result["unpruned"]["wall_s"], 3)
    report(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
