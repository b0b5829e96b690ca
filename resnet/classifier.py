"""A trained network together with the facts its weights came with: what every front end predicts with.

The weights loaders (resnet.weights.load_weights, resnet.studio.catalog) return a Classifier. Its card says
how inputs are normalized, what the classes are called and, when it was calibrated, the temperature
its probabilities are divided by; so no caller passes ``mean``/``std`` or a temperature by hand, and
nothing is attached to a network that every visitor of a server shares.
"""

from dataclasses import dataclass

import torch

from .calibration import calibrated_probabilities
from .evaluate import evaluate, predict_logits
from .explain import grad_cam
from .model import ResNet


@dataclass(frozen=True, eq=False)
class Classifier:
    """``net`` in eval mode and its validated ``card`` (resnet.weights checks every field it reads)."""

    net: ResNet
    card: dict

    @property
    def mean(self) -> tuple:
        return tuple(self.card["mean"])

    @property
    def std(self) -> tuple:
        return tuple(self.card["std"])

    @property
    def classes(self) -> list:
        return list(self.card["classes"])

    @property
    def temperature(self) -> float | None:
        """The calibration temperature fitted on held-out images, or None where none was (uncalibrated)."""
        value = self.card.get("temperature")
        return None if value is None else float(value)

    def to(self, device) -> "Classifier":
        """On ``device``. The network moves in place, so a Classifier that a server's cache shares must stay put."""
        return Classifier(self.net.to(device), self.card)

    def logits(self, images: torch.Tensor, batch_size: int = 500, tta: bool = False, amp_dtype=None,
               channels_last: bool = False) -> torch.Tensor:
        """uint8 [N, 3, 32, 32] (or one [3, 32, 32]) -> raw float32 logits on the CPU, before any calibration."""
        single = images.dim() == 3
        logits = predict_logits(self.net, images[None] if single else images, self.mean, self.std, batch_size, tta,
                                amp_dtype, channels_last)
        return logits[0] if single else logits

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """softmax(logits / T) along the last axis with the card's temperature; plain softmax without one."""
        return calibrated_probabilities(logits, self.temperature or 1.0)

    def ranked(self, probabilities: torch.Tensor) -> dict:
        """[num_classes] probabilities -> {class name: probability}, every class, best first."""
        return dict(sorted(zip(self.classes, probabilities.tolist(), strict=True), key=lambda item: -item[1]))

    def predict(self, image: torch.Tensor) -> dict:
        """uint8 [3, 32, 32] -> {class name: probability}, best first; calibrated when the card has a temperature."""
        if image.dim() != 3:
            raise ValueError(f"predict takes one image [3, H, W], not a tensor of shape {list(image.shape)}")
        return self.ranked(self.probabilities(self.logits(image)))

    def evaluate(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500, tta: bool = False,
                 amp_dtype=None, channels_last: bool = False) -> dict:
        """resnet.evaluate.metrics_from_logits of labelled images (accuracy from the raw logits, eval mode)."""
        return evaluate(self.net, images, labels, self.mean, self.std, batch_size, tta, amp_dtype, channels_last)

    def explain(self, image: torch.Tensor, target: int | None = None) -> tuple:
        """Grad-CAM of uint8 [3, H, W]: (map [H, W] in [0, 1] on the CPU, the class index it explains)."""
        return grad_cam(self.net, image, self.mean, self.std, target)
