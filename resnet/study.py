"""The optimizer study: the published comparisons, rerun under one fixed budget.

Three phases, each chosen by validation accuracy at the final epoch (the test set never chooses):

1. optimizers: Adam, SGD (momentum 0.9), RMSprop and Adagrad at lr 0.5, 0.1 and 0.01, plus 0.001
   for each optimizer whose 0.01 run diverged, as the published study did;
2. dropout: 0.0 .. 0.5 with the best optimizer and lr of phase 1;
3. size: blocks 1-1-1-1, 2-2-2-2 and 3-3-3-3 with the best dropout of phase 2.

Every run is an ordinary run folder under the study folder, named by its settings, so a setting
that two phases share (phase 1's winner is phase 2's dropout 0.1 run) is trained once. Rerunning
skips finished and diverged runs and resumes stopped or interrupted ones from their checkpoint.
Run folders hold checkpoints and stay on the machine that trained them; the results file is what
gets committed, so a fresh checkout continues the study from the finished and diverged runs that
file records (under the same budget) without training them again.
"""

import contextlib
import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from . import runs
from .model import BLOCK_CHOICES, build_model, count_parameters
from .plots import COLORS, LAYOUT, empty_figure
from .config import OPTIMIZERS, ConfigError, make_config
from .train import Trainer, load_data, resolve_device
from .weights import atomic_write_json

DONE = ("finished", "diverged")
BUDGET_FILE = "budget.json"
CURVE_KEYS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc")


@dataclass(frozen=True)
class Budget:
    """What every run gets: the same images, epochs, batch and constant learning rate."""

    train_size: int = 10_000  # the first images of the training set left after the validation split
    val_size: int = 5_000  # a seeded split of the training set; the only thing the study chooses by
    epochs: int = 5
    batch_size: int = 128
    test_size: int = 1_000  # the Trainer scores these test images each epoch; the study never reads them
    seed: int = 0


@dataclass(frozen=True)
class Design:
    """What the study compares; the defaults are the published grid."""

    optimizers: tuple = OPTIMIZERS
    lrs: tuple = (0.5, 0.1, 0.01)
    fallbacks: tuple = ((0.01, 0.001),)  # (lr, smaller lr to try for an optimizer whose run at lr diverged)
    dropout: float = 0.1  # the published model's dropout, kept while the optimizers are compared
    dropouts: tuple = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
    blocks: tuple = (1, 1, 1, 1)  # the published size, kept while optimizers and dropout are compared
    sizes: tuple = BLOCK_CHOICES


PUBLISHED = Design()


@dataclass(frozen=True)
class Planned:
    optimizer: str
    lr: float
    dropout: float
    blocks: tuple
    phases: tuple  # every phase that compares this run

    @property
    def run_id(self) -> str:
        return f"{self.optimizer}-lr{_tag(self.lr)}-drop{_tag(self.dropout)}-b{''.join(map(str, self.blocks))}"


def _tag(number: float) -> str:
    """A number as run-id characters (a-z, 0-9, '-'): 0.01 -> 0p01, 1e-05 -> 1e-05."""
    return f"{number:g}".replace(".", "p").replace("+", "")


def config_for(planned: Planned, budget: Budget, data_dir=None):
    # The published recipe (constant lr, its crop and normalization) at the study's budget.
    # Momentum is SGD's 0.9; RMSprop takes it too in our trainer, so it gets torch's default 0 there.
    return make_config(
        "original", optimizer=planned.optimizer, lr=planned.lr, momentum=0.9 if planned.optimizer == "sgd" else 0.0,
        dropout=planned.dropout, blocks=tuple(planned.blocks), batch_size=budget.batch_size, epochs=budget.epochs,
        val_size=budget.val_size, limit_train=budget.train_size, limit_test=budget.test_size, seed=budget.seed,
        data_dir=str(data_dir) if data_dir else None,
    )


# ---- reading what the study folder holds ----------------------------------------------------

def has_folder(root, run_id: str) -> bool:
    return (Path(root) / run_id / runs.CONFIG).is_file()


