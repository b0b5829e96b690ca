"""Time to accuracy: the wall time, training images and FLOPs each recipe takes to reach 90, 93 and 94 %.

Each recipe trains once on the training images left beside a seeded validation split carved from
the training set, and is scored on that split in eval mode at every epoch; the test set is never
scored, so these runs may choose the recipe. For each target a recipe's row gives the first epoch
whose validation accuracy reaches it: the run's clock at that epoch's end, the training images
seen and the FLOPs spent (resnet.flops). The clock counts the training steps, each epoch's
validation pass and checkpoint writes; process start, loading the data and the stem's whitening
come before it starts. Each epoch is scored in the trainer's evaluation precision (bf16 autocast
where the hardware has it), the last one too: the final validation figure is that epoch's (the cards
of the runs recorded here hold an fp32 score of the same weights). Wall times compare only within one machine,
which each row names. Rerunning skips finished runs and resumes interrupted ones
(resnet.experiments.runner). Every process running the command is a worker that takes the next run no
one holds from the storage its workers share (resnet.experiments.storage; docs/studies.md).
"""

import dataclasses
from dataclasses import dataclass

import plotly.graph_objects as go

from ..budget import describe_duration
from ..config import config_from_dict, make_config
from ..flops import steps_per_epoch, training_flops
from ..plots import LAYOUT, empty_figure, series_style
from .runner import Budget, Experiment, Options, counted, mean_speed

TARGETS = (0.90, 0.93, 0.94)
BASELINE = "fast"
# Each recipe is the fast preset with these changes; the first is the preset itself, whose FLOPs the others
# are measured against. Every candidate has a whitened stem (+3.5 points in the ablation) and spends at most half
# of the preset's FLOPs, in one of three ways: fewer epochs at full size; a long 24 px phase (0.56x an image);
# or half the steps at 16 px (0.25x) and a quarter at 24, which keeps nearly every epoch but sees 32 px only
# for the last quarter. short-light is short-whiten with half the translation: a 15-epoch run still gains on its
# training images at the end (95% with label smoothing), so making them harder may cost more than the overfitting
# it prevents; it gained 0.74 points, so mid-light and lowres-light put the lighter crop on the two longer schedules.
# Both gained again (+1.02 and +0.62) and ended level; lowres-long-light asks whether more, cheaper epochs help
# further (60% of 32 epochs at 16 px, 20% at 24, the same FLOPs): it ended 0.46 points lower, so fewer 32 px epochs
# at the end cost more than the extra low-resolution epochs buy. mid-light-b128 keeps mid-light's FLOPs and its
# gradient noise (lr / batch) but takes four times the steps at a quarter of the batch: a run this short is limited
# by how many updates it makes, and BatchNorm statistics over 128 images instead of 512 are noisier, the
# regularization "ghost" batch norm adds on purpose. It ended 0.18 points below mid-light with the same training
# curve, so the update count is not the limit. mid-light-b128-frozen-ema adds the two tricks of Page's list it lacked:
# BatchNorm scales frozen at 1 with a faster lr on the shifts, and a weight average over the 32 px phase, started
# once the BatchNorm running statistics have followed the switch (the average of the ablation, started at the first
# step, cost 11 points at its short budget). It ended level with mid-light-b128 (93.14%): the average led over the
# 32 px epochs, but at the end of a one-cycle schedule the last weights are already an average. mid-light-half-lr
# halves the lr per image, the one setting no recipe has moved: 0.4 at batch 512 is Page's value for his ResNet-9 over
# 24 epochs, and mid-light's validation accuracy fell by 10 or more points at several epochs of its peak-lr phase.
# It fitted the training images faster but ended 0.98 points below mid-light, so mid-light-double-lr tries the other
# side, 0.8 (weight decay, coupled to the lr, doubles its pull too): it fitted more slowly and ended 0.28 points below
# mid-light, so 0.4 is at or near the best peak lr for this schedule. Of the schedules, the ones with fewer 32 px
# epochs lost most (6.4 of them: 0.46 points below 7.25); lowres-light-more-32px keeps 10 epochs at 32 px, with 10 at
# 16 px and 4 at 24 before them, 24 epochs at the same FLOPs. It ended 0.34 points below lowres-light (93.02%), so
# how the budget is split between resolutions moves the result less than the split's sampling error (about 0.36
# points). mid-light-seed1 repeats mid-light at another seed (same validation split) to measure how far two runs of
# one recipe land apart, the yardstick for the 0.2 to 0.5 point differences between the recipes above: it ended
# 0.40 points below mid-light (92.94%), so one run of each cannot rank them.
# The recipe each mid-light-* candidate changes one or two things of.
MID_LIGHT = {"whiten_stem": True, "resolution": "24:0.6", "epochs": 20, "augment": "light"}
RECIPES = {
    BASELINE: {},
    "short-whiten": {"whiten_stem": True, "epochs": 15},
    "mid-whiten": {"whiten_stem": True, "resolution": "24:0.6", "epochs": 20},
    "lowres-whiten": {"whiten_stem": True, "resolution": "16:0.5,24:0.75", "epochs": 29},
    "short-light": {"whiten_stem": True, "epochs": 15, "augment": "light"},
    "mid-light": MID_LIGHT,
    "lowres-light": {"whiten_stem": True, "resolution": "16:0.5,24:0.75", "epochs": 29, "augment": "light"},
    "lowres-long-light": {"whiten_stem": True, "resolution": "16:0.6,24:0.8", "epochs": 32, "augment": "light"},
    "mid-light-b128": {**MID_LIGHT, "batch_size": 128, "lr": 0.1},
    "mid-light-b128-frozen-ema": {**MID_LIGHT, "batch_size": 128, "lr": 0.1, "freeze_bn_scales": True, "bias_lr_scale": 4.0,
                                  "ema": 0.999, "ema_start": 0.62},
    "mid-light-half-lr": {**MID_LIGHT, "lr": 0.2},
    "mid-light-double-lr": {**MID_LIGHT, "lr": 0.8},
    "lowres-light-more-32px": {"whiten_stem": True, "resolution": "16:0.417,24:0.583", "epochs": 24, "augment": "light"},
    "mid-light-seed1": {**MID_LIGHT, "seed": 1},
}


