"""Figures from metric rows and cards: traces, values and placeholders."""

import pytest

from resnet import plots
from resnet.constants import CLASSES

ROWS = [
    {"kind": "step", "epoch": 1, "step": 50, "train_loss": 2.1, "train_acc": 0.2},
    {"kind": "epoch", "epoch": 1, "step": 78, "train_loss": 1.9, "train_acc": 0.3, "test_loss": 1.7, "test_acc": 0.4},
    {"kind": "epoch", "epoch": 2, "step": 156, "train_loss": 1.5, "train_acc": 0.5, "test_loss": 1.4, "test_acc": 0.55},
]


def test_curves_overlay_runs_per_epoch():
    figure = plots.curves_figure({"run-a": ROWS, "run-b": ROWS[:2]}, "acc")
    assert [t.name for t in figure.data] == ["run-a train", "run-a test", "run-b train", "run-b test"]
    assert list(figure.data[1].x) == [1, 2]
    assert list(figure.data[1].y) == [0.4, 0.55]
    assert figure.data[0].line.color == figure.data[1].line.color != figure.data[2].line.color
    loss = plots.curves_figure({"run-a": ROWS}, "loss")
    assert list(loss.data[0].y) == [1.9, 1.5]


def test_card_curves_have_no_kind_and_still_plot():
    curve = [{"epoch": 1, "train_acc": 0.3, "test_acc": 0.4}]
    assert list(plots.curves_figure({"shipped": curve}).data[1].y) == [0.4]


def test_no_epoch_yet_is_a_placeholder():
    figure = plots.curves_figure({"run-a": ROWS[:1]})
    assert not figure.data
    assert "no finished epoch" in figure.layout.annotations[0].text


def test_per_class_and_confusion():
    bars = plots.per_class_figure([0.9] * 10)
    assert list(bars.data[0].x) == list(CLASSES)
    confusion = [[10 if i == j else 1 for j in range(10)] for i in range(10)]
    heat = plots.confusion_figure(confusion)
    assert heat.data[0].z[0][0] == 10 / 19
    assert list(heat.data[0].y) == list(CLASSES)


# ---- the live figure of one run ---------------------------------------------------------------------
LIVE = [
    {"kind": "step", "epoch": 1, "step": 5, "images": 320, "total_steps": 20, "train_loss": 2.3, "train_acc": 0.1},
    {"kind": "step", "epoch": 1, "step": 10, "images": 640, "total_steps": 20, "train_loss": 2.1, "train_acc": 0.3},
    {"kind": "probe", "epoch": 1, "step": 10, "images": 640, "probe_acc": 0.25, "probe_loss": 2.0, "probe_images": 500,
     "probe_split": "val"},
    {"kind": "epoch", "epoch": 1, "step": 10, "images": 640, "train_loss": 2.2, "train_acc": 0.2, "test_loss": 1.9,
     "test_acc": 0.3, "val_acc": 0.28, "val_loss": 1.95},
]
REFERENCE = [{"kind": "probe", "step": 10, "images": 640, "probe_acc": 0.4, "probe_loss": 1.7},
             {"kind": "epoch", "step": 20, "images": 1280, "test_acc": 0.5, "test_loss": 1.5}]


def traces(figure) -> dict:
    return {trace.name: trace for trace in figure.data}


def test_live_figure_draws_steps_smoothed_probes_and_epochs_against_images_seen():
    figure = plots.live_figure(LIVE, "acc", total_images=1280)
    shown = traces(figure)
    assert list(shown["train (each log step)"].x) == [0.32, 0.64]
    assert list(shown["train (each log step)"].y) == [0.1, 0.3]
    assert list(shown["train (smoothed)"].y) == pytest.approx([0.1, 0.6 * 0.1 + 0.4 * 0.3])
    assert list(shown["probe (500 val images)"].y) == [0.25]
    assert list(shown["test (each epoch)"].y) == [0.3]
    assert list(shown["val (each epoch)"].y) == [0.28]
    # The whole run, never cut off; 0 a little in from the left, clear of the y axis's lowest label
    assert tuple(figure.layout.xaxis.range) == pytest.approx((-1.28 * 0.02, 1.28 * 1.03))
    assert figure.layout.xaxis.title.text == "training images seen (thousands)"
    loss = traces(plots.live_figure(LIVE, "loss"))
    assert list(loss["probe (500 val images)"].y) == [2.0]
    assert list(loss["test (each epoch)"].y) == [1.9]


def test_live_figure_references_are_faint_and_behind():
    figure = plots.live_figure(LIVE[:1], "acc", total_images=1280, references={"quick preset": REFERENCE})
    names = [trace.name for trace in figure.data]
    assert names[:2] == ["quick preset (probe)", "quick preset (test)"]  # drawn first, under the run
    assert figure.data[0].line.color == "#b0b0b0"
    assert list(figure.data[1].x) == [1.28]


def test_a_budgeted_runs_single_score_is_labelled_as_the_runs_end():
    """A budgeted run scores the test set once, at its last step: not "each epoch"."""
    rows = [{**row, "total_steps": 10} if row["kind"] == "step" else row for row in LIVE]
    assert "test (end of run)" in traces(plots.live_figure(rows, "acc"))
    refitted = [{**LIVE[0], "total_steps": 40}, *rows[1:]]  # planned 40 steps at first, re-fitted to 10
    assert "test (end of run)" in traces(plots.live_figure(refitted, "acc"))
    assert "test (each epoch)" in traces(plots.live_figure(LIVE, "acc"))  # scored at step 10 of 20


