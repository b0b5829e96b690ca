"""Figures and captions for trust in a model: its reliability diagram and its accuracy under corruption.

Plain functions of a model card and of results/robustness.json (scripts/robustness.py): no state, no I/O.
"""

import math

import plotly.graph_objects as go

from ..plots import COLORS, LAYOUT, empty_figure


def reliability_figure(card: dict) -> go.Figure:
    """Accuracy against confidence per bin, before and after temperature scaling, on the card's held-out images."""
    block = card.get("calibration") or {}
    tables = block.get("reliability") or {}
    if not isinstance(card.get("temperature"), (int, float)) or not tables:
        return empty_figure("uncalibrated: no temperature in this model's card")
    figure = go.Figure(layout=LAYOUT)
    figure.add_scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration", line={"color": "#999", "dash": "dot"})
    for (key, name), color in zip((("before", "softmax"), ("after", f"T = {card['temperature']:.3f}")), COLORS[:2], strict=True):
        table = tables.get(key) or {}
        columns = (table.get("confidence", []), table.get("accuracy", []), table.get("count", []))
        points = [(c, a, n) for c, a, n in zip(*columns, strict=True) if n]
        if points:
            confidence, accuracy, count = zip(*points, strict=True)
            sizes = [5 + 15 * math.sqrt(n / max(count)) for n in count]  # area grows with the images: sparse bins look sparse
            figure.add_scatter(x=confidence, y=accuracy, mode="lines+markers", name=name, line={"color": color},
                               marker={"size": sizes}, customdata=count,
                               hovertemplate="confidence %{x:.1%}<br>right %{y:.1%}<br>%{customdata} images")
    before, after = (block.get(key) or {} for key in ("before", "after"))
    ece = f": ECE {before['ece']:.3f} before, {after['ece']:.3f} after" if "ece" in before and "ece" in after else ""
    where = block.get("evaluated_on", "held-out images")
    figure.update_layout(title=f"Reliability ({block.get('bins', '?')} bins, {where}){ece}",
                         xaxis_title="mean confidence in the bin", yaxis_title="share right")
    figure.update_xaxes(range=[0, 1], tickformat=".0%")
    figure.update_yaxes(range=[0, 1], tickformat=".0%")
    return figure


def calibration_text(card: dict) -> str:
    """Markdown for the Model card tab: what the shown percentages mean for this model."""
    block = card.get("calibration") or {}
    if not isinstance(card.get("temperature"), (int, float)) or not block:
        return "This model is **uncalibrated** (no temperature in its card): its percentages are plain softmax outputs."
    before, after, low = block.get("before", {}), block.get("after", {}), card.get("low_confidence") or {}
    lines = [f"Probabilities are **calibrated** by one temperature, T = {card['temperature']:.3f}, fitted on "
             f"{block.get('fitted_on')} and measured on {block.get('evaluated_on')}: calibration error (ECE, "
             f"{block.get('bins')} bins) {before.get('ece', float('nan')):.3f} before, {after.get('ece', float('nan')):.3f} "
             f"after; NLL {before.get('nll', float('nan')):.3f} -> {after.get('nll', float('nan')):.3f}; accuracy on "
             f"those images {after.get('acc', float('nan')):.2%} either way (T keeps every prediction)."]
    if isinstance(low.get("threshold"), (int, float)) and isinstance(low.get("accuracy_below"), (int, float)):
        rule = low.get("rule", "its rule is not recorded")
        lines.append(f"The low-confidence warning shows below {low['threshold']:.0%}: {rule}. "
                     f"On {low.get('measured_on', 'held-out images')}, {low['share_below']:.1%} of guesses fall below it and "
                     f"are right {low['accuracy_below']:.0%} of the time; the rest {low['accuracy_above']:.0%}.")
    reverse = block.get("reverse")
    if isinstance(reverse, dict) and "after" in reverse:
        lines.append(f"Fitted the other way round (on {reverse['fitted_on']}): T = {reverse['temperature']:.3f}, ECE "
                     f"{reverse['before']['ece']:.3f} -> {reverse['after']['ece']:.3f} on {reverse['evaluated_on']}.")
    return "\n\n".join(lines)


def _label(name: str) -> str:
    return name.replace("_", " ")


def robustness_figure(results: dict | None) -> go.Figure:
    """Heatmap of accuracy per corruption (rows) and severity (columns) from results/robustness.json."""
    table = (results or {}).get("accuracy") or {}
    if not table:
        return empty_figure("no robustness results yet (scripts/robustness.py)")
    names = list(table)
    severities = results.get("severities") or list(range(1, len(next(iter(table.values()))) + 1))
    figure = go.Figure(go.Heatmap(
        z=[table[name] for name in names], x=[f"severity {s}" for s in severities], y=[_label(name) for name in names],
        text=[[f"{value:.0%}" for value in table[name]] for name in names], texttemplate="%{text}",
        colorscale="RdYlGn", zmin=0, zmax=1, colorbar={"title": "accuracy", "tickformat": ".0%"},
        hovertemplate="%{y}, %{x}: %{z:.1%}<extra></extra>"), layout={**LAYOUT, "height": 560})
    figure.update_layout(title=f"Accuracy under corruption ({results.get('images', '?')} test images): mean "
                               f"{results.get('mean_acc', float('nan')):.1%}, clean {results.get('clean_acc', float('nan')):.1%}")
    figure.update_yaxes(autorange="reversed")
    return figure


def robustness_text(results: dict | None) -> str:
    """Markdown for the Model card tab: the mean, per severity, the worst corruption, and the published anchor."""
    if not (results or {}).get("accuracy"):
        return "Robustness to corruptions has not been measured yet: `python scripts/robustness.py`."
    severity = ", ".join(f"{value:.1%}" for value in results["per_severity_mean"])
    worst = results["worst_corruption"]
    lines = [f"Under {len(results['accuracy'])} corruptions x {len(results['per_severity_mean'])} severities "
             f"({results.get('parameters', '?')} parameters, {results['image_selection']}): mean accuracy "
             f"**{results['mean_acc']:.1%}** against {results['clean_acc']:.1%} clean; by severity {severity}; "
             f"worst {_label(worst['name'])} ({worst['mean_acc']:.1%}). {results.get('parameters_note', '')}."]
    reference = results.get("reference")
    if isinstance(reference, dict):
        lines.append(f"For scale, a {reference['model']} on {reference['data']}: mean {reference['mean_acc']:.2%}, severity 5 "
                     f"{reference['per_severity_mean'][-1]:.2%}, worst {_label(reference['worst_corruption']['name'])} "
                     f"{reference['worst_corruption']['mean_acc']:.2%} ({reference['source']}).")
    return "\n\n".join(lines)
