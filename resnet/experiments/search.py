"""Recipe searches: a sampler proposes the settings a recipe leaves open, and hopeless proposals stop early.

A search fixes how big each trial is (a preset, its images and epochs or its time budget) and searches a few
settings of how it learns (the learning rate, the warm-up, label smoothing). Each trial is an ordinary run folder,
named after its trial, trained on the images left beside a seeded validation split carved from the training set
and scored on that split alone: the test set is never scored, so a search may choose. Its score is the final
validation accuracy, eval mode.

Optuna's TPE sampler proposes each trial's settings from the ones before it, and a pruner stops a trial whose
probe accuracy (the held-out points every run logs, ``--probes`` of them) is behind the finished trials' median at
the same probe by more than a probe's sampling noise, once the lr's warm-up is over: a learning rate that is
hopeless shows it by then, and its remaining steps go to the next proposal. ``--no-prune`` runs every trial to
its end, the baseline a pruned search is measured against (docs/studies.md).

Every process running the command is a worker on one storage, as for the fixed plans
(resnet.experiments.storage): each asks the sampler for the next trial, until the search has its trials; a
worker that dies leaves its trial to be resumed by another. Two workers asking at once can each start the last
trial, so a search may end with up to one trial per worker more than it asked for. On a CPU, searches whose
trials run under a time budget want one worker per machine: each trial plans from the pace the machine's last
finished trial met (resnet.speeds) and re-fits to its own, and workers sharing cores would meet, and so plan
for, a slower machine.
"""

import dataclasses
import json
import math
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .. import runs
from ..config import QUICK_RUN, make_config
from ..train import load_data, resolve_device
from .runner import DONE, Budget, Options, measured, write_results_file
from .storage import POLL_S, StorageError, TrialWorker, import_optuna, open_storage_and_folder

STARTUP_TRIALS = 4  # random proposals before TPE models the ones so far, and finished trials before any pruning
# Probes before a trial may be pruned: the quick preset warms its lr up over the first fifth of the run, and probes
# inside the warm-up rank learning rates by how fast they warm up, not by how well they learn.
WARMUP_PROBES = 4
NOISE_SE = 2.0  # how many standard errors of a probe's score a trial must be behind to be pruned
SEED_STRIDE = 1_000_003  # between the sampler seeds of two searches' trials


@dataclass(frozen=True)
class Range:
    """A searched setting's range; ``log``: sampled evenly in its logarithm (a learning rate)."""

    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class Search:
    """What a search fixes (a preset and each trial's size) and what it searches (``space``)."""

    preset: str
    size: dict  # make_config settings: how big each trial is (images, epochs or a time budget)
    space: dict  # setting -> Range
    trials: int  # trials the search runs, over all its workers; more can be asked for later
    val_size: int = 5_000
    probe_size: int = 1_000  # validation images each probe scores: the pruner's evidence
    probes: int = 10
    seed: int = 0  # of the validation split and of every trial's weights; the sampler's first seed

    def fields(self) -> dict:
        """What a study in the storage is bound to: workers of two searches would compare unlike trials."""
        return {key: value for key, value in json.loads(json.dumps(dataclasses.asdict(self))).items() if key != "trials"}

    def config_for(self, params: dict, data_dir=None):
        # Scored on the validation split alone, as every experiment's runs are (the test images are only loaded).
        # The search's own settings override the trial's size: the Train tab's budgeted run, for one, scores all the
        # test images.
        fixed = {"val_size": self.val_size, "limit_test": Budget.test_size, "score_test": False, "seed": self.seed,
                 "probe_size": self.probe_size, "probes": self.probes, "data_dir": str(data_dir) if data_dir else None}
        return make_config(self.preset, **{**self.size, **params, **fixed})


# The settings a recipe's search leaves open: the quick preset's lr 0.05, warm-up 0.2 and label smoothing 0.2 sit
# inside these ranges, which span what the fast CIFAR recipes use.
RECIPE_SPACE = {"lr": Range(0.005, 0.5, log=True), "warmup": Range(0.0, 0.4), "label_smoothing": Range(0.0, 0.3)}
ONE_PASS = {"epochs": 1, "limit_train": 10_000}  # the quick preset's own size: one pass over 10,000 images

SEARCHES = {
    # The quick preset's recipe: one pass over 10,000 images.
    "quick": Search("quick", ONE_PASS, RECIPE_SPACE, trials=24),
    # The learning rate alone, over two and a half decades: the search whose pruning docs/studies.md measures.
    "lr": Search("quick", ONE_PASS, {"lr": Range(0.003, 1.0, log=True)}, trials=16),
    # The Train tab's run under each time budget, on every training image left beside the split.
    **{budget: Search("quick", {**QUICK_RUN["size"], "budget": budget}, RECIPE_SPACE, trials=trials)
       for budget, trials in (("1m", 16), ("2m", 12), ("5m", 8), ("15m", 6))},
    # Four tiny trials, for tests and a first try.
    "smoke": Search("quick", {"epochs": 2, "limit_train": 192, "batch_size": 32}, {"lr": Range(0.01, 0.5, log=True)},
                    trials=4, val_size=128, probe_size=64, probes=4),
}


