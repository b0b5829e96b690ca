"""Plotly figures from metric rows and model cards: plain functions, no state, no I/O."""

import math

import plotly.graph_objects as go

from .constants import CLASSES

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
# Past the palette a series repeats a colour with another marker shape, so no two series of a figure look alike.
SYMBOLS = ("circle", "square", "diamond", "triangle-up", "x")
# The legend sits below the x axis's title, never on it (plotly grows the bottom margin to fit it).
LAYOUT = {"template": "plotly_white", "height": 380, "margin": {"l": 50, "r": 20, "t": 50, "b": 40},
          "legend": {"orientation": "h", "y": -0.28, "yanchor": "top", "x": 0}}
# The x axes a run's curves can be drawn against: the row key, its scale and the axis title.
X_AXES = {"images": ("images", 1 / 1000, "training images seen (thousands)"),
          "time": ("elapsed_s", 1 / 60, "wall-clock time since the run started (minutes)")}
LOSS_HEADROOM = 1.1  # the loss axis ends this far above the highest loss of the runs shown


def series_style(index: int) -> dict:
    """The line colour and marker symbol of a figure's ``index``-th series (0-based)."""
    return {"color": COLORS[index % len(COLORS)], "symbol": SYMBOLS[index // len(COLORS) % len(SYMBOLS)]}


def empty_figure(message: str) -> go.Figure:
    figure = go.Figure(layout=LAYOUT)
    figure.add_annotation(text=message, showarrow=False, font={"size": 14}, xref="paper", yref="paper", x=0.5, y=0.5)
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
        style = series_style(index)
        for split, dash in (("train", "dash"), ("test", "solid")):
            points = [(r["epoch"], r[f"{split}_{metric}"]) for r in rows if isinstance(r.get(f"{split}_{metric}"), (int, float))]
            if points:
                x, y = zip(*points, strict=True)
                figure.add_scatter(x=x, y=y, name=f"{name} {split}", mode="lines+markers",
                                   line={"color": style["color"], "dash": dash}, marker={"symbol": style["symbol"]})
    figure.update_layout(title=f"{title} per epoch", xaxis_title="epoch", yaxis_title=title.lower())
    last = max((x for trace in figure.data for x in trace.x), default=1)
    figure.update_xaxes(range=[0.5, last + 0.5])  # the last point whole, never cut at the edge
    if metric == "acc":
        figure.update_yaxes(tickformat=".0%")
    if not figure.data:
        return empty_figure("no finished epoch yet")
    return figure


SMOOTHING = 0.6  # exponential smoothing of the step curves: each point keeps 60% of the previous


def smoothed(values: list, keep: float = SMOOTHING) -> list:
    """An exponential moving average that starts at the first value (no bias toward zero)."""
    out, average = [], None
    for value in values:
        average = value if average is None else keep * average + (1 - keep) * value
        out.append(average)
    return out


def _points(rows: list, kind: str, key: str, x: str = "images") -> tuple:
    """(x values, values) of the rows of one kind that hold ``key``; x is training images seen (thousands) or the
    run's wall-clock time (minutes), as ``X_AXES`` declares."""
    column, scale, _ = X_AXES[x]
    chosen = [r for r in rows if r.get("kind", "epoch") == kind and isinstance(r.get(key), (int, float))
              and isinstance(r.get(column), (int, float))]
    return [r[column] * scale for r in chosen], [r[key] for r in chosen]


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _fit_loss_axis(figure: go.Figure, own: list) -> None:
    """A loss axis from 0 to just above the highest loss among ``own`` values (the runs shown, smoothed where they
    are drawn smoothed), so that a reference run's first loss of 90 does not press the others onto the floor."""
    finite = [v for v in own if _finite(v)]
    if finite:
        figure.update_yaxes(range=[0, LOSS_HEADROOM * max(finite)])


def _scored_label(rows: list, split: str) -> str:
    """A run's held-out score in the legend: ``end of run`` where the run scores it only at its last step (a
    budgeted run), ``each epoch`` otherwise."""
    # The latest step row's: a budgeted run re-fits its length as it goes
    total = next((r["total_steps"] for r in reversed(rows) if isinstance(r.get("total_steps"), int)), None)
    steps = [r.get("step") for r in rows if r.get("kind") == "epoch" and isinstance(r.get(f"{split}_acc"), (int, float))]
    return f"{split} (end of run)" if total is not None and steps == [total] else f"{split} (each epoch)"


def _own_series(rows: list, metric: str) -> list:
    """(name, x, y, style) of a run's own series: every logged step (faint) and their smoothed curve, the probe's
    held-out scores, and the held-out score of each epoch (or of the run's end)."""
    series = []
    x, y = _points(rows, "step", f"train_{metric}")
    if x:
        series.append(("train (each log step)", x, y, {"mode": "markers", "marker": {"color": COLORS[0], "size": 4},
                                                        "opacity": 0.3}))
        series.append(("train (smoothed)", x, smoothed(y), {"mode": "lines", "line": {"color": COLORS[0], "width": 2}}))
    probes = [r for r in rows if r.get("kind") == "probe"]
    x, y = _points(rows, "probe", f"probe_{metric}")
    if x:
        label = f"probe ({probes[-1].get('probe_images')} {probes[-1].get('probe_split', 'held-out')} images)"
        series.append((label, x, y, {"mode": "lines+markers", "line": {"color": COLORS[1]}, "marker": {"size": 7}}))
    for split, color in (("test", COLORS[3]), ("val", COLORS[2])):
        x, y = _points(rows, "epoch", f"{split}_{metric}")
        if x:
            series.append((_scored_label(rows, split), x, y, {"mode": "lines+markers", "line": {"color": color},
                                                              "marker": {"size": 10, "symbol": "diamond"}}))
    return series


def live_figure(rows: list, metric: str = "acc", total_images: int | None = None, references: dict | None = None,
                status: str = "") -> go.Figure:
    """One run as it trains, against training images seen: every logged step (faint) and their smoothed
    curve, the probe's held-out scores between steps, the test (and validation) score of each epoch,
    and faint reference runs behind them, within the run's range. The x axis spans the whole run from its first
    step, so nothing is cut off."""
    title = "Accuracy" if metric == "acc" else "Loss"
    own = [r["images"] for r in rows if "images" in r]
    if not own:
        return empty_figure(status or "waiting for the first logged step")
    end = max([total_images or 0, *own]) / 1000
    series = _own_series(rows, metric)
    # The loss axis fits the run's own curves (none finite: a diverged run, drawn as plotly pleases); accuracy is 0 to 1.
    losses = [v for _, _, y, _ in series for v in y if _finite(v)]
    top = 1.0 if metric == "acc" else LOSS_HEADROOM * max(losses) if losses else math.inf
    figure = go.Figure(layout=LAYOUT)
    for index, (name, reference) in enumerate((references or {}).items()):
        for kind, key in (("probe", f"probe_{metric}"), ("epoch", f"test_{metric}")):
            # Only what falls inside the plot: a reference past this run's end, or its first loss far above the run's,
            # would be an entry in the legend with nothing to see, or a stub falling in from the top.
            points = [(px, py) for px, py in zip(*_points(reference, kind, key), strict=True) if px <= end * 1.03 and py <= top]
            if points:
                x, y = zip(*points, strict=True)
                figure.add_scatter(x=x, y=y, name=f"{name} ({'probe' if kind == 'probe' else 'test'})",
                                   mode="lines" if len(points) > 1 else "markers",
                                   line={"color": "#b0b0b0", "dash": ("dot", "dash", "dashdot")[index % 3], "width": 1.5},
                                   marker={"color": "#b0b0b0"}, opacity=0.8, legendgroup="references")
    for name, x, y, style in series:
        figure.add_scatter(x=x, y=y, name=name, **style)
    # The x axis starts a little left of 0, so that its "0" and the y axis's lowest label do not run together.
    figure.update_xaxes(range=[-end * 0.02, end * 1.03])
    figure.update_layout(title=f"{title}{f' ({status})' if status else ''}", xaxis_title=X_AXES["images"][2],
                         yaxis_title=title.lower())
    if metric == "acc":
        figure.update_yaxes(tickformat=".0%", range=[0, 1])
    elif _finite(top):
        figure.update_yaxes(range=[0, top])
    return figure


def compare_figure(series: dict, metric: str = "acc", x: str = "images") -> go.Figure:
    """Several runs on the Train tab's curves, one colour each: the smoothed training curve of their step rows,
    their probes (dotted, with markers) and the held-out score of each epoch (diamonds), against training images
    seen or wall-clock time (``X_AXES``), so a one-epoch run is a curve, not two dots."""
    title = "Accuracy" if metric == "acc" else "Loss"
    figure = go.Figure(layout=LAYOUT)
    shown = []
    for index, (name, rows) in enumerate(series.items()):
        style = series_style(index)
        line = {"color": style["color"]}
        steps_x, steps_y = _points(rows, "step", f"train_{metric}", x)
        if steps_x:
            shown += smoothed(steps_y)
            figure.add_scatter(x=steps_x, y=smoothed(steps_y), name=f"{name} train", mode="lines", line={**line, "width": 2},
                               legendgroup=name)
        probe_x, probe_y = _points(rows, "probe", f"probe_{metric}", x)
        if probe_x:
            shown += probe_y
            figure.add_scatter(x=probe_x, y=probe_y, name=f"{name} probe", mode="lines+markers", line={**line, "dash": "dot"},
                               marker={"symbol": style["symbol"], "size": 6}, legendgroup=name)
        for split in ("test", "val"):
            epoch_x, epoch_y = _points(rows, "epoch", f"{split}_{metric}", x)
            if epoch_x:
                shown += epoch_y
                figure.add_scatter(x=epoch_x, y=epoch_y, name=f"{name} {split}", mode="markers",
                                   marker={"color": style["color"], "symbol": "diamond", "size": 11,
                                           "line": {"color": "white", "width": 1}}, legendgroup=name)
    if not figure.data:
        return empty_figure("no logged step yet")
    figure.update_layout(title=f"{title} of the runs compared", xaxis_title=X_AXES[x][2], yaxis_title=title.lower())
    figure.update_xaxes(rangemode="tozero")
    if metric == "acc":
        figure.update_yaxes(tickformat=".0%", range=[0, 1])
    else:
        _fit_loss_axis(figure, shown)
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
                                  colorscale="Blues", zmin=0, zmax=1, colorbar={"title": "row share"}),
                       layout={**LAYOUT, "height": 480})
    figure.update_layout(title="Confusion matrix (true class down, prediction across)")
    figure.update_yaxes(autorange="reversed")
    return figure
