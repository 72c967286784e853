"""PyTorch teachers for the import tests, written from the architectures' published structure.

- torchvision ResNet-18/34 (He et al. 2016 as torchvision builds it): conv7x7/2 + BN + ReLU,
  max-pool 3x3/2, four stages of post-activation basic blocks, adaptive average pool, fc;
  module names ``conv1, bn1, layer{1-4}.{i}.{conv1,bn1,conv2,bn2,downsample.{0,1}}, fc``.
- The SASTC release's CIFAR teachers (ieveresthd/SASTC, ``CIFAR10/models/ann/``):
  ``resnet19`` (stem ``layer0``, blocks split in ``part1`` = conv-BN-ReLU and ``part2`` =
  conv-BN + shortcut ``downsample`` + ReLU, classifier ``layer4`` = 8x8 average pool,
  flatten, linear), ``wrn_28_4`` (pre-activation blocks ``block{s}.layer.{i}`` with a 1x1
  ``convShortcut`` of the pre-activated input where the width changes) and PyramidNet-20 with
  alpha 200 (blocks BN-conv-BN-ReLU-conv-BN, 2x2 ceil-mode average pool and zero-channel
  padding on the shortcut).

Every model's ``forward`` returns ``(logits, taps)``, the taps being the stage outputs that
our models sow. Only the module names and the computation matter to the tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


def conv_bn_shortcut(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


# ------------------------------------------------------------------------ torchvision


class TorchvisionBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = conv3x3(cin, cout, stride), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = conv3x3(cout, cout), nn.BatchNorm2d(cout)
        self.downsample = conv_bn_shortcut(cin, cout, stride)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class TorchvisionResNet(nn.Module):
    def __init__(self, blocks: tuple[int, ...], num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for stage, (count, width) in enumerate(zip(blocks, (64, 128, 256, 512), strict=True)):
            stride = 1 if stage == 0 else 2
            layers = [
                TorchvisionBlock(cin if i == 0 else width, width, stride if i == 0 else 1)
                for i in range(count)
            ]
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layers))
            cin = width
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        taps = []
        for stage in range(1, 5):
            x = getattr(self, f"layer{stage}")(x)
            taps.append(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)), taps


def torchvision_resnet18(num_classes: int = 1000) -> TorchvisionResNet:
    return TorchvisionResNet((2, 2, 2, 2), num_classes)


def torchvision_resnet34(num_classes: int = 1000) -> TorchvisionResNet:
    return TorchvisionResNet((3, 4, 6, 3), num_classes)


# ------------------------------------------------------------------ release ResNet-19


class ConvBNReLU(nn.Module):
    """The release's first half of a block: attributes ``conv``, ``bn``."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv, self.bn = conv3x3(cin, cout, stride), nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class ConvBNAddReLU(nn.Module):
    """The release's second half: ``conv``, ``bn``, the shortcut ``downsample``, sum, ReLU."""

    def __init__(self, width: int, downsample: nn.Module | None):
        super().__init__()
        self.conv, self.bn = conv3x3(width, width), nn.BatchNorm2d(width)
        self.downsample = downsample

    def forward(self, x, identity):
        shortcut = identity if self.downsample is None else self.downsample(identity)
        return F.relu(self.bn(self.conv(x)) + shortcut)


class Release19Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.part1 = ConvBNReLU(cin, cout, stride)
        self.part2 = ConvBNAddReLU(cout, conv_bn_shortcut(cin, cout, stride))

    def forward(self, x):
        return self.part2(self.part1(x), x)


class ReleaseResNet19(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.layer0 = nn.Sequential(conv3x3(3, 64), nn.BatchNorm2d(64), nn.ReLU())
        cin = 64
        for stage, (count, width, stride) in enumerate(((3, 128, 1), (3, 256, 2), (2, 512, 2))):
            layers = [
                Release19Block(cin if i == 0 else width, width, stride if i == 0 else 1)
                for i in range(count)
            ]
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layers))
            cin = width
        self.layer4 = nn.Sequential(
            nn.AvgPool2d(8, stride=1), nn.Flatten(1), nn.Linear(512, num_classes)
        )

    def forward(self, x):
        x = self.layer0(x)
        taps = []
        for stage in (1, 2, 3):
            x = getattr(self, f"layer{stage}")(x)
            taps.append(x)
        return self.layer4(x), taps