def open_search(storage, name: str, search: Search, prune: bool):
    """The study ``name`` in ``storage``, created if need be and bound to ``search`` and to pruning or not."""
    optuna = import_optuna()
    pruner = BehindBeyondNoise() if prune else optuna.pruners.NopPruner()
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True, pruner=pruner)
    bound = {**search.fields(), "prune": prune}
    stored = study.user_attrs.get("search")
    if stored is None:
        study.set_user_attr("search", bound)
    elif stored != bound:
        changed = ", ".join(f"{key} {stored.get(key)} -> {value}" for key, value in bound.items() if stored.get(key) != value)
        raise StorageError(f"the study {name!r} in this storage is another search ({changed}); use another --name")
    return study


class BehindBeyondNoise:
    """A pruner (Optuna calls ``prune(study, trial)``): stop a trial whose best probe so far is behind the median of
    the finished trials' at that probe by more than NOISE_SE standard errors of a probe's score, once the lr's warm-up
    is over and STARTUP_TRIALS trials have finished.

    A probe scores a few dozen to a few hundred images (its cost is held to 5% of the training), so trials of equal
    merit differ by several points at any one probe. Optuna's median and percentile pruners cut there anyway: on the
    lr search they pruned every trial after the first four, lrs as good as the best among those included, and a
    search whose first finished trials are good ones then finishes no other (docs/studies.md)."""

    def prune(self, study, trial) -> bool:
        step = trial.last_step
        if step is None or step < WARMUP_PROBES or not trial.user_attrs.get("probe_images"):
            return False
        complete = import_optuna().trial.TrialState.COMPLETE
        finished = [t.intermediate_values[step] for t in study.get_trials(deepcopy=False, states=(complete,))
                    if step in t.intermediate_values]
        if len(finished) < STARTUP_TRIALS:
            return False
        median = statistics.median(finished)
        noise = NOISE_SE * math.sqrt(median * (1 - median) / trial.user_attrs["probe_images"])
        return max(trial.intermediate_values.values()) < median - noise


class SearchWorker(TrialWorker):
    """One worker of a search: resume a dead worker's trial, else start a new one, until the search has its trials."""

    command = "search"

    def __init__(self, search: Search, options: Options, storage, study):
        super().__init__(options, storage, study)
        self.search = search

    def started(self) -> int:
        """Trials that count: a failed one was queued again as a new trial (or given up on), so it counts no more."""
        return sum(t.state != self.optuna.trial.TrialState.FAIL for t in self.study.get_trials(deepcopy=False))

    def next_trial(self):
        """A waiting trial (a dead or stopped worker's, queued again with its settings and run folder), else a new
        one while the search wants more; None when it has them all."""
        trial = self.claim()
        if trial is not None or self.started() >= self.search.trials:
            return trial
        trial_id = self.storage.create_new_trial(self.study_id)
        number = self.storage.get_trial_number_from_id(trial_id)
        # Seeded by the search's seed and the trial's number: a search is repeatable, workers asking at once propose
        # different settings, and searches of two seeds share no sampler seed (below a million trials).
        seed = self.search.seed * SEED_STRIDE + number
        self.study.sampler = self.optuna.samplers.TPESampler(seed=seed, n_startup_trials=STARTUP_TRIALS)
        self.own(trial_id)
        self.storage.set_trial_user_attr(trial_id, "run_id", f"trial-{number:04d}")
        trial = self.optuna.Trial(self.study, trial_id)
        for name, space in self.search.space.items():
            trial.suggest_float(name, space.low, space.high, log=space.log)
        return trial

    def run(self) -> dict:
        """Train trials until the search has them all and none is running, or a stop is asked for; return the
        results, written after every trial."""
        options, root, data = self.options, Path(self.options.out), None
        while not (options.stop_event is not None and options.stop_event.is_set()):
            self.fail_dead()
            trial = self.next_trial()
            if trial is None:
                if not self.study.get_trials(deepcopy=False, states=(self.optuna.trial.TrialState.RUNNING,)):
                    break
                time.sleep(POLL_S)
                continue
            config = self.search.config_for(self.settings(trial), options.data_dir)
            if options.device:
                config = dataclasses.replace(config, device=options.device)
            try:
                data = load_data(config, resolve_device(config.device)) if data is None else data
            except BaseException:
                self._tell_if_held(trial, self.optuna.trial.TrialState.FAIL, "failed")
                raise
            self.train(trial, config, data, root)
            write_results_file(self.results(), options.results)
        final = self.results()
        write_results_file(final, options.results)
        return final

    def settings(self, trial) -> dict:
        """The trial's proposed settings (a queued-again trial keeps its own)."""
        return {name: trial.params[name] for name in self.search.space}

    def train(self, trial, config, data, root) -> None:
        """Train the trial, reporting each probe to the pruner, and tell the storage how it ended."""
        states = self.optuna.trial.TrialState
        run_id = trial.user_attrs["run_id"]
        stop = PruneStop()
        status = self.train_trial(trial, run_id, config, data, root, stop, [self._reporter(trial, root / run_id, stop)])
        if status == "stopped" and stop.pruned:
            runs.write_status(root / run_id, "stopped", f"pruned by the search after probe {stop.pruned}")
        elif status not in DONE:  # stopped by Ctrl-C or failed: queued again, for this or another worker to resume
            self._fail_and_retry(trial.number)
            return
        ended = "pruned" if stop.pruned else status
        trial.set_user_attr("row", json.loads(json.dumps(row(trial.number, root / run_id, self.settings(trial), ended))))
        if ended == "finished":
            self._tell_if_held(trial, None, ended, value=trial.user_attrs["row"]["final_val_acc"])
        else:  # pruned, or diverged: the sampler ranks it by the probes it reached
            self._tell_if_held(trial, states.PRUNED, ended)

    def _reporter(self, trial, run_dir: Path, stop):
        """A metrics callback: each probe's accuracy is reported at its number (counted on from the probes a resumed
        run logged already), and a trial the pruner gives up on is stopped."""
        count = [sum(r["kind"] == "probe" for r in runs.read_metrics(run_dir))]

        def on_record(record: dict) -> None:
            if record["kind"] != "probe" or stop.is_set():  # a stopped run's last probes tell nothing more
                return
            count[0] += 1
            try:
                if record["probe_images"] != trial.user_attrs.get("probe_images"):
                    trial.set_user_attr("probe_images", record["probe_images"])  # how noisy its probes are
                trial.report(record["probe_acc"], count[0])
                if trial.should_prune():
                    stop.pruned = count[0]
                    stop.set()
            except self.optuna.exceptions.UpdateFinishedTrialError:
                pass  # taken over by another worker, which this worker's watcher stops the run for

        return on_record

    def results(self) -> dict:
        """The results file: the search, every trial that ended (trained on any machine), and the best."""
        states = self.optuna.trial.TrialState
        every = self.study.get_trials(deepcopy=False)
        first = min((t.datetime_start for t in every if t.datetime_start), default=None)
        rows = [{**t.user_attrs["row"], "started_s": (t.datetime_start - first).total_seconds(),
                 "ended_s": (t.datetime_complete - first).total_seconds()}
                for t in every if t.state in (states.COMPLETE, states.PRUNED) and "row" in t.user_attrs]
        return {"experiment": "search", "study": self.study.study_name, "search": self.study.user_attrs.get("search"),
                "best": best(rows), "runs": rows}