@dataclass(frozen=True)
class Recipe:
    run_id: str
    change: dict


@dataclass(frozen=True)
class TimeToAccuracy(Experiment):
    """Every one of ``recipes`` once, at the budget's seed, with its own epochs, batch and schedule."""

    recipes: dict = dataclasses.field(default_factory=lambda: RECIPES)

    name = "time-to-accuracy"
    # Every training image but the 5,000 held out; each recipe keeps its own epochs (epochs=None).
    budget = Budget(train_size=45_000, val_size=5_000, epochs=None)
    defaults = Options(out="time-to-accuracy-runs", results="results/time-to-accuracy.json")
    notes = {"score": "validation accuracy at each epoch, eval mode; the test set is never scored",
             "targets": list(TARGETS),
             "flops": "forward and backward of the convolutions and the linear layer (resnet.flops), at each step's resolution"}

    pages = {"curves": lambda results: figure(results)}

    def plan(self, root, budget: Budget, recorded: dict) -> tuple:
        return [Recipe(name, change) for name, change in self.recipes.items()], None

    def config_for(self, recipe: Recipe, budget: Budget, data_dir=None):
        return make_config("fast", **{**budget.settings(data_dir), **recipe.change})

    def row(self, recipe: Recipe, run: dict, budget: Budget) -> dict:
        """Its change, outcome, FLOPs, final validation score, and when it first reached each target."""
        speed = mean_speed(run.pop("images_per_s"))  # before **run below, so the row keeps only the mean
        # What the folder trained with: a recipe edited since then does not rewrite an old run's FLOPs.
        config = config_from_dict(run["config"]) if run["config"] else self.config_for(recipe, budget)
        per_epoch = steps_per_epoch(config)
        run["curve"] = [{**point, "flops": training_flops(config, point["epoch"] * per_epoch)} for point in run["curve"]]
        return {
            "run_id": recipe.run_id,
            "change": recipe.change,
            **run,
            "flops": training_flops(config),
            "reached": {f"{target:.0%}": reached(run["curve"], target) for target in TARGETS},
            "train_images_per_s": speed,
            "config": dataclasses.asdict(config),
        }

    def chosen(self, only):
        """``only``: recipe names (all, where it is empty)."""
        return lambda run_id: not only or run_id in only


