"""Plotly figures from metric rows and model cards: plain functions, no state, no I/O."""

import plotly.graph_objects as go

from .constants import CLASSES

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
LAYOUT = dict(template="plotly_white", height=360, margin=dict(l=50, r=20, t=50, b=40), legend=dict(orientation="h", y=-0.2))


def empty_figure(message: str) -> go.Figure:
    figure = go.Figure(layout=LAYOUT)
    figure.add_annotation(text=message, showarrow=False, font=dict(size=14), xref="paper", yref="paper", x=0.5, y=0.5)
    figure.update_xaxes(visible=False)
    figure.update_yaxes(visible=False)
    return figure


def epoch_rows(rows: list) -> list:
    """Per-epoch rows of metrics.jsonl (kind "epoch") or of a card's ``curve`` (no kind)."""
    return [r for r in rows if r.get("kind", "epoch") == "epoch" and "epoch" in r]


def curves_figure(series: dict, metric: str = "acc") -> go.Figure:
    """Train (dashed) and test (solid) ``acc`` or ``loss`` per epoch; one colour per run in ``series``."""
    title = "Accuracy" if metric == "acc" else "Loss"
    figure = go.Figure(layout=LAYOUT)
    for index, (name, rows) in enumerate(series.items()):
        rows = epoch_rows(rows)
        color = COLORS[index % len(COLORS)]
        for split, dash in (("train", "dash"), ("test", "solid")):
            points = [(r["epoch"], r[f"{split}_{metric}"]) for r in rows if isinstance(r.get(f"{split}_{metric}"), (int, float))]
            if points:
                x, y = zip(*points)
                figure.add_scatter(x=x, y=y, name=f"{name} {split}", mode="lines+markers", line=dict(color=color, dash=dash))
    figure.update_layout(title=f"{title} per epoch", xaxis_title="epoch", yaxis_title=title.lower())
    if metric == "acc":
        figure.update_yaxes(tickformat=".0%")
    if not figure.data:
        return empty_figure("no finished epoch yet")
    return figure


def per_class_figure(per_class_acc: list, classes=CLASSES) -> go.Figure:
    figure = go.Figure(go.Bar(x=list(classes), y=per_class_acc, text=[f"{a:.1%}" for a in per_class_acc], marker_color=COLORS[0]),
                       layout=LAYOUT)
    figure.update_layout(title="Test accuracy per class")
    figure.update_yaxes(tickformat=".0%", range=[0, 1])
    return figure


def confusion_figure(confusion: list, classes=CLASSES) -> go.Figure:
    """Rows are true classes, columns predictions; cells show counts, colour the row fraction."""
    fractions = [[count / max(1, sum(row)) for count in row] for row in confusion]
    figure = go.Figure(go.Heatmap(z=fractions, x=list(classes), y=list(classes), text=confusion, texttemplate="%{text}",
                                  colorscale="Blues", zmin=0, zmax=1, colorbar=dict(title="row share")),
                       layout={**LAYOUT, "height": 480})
    figure.update_layout(title="Confusion matrix (true class down, prediction across)")
    figure.update_yaxes(autorange="reversed")
    return figure
