"""Remove-one ablation of the ``fast`` preset: what each part of the recipe buys, on a validation split.

Every variant changes one thing of the preset (the first variant is the preset itself; the last
is the published recipe at the same budget, for scale), trains on the same images for the same
epochs and is scored by its final validation accuracy in eval mode; the test set is never looked
at. Each variant is a run folder named after it. Rerunning skips finished variants and resumes
interrupted ones, and a fresh checkout continues from the committed results file, as the study does.
"""

import dataclasses
from dataclasses import dataclass

import plotly.graph_objects as go

from .plots import COLORS, LAYOUT, empty_figure
from .study import (DONE, has_folder, measured, open_folder, recorded_runs, run_status, train_in_turn,
                    write_json_results)
from .config import PRESETS, ConfigError, make_config

BASELINE = "fast"
PUBLISHED_RECIPE = "published-recipe"
# What each variant changes in the fast preset; None: the published recipe (the `original` preset) instead.
VARIANTS = {
    BASELINE: {},
    "no-onecycle": {"schedule": "constant", "warmup": 0.0},
    "no-label-smoothing": {"label_smoothing": 0.0},
    "no-alternate-flip": {"alternate_flip": False},
    "small-batch": {"batch_size": 128, "lr": PRESETS["fast"]["lr"] / 4},
    "no-weight-decay": {"weight_decay": 0.0},
    "no-nesterov": {"nesterov": False},
    "plus-ema": {"ema": 0.99},
    PUBLISHED_RECIPE: None,
}


@dataclass(frozen=True)
class Budget:
    """What every variant gets: the same images and epochs (the recipe's own batch and schedule)."""

    train_size: int = 10_000  # the study's budget: the first images of the training set left after the validation split
    val_size: int = 5_000  # a seeded split of the training set; the only thing variants are scored on
    epochs: int = 5
    test_size: int = 1_000  # the Trainer scores these test images each epoch; the ablation never reads them
    seed: int = 0


def config_for(name: str, budget: Budget, variants: dict = VARIANTS, data_dir=None):
    sizes = dict(epochs=budget.epochs, val_size=budget.val_size, limit_train=budget.train_size,
                 limit_test=budget.test_size, seed=budget.seed, data_dir=str(data_dir) if data_dir else None)
    if variants[name] is None:
        return make_config("original", **sizes)
    return make_config("fast", **sizes, **variants[name])


def describe(change) -> str:
    if change is None:
        return "the published recipe: Adam 0.01, batch 64, constant lr, dropout 0.1, its crop and normalization"
    return ", ".join(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}" for key, value in change.items()) \
        or "none: the fast preset"


def variant_result(root, name: str, budget: Budget, variants: dict = VARIANTS, recorded=None) -> dict:
    """The variant's row of ablation.json: its change, outcome, final validation score, speed and curve."""
    if not has_folder(root, name) and name in (recorded or {}):
        return recorded[name]
    run = measured(root, name)
    speeds = run.pop("images_per_s")
    return {
        "run_id": name,
        "change": variants[name],
        **run,
        "train_images_per_s": sum(speeds) / len(speeds) if speeds else None,
        "config": dataclasses.asdict(config_for(name, budget, variants)),
    }


def collect(root, budget: Budget, variants: dict = VARIANTS, recorded=None) -> dict:
    return {
        "budget": {**dataclasses.asdict(budget), "score": "validation accuracy at the final epoch, eval mode; "
                                                           "the test set is never used"},
        "runs": [variant_result(root, name, budget, variants, recorded) for name in variants],
    }


def run_ablation(root, budget: Budget = Budget(), variants: dict = VARIANTS, data_dir=None, results_path=None, only=(),
                 stop_event=None, watch=None) -> dict:
    """Train every variant not done yet (or only those named in ``only``), then return (and write) the results."""
    unknown = set(only) - set(variants)
    if unknown:
        raise ConfigError(f"unknown variant(s) {', '.join(sorted(unknown))}; choose from {', '.join(variants)}")
    recorded = recorded_runs(results_path, budget)
    root = open_folder(root, budget)

    def next_run():
        todo = (name for name in variants if (not only or name in only) and run_status(root, name, recorded) not in DONE)
        name = next(todo, None)
        return (name, config_for(name, budget, variants, data_dir)) if name else None

    return train_in_turn(root, budget, next_run, lambda: collect(root, budget, variants, recorded),
                         lambda results: write_json_results(results, results_path), stop_event, watch,
                         command=f"python -m resnet ablation --out {root}")


def table(results: dict) -> list:
    """One row per variant: name, change, final validation accuracy, its difference to the preset, images/s."""
    rows = results.get("runs", [])
    baseline = next((r["final_val_acc"] for r in rows if r["run_id"] == BASELINE), None)
    return [{
        "variant": r["run_id"],
        "change": describe(r["change"]),
        "val accuracy": f"{r['final_val_acc']:.2%}" if r["final_val_acc"] is not None else r["status"],
        "vs fast": f"{(r['final_val_acc'] - baseline) * 100:+.2f} pts" if r["final_val_acc"] is not None and baseline is not None
        and r["run_id"] != BASELINE else "",
        "train images/s": f"{r['train_images_per_s']:.0f}" if r["train_images_per_s"] else "",
    } for r in rows]


def figure(results: dict) -> go.Figure:
    """Final validation accuracy of every finished variant, the preset's as a dashed line."""
    rows = [r for r in results.get("runs", []) if r["final_val_acc"] is not None]
    if not rows:
        return empty_figure("no ablation variant has finished yet")
    colors = [COLORS[0] if r["run_id"] == BASELINE else COLORS[7] if r["change"] is None else COLORS[1] for r in rows]
    figure = go.Figure(go.Bar(x=[r["final_val_acc"] for r in rows], y=[r["run_id"] for r in rows], orientation="h",
                              text=[f"{r['final_val_acc']:.1%}" for r in rows], marker_color=colors), layout=LAYOUT)
    baseline = next((r["final_val_acc"] for r in rows if r["run_id"] == BASELINE), None)
    if baseline is not None:
        figure.add_vline(x=baseline, line_dash="dash", line_color=COLORS[0])
    budget = results.get("budget", {})
    figure.update_layout(title=f"Remove-one ablation: final validation accuracy ({budget.get('train_size')} images, "
                               f"{budget.get('epochs')} epochs)", xaxis_title="val accuracy")
    figure.update_xaxes(tickformat=".0%")
    figure.update_yaxes(autorange="reversed")
    return figure

