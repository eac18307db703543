"""PyTorch CIFAR ResNet-20 (option A shortcuts) with ShrinkBench's masked layers, for benchmarks.

ShrinkBench finetunes a pruned model by replacing each ``Conv2d``/``Linear`` with a masked
version whose forward computes ``weight * mask`` (and ``bias * mask``) on every call; the
optimizer updates the dense weights, whose pruned entries get zero gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MaskedConv2d(nn.Conv2d):
    """``Conv2d`` computing ``weight * weight_mask`` in forward, like ShrinkBench's MaskedModule."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("weight_mask", torch.ones_like(self.weight))

    def forward(self, x):
        return self._conv_forward(x, self.weight * self.weight_mask, self.bias)


class MaskedLinear(nn.Linear):
    """``Linear`` computing ``weight * weight_mask`` and ``bias * bias_mask`` in forward."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("weight_mask", torch.ones_like(self.weight))
        self.register_buffer("bias_mask", torch.ones_like(self.bias))

    def forward(self, x):
        return F.linear(x, self.weight * self.weight_mask, self.bias * self.bias_mask)


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = MaskedConv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = MaskedConv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes // 4 if stride != 1 or in_planes != planes else 0

    def shortcut(self, x):
        if not self.pad:
            return x
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = MaskedConv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        self.linear = MaskedLinear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        out = self.blocks(F.relu(self.bn1(self.conv1(x))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def masked_resnet20(keep: float = 0.25, seed: int = 0) -> ResNet20:
    """A ResNet-20 whose convolutions keep a random ``keep`` fraction of their weights."""
    model = ResNet20()
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, MaskedConv2d):
            m.weight_mask.copy_((torch.rand(m.weight.shape, generator=gen) < keep).float())
    return model
