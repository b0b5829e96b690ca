"""The optimizer study: the published comparisons, rerun under one fixed budget.

Three phases, each chosen by validation accuracy at the final epoch (the test set never chooses):

1. optimizers: Adam, SGD (momentum 0.9), RMSprop and Adagrad at lr 0.5, 0.1 and 0.01, plus 0.001
   for each optimizer whose 0.01 run diverged, as the published study did;
2. dropout: 0.0 .. 0.5 with the best optimizer and lr of phase 1;
3. size: blocks 1-1-1-1, 2-2-2-2 and 3-3-3-3 with the best dropout of phase 2.

Every run is a run folder under the study folder, named by its settings, so a setting that two
phases share (phase 1's winner is phase 2's dropout 0.1 run) is trained once. Rerunning skips done
runs and resumes stopped ones, and a fresh checkout continues from the committed results file
(resnet.experiments.runner and .storage: one engine for the study, the ablation and time-to-accuracy).

Every process running the command is a worker: those sharing a storage (the journal file in --out on one
machine, or a PostgreSQL --storage for many) each take the next run no one holds, and take over the run of a
worker that died (resnet.experiments.storage; docs/studies.md).
"""

import collections
import dataclasses
import functools
from dataclasses import dataclass

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..config import OPTIMIZERS, make_config
from ..model import BLOCK_CHOICES, build_model, count_parameters
from ..plots import COLORS, LAYOUT, empty_figure, series_style
from ..train import steps_in_epoch
from .runner import DONE, Budget, Experiment, Options, counted

PHASES = ("optimizers", "dropout", "size")
COMPARED = {"optimizers": ("optimizer", "lr"), "dropout": ("dropout",), "size": ("blocks",)}  # what each phase varies


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


@functools.cache
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
                                  colorscale="Viridis", zmin=0, zmax=1, colorbar={"title": "val acc", "tickformat": ".0%"}),
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
        x, y = zip(*points, strict=True)
        style = series_style(index)
        figure.add_scatter(x=x, y=y, mode="lines+markers", name=f"{optimizer} lr={winner['lr']:g}",
                           line={"color": style["color"]}, marker={"symbol": style["symbol"]})
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
                                  textposition="top center", cliponaxis=False, line={"color": COLORS[0]}), layout=LAYOUT)
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
                           mode="lines+markers", line={"color": COLORS[1]}, secondary_y=True)
        title, subtitle = "Model size: final validation accuracy and training time per epoch", f"timed on {machines.pop()}"
    else:
        title, subtitle = "Model size: final validation accuracy", "the sizes were timed on different machines: no time line"
    # The subtitle carries the detail, so the title fits a figure half the page wide
    figure.update_layout(**LAYOUT, title={"text": title, "subtitle": {"text": subtitle}})
    figure.update_xaxes(title_text="blocks per stage (parameters)")
    figure.update_yaxes(title_text="val accuracy", tickformat=".0%", secondary_y=False)
    figure.update_yaxes(title_text="seconds per epoch", secondary_y=True)
    return figure


FIGURES = {"heatmap": heatmap_figure, "curves": curves_figure, "dropout": dropout_figure, "size": size_figure}


def figures(results: dict) -> list:
    """The figures a page shows of the results: FIGURES' four, in order."""
    return [make(results) for make in FIGURES.values()]


# ---- the results in words ------------------------------------------------------------------

def note(results: dict) -> str:
    """What the study measures, in words, from the budget the results file records."""
    budget = results.get("budget") or {}
    text = (f"Every run trains the published recipe at a constant learning rate on the same {counted(budget, 'train_size')} "
            f"images for {budget.get('epochs', '?')} epochs, batch {budget.get('batch_size', '?')}; the score is validation "
            f"accuracy at the final epoch on {counted(budget, 'val_size')} images carved from the training set (the test set "
            "never chooses). Three phases, each on the choice of the one before: the optimizers at each learning rate, "
            "then dropout, then the number of blocks per stage.")
    return text + (f" Not done yet: {results['waiting']}." if results.get("waiting") else "")


def table(results: dict) -> list:
    """One row per phase: the settings it compares, how its runs ended, and the run it chose with that run's final
    validation accuracy (blank while the phase is not done)."""
    by_id = {r["run_id"]: r for r in results.get("runs", [])}
    choices = results.get("choices") or {}
    rows = []
    for phase in PHASES:
        members = _members(results, phase)
        if not members:
            continue
        winner = by_id.get(choices.get(phase))
        ended = collections.Counter(r["status"] for r in members).most_common()
        rows.append({
            "phase": phase,
            "compares": "; ".join(f"{key} {_listed(members, key)}" for key in COMPARED[phase]),
            "runs": ", ".join(f"{count} {status}" for status, count in ended),
            "chosen": ", ".join(f"{key} {_setting(winner[key])}" for key in COMPARED[phase]) if winner else "",
            "val accuracy": _percent(winner["final_val_acc"]) if winner else "",
        })
    return rows