# --------------------------------------------------------------------- release WRN-28-4


class WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), conv3x3(cin, cout, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), conv3x3(cout, cout)
        self.convShortcut = None if cin == cout else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        preact = F.relu(self.bn1(x))
        shortcut = x if self.convShortcut is None else self.convShortcut(preact)
        return shortcut + self.conv2(F.relu(self.bn2(self.conv1(preact))))


class WideStage(nn.Module):
    def __init__(self, count: int, cin: int, cout: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(
            *[
                WideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                for i in range(count)
            ]
        )

    def forward(self, x):
        return self.layer(x)


class ReleaseWRN(nn.Module):
    def __init__(self, depth: int = 28, widen_factor: int = 4, num_classes: int = 10):
        super().__init__()
        count = (depth - 4) // 6
        widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = conv3x3(3, 16)
        self.block1 = WideStage(count, 16, widths[0], 1)
        self.block2 = WideStage(count, widths[0], widths[1], 2)
        self.block3 = WideStage(count, widths[1], widths[2], 2)
        self.bn1 = nn.BatchNorm2d(widths[2])
        self.fc = nn.Linear(widths[2], num_classes)

    def forward(self, x):
        x = self.conv1(x)
        taps = []
        for stage in (self.block1, self.block2, self.block3):
            x = stage(x)
            taps.append(x)
        x = F.avg_pool2d(F.relu(self.bn1(x)), 8)
        return self.fc(x.flatten(1)), taps


# ------------------------------------------------------------------ release PyramidNet


class PyramidBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), conv3x3(cin, cout, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), conv3x3(cout, cout)
        self.bn3 = nn.BatchNorm2d(cout)
        self.stride = stride

    def forward(self, x):
        y = self.bn3(self.conv2(F.relu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = F.avg_pool2d(x, 2, 2, ceil_mode=True) if self.stride != 1 else x
        return y + F.pad(shortcut, (0, 0, 0, 0, 0, y.shape[1] - shortcut.shape[1]))


class ReleasePyramidNet(nn.Module):
    def __init__(self, depth: int = 20, alpha: float = 200.0, num_classes: int = 10):
        super().__init__()
        count = (depth - 2) // 6
        step = alpha / (3 * count)
        self.conv1, self.bn1 = conv3x3(3, 16), nn.BatchNorm2d(16)
        width, cin = 16.0, 16
        for stage, stride in enumerate((1, 2, 2)):
            layers = []
            for i in range(count):
                width += step
                layers.append(PyramidBlock(cin, round(width), stride if i == 0 else 1))
                cin = round(width)
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layers))
        self.bn_final = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.bn1(self.conv1(x))
        taps = []
        for stage in (1, 2, 3):
            x = getattr(self, f"layer{stage}")(x)
            taps.append(x)
        x = F.avg_pool2d(F.relu(self.bn_final(x)), 8)
        return self.fc(x.flatten(1)), taps


# ----------------------------------------------------------------------------- weights


def randomize(model: nn.Module, generator: torch.Generator, image_size: int = 32) -> nn.Module:
    """Random weights and non-trivial batch-norm statistics; returns the model in eval mode.

    Running statistics are those of one random batch (``momentum=None`` makes them the
    batch's own), then perturbed, and the BN affine parameters are random, so every
    statistic differs from its initial 0 / 1.
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = None
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0.0, 0.2, generator=generator)
            elif isinstance(module, nn.Linear):
                module.bias.normal_(0.0, 0.1, generator=generator)
        model.train()
        model(torch.randn(4, 3, image_size, image_size, generator=generator))
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.add_(
                    0.1 * torch.randn(module.num_features, generator=generator)
                )
                module.running_var.mul_(
                    torch.empty(module.num_features).uniform_(0.7, 1.3, generator=generator)
                )
    return model.eval()
