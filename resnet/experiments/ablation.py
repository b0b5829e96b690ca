"""Remove-one ablation of the time-to-accuracy recipe: what each part buys, on a validation split.

The recipe is the ``fast`` preset with the changes of RECIPE. Every variant changes one thing of it
(the first variant is the recipe itself), trains on the same images for the same epochs at the
budget's resolution schedule, once per seed, and is scored by its final validation accuracy in eval
mode; the test set is never scored. Each run is a folder named after its variant and seed. Rerunning
skips finished runs and resumes interrupted ones, and a fresh checkout continues from the committed
results file (resnet.experiments.runner). Every process running the command is a worker that takes the
next run no one holds from the storage its workers share (resnet.experiments.storage; docs/studies.md).
"""

import dataclasses
import statistics
from dataclasses import dataclass

import plotly.graph_objects as go

from ..config import ConfigError, make_config
from ..plots import COLORS, LAYOUT, empty_figure
from .runner import Budget, Experiment, Options, counted, mean_speed

BASELINE = "recipe"
# What the recipe changes in the fast preset: the patch-whitened stem (resnet.train.whiten_stem).
RECIPE = {"whiten_stem": True}
# What each variant changes in the recipe.
VARIANTS = {
    BASELINE: {},
    "no-whiten-stem": {"whiten_stem": False},
    "no-label-smoothing": {"label_smoothing": 0.0},
    "no-alternate-flip": {"alternate_flip": False},
    "no-onecycle": {"schedule": "constant", "warmup": 0.0},
    "no-weight-decay": {"weight_decay": 0.0},
    "plus-ema": {"ema": 0.99},
}


@dataclass(frozen=True)
class Variant:
    run_id: str
    name: str
    change: dict
    seed: int


def run_id(name: str, seed: int) -> str:
    return f"{name}-seed{seed}"


@dataclass(frozen=True)
class Ablation(Experiment):
    """Every one of ``variants`` under the budget, each recipe with its own batch and schedule: every variant at
    the first seed, then every variant at the next, so a partial results file compares like with like."""

    variants: dict = dataclasses.field(default_factory=lambda: VARIANTS)

    name = "ablation"
    # All 45,000 training images left beside the validation split, 3.5 epochs at 16 px and the last half epoch
    # at 32 px: a budget at which the recipe is past its unstable start (unlike 95 steps on 10,000 images),
    # at about 7 minutes a run on a 2-core CPU.
    budget = Budget(train_size=45_000, val_size=5_000, epochs=4, seeds=2, resolution="16:0.875")
    defaults = Options(out="ablation-runs", results="results/ablation.json")
    notes = {"score": "validation accuracy at the final epoch, eval mode; the test set is never scored",
             "recipe": "the fast preset with " + ", ".join(f"{k}={v}" for k, v in RECIPE.items())}

    def plan(self, root, budget: Budget, recorded: dict) -> tuple:
        return [Variant(run_id(name, seed), name, change, seed) for seed in budget.run_seeds()
                for name, change in self.variants.items()], None

    def config_for(self, variant: Variant, budget: Budget, data_dir=None):
        # The budget leaves the batch to the recipe (None), so a variant that changes it is heard.
        return make_config("fast", **{**budget.settings(data_dir, variant.seed), **RECIPE, **variant.change})

    def row(self, variant: Variant, run: dict, budget: Budget) -> dict:
        """Its change, seed, outcome, final validation score, speed and curve."""
        speed = mean_speed(run.pop("images_per_s"))  # before **run below, so the row keeps only the mean
        return {
            "run_id": variant.run_id,
            "variant": variant.name,
            "seed": variant.seed,
            "change": variant.change,
            **run,
            "train_images_per_s": speed,
            "config": run["config"] or dataclasses.asdict(self.config_for(variant, budget)),
        }

    def chosen(self, only):
        """``only``: variant names (all, where it is empty)."""
        unknown = set(only or ()) - set(self.variants)
        if unknown:
            raise ConfigError(f"unknown variant(s) {', '.join(sorted(unknown))}; choose from {', '.join(self.variants)}")
        return lambda run: not only or run.rsplit("-seed", 1)[0] in only


ABLATION = Ablation()


