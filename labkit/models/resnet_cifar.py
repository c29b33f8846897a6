"""CIFAR ResNet-20 (He et al. 2016, §4.2) and its pre-activation variant (He et al. 2016, "Identity mappings").

Both networks are 6n+2 layers deep with n = 3: a 3x3 stem conv, three stages of three basic blocks at
16/32/64 channels (stride 2 at the start of stages 2 and 3), global average pooling and one linear layer.
Shortcuts that change shape use option A of the ResNet paper: subsample by the stride and pad the new
channels with zeros, so shortcuts hold no parameters and every weight lives in an ``nn.Conv2d`` or
``nn.Linear`` module that ``quantize_model`` can swap.

Every ReLU is its own ``nn.ReLU`` module (no reuse, no ``inplace=True``), so forward hooks and activation
quantizers see each activation exactly once and nothing overwrites a tensor a hook kept. ``quantize_model`` lets the
block-internal ``relu1`` run inside ``conv2``'s activation quantizer (:mod:`labkit.relu_absorption`; a ReLU that carries
a hook then stays, and ``absorb_relu=False`` keeps them all).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

STAGE_CHANNELS = (16, 32, 64)
BLOCKS_PER_STAGE = 3  # n in "6n + 2 layers": n = 3 gives ResNet-20


def scaled_channels(width_multiplier: float) -> tuple[int, int, int]:
    """Channel counts of the three stages for a width multiplier (1.0 gives 16/32/64)."""
    if not width_multiplier > 0:
        raise ValueError(f"width_multiplier must be > 0, got {width_multiplier!r}")
    return tuple(max(1, int(round(c * width_multiplier))) for c in STAGE_CHANNELS)


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: keep every ``stride``-th pixel and append zero channels up to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"option-A shortcut cannot shrink channels ({in_channels} -> {out_channels})")
        self.extra_channels = out_channels - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra_channels}"


def make_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """Identity when shapes match, otherwise the parameter-free option-A shortcut."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return ZeroPadShortcut(in_channels, out_channels, stride)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (a BatchNorm follows or precedes it)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Post-activation block: relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = make_shortcut(in_channels, out_channels, stride)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class PreActBasicBlock(nn.Module):
    """Pre-activation block: conv(relu(bn(conv(relu(bn(x)))))) + shortcut(x), a clean identity path."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        self.conv2 = conv3x3(out_channels, out_channels)
        self.shortcut = make_shortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu1(self.bn1(x)))
        out = self.conv2(self.relu2(self.bn2(out)))
        return out + self.shortcut(x)


def kaiming_init(model: nn.Module) -> None:
    """He init (fan_out, ReLU gain) for convs, BatchNorm as identity; linear layers keep PyTorch's default."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs with 6n+2 layers; ``preactivation`` picks the "Identity mappings" ordering.

    Modules are registered in execution order (``conv1`` first, ``fc`` last), so "the first and the
    last layer" of the network are the first and last ``nn.Conv2d``/``nn.Linear`` in ``named_modules()``.
    """

    #: The shape of one input image (C, H, W): what ``labkit.quantize_model`` probes with when no example is given.
    input_shape = (3, 32, 32)

    def __init__(
        self,
        num_classes: int = 10,
        width_multiplier: float = 1.0,
        blocks_per_stage: int = BLOCKS_PER_STAGE,
        preactivation: bool = False,
    ):
        super().__init__()
        if blocks_per_stage < 1:
            raise ValueError(f"blocks_per_stage must be >= 1, got {blocks_per_stage!r}")
        channels = scaled_channels(width_multiplier)
        block = PreActBasicBlock if preactivation else BasicBlock
        self.preactivation = preactivation

        self.conv1 = conv3x3(3, channels[0])
        if not preactivation:  # pre-activation blocks start with their own BN-ReLU
            self.bn1 = nn.BatchNorm2d(channels[0])
            self.relu1 = nn.ReLU()
        in_channels = channels[0]
        for stage, out_channels in enumerate(channels, start=1):
            blocks = []
            for index in range(blocks_per_stage):
                stride = 2 if stage > 1 and index == 0 else 1
                blocks.append(block(in_channels, out_channels, stride))
                in_channels = out_channels
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
        if preactivation:  # the last block's output has not been normalised yet
            self.bn_final = nn.BatchNorm2d(in_channels)
            self.relu_final = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_channels, num_classes)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if not self.preactivation:
            x = self.relu1(self.bn1(x))
        x = self.layer3(self.layer2(self.layer1(x)))
        if self.preactivation:
            x = self.relu_final(self.bn_final(x))
        return self.fc(self.flatten(self.pool(x)))


def resnet20(num_classes: int = 10, width_multiplier: float = 1.0) -> CifarResNet:
    """CIFAR ResNet-20 (He et al. 2016): 0.27 M parameters at width 1 and 10 classes."""
    return CifarResNet(num_classes=num_classes, width_multiplier=width_multiplier, preactivation=False)


def preact_resnet20(num_classes: int = 10, width_multiplier: float = 1.0) -> CifarResNet:
    """Pre-activation CIFAR ResNet-20 (He et al. 2016, "Identity mappings"): BN-ReLU-conv ordering."""
    return CifarResNet(num_classes=num_classes, width_multiplier=width_multiplier, preactivation=True)
