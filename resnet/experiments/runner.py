"""Experiments: a plan of runs under one budget, then a results file and its figures.

An experiment (the optimizer study, the remove-one ablation, time to accuracy) is a subclass of Experiment that declares
what it compares: its plan, each run's config and results row. This module owns the rest, except the loop that
trains the plan: the workers of resnet.experiments.storage run it, in one process or many. Every run is
an ordinary run folder under the experiment's folder, named by its run id. Rerunning skips finished and
diverged runs and resumes stopped, interrupted or failed ones from their checkpoint (runs.RESUMABLE). Run folders hold
checkpoints and stay on the machine that trained them; the results file is what gets committed, so a
fresh checkout continues from the finished and diverged runs that file records (under the same budget)
without training them again.
"""

import contextlib
import dataclasses
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import runs
from ..atomic import atomic_write_bytes, atomic_write_json
from ..config import ConfigError, differences
from ..train import Trainer, load_data, resolve_device

DONE = ("finished", "diverged")
BUDGET_FILE = "budget.json"
CURVE_KEYS = ("epoch", "images", "elapsed_s", "train_loss", "train_acc", "val_loss", "val_acc")


@dataclass(frozen=True)
class Budget:
    """What every run of an experiment gets: the same images and validation split (and epochs, batch and
    resolution schedule, where it fixes them); runs of one recipe differ only by their seed."""

    train_size: int = 10_000  # the first images of the training set left after the validation split
    val_size: int = 5_000  # a seeded split of the training set; the only thing runs are scored on
    epochs: int | None = 5  # None: each run keeps its recipe's epochs
    batch_size: int | None = None  # None: each run keeps its recipe's batch (the ablation compares recipes)
    test_size: int = 1_000  # test images loaded beside the split; every experiment's runs score the split alone
    seed: int = 0  # of the validation split, and of each run's first seed
    seeds: int = 1  # runs per recipe, seeded seed, seed + 1, ...: their spread is the noise a difference must beat
    resolution: str | None = None  # a resolution schedule every run trains at (None: each recipe's own)

    def fields(self) -> dict:
        """The budget as budget.json and the results file hold it (what is left to the recipes is left out)."""
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None}

    def settings(self, data_dir=None, seed: int | None = None) -> dict:
        """The make_config settings that hold a run to this budget (``seed``: one of its seeds, else the first).
        Runs of an experiment choose, so they score the validation split alone, never the test set."""
        return {"epochs": self.epochs, "val_size": self.val_size, "limit_train": self.train_size, "limit_test": self.test_size,
                "seed": self.seed if seed is None else seed, "split_seed": self.seed, "batch_size": self.batch_size,
                "resolution": self.resolution, "score_test": False,
                "data_dir": str(data_dir) if data_dir else None}

    def run_seeds(self) -> range:
        return range(self.seed, self.seed + self.seeds)

    def changes(self, stored: dict) -> str:
        """What differs between a budget read back and this one ('epochs 3 -> 5, ...'); '' where nothing does.

        A field the stored budget lacks was None (``fields`` leaves those out) where this budget's is, else
        had its default (it was written before the field existed). ``seeds`` is not compared: more seeds add
        runs and keep every finished one."""
        defaults = {f.name: f.default for f in dataclasses.fields(Budget)}
        was = lambda key, value: stored.get(key, None if value is None else defaults[key])  # noqa: E731
        return ", ".join(f"{k} {was(k, v)} -> {v}" for k, v in dataclasses.asdict(self).items()
                         if k != "seeds" and was(k, v) != v)


@dataclass(frozen=True)
class Options:
    """Where an experiment's run folders and results go, and what to train of it this time."""

    out: str | Path  # the folder of its run folders, bound to one budget
    results: str | Path | None = None  # read to skip what it records as done; rewritten after every run
    data_dir: str | Path | None = None
    only: object = None  # the CLI's --only, as the experiment's `chosen` reads it; empty: every run
    stop_event: threading.Event | None = None  # once set, the current run stops resumable and no other starts
    watch: Callable | None = None  # (run_id, trainer, resume) -> a context manager around the run (the CLI's progress bar)
    device: str | None = None  # where a worker trains (None: each config's); where a run trained is not a setting


def write_results_file(results: dict, path) -> Path | None:
    """``results`` written whole to ``path`` (nothing when it is None), its folder created if need be."""
    if path is None:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, results)
    return path


