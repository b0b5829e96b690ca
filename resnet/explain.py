"""Where the network looked: Grad-CAM on the last stage, drawn over the 32 x 32 input it saw.

With global average pooling before the linear layer, Grad-CAM's channel weights are the linear
weights of the class (divided by 16), so the map is the classic class-activation map; computing
it by autograd keeps it right for any head.
"""

import numpy as np
import torch
import torch.nn.functional as F

from .data import normalize

DISPLAY_SCALE = 8  # 32 x 32 shown as 256 x 256, pixels kept square so the coarseness is honest


def grad_cam(model, image: torch.Tensor, mean, std, target: int | None = None):
    """uint8 [3, H, W] -> (map [H, W] in [0, 1] on the CPU, class index it explains: ``target`` or the top class).

    The image goes to the model's device (a GPU Space's model) and the map comes back for drawing."""
    model.eval()
    device = next(model.parameters(), torch.empty(0)).device  # a model without parameters works on the CPU
    x = normalize(image[None].to(device), mean, std)
    with torch.no_grad():  # the gradient is needed from the last stage on, not through the trunk
        features = model.features(x)
    with torch.enable_grad():
        features.requires_grad_(True)
        logits = model.classify(features)
        target = int(logits.argmax(1)) if target is None else int(target)
        (gradient,) = torch.autograd.grad(logits[0, target], features)
    weights = gradient.mean((2, 3), keepdim=True)
    cam = F.relu((weights * features).sum(1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=image.shape[-2:], mode="bilinear", align_corners=False)[0, 0].cpu()
    peak = cam.max()
    return (cam / peak if peak > 0 else cam), target


def enlarge(image: torch.Tensor, scale: int = DISPLAY_SCALE) -> np.ndarray:
    """uint8 [3, H, W] -> uint8 [H*scale, W*scale, 3], nearest neighbour: the pixels the net saw."""
    return image.permute(1, 2, 0).numpy().repeat(scale, 0).repeat(scale, 1)


def heat_colors(values: np.ndarray) -> np.ndarray:
    """[0, 1] -> RGB in [0, 1], a jet-like ramp (blue, cyan, yellow, red)."""
    v = values[..., None] * 4
    return np.clip(1.5 - np.abs(v - np.array([3.0, 2.0, 1.0])), 0, 1)


def overlay(image: torch.Tensor, cam: torch.Tensor, scale: int = DISPLAY_SCALE, alpha: float = 0.45) -> np.ndarray:
    """The enlarged input with the map blended over it, uint8 [H*scale, W*scale, 3]."""
    base = enlarge(image, scale).astype(np.float32) / 255
    size = (image.shape[1] * scale, image.shape[2] * scale)
    smooth = F.interpolate(cam[None, None], size=size, mode="bilinear", align_corners=False)[0, 0].clamp(0, 1).numpy()
    blended = (1 - alpha) * base + alpha * heat_colors(smooth)
    return (blended * 255).round().astype(np.uint8)

