"""Confidence a person can read as a frequency: temperature scaling, its measures, and the low-confidence threshold.

One temperature T divides the logits before the softmax (Guo et al. 2017). T > 0 keeps every
arg-max, so accuracy does not move; T < 1 sharpens under-confident probabilities (label smoothing
makes them so), T > 1 softens over-confident ones. T is fitted by minimizing the negative
log-likelihood on logits the model was not trained on, and judged on other logits again.
"""

import math

import torch
import torch.nn.functional as F

ECE_BINS = 15
TEMPERATURE_BOUNDS = (0.05, 20.0)  # far outside what any trained network needs; the search stops at a bound
SEARCH_STEPS = 80  # golden-section steps: the bracket shrinks by 0.618 each, to ~1e-16 of log(400)
LOW_CONFIDENCE_LEVEL = 0.5  # flagged guesses, together, are right at most this often: as likely wrong as right
THRESHOLD_RULE = (
    "the highest calibrated confidence below which the guesses, taken together, are right at most {level:.0%} of the "
    "time, chosen on the images T was fitted on"
)


def scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits divided by the temperature, in float64: the NLLs the search compares differ by less than float32 resolves."""
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"the temperature must be a positive number, not {temperature!r}")
    return logits.double() / temperature


def calibrated_probabilities(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """softmax(logits / T) along the last axis (float32): rows sum to one, the arg-max is the logits' own."""
    return scaled(logits, temperature).softmax(-1).float()


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under softmax(logits / T)."""
    return F.cross_entropy(scaled(logits, temperature), labels.cpu()).item()


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, bounds=TEMPERATURE_BOUNDS) -> float:
    """The T in ``bounds`` that minimizes the NLL of ``labels`` under softmax(logits / T); deterministic.

    The NLL is convex in 1/T, hence unimodal in log T, so a golden-section search on log T finds its
    minimum without gradients, random starts or a learning rate. Only the logits given are read.
    """
    if len(logits) == 0:
        raise ValueError("no logits to fit a temperature on")
    logits, labels = logits.double().cpu(), labels.cpu()
    low, high = (math.log(b) for b in bounds)
    ratio = (math.sqrt(5) - 1) / 2
    loss = lambda log_t: F.cross_entropy(logits / math.exp(log_t), labels).item()  # noqa: E731
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    loss_a, loss_b = loss(a), loss(b)
    for _ in range(SEARCH_STEPS):
        if loss_a <= loss_b:
            high, b, loss_b = b, a, loss_a
            a = high - ratio * (high - low)
            loss_a = loss(a)
        else:
            low, a, loss_a = a, b, loss_b
            b = low + ratio * (high - low)
            loss_b = loss(b)
    return math.exp((low + high) / 2)


def reliability(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> dict:
    """The reliability diagram's data: per confidence bin (lower, upper], its images, mean confidence, accuracy.

    ``confidence`` and ``accuracy`` are None for an empty bin.
    """
    confidence, predicted = probs.double().max(1)
    correct = (predicted == labels.cpu()).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    table = {"bins": bins, "lower": edges[:-1].tolist(), "upper": edges[1:].tolist(),
             "count": [], "confidence": [], "accuracy": []}
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (confidence > low) & (confidence <= high)
        count = int(in_bin.sum())
        table["count"].append(count)
        table["confidence"].append(confidence[in_bin].mean().item() if count else None)
        table["accuracy"].append(correct[in_bin].mean().item() if count else None)
    return table


def ece_of(table: dict) -> float:
    """Expected calibration error from reliability data: the image-weighted mean |confidence - accuracy|."""
    total = sum(table["count"])
    rows = zip(table["count"], table["confidence"], table["accuracy"], strict=True)
    return sum(n * abs(c - a) for n, c, a in rows if n) / max(total, 1)


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """ECE with ``bins`` equal-width confidence bins (Guo et al. 2017), from probabilities [N, classes]."""
    return ece_of(reliability(probs, labels, bins))


def choose_threshold(probs: torch.Tensor, labels: torch.Tensor, level: float = LOW_CONFIDENCE_LEVEL) -> float:
    """The low-confidence threshold: the highest confidence below which the guesses, taken together, are right
    at most ``level`` of the time.

    Sort the images by (calibrated) top probability; among the k least confident, the share right is
    the accuracy below the k+1-th confidence. The threshold is that confidence for the largest k whose
    share is at most ``level``: pooling every image below it makes the rule steady where single
    reliability bins hold a few dozen images each. 0.0 when even the least confident guess is right
    more often than ``level`` allows (nothing is flagged), 1.0 when the whole set is right at most
    ``level`` of the time (everything is).
    """
    confidence, predicted = probs.max(1)
    order = confidence.argsort()
    right = (predicted == labels.cpu())[order].double()
    share = right.cumsum(0) / torch.arange(1, len(right) + 1, dtype=torch.float64)
    below = (share <= level).nonzero()
    if len(below) == 0:
        return 0.0
    k = int(below.max()) + 1  # how many images fall below the threshold
    return 1.0 if k == len(right) else confidence[order][k].item()


def confidence_split(probs: torch.Tensor, labels: torch.Tensor, threshold: float) -> dict:
    """How often the top class is right below and above ``threshold``: the card's ``low_confidence`` numbers."""
    confidence, predicted = probs.max(1)
    correct = predicted == labels.cpu()
    low = confidence < threshold
    return {
        "threshold": threshold,
        "share_below": low.float().mean().item(),
        "accuracy_below": correct[low].float().mean().item() if low.any() else None,
        "accuracy_above": correct[~low].float().mean().item() if (~low).any() else None,
    }


