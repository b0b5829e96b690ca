"""What training costs in floating-point operations, counted by torch rather than estimated by hand.

An image's cost at a training size is the network's forward and backward pass at that size as
``torch.utils.flop_counter`` counts it: the convolutions and the linear layer, two FLOPs per
multiply-add. Batch norm, activations, pooling and the optimizer step are left out, as in the usual
training-FLOPs figures (airbench's 0.36 PFLOPs to 94 % among them). A run's cost adds up its steps, each
at the size its resolution schedule gives it: a 16 px image costs a quarter of a 32 px one.
"""

import functools
from collections import Counter

import torch
from torch.utils.flop_counter import FlopCounterMode

from .config import TrainConfig, parse_resolution
from .model import build_model
from .train import resolution_at, steps_in_epoch, training_images


@functools.cache
def image_flops(blocks: tuple, size: int) -> int:
    """FLOPs of one training image at ``size`` px: forward and backward."""
    # Eval mode lets batch norm take a single image; the convolutions' and the linear layer's FLOPs are the same.
    model = build_model(tuple(blocks), dropout=0.0).eval()
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size)).sum().backward()
    return counter.get_total_flops()


def steps_per_epoch(config: TrainConfig) -> int:
    """The trainer's steps per epoch on the training images ``config`` keeps."""
    return steps_in_epoch(training_images(config), config.batch_size)


def images_at_each_size(config: TrainConfig, steps: int | None = None) -> dict:
    """{size: training images} over the run's first ``steps`` steps (all of them when None)."""
    total = steps_per_epoch(config) * config.epochs
    phases = parse_resolution(config.resolution)
    sizes = Counter(resolution_at(phases, step / max(1, total)) for step in range(total if steps is None else min(steps, total)))
    return {size: count * config.batch_size for size, count in sorted(sizes.items())}


def training_flops(config: TrainConfig, steps: int | None = None) -> int:
    """FLOPs of the run's first ``steps`` training steps (the whole run when None)."""
    return sum(images * image_flops(config.blocks, size) for size, images in images_at_each_size(config, steps).items())
