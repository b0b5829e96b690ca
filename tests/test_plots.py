"""Figures from metric rows and cards: traces, values and placeholders."""

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
    assert list(figure.data[1].x) == [1, 2] and list(figure.data[1].y) == [0.4, 0.55]  # step rows are not epochs
    assert figure.data[0].line.color == figure.data[1].line.color != figure.data[2].line.color
    loss = plots.curves_figure({"run-a": ROWS}, "loss")
    assert list(loss.data[0].y) == [1.9, 1.5]


def test_card_curves_have_no_kind_and_still_plot():
    curve = [{"epoch": 1, "train_acc": 0.3, "test_acc": 0.4}]
    assert list(plots.curves_figure({"shipped": curve}).data[1].y) == [0.4]


def test_no_epoch_yet_is_a_placeholder():
    figure = plots.curves_figure({"run-a": ROWS[:1]})
    assert not figure.data and "no finished epoch" in figure.layout.annotations[0].text


def test_per_class_and_confusion():
    bars = plots.per_class_figure([0.9] * 10)
    assert list(bars.data[0].x) == list(CLASSES)
    confusion = [[10 if i == j else 1 for j in range(10)] for i in range(10)]
    heat = plots.confusion_figure(confusion)
    assert heat.data[0].z[0][0] == 10 / 19 and list(heat.data[0].y) == list(CLASSES)