def run_status(root, run_id: str, recorded=None) -> str:
    """The run folder's status; else the status a results file recorded (``recorded``); else ``pending``."""
    if has_folder(root, run_id):
        return runs.read_status(Path(root) / run_id)["status"]
    row = (recorded or {}).get(run_id)
    return row["status"] if row else "pending"


def recorded_runs(results_path, budget) -> dict:
    """The finished and diverged rows of an earlier results file, by run id (empty where there is none).

    A results file written under another budget raises ConfigError rather than being mixed with,
    or overwritten by, runs trained under this one.
    """
    path = Path(results_path) if results_path else None
    if path is None or not path.is_file():
        return {}
    try:
        stored = json.loads(path.read_text())
        changed, rows = budget_changes(stored["budget"], budget), stored["runs"]
        done = {row["run_id"]: row for row in rows if row["status"] in DONE}
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        raise ConfigError(f"{path} is not a results file (a budget and a list of runs); pass another --results") from None
    if changed:
        raise ConfigError(f"{path} holds results of another budget ({changed}); use the same options or another --results")
    return done


def measured(root, run_id: str) -> dict:
    """What a run folder measured: status, per-epoch curve, final validation score, speeds, wall time, device."""
    run_dir = Path(root) / run_id
    status = run_status(root, run_id)
    # Keyed by epoch: a run killed between writing an epoch's record and its checkpoint repeats that epoch.
    by_epoch = {r["epoch"]: r for r in runs.read_metrics(run_dir) if r["kind"] == "epoch"}
    curve = [{key: record.get(key) for key in CURVE_KEYS} for _, record in sorted(by_epoch.items())]
    final = by_epoch[max(by_epoch)] if status == "finished" and by_epoch else {}
    return {
        "status": status,
        "curve": curve,
        "final_val_acc": final.get("val_acc"),
        "final_val_loss": final.get("val_loss"),
        "images_per_s": [r["images_per_s"] for r in by_epoch.values() if r.get("images_per_s")],
        "elapsed_s": final.get("elapsed_s"),
        "timed_on": runs.trained_on(run_dir),
    }


def run_result(root, planned: Planned, budget: Budget, recorded=None) -> dict:
    """The run's row of study.json: settings, outcome, final validation score, cost and curve.

    A run with no folder here but a row in ``recorded`` keeps that row (it was measured elsewhere).
    """
    if not has_folder(root, planned.run_id) and planned.run_id in (recorded or {}):
        return {**recorded[planned.run_id], "phases": list(planned.phases)}
    run = measured(root, planned.run_id)
    images_per_epoch = budget.train_size // budget.batch_size * budget.batch_size
    speeds = run["images_per_s"]
    return {
        "run_id": planned.run_id,
        "phases": list(planned.phases),
        "optimizer": planned.optimizer,
        "lr": planned.lr,
        "dropout": planned.dropout,
        "blocks": list(planned.blocks),
        "status": run["status"],
        "diverged": run["status"] == "diverged",
        "epochs_done": len(run["curve"]),
        "final_val_acc": run["final_val_acc"],
        "final_val_loss": run["final_val_loss"],
        "train_s_per_epoch": sum(images_per_epoch / s for s in speeds) / len(speeds) if speeds else None,
        "timed_on": run["timed_on"],
        "params": _parameters(planned.blocks),
        "curve": run["curve"],
        "config": dataclasses.asdict(config_for(planned, budget)),
    }


@functools.lru_cache(maxsize=None)
def _parameters(blocks: tuple) -> int:
    return count_parameters(build_model(blocks))


def best(results: list) -> dict | None:
    """The finished run with the highest final validation accuracy (the earlier one on a tie)."""
    finished = [r for r in results if r["status"] == "finished" and r["final_val_acc"] is not None]
    return max(finished, key=lambda r: r["final_val_acc"], default=None)


def phase_choice(members: list) -> dict | None:
    """What a phase hands on: its best run, once every run of the phase is done."""
    if not members or any(r["status"] not in DONE for r in members):
        return None
    return best(members)


# ---- the plan -------------------------------------------------------------------------------