class PruneStop(threading.Event):
    """A run's stop event that remembers whether the pruner set it."""

    pruned = 0  # the probe after which the pruner stopped the run; 0: it did not


def row(number: int, run_dir: Path, settings: dict, ended: str) -> dict:
    """A trial's row of the results file: its settings, how it ended, its final validation accuracy (finished
    trials only), the steps it trained (and, under a time budget, the steps it first planned: two trials of one
    budget train as many steps as their machine's pace affords) and its probe curve."""
    run = measured(run_dir.parent, run_dir.name)
    rows = runs.read_metrics(run_dir)
    curve = [{key: r.get(key) for key in ("step", "images", "elapsed_s", "probe_acc")} for r in rows if r["kind"] == "probe"]
    plan = (run["config"] or {}).get("plan")
    return {"run_id": run_dir.name, "trial": number, **settings, "status": ended,
            "final_val_acc": run["final_val_acc"] if ended == "finished" else None,
            "steps": max((r["step"] for r in rows), default=0), **({"planned_steps": plan["steps"]} if plan else {}),
            "elapsed_s": run["elapsed_s"] or (curve[-1]["elapsed_s"] if curve else None), "timed_on": run["timed_on"],
            "probes": curve}


def best(rows: list) -> dict | None:
    """The finished trial with the highest final validation accuracy (the earlier one on a tie)."""
    return max((r for r in rows if r["final_val_acc"] is not None), key=lambda r: r["final_val_acc"], default=None)


def found_s(results: dict, target: float) -> float | None:
    """Seconds from the search's first trial to the end of the first finished trial scoring at least ``target``."""
    return min((r["ended_s"] for r in results["runs"] if (r["final_val_acc"] or 0) >= target), default=None)


def run_search(search: Search, prune: bool, options: Options, url: str | None, name: str) -> dict:
    """One worker of ``search`` on the storage at ``url`` (else the journal in ``options.out``), in the study
    ``name``: the storage is opened, and a study of another search refused, before any image is loaded."""
    def make_folder() -> Path:
        Path(options.out).mkdir(parents=True, exist_ok=True)
        return Path(options.out)

    storage = open_storage_and_folder(url, make_folder)
    study = open_search(storage, name, search, prune)
    return SearchWorker(search, options, storage, study).run()