class Experiment:
    """The runner every experiment shares: plan, run folders, results file, pages.

    A subclass declares ``name`` (its command and the kind its files record), ``budget`` and ``defaults`` (the
    CLI's), ``notes`` (what its score and numbers mean, written beside the budget), ``plan``,
    ``config_for`` and ``row``; optionally ``pages``, ``summary``, ``from_plan`` and ``chosen``.
    """

    name: str
    budget: Budget
    defaults: Options
    notes: dict
    pages: dict = {}  # name -> (results -> figure), each written beside the results file as <stem>-<name>.html

    def plan(self, root, budget: Budget, recorded: dict) -> tuple:
        """(the runs known so far, in order, each with a ``run_id``; why later ones are not planned yet, or None).

        The plan is made again after every run: a finished run can decide what is planned next (the study's phases)."""
        raise NotImplementedError

    def config_for(self, planned, budget: Budget, data_dir=None):
        raise NotImplementedError

    def row(self, planned, run: dict, budget: Budget) -> dict:
        """The run's row of the results file, from what its folder measured (``measured``)."""
        raise NotImplementedError

    def summary(self, rows: list, waiting) -> dict:
        """What the results file holds beside the budget and the rows."""
        return {}

    def from_plan(self, planned) -> dict:
        """What a row says from the plan rather than from training: a recorded row is brought up to date with it."""
        return {}

    def chosen(self, only) -> Callable[[str], bool]:
        """Which run ids ``only`` asks to train: by default those starting with it (all, where it is empty)."""
        return lambda run_id: run_id.startswith(only or "")

    # ---- what the folder and the results file hold ---------------------------------------------

    def status(self, root, run_id: str, recorded=None) -> str:
        """The run folder's status; else the status the results file recorded; else ``pending``."""
        if has_folder(root, run_id):
            return runs.read_status(Path(root) / run_id)["status"]
        row = (recorded or {}).get(run_id)
        return row["status"] if row else "pending"

    def result(self, root, planned, budget: Budget, recorded: dict) -> dict:
        """The run's row: from its folder; else the row the results file recorded (it was trained elsewhere)."""
        if not has_folder(root, planned.run_id) and planned.run_id in recorded:
            return {**recorded[planned.run_id], **self.from_plan(planned)}
        return self.row(planned, measured(root, planned.run_id), budget)

    def collect(self, root, budget: Budget, recorded: dict) -> dict:
        """Everything the results file holds, read from the run folders (and the recorded rows they lack)."""
        planned, waiting = self.plan(root, budget, recorded)
        rows = [self.result(root, p, budget, recorded) for p in planned]
        return {"experiment": self.name, "budget": {**budget.fields(), **self.notes}, **self.summary(rows, waiting), "runs": rows}

    def recorded_runs(self, results_path, budget: Budget) -> dict:
        """The finished and diverged rows of an earlier results file, by run id (empty where there is none).

        A results file of another experiment or budget raises ConfigError rather than being mixed
        with, or overwritten by, runs trained under this one.
        """
        path = Path(results_path) if results_path else None
        if path is None or not path.is_file():
            return {}
        try:
            stored = json.loads(path.read_text())
            refusal, rows = self._refusal(stored.get("experiment"), stored["budget"], budget), stored["runs"]
            done = {row["run_id"]: row for row in rows if row["status"] in DONE}
        except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
            raise ConfigError(f"{path} is not a results file (a budget and a list of runs); pass another --results") from None
        if refusal:
            raise ConfigError(f"{path} holds results of {refusal}; use the same options or another --results")
        return done

    def check_folder(self, root, budget: Budget) -> None:
        """An experiment's folder holds one experiment under one budget: comparing across either would mislead."""
        path = Path(root) / BUDGET_FILE
        if not path.is_file():
            return
        try:
            stored = json.loads(path.read_text())
            refusal = self._refusal(stored.get("experiment"), stored, budget)
        except (ValueError, UnicodeDecodeError, AttributeError):
            raise ConfigError(f"{path} is not a budget file; use another --out") from None
        if refusal:
            raise ConfigError(f"{root} holds runs of {refusal}; use the same options or another --out")

    def _refusal(self, kind, stored_budget: dict, budget: Budget) -> str:
        # Files written before they recorded their experiment are taken to be of the one reading them.
        if kind not in (None, self.name):
            return f"the {kind}, not the {self.name}"
        changed = budget.changes(stored_budget)
        return f"another budget ({changed})" if changed else ""

    def open_folder(self, root, budget: Budget) -> Path:
        """The experiment's folder, created if need be and bound to ``budget`` (refused if it holds another)."""
        root = Path(root)
        self.check_folder(root, budget)
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(root / BUDGET_FILE, {"experiment": self.name, **budget.fields()})
        return root

    def write_results(self, results: dict, path) -> None:
        """The results file and its pages beside it (nothing when ``path`` is None)."""
        path = write_results_file(results, path)
        if path is None:
            return
        for name, make in self.pages.items():
            # Whole or not at all: the workers of an experiment write the same pages at once.
            atomic_write_bytes(path.with_name(f"{path.stem}-{name}.html"), make(results).to_html(include_plotlyjs="cdn").encode())

    # ---- before a run is trained ---------------------------------------------------------------

    def check_unchanged(self, root, planned: list, budget: Budget, recorded: dict) -> None:
        """A run id stands for one config: a run folder or a recorded row that trained another (its recipe was
        edited since) is refused, since its results would be read as the recipe's of today."""
        for run in planned:
            trained = runs.read_config(Path(root) / run.run_id) if has_folder(root, run.run_id) else \
                (recorded.get(run.run_id) or {}).get("config")
            changed = differences(trained, self.config_for(run, budget)) if trained else ""
            if changed:
                raise ConfigError(f"{run.run_id} was trained with other settings than its recipe has now ({changed}); "
                                  "give the new recipe another name, or remove the old run's folder and row")