def plan(root, budget: Budget, design: Design = PUBLISHED, recorded=None) -> tuple:
    """(runs known so far, in order; why later phases are not planned yet, or None).

    Phases 2 and 3 exist only once the phase before them is done, since they build on its winner.
    """
    planned = {}

    def add(phase, optimizer, lr, dropout, blocks):
        run = Planned(optimizer, lr, dropout, tuple(blocks), (phase,))
        earlier = planned.get(run.run_id)
        planned[run.run_id] = run if earlier is None else dataclasses.replace(earlier, phases=earlier.phases + (phase,))

    def phase_winner(phase):
        members = [run_result(root, p, budget, recorded) for p in planned.values() if phase in p.phases]
        winner = phase_choice(members)
        if winner is None and any(r["status"] not in DONE for r in members):
            return None, f"the {phase} phase is not done yet"
        return winner, None if winner else f"every run of the {phase} phase diverged"

    for optimizer in design.optimizers:
        for lr in design.lrs:
            add("optimizers", optimizer, lr, design.dropout, design.blocks)
        for lr, smaller in design.fallbacks:
            if run_status(root, Planned(optimizer, lr, design.dropout, design.blocks, ()).run_id, recorded) == "diverged":
                add("optimizers", optimizer, smaller, design.dropout, design.blocks)
    winner, waiting = phase_winner("optimizers")
    if winner is None:
        return list(planned.values()), f"{waiting}: the dropout and size phases build on its best optimizer and lr"
    for dropout in design.dropouts:
        add("dropout", winner["optimizer"], winner["lr"], dropout, design.blocks)
    winner, waiting = phase_winner("dropout")
    if winner is None:
        return list(planned.values()), f"{waiting}: the size phase builds on its best dropout"
    for blocks in design.sizes:
        add("size", winner["optimizer"], winner["lr"], winner["dropout"], blocks)
    return list(planned.values()), None


def collect(root, budget: Budget, design: Design = PUBLISHED, recorded=None) -> dict:
    """Everything study.json holds, read from the study folder (and ``recorded`` rows it lacks)."""
    planned, waiting = plan(root, budget, design, recorded)
    results = [run_result(root, p, budget, recorded) for p in planned]
    return {
        "budget": {
            **dataclasses.asdict(budget),
            "schedule": "constant lr, the published recipe otherwise (its crop, normalization, Adam/RMSprop/Adagrad defaults)",
            "score": "validation accuracy at the final epoch; the test set is never used to choose",
            "train_s_per_epoch": "training time only, validation excluded",
        },
        "design": dataclasses.asdict(design),
        "choices": {phase: _choice_id(results, phase) for phase in ("optimizers", "dropout", "size")},
        "waiting": waiting,
        "runs": results,
    }


def _choice_id(results: list, phase: str) -> str | None:
    choice = phase_choice([r for r in results if phase in r["phases"]])
    return choice["run_id"] if choice else None


# ---- running it -----------------------------------------------------------------------------

def budget_changes(stored: dict, budget) -> str:
    """What differs between a budget read back and ``budget`` ('epochs 3 -> 5, ...'); '' where nothing does."""
    return ", ".join(f"{k} {stored.get(k)} -> {v}" for k, v in dataclasses.asdict(budget).items() if stored.get(k) != v)


def check_budget(root, budget) -> None:
    """A study folder holds one budget: comparing runs trained under different ones would mislead."""
    path = Path(root) / BUDGET_FILE
    if not path.is_file():
        return
    try:
        changed = budget_changes(json.loads(path.read_text()), budget)
    except (ValueError, UnicodeDecodeError, AttributeError):
        raise ConfigError(f"{path} is not a budget file; use another --out") from None
    if changed:
        raise ConfigError(f"{root} holds runs of another budget ({changed}); use the same options or another --out")


def open_folder(root, budget) -> Path:
    """The study folder, created if need be and bound to ``budget`` (refused if it holds another)."""
    root = Path(root)
    check_budget(root, budget)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(root / BUDGET_FILE, dataclasses.asdict(budget))
    return root


def load_study_data(config, budget: Budget):
    """The images every run shares: the split and the subset depend only on the budget's sizes and seed."""
    data = load_data(config, resolve_device(config.device))
    if len(data.train_x) < budget.train_size:
        raise ConfigError(f"only {len(data.train_x)} training images remain after the {budget.val_size}-image validation split; "
                          f"lower --train-size or --val-size")
    return data