def describe(change: dict) -> str:
    return ", ".join(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}" for key, value in change.items()) \
        or "none: the recipe"


def by_variant(results: dict) -> dict:
    """variant -> (its change, its runs' rows in seed order), in the plan's order."""
    variants = {}
    for row in results.get("runs", []):
        variants.setdefault(row["variant"], (row["change"], []))[1].append(row)
    return variants


def scores(rows: list) -> list:
    """The final validation accuracies of the finished runs among ``rows``."""
    return [row["final_val_acc"] for row in rows if row["final_val_acc"] is not None]


def table(results: dict) -> list:
    """One row per variant: its change, each seed's final validation accuracy (or its run's status), the mean
    of those finished, the mean's difference to the recipe's, and half the seeds' range (the noise a
    difference has to beat)."""
    variants = by_variant(results)
    recipe = scores(variants[BASELINE][1]) if BASELINE in variants else []
    baseline = statistics.mean(recipe) if recipe else None
    rows = []
    for name, (change, runs) in variants.items():
        finished = scores(runs)
        mean = statistics.mean(finished) if finished else None
        rows.append({
            "variant": name,
            "change": describe(change),
            "seeds": " / ".join(f"{r['final_val_acc']:.2%}" if r["final_val_acc"] is not None else r["status"] for r in runs),
            "mean": f"{mean:.2%}" if mean is not None else "",
            "vs recipe": f"{(mean - baseline) * 100:+.2f} pts" if mean is not None and baseline is not None
            and name != BASELINE else "",
            "± (half range)": f"{(max(finished) - min(finished)) * 50:.2f} pts" if len(finished) > 1 else "",
        })
    return rows


def figure(results: dict) -> go.Figure:
    """Each variant's mean final validation accuracy as a bar, each seed as a dot, the recipe's mean dashed."""
    variants = {name: scores(runs) for name, (_, runs) in by_variant(results).items() if scores(runs)}
    if not variants:
        return empty_figure("no ablation run has finished yet")
    names = list(variants)
    means = [statistics.mean(variants[n]) for n in names]
    colors = [COLORS[0] if n == BASELINE else COLORS[1] for n in names]
    figure = go.Figure(go.Bar(x=means, y=names, orientation="h", text=[f"{m:.1%}" for m in means], marker_color=colors,
                              name="mean of seeds"), layout=LAYOUT)
    figure.add_trace(go.Scatter(x=[s for n in names for s in variants[n]], y=[n for n in names for _ in variants[n]],
                                mode="markers", marker={"color": "black", "size": 7}, name="each seed"))
    if BASELINE in variants:
        figure.add_vline(x=statistics.mean(variants[BASELINE]), line_dash="dash", line_color=COLORS[0])
    budget = results.get("budget", {})
    figure.update_layout(title=f"Remove-one ablation: final validation accuracy ({budget.get('train_size')} images, "
                               f"{budget.get('epochs')} epochs, {budget.get('seeds', 1)} seeds)", xaxis_title="val accuracy")
    every = [s for finished in variants.values() for s in finished]
    # Both ends given: plotly reads an open end as "autorange", which reaches back to the bars' base at 0 % and
    # squeezes differences of a point into a sliver.
    figure.update_xaxes(tickformat=".0%", range=[max(0.0, min(every) - 0.05), min(1.0, max(every) + 0.03)])
    figure.update_yaxes(autorange="reversed")
    return figure


def note(results: dict) -> str:
    """What the table measures, in words, from the budget the results file records."""
    budget = results.get("budget") or {}
    return (f"Each variant changes one thing of the recipe ({budget.get('recipe', 'the fast preset')}) and trains on the same "
            f"{counted(budget, 'train_size')} images for {budget.get('epochs', '?')} epochs at resolution schedule "
            f"{budget.get('resolution') or 'of its recipe'}, with {budget.get('seeds', 1)} seed(s); the score is final "
            f"validation accuracy on {counted(budget, 'val_size')} images carved from the training set (the test set is never "
            "scored). A difference smaller than the seeds' spread is noise.")


def figures(results: dict) -> list:
    """The figures a page shows of the results (every experiment gives a list): ``figure``'s one."""
    return [figure(results)]