def test_references_are_drawn_only_inside_the_plot():
    """A reference past the run's end, or a loss far above the run's, is no legend entry with nothing to see."""
    beyond = [{"kind": "epoch", "step": 900, "images": 57_600, "test_acc": 0.9, "test_loss": 0.4}]
    first_loss = [{"kind": "probe", "step": 1, "images": 64, "probe_loss": 90.0},
                  {"kind": "probe", "step": 5, "images": 320, "probe_loss": 2.2},
                  {"kind": "probe", "step": 10, "images": 640, "probe_loss": 2.0}]
    references = {"shipped model": beyond, "published recipe": first_loss}
    accuracy = traces(plots.live_figure(LIVE, "acc", total_images=1280, references=references))
    assert "shipped model (test)" not in accuracy
    loss = traces(plots.live_figure(LIVE, "loss", total_images=1280, references=references))
    assert list(loss["published recipe (probe)"].y) == [2.2, 2.0]  # the 90 is above the axis: left out, not a stub
    assert max(loss["published recipe (probe)"].y) <= plots.LOSS_HEADROOM * 2.3


def test_live_figure_with_one_point_none_and_a_diverged_run():
    one = plots.live_figure(LIVE[:1], "acc")
    assert list(traces(one)["train (each log step)"].x) == [0.32]
    assert one.layout.xaxis.range[1] > 0.32
    none = plots.live_figure([], "acc")
    assert not none.data
    assert "waiting for the first logged step" in none.layout.annotations[0].text
    diverged = plots.live_figure(LIVE[:2], "loss", status="diverged")
    assert "diverged" in diverged.layout.title.text
    assert "diverged" in plots.live_figure([], "loss", status="diverged").layout.annotations[0].text


def test_smoothing_starts_at_the_first_value():
    assert plots.smoothed([]) == []
    assert plots.smoothed([2.0]) == [2.0]
    assert plots.smoothed([1.0, 0.0], keep=0.5) == [1.0, 0.5]


def test_epoch_curves_keep_their_last_point_inside_the_axis():
    figure = plots.curves_figure({"run-a": ROWS}, "acc")
    assert figure.layout.xaxis.range[1] > 2


def test_series_past_the_palette_keep_apart_by_marker_and_the_first_ten_by_colour():
    styles = [plots.series_style(i) for i in range(3 * len(plots.COLORS))]
    assert len({(s["color"], s["symbol"]) for s in styles}) == len(styles)
    assert len({s["color"] for s in styles[:len(plots.COLORS)]}) == len(plots.COLORS)
    assert {s["symbol"] for s in styles[:len(plots.COLORS)]} == {"circle"}


def test_the_compare_figure_draws_step_probe_and_epoch_curves_against_images_or_time():
    rows = [{"kind": "step", "epoch": 1, "step": 5, "images": 320, "train_acc": 0.2, "train_loss": 2.0, "elapsed_s": 6.0},
            {"kind": "probe", "epoch": 1, "step": 5, "images": 320, "probe_acc": 0.25, "probe_loss": 1.9, "elapsed_s": 6.5},
            {"kind": "step", "epoch": 1, "step": 10, "images": 640, "train_acc": 0.3, "train_loss": 1.8, "elapsed_s": 12.0},
            {"kind": "epoch", "epoch": 1, "step": 10, "images": 640, "test_acc": 0.3, "test_loss": 1.7, "elapsed_s": 15.0}]
    by_images = plots.compare_figure({"run-a": rows, "run-b": rows[:2]}, "acc", "images")
    assert [t.name for t in by_images.data] == ["run-a train", "run-a probe", "run-a test", "run-b train", "run-b probe"]
    assert list(by_images.data[1].x) == [0.32]
    assert "images" in by_images.layout.xaxis.title.text
    by_time = plots.compare_figure({"run-a": rows}, "acc", "time")
    assert list(by_time.data[0].x) == [0.1, 0.2]
    assert "wall-clock" in by_time.layout.xaxis.title.text
    assert by_images.data[0].line.color != by_images.data[3].line.color  # one colour a run
    assert plots.compare_figure({"run-a": []}, "acc").layout.annotations  # nothing logged yet: said, not blank


def test_the_loss_axis_fits_the_runs_shown_not_a_reference_start_of_90():
    live = plots.live_figure(LIVE, "loss", references={"published": [{"kind": "probe", "images": 64, "probe_loss": 90.0}]})
    top = live.layout.yaxis.range[1]
    assert top < 10
    assert top >= max(r.get("train_loss", 0) for r in LIVE)
    compared = plots.compare_figure({"run-a": [{"kind": "step", "images": 64, "train_loss": 3.0, "elapsed_s": 1}]}, "loss")
    assert compared.layout.yaxis.range == (0, pytest.approx(3.3))


def test_legends_sit_below_the_axis_title_and_figures_carry_one_title():
    figure = plots.compare_figure({"run-a": [{"kind": "step", "images": 64, "train_acc": 0.3, "elapsed_s": 1}]}, "acc")
    assert figure.layout.legend.y < -0.2
    assert figure.layout.legend.yanchor == "top"