def train_run(root, run_id: str, config, data, stop_event=None, watch=None, command: str = "") -> None:
    """Train one run folder of a study-like folder on shared in-memory data, resuming it if it stopped.

    ``watch(run_id, trainer, resume)`` may return a context manager wrapped around the run (the
    CLI's progress bar).
    """
    run_dir = Path(root) / run_id
    status = runs.read_status(run_dir)
    if status["status"] == "running":
        raise runs.RunError(f"{run_id} is being trained by process {status.get('pid')}; wait for it or stop it first")
    resume = status["status"] in runs.RESUMABLE and (run_dir / runs.CHECKPOINT).is_file()
    trainer = Trainer(config, run_dir, stop_event=stop_event, data=data, command=command)
    with watch(run_id, trainer, resume) if watch else contextlib.nullcontext():
        trainer.run(resume=resume)


def train_in_turn(root, budget, next_run, results, write, stop_event=None, watch=None, command: str = "") -> dict:
    """The loop of the study and the ablation: train ``next_run()`` (a run id and its config; None when
    none is left) until none is left or a stop is asked, writing ``results()`` after every run.

    The images are loaded once, for the first run that needs them. ``watch`` is train_run's. A stop
    (``stop_event``) leaves the current run resumable and ends the loop.
    """
    data = None
    while (todo := next_run()) is not None:
        run_id, config = todo
        if data is None:
            data = load_study_data(config, budget)
        train_run(root, run_id, config, data, stop_event, watch, command)
        write(results())
        if stop_event is not None and stop_event.is_set():
            break
    final = results()
    write(final)
    return final


def run_study(root, budget: Budget, design: Design = PUBLISHED, data_dir=None, results_path=None, only: str = "",
              stop_event=None, watch=None) -> dict:
    """Train every planned run not done yet, one after another, then return (and write) the results.

    The plan is made again after every run: a finished phase decides what the next one trains.
    """
    recorded = recorded_runs(results_path, budget)
    root = open_folder(root, budget)

    def next_run():
        planned, _ = plan(root, budget, design, recorded)
        todo = (p for p in planned if p.run_id.startswith(only) and run_status(root, p.run_id, recorded) not in DONE)
        first = next(todo, None)
        return (first.run_id, config_for(first, budget, data_dir)) if first else None

    return train_in_turn(root, budget, next_run, lambda: collect(root, budget, design, recorded),
                         lambda results: write_results(results, results_path), stop_event, watch,
                         command=f"python -m resnet study --out {root}")


# ---- figures --------------------------------------------------------------------------------

def _members(results: dict, phase: str) -> list:
    return [r for r in results.get("runs", []) if phase in r["phases"]]


def _percent(value) -> str:
    return f"{value:.1%}" if value is not None else ""


def heatmap_figure(results: dict) -> go.Figure:
    """Final validation accuracy for each optimizer (rows) and learning rate (columns)."""
    members = _members(results, "optimizers")
    if not members:
        return empty_figure("no optimizer runs yet")
    optimizers = list(dict.fromkeys(r["optimizer"] for r in members))
    lrs = sorted({r["lr"] for r in members}, reverse=True)
    cell = {(r["optimizer"], r["lr"]): r for r in members}
    z = [[(cell.get((o, lr)) or {}).get("final_val_acc") for lr in lrs] for o in optimizers]
    text = [[_cell_text(cell.get((o, lr))) for lr in lrs] for o in optimizers]
    figure = go.Figure(go.Heatmap(z=z, x=[f"{lr:g}" for lr in lrs], y=optimizers, text=text, texttemplate="%{text}",
                                  colorscale="Viridis", zmin=0, zmax=1, colorbar=dict(title="val acc", tickformat=".0%")),
                       layout=LAYOUT)
    figure.update_layout(title="Final validation accuracy per optimizer and learning rate", xaxis_title="learning rate")
    figure.update_xaxes(type="category")
    figure.update_yaxes(autorange="reversed")
    return figure


def _cell_text(result) -> str:
    if result is None:
        return "not run"
    if result["status"] == "finished":
        return _percent(result["final_val_acc"])
    return result["status"]