def measures(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, bins: int = ECE_BINS) -> dict:
    """Accuracy, NLL and ECE of softmax(logits / T), and its reliability data."""
    table = reliability(calibrated_probabilities(logits, temperature), labels, bins)
    return {
        "acc": (logits.argmax(1) == labels.cpu()).float().mean().item(),
        "nll": nll(logits, labels, temperature),
        "ece": ece_of(table),
        "reliability": table,
    }


def calibration_fields(fit_logits, fit_labels, eval_logits, eval_labels, fitted_on: str, evaluated_on: str,
                       level: float = LOW_CONFIDENCE_LEVEL) -> dict:
    """The card fields ``temperature``, ``calibration`` and ``low_confidence``.

    T and the threshold come from the fitting logits only; every reported number comes from the
    evaluation logits, which neither T nor the threshold saw.
    """
    temperature = fit_temperature(fit_logits, fit_labels)
    threshold = choose_threshold(calibrated_probabilities(fit_logits, temperature), fit_labels, level)
    before, after = measures(eval_logits, eval_labels), measures(eval_logits, eval_labels, temperature)
    low = confidence_split(calibrated_probabilities(eval_logits, temperature), eval_labels, threshold)
    return {
        "temperature": temperature,
        "calibration": {
            "method": "temperature scaling (Guo et al. 2017): probabilities are softmax(logits / T), T minimizing the NLL",
            "fitted_on": fitted_on,
            "fit_images": len(fit_labels),
            "evaluated_on": evaluated_on,
            "eval_images": len(eval_labels),
            "bins": ECE_BINS,
            "before": {key: before[key] for key in ("acc", "nll", "ece")},
            "after": {key: after[key] for key in ("acc", "nll", "ece")},
            "reliability": {"before": before["reliability"], "after": after["reliability"]},
        },
        "low_confidence": {
            **low,
            "level": level,
            "rule": THRESHOLD_RULE.format(level=level),
            "calibrated": True,
            "measured_on": evaluated_on,
        },
    }


def halves(count: int) -> tuple:
    """Index tensors of the even and the odd positions: two fixed, interleaved halves of a split."""
    index = torch.arange(count)
    return index[0::2], index[1::2]
