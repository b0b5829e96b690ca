"""Accuracy, loss, per-class accuracy, confusion matrix and calibration (ECE, from resnet.calibration), always in eval mode."""

import contextlib

import torch
import torch.nn.functional as F

from .calibration import calibration_fields, expected_calibration_error, halves
from .data import normalize


def autocast(device: torch.device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def predict_logits(model, images, mean, std, batch_size=500, tta=False, amp_dtype=None, channels_last=False):
    """Logits (float32, on CPU) for uint8 images [N, 3, 32, 32]; ``tta`` averages with the mirror.

    They are gathered on the model's device and copied to the host once, not a batch at a time."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    outputs = []
    try:
        for start in range(0, len(images), batch_size):
            x = normalize(images[start : start + batch_size].to(device), mean, std, channels_last)
            with autocast(device, amp_dtype):
                logits = model(x).float()
                if tta:
                    logits = (logits + model(x.flip(3)).float()) / 2
            outputs.append(logits)
    finally:
        model.train(was_training)
    return torch.cat(outputs).cpu() if outputs else torch.empty(0, model.num_classes)


def metrics_from_logits(logits: torch.Tensor, labels: torch.Tensor, num_classes: int = 10) -> dict:
    labels = labels.cpu()
    predicted = logits.argmax(1)
    confusion = torch.bincount(labels * num_classes + predicted, minlength=num_classes**2).view(num_classes, num_classes)
    per_class_total = confusion.sum(1).clamp(min=1)
    return {
        "acc": (predicted == labels).float().mean().item(),
        "loss": F.cross_entropy(logits, labels).item(),
        "per_class_acc": (confusion.diag() / per_class_total).tolist(),
        "confusion": confusion.tolist(),
        "ece": expected_calibration_error(logits.softmax(1), labels),
        "count": len(labels),
    }


def evaluate(model, images, labels, mean, std, batch_size=500, tta=False, amp_dtype=None, channels_last=False) -> dict:
    logits = predict_logits(model, images, mean, std, batch_size, tta, amp_dtype, channels_last)
    return metrics_from_logits(logits, labels, model.num_classes)


def fit_run_temperature(model, val_x, val_y, mean, std, batch_size: int = 500, amp_dtype=None,
                        channels_last: bool = False) -> dict:
    """Card fields (``temperature``, ``calibration``, ``low_confidence``) for a run, from its validation split.

    T and the threshold are fitted on the even-position validation images and reported on the odd
    ones, so the card's before/after figures are held out; the test set plays no part.
    """
    if len(val_y) < 2:
        raise ValueError("calibration needs a validation split of at least 2 images")
    logits = predict_logits(model, val_x, mean, std, batch_size, amp_dtype=amp_dtype, channels_last=channels_last)
    fit, held = halves(len(val_y))
    return calibration_fields(logits[fit], val_y[fit], logits[held], val_y[held],
                              fitted_on=f"the {len(fit):,} even-position validation images",
                              evaluated_on=f"the {len(held):,} odd-position validation images")
