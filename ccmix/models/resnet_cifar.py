"""ResNet-32 for 32x32 images, the encoder of the CIFAR-LT experiments.

The CIFAR ResNet of He et al. (CVPR 2016, section 4.2) as used by BCL (Zhu et
al., "Balanced Contrastive Learning for Long-Tailed Visual Recognition", CVPR
2022) and ConCutMix (Pan et al., "Enhanced Long-Tailed Recognition with
Contrastive CutMix Augmentation", IEEE TIP 2024): three stages of 16/32/64
channels, 5 basic blocks a stage, parameter-free option-A shortcuts, Kaiming
initialisation. The encoder returns the 64-d pooled feature; the classifier
lives in the BCL-style model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STAGE_WIDTHS = (16, 32, 64)


def kaiming_init(module: nn.Module) -> None:
    """Kaiming-normal initialise the weights of a Linear or Conv2d module (in place; returns None)."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.kaiming_normal_(module.weight)


class OptionAShortcut(nn.Module):
    """Parameter-free shortcut: subsample by 2 and zero-pad the channels (the ResNet paper's option A)."""

    def __init__(self, out_channels: int, in_channels: int):
        super().__init__()
        self.pad = (out_channels - in_channels) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return x (N, C_in, H, W) as (N, C_out, H/2, W/2): strided subsample, channels padded with zeros."""
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or option-A shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = OptionAShortcut(out_channels, in_channels)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the block output (N, C_out, H/stride, W/stride)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet encoder (6n+2 layers without the classifier); forward returns the pooled feature."""

    def __init__(self, blocks_per_stage: int = 5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, STAGE_WIDTHS[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0])
        stages = []
        in_channels = STAGE_WIDTHS[0]
        for index, width in enumerate(STAGE_WIDTHS):
            first_stride = 1 if index == 0 else 2
            blocks = []
            for block_index in range(blocks_per_stage):
                blocks.append(BasicBlock(in_channels, width, stride=first_stride if block_index == 0 else 1))
                in_channels = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.feature_dim = STAGE_WIDTHS[-1]
        self.apply(kaiming_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the globally average-pooled feature (N, 64) of images x (N, 3, H, W)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        # flatten (not view) so channels_last inputs work too
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


def resnet32() -> CifarResNet:
    """Return a ResNet-32 encoder (5 basic blocks a stage, 64-d output feature)."""
    return CifarResNet(blocks_per_stage=5)
