"""The published CIFAR-10 ResNet: BasicBlocks with dropout after the residual add.

Module names match the published code, so its state_dict (``project1_model.pt``) loads here
without any key mapping and ours loads into its class.
"""

import torch
import torch.nn.functional as F
from torch import nn

STAGE_WIDTHS = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)
BLOCK_CHOICES = ((1, 1, 1, 1), (2, 2, 2, 2), (3, 3, 3, 3))
MAX_BLOCKS = 8  # per stage: the most a training config may ask for, so the most a weights file may hold
FEATURES = STAGE_WIDTHS[-1]  # the linear layer's inputs


class Dropout(nn.Dropout):
    """``nn.Dropout`` with a cheaper mask on the CPU, where it is a sixth of the training step.

    torch's CPU ``bernoulli_`` spends one Mersenne-twister draw and a float compare per element;
    here each 64-bit draw from the same generator (so ``torch.manual_seed`` still governs it) gives
    three 16-bit uniforms. The keep probability is therefore a multiple of 1/65536 (p = 0.1 keeps
    with 0.899994 instead of 0.9) and kept values are scaled by its inverse, so the expectation is
    unchanged. Elsewhere, and in eval mode, it is ``nn.Dropout`` exactly.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = round((1 - self.p) * 65536)
        dense = x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)
        if not self.training or keep >= 65536 or keep == 0 or x.device.type != "cpu" or not dense:
            return super().forward(x)  # p too close to 0 or 1 for 1/65536 steps: torch's own mask
        words = torch.empty((x.numel() + 2) // 3, dtype=torch.int64).random_()  # 63 random bits each
        uniform = words.view(torch.int16).view(-1, 4)[:, :3].reshape(-1)[: x.numel()]  # the low 48 bits
        mask = (uniform.int() < keep - 32768).as_strided(x.shape, x.stride())
        return x * mask.to(x.dtype) * (65536 / keep)


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = self.dropout(out + self.shortcut(x))
        return F.relu(out)


class ResNet(nn.Module):
    def __init__(self, blocks=(1, 1, 1, 1), dropout: float = 0.1, num_classes: int = 10):
        super().__init__()
        blocks = tuple(int(b) for b in blocks)
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"blocks must be four positive integers, got {blocks}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.blocks = blocks
        self.dropout = dropout
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        for index, (width, stride, count) in enumerate(zip(STAGE_WIDTHS, STAGE_STRIDES, blocks, strict=True)):
            layers = []
            for block_stride in [stride] + [1] * (count - 1):
                layers.append(BasicBlock(in_planes, width, block_stride, dropout))
                in_planes = width
            setattr(self, f"layer{index + 1}", nn.Sequential(*layers))
        self.linear = nn.Linear(FEATURES, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map (512 x 4 x 4 for a 32 x 32 input), used by Grad-CAM."""
        out = F.relu(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(out))))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        # The published avg_pool2d(4) on its 4 x 4 map, with the kernel taken from the map so that 16 and 24 px
        # training inputs (2 x 2 and 3 x 3 maps) pool globally too; at 32 px it is the published op, bit for bit.
        out = F.avg_pool2d(features, features.shape[-2:])
        return self.linear(out.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


def build_model(blocks=(1, 1, 1, 1), dropout: float = 0.1, num_classes: int = 10) -> ResNet:
    return ResNet(blocks=blocks, dropout=dropout, num_classes=num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def state_bytes(blocks, num_classes: int = 10) -> int:
    """The size of a network's state_dict in fp32, counted on the meta device (nothing is allocated)."""
    with torch.device("meta"):
        model = build_model(blocks, num_classes=num_classes)
    return sum(value.numel() * max(4, value.element_size()) for value in model.state_dict().values())