def reached(curve: list, target: float) -> dict | None:
    """The first epoch of ``curve`` whose validation accuracy reaches ``target``: its epoch, wall time, training
    images and FLOPs so far; None where no epoch does."""
    return next(({key: point[key] for key in ("epoch", "elapsed_s", "images", "flops")} for point in curve
                 if point.get("val_acc") is not None and point["val_acc"] >= target), None)


TIME_TO_ACCURACY = TimeToAccuracy()


def table(results: dict) -> list:
    """One row per recipe: its change, FLOPs against the baseline's, final validation accuracy, and for each
    target the wall time, images and PFLOPs to it (or why there is none), and the machine it ran on."""
    rows = results.get("runs", [])
    baseline = next((r["flops"] for r in rows if r["run_id"] == BASELINE), None)
    table = []
    for run in rows:
        row = {
            "recipe": run["run_id"],
            "change": ", ".join(f"{k}={v}" for k, v in run["change"].items()) or "none: the fast preset",
            "PFLOPs": f"{run['flops'] / 1e15:.2f}" + (f" ({run['flops'] / baseline:.2f}x)" if baseline else ""),
            "final val": f"{run['final_val_acc']:.2%}" if run["final_val_acc"] is not None else run["status"],
        }
        for target, hit in run["reached"].items():
            row[f"to {target}"] = (f"{describe_duration(hit['elapsed_s'])}, {hit['images'] / 1e6:.2f}M images, "
                                   f"{hit['flops'] / 1e15:.2f} PFLOPs (epoch {hit['epoch']})") if hit else \
                ("not reached" if run["status"] == "finished" else run["status"])
        row["machine"] = run["timed_on"] or ""
        table.append(row)
    return table


def note(results: dict) -> str:
    """What the table measures, in words, from the budget the results file records."""
    budget = results.get("budget") or {}
    return (f"Each recipe trains once on {counted(budget, 'train_size')} training images and is scored at every epoch on "
            f"{counted(budget, 'val_size')} validation images carved from the training set (eval mode; the test set is never "
            "scored). For each target: the run's wall time, training images and FLOPs to the first epoch that reaches "
            "it. Wall times compare only among rows that name the same machine.")


def markdown(results: dict) -> str:
    """The table as docs/results.md shows it."""
    rows = table(results)
    if not rows:
        return ""
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(str(v) for v in row.values()) + " |" for row in rows])


def figure(results: dict) -> go.Figure:
    """Validation accuracy per epoch of each recipe against the PFLOPs spent, the targets dotted."""
    runs = [r for r in results.get("runs", []) if r["curve"]]
    if not runs:
        return empty_figure("no time-to-accuracy run has trained yet")
    figure = go.Figure(layout=LAYOUT)
    for index, run in enumerate(runs):
        points = [(p["flops"] / 1e15, p["val_acc"]) for p in run["curve"] if p.get("val_acc") is not None]
        if points:
            x, y = zip(*points, strict=True)
            style = series_style(index)
            figure.add_scatter(x=x, y=y, name=run["run_id"], mode="lines+markers", line={"color": style["color"]},
                               marker={"symbol": style["symbol"]})
    for target in TARGETS:
        figure.add_hline(y=target, line_dash="dot", line_color="#999")
    figure.update_layout(title="Validation accuracy against training compute", xaxis_title="PFLOPs", yaxis_title="val accuracy")
    figure.update_yaxes(tickformat=".0%")
    return figure


def figures(results: dict) -> list:
    """The figures a page shows of the results (every experiment gives a list): ``figure``'s one."""
    return [figure(results)]
