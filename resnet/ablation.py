"""Remove-one ablation of the ``fast`` preset: what each part of the recipe buys, on a validation split.

Every variant changes one thing of the preset (the first variant is the preset itself; the last
is the published recipe at the same budget, for scale), trains on the same images for the same
epochs and is scored by its final validation accuracy in eval mode; the test set is never looked
at. Each variant is a run folder named after it. Rerunning skips finished variants and resumes
interrupted ones, and a fresh checkout continues from the committed results file (resnet.experiments).
"""

import dataclasses
from dataclasses import dataclass

import plotly.graph_objects as go

from .config import PRESETS, ConfigError, make_config
from .experiments import Budget, Experiment, Options
from .plots import COLORS, LAYOUT, empty_figure

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
class Variant:
    run_id: str
    change: dict | None


@dataclass(frozen=True)
class Ablation(Experiment):
    """Every one of ``variants``, in order, under the study's budget with each recipe's own batch and schedule."""

    variants: dict = dataclasses.field(default_factory=lambda: VARIANTS)

    name = "ablation"
    budget = Budget()
    defaults = Options(out="ablation-runs", results="results/ablation.json")
    notes = {"score": "validation accuracy at the final epoch, eval mode; the test set is never used"}

    def plan(self, root, budget: Budget, recorded: dict) -> tuple:
        return [Variant(name, change) for name, change in self.variants.items()], None

    def config_for(self, variant: Variant, budget: Budget, data_dir=None):
        if variant.change is None:
            return make_config("original", **budget.settings(data_dir))
        # The budget leaves the batch to the recipe (None), so a variant that changes it (small-batch) is heard.
        return make_config("fast", **{**budget.settings(data_dir), **variant.change})

    def row(self, variant: Variant, run: dict, budget: Budget) -> dict:
        """Its change, outcome, final validation score, speed and curve."""
        speeds = run.pop("images_per_s")
        return {
            "run_id": variant.run_id,
            "change": variant.change,
            **run,
            "train_images_per_s": sum(speeds) / len(speeds) if speeds else None,
            "config": dataclasses.asdict(self.config_for(variant, budget)),
        }

    def chosen(self, only):
        """``only``: variant names (all, where it is empty)."""
        unknown = set(only or ()) - set(self.variants)
        if unknown:
            raise ConfigError(f"unknown variant(s) {', '.join(sorted(unknown))}; choose from {', '.join(self.variants)}")
        return lambda run_id: not only or run_id in only


ABLATION = Ablation()


def describe(change) -> str:
    if change is None:
        return "the published recipe: Adam 0.01, batch 64, constant lr, dropout 0.1, its crop and normalization"
    return ", ".join(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}" for key, value in change.items()) \
        or "none: the fast preset"


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