def curves_figure(results: dict) -> go.Figure:
    """Validation accuracy per epoch of each optimizer at its best learning rate."""
    members = _members(results, "optimizers")
    figure = go.Figure(layout=LAYOUT)
    for index, optimizer in enumerate(dict.fromkeys(r["optimizer"] for r in members)):
        winner = best([r for r in members if r["optimizer"] == optimizer])
        if winner is None:
            continue
        points = [(c["epoch"], c["val_acc"]) for c in winner["curve"] if c.get("val_acc") is not None]
        x, y = zip(*points)
        figure.add_scatter(x=x, y=y, mode="lines+markers", name=f"{optimizer} lr={winner['lr']:g}",
                           line=dict(color=COLORS[index % len(COLORS)]))
    if not figure.data:
        return empty_figure("no optimizer run has finished yet")
    figure.update_layout(title="Validation accuracy per epoch, each optimizer at its best lr", xaxis_title="epoch",
                         yaxis_title="val accuracy")
    figure.update_yaxes(tickformat=".0%")
    return figure


def dropout_figure(results: dict) -> go.Figure:
    """Final validation accuracy against dropout (best optimizer and lr)."""
    members = sorted((r for r in _members(results, "dropout") if r["status"] == "finished"), key=lambda r: r["dropout"])
    if not members:
        return empty_figure("the dropout phase has no finished run yet")
    first = members[0]
    figure = go.Figure(go.Scatter(x=[r["dropout"] for r in members], y=[r["final_val_acc"] for r in members],
                                  text=[_percent(r["final_val_acc"]) for r in members], mode="lines+markers+text",
                                  textposition="top center", line=dict(color=COLORS[0])), layout=LAYOUT)
    figure.update_layout(title=f"Final validation accuracy against dropout ({first['optimizer']} lr={first['lr']:g})",
                         xaxis_title="dropout", yaxis_title="val accuracy")
    figure.update_yaxes(tickformat=".0%")
    return figure


def size_figure(results: dict) -> go.Figure:
    """Final validation accuracy (bars) and training seconds per epoch (line) for each model size."""
    members = [r for r in _members(results, "size") if r["status"] == "finished"]
    if not members:
        return empty_figure("the size phase has no finished run yet")
    members.sort(key=lambda r: r["params"])
    labels = [f"{'-'.join(map(str, r['blocks']))} ({r['params'] / 1e6:.1f}M)" for r in members]
    figure = make_subplots(specs=[[{"secondary_y": True}]])
    figure.add_bar(x=labels, y=[r["final_val_acc"] for r in members], name="val accuracy", marker_color=COLORS[0],
                   text=[_percent(r["final_val_acc"]) for r in members])
    machines = {r.get("timed_on") for r in members}
    if len(machines) == 1 and None not in machines:  # seconds from two machines would compare the machines
        figure.add_scatter(x=labels, y=[r["train_s_per_epoch"] for r in members], name="train s / epoch",
                           mode="lines+markers", line=dict(color=COLORS[1]), secondary_y=True)
        title = f"Model size: final validation accuracy and training time per epoch ({machines.pop()})"
    else:
        title = "Model size: final validation accuracy (sizes timed on different machines: no time line)"
    figure.update_layout(**LAYOUT, title=title)
    figure.update_xaxes(title_text="blocks per stage (parameters)")
    figure.update_yaxes(title_text="val accuracy", tickformat=".0%", secondary_y=False)
    figure.update_yaxes(title_text="seconds per epoch", secondary_y=True)
    return figure


FIGURES = {"heatmap": heatmap_figure, "curves": curves_figure, "dropout": dropout_figure, "size": size_figure}


def write_json_results(results: dict, path) -> None:
    """The results file (nothing when ``path`` is None), its folder created if need be."""
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, results)


def write_results(results: dict, path) -> None:
    """study.json, and beside it one HTML page per figure (study-heatmap.html, ...)."""
    if path is None:
        return
    path = Path(path)
    write_json_results(results, path)
    for name, make in FIGURES.items():
        make(results).write_html(path.with_name(f"{path.stem}-{name}.html"), include_plotlyjs="cdn")
