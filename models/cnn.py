"""FlexibleCNN: ResNet-style CNN, plain or residual, BasicBlock or Bottleneck, any number of stages.

As in kuangliu/pytorch-cifar, both blocks expose `expansion`. `residual=False` removes the shortcuts (He et al.'s
"plain" net). Shortcut "A" is He et al. 2016's parameter-free CIFAR shortcut (stride-2 subsampling + zero-padded
channels); "B" is a 1x1 conv + norm projection where the shape changes.
"""

import torch.nn.functional as F
from torch import nn


def _norm2d(norm, channels):
    return nn.BatchNorm2d(channels) if norm else nn.Identity()


class ShortcutA(nn.Module):
    """(B, C, H, W) -> (B, C_out, H/stride, W/stride) with zero channels appended; no parameters."""

    def __init__(self, in_planes, out_planes, stride):
        super().__init__()
        self.stride, self.pad = stride, out_planes - in_planes

    def forward(self, x):
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


def _shortcut(kind, in_planes, out_planes, stride, norm):
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    if kind == "A":
        return ShortcutA(in_planes, out_planes, stride)
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), _norm2d(norm, out_planes))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1, residual=True, norm=True, shortcut="B"):
        super().__init__()
        out = planes * self.expansion
        self.branch = nn.Sequential(
            nn.Conv2d(in_planes, planes, 3, stride, 1, bias=not norm),
            _norm2d(norm, planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(planes, out, 3, 1, 1, bias=not norm),
            _norm2d(norm, out),
        )
        self.shortcut = _shortcut(shortcut, in_planes, out, stride, norm) if residual else None

    def forward(self, x):
        y = self.branch(x)
        if self.shortcut is not None:
            y = y + self.shortcut(x)
        return F.relu(y)


class Bottleneck(BasicBlock):
    expansion = 4

    def __init__(self, in_planes, planes, stride=1, residual=True, norm=True, shortcut="B"):
        nn.Module.__init__(self)
        out = planes * self.expansion
        self.branch = nn.Sequential(
            nn.Conv2d(in_planes, planes, 1, bias=not norm),
            _norm2d(norm, planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(planes, planes, 3, stride, 1, bias=not norm),
            _norm2d(norm, planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(planes, out, 1, bias=not norm),
            _norm2d(norm, out),
        )
        self.shortcut = _shortcut(shortcut, in_planes, out, stride, norm) if residual else None


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class FlexibleCNN(nn.Module):
    """3x3 stem -> stages of `layers[i]` blocks with width * 2**i planes (stride 2 after the first) -> GAP -> linear."""

    def __init__(
        self,
        in_channels,
        num_classes,
        layers=(2, 2, 2, 2),
        block="basic",
        width=64,
        residual=True,
        norm=True,
        shortcut="B",
    ):
        super().__init__()
        if not layers or any(n < 1 for n in layers):
            raise ValueError(f"layers must be positive block counts, got {list(layers)}")
        block_cls = BLOCKS[block]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=not norm), _norm2d(norm, width), nn.ReLU(inplace=True)
        )
        stages, in_planes = [], width
        for i, n in enumerate(layers):
            planes = width * 2**i
            blocks = []
            for j in range(n):  # stride 2 opens every stage after the first
                blocks.append(block_cls(in_planes, planes, 2 if i > 0 and j == 0 else 1, residual, norm, shortcut))
                in_planes = planes * block_cls.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x):
        """(B, C, H, W) -> (B, final planes): pooled penultimate activations."""
        return self.stages(self.stem(x)).mean((2, 3))

    def forward(self, x):
        return self.head(self.features(x))