def _listed(members: list, key: str) -> str:
    """The values of ``key`` that ``members`` compare: numbers and sizes in order, names as they ran."""
    ordered = members if isinstance(members[0][key], str) else sorted(members, key=lambda r: r[key])
    return ", ".join(dict.fromkeys(_setting(r[key]) for r in ordered))


def _setting(value) -> str:
    return "-".join(map(str, value)) if isinstance(value, list) else f"{value:g}" if isinstance(value, float) else str(value)


# ---- the study as an experiment ------------------------------------------------------------

@dataclass(frozen=True)
class Study(Experiment):
    """The three phases of ``design`` under the study's budget."""

    design: Design = PUBLISHED

    name = "study"
    budget = Budget(batch_size=128)
    defaults = Options(out="study-runs", results="results/study.json")
    notes = {
        "schedule": "constant lr, the published recipe otherwise (its crop, normalization, Adam/RMSprop/Adagrad defaults)",
        "score": "validation accuracy at the final epoch; the test set is never used to choose",
        "train_s_per_epoch": "training time only, validation excluded",
    }
    pages = FIGURES

    def plan(self, root, budget: Budget, recorded: dict) -> tuple:
        """Phases 2 and 3 are planned only once the phase before them is done, since they build on its winner."""
        design, planned = self.design, {}

        def add(phase, optimizer, lr, dropout, blocks):
            run = Planned(optimizer, lr, dropout, tuple(blocks), (phase,))
            earlier = planned.get(run.run_id)
            planned[run.run_id] = run if earlier is None else dataclasses.replace(earlier, phases=earlier.phases + (phase,))

        def phase_winner(phase):
            members = [self.result(root, p, budget, recorded) for p in planned.values() if phase in p.phases]
            winner = phase_choice(members)
            if winner is None and any(r["status"] not in DONE for r in members):
                return None, f"the {phase} phase is not done yet"
            return winner, None if winner else f"every run of the {phase} phase diverged"

        for optimizer in design.optimizers:
            for lr in design.lrs:
                add("optimizers", optimizer, lr, design.dropout, design.blocks)
            for lr, smaller in design.fallbacks:
                if self.status(root, Planned(optimizer, lr, design.dropout, design.blocks, ()).run_id, recorded) == "diverged":
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

    def config_for(self, planned: Planned, budget: Budget, data_dir=None):
        # The published recipe (constant lr, its crop and normalization) at the study's budget.
        # Momentum is SGD's 0.9; RMSprop takes it too in our trainer, so it gets torch's default 0 there.
        return make_config("original", optimizer=planned.optimizer, lr=planned.lr,
                           momentum=0.9 if planned.optimizer == "sgd" else 0.0, dropout=planned.dropout,
                           blocks=tuple(planned.blocks), **budget.settings(data_dir))

    def row(self, planned: Planned, run: dict, budget: Budget) -> dict:
        """Settings, outcome, final validation score, cost and curve."""
        images_per_epoch = steps_in_epoch(budget.train_size, budget.batch_size) * budget.batch_size
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
            "config": dataclasses.asdict(self.config_for(planned, budget)),
        }

    def from_plan(self, planned: Planned) -> dict:
        return {"phases": list(planned.phases)}  # a later phase can take up a run recorded by an earlier one

    def summary(self, rows: list, waiting) -> dict:
        choices = {phase: phase_choice([r for r in rows if phase in r["phases"]]) for phase in PHASES}
        return {"design": dataclasses.asdict(self.design), "choices": {p: c and c["run_id"] for p, c in choices.items()},
                "waiting": waiting}


STUDY = Study()


class SmokeStudy(Study):
    """A plan small enough for tests to drive the real command: the four optimizers at one lr on 256 images for
    one epoch. Its later phases add no run: the winner's dropout and size are the ones it trained with."""

    budget = Budget(train_size=256, val_size=64, epochs=1, batch_size=32, test_size=20)
    defaults = Options(out="study-smoke", results="study-smoke/study.json")


SMOKE = SmokeStudy(design=Design(lrs=(0.01,), fallbacks=(), dropouts=(PUBLISHED.dropout,), sizes=(PUBLISHED.blocks,)))