def counted(budget: dict, key: str) -> str:
    """An image count of a budget read back from a results file, as text ('45,000'); '?' where it has none."""
    return f"{budget[key]:,}" if isinstance(budget.get(key), int) else "?"


def mean_speed(speeds: list) -> float | None:
    """A run's training images per second: the mean of its epochs' speeds; None before its first epoch."""
    return sum(speeds) / len(speeds) if speeds else None


def has_folder(root, run_id: str) -> bool:
    return (Path(root) / run_id / runs.CONFIG).is_file()


def measured(root, run_id: str) -> dict:
    """What a run folder measured: status, per-epoch curve, final validation score, speeds, wall time, device,
    and the config it trained with (None before it has one)."""
    run_dir = Path(root) / run_id
    status = runs.read_status(run_dir)["status"] if has_folder(root, run_id) else "pending"
    by_epoch = {r["epoch"]: r for r in runs.read_metrics(run_dir) if r["kind"] == "epoch"}
    curve = [{key: record.get(key) for key in CURVE_KEYS} for _, record in sorted(by_epoch.items())]
    final = by_epoch[max(by_epoch)] if status == "finished" and by_epoch else {}
    # A run resumed on another machine has one clock over both: its timings compare with neither machine's.
    devices = sorted({r["device"] for r in by_epoch.values() if isinstance(r.get("device"), str)})
    return {
        "status": status,
        "curve": curve,
        "final_val_acc": final.get("val_acc"),
        "final_val_loss": final.get("val_loss"),
        "images_per_s": [r["images_per_s"] for r in by_epoch.values() if r.get("images_per_s")],
        "elapsed_s": final.get("elapsed_s"),
        "timed_on": "mixed: " + "; ".join(devices) if len(devices) > 1 else runs.trained_on(run_dir),
        "config": runs.read_config(run_dir) if has_folder(root, run_id) else None,
    }


def load_shared_data(config, budget: Budget):
    """The images every run shares, loaded once by a worker for the first run it trains: the split and the subset
    depend only on the budget's sizes and seed (each run's config fixes ``split_seed`` to it, so a run resumed on
    its own splits the same way)."""
    data = load_data(config, resolve_device(config.device))
    if len(data.train_x) < budget.train_size:
        raise ConfigError(f"only {len(data.train_x)} training images remain after the {budget.val_size}-image validation split; "
                          f"lower --train-size or --val-size")
    return data


def train_run(root, run_id: str, config, data, stop_event=None, watch=None, command: str = "", notes=None,
              callbacks=()) -> None:
    """Train one run folder on the shared in-memory data, resuming it if it stopped (``notes``: more that its
    config.json records, such as the study trial that trained it; ``callbacks``: called with each metrics row,
    as a search reports its probes)."""
    run_dir = Path(root) / run_id
    status = runs.read_status(run_dir)
    if status["status"] == "running":
        raise runs.RunError(f"{run_id} is being trained by process {status.get('pid')}; wait for it or stop it first")
    resume = status["status"] in runs.RESUMABLE and (run_dir / runs.CHECKPOINT).is_file()
    trainer = Trainer(config, run_dir, callbacks, stop_event, data=data, command=command, notes=notes)
    with watch(run_id, trainer, resume) if watch else contextlib.nullcontext():
        trainer.run(resume=resume)
