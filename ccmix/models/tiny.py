"""A tiny convolutional encoder (arch ``tiny``) for fast tests and smoke runs, not for results.

It stands in for ResNet-32 wherever a check needs "a model" and not the
architecture of the experiments: engine, notebook, sweep and widget tests,
and quick end-to-end tries of the command line. It plugs into the BCL-style
model of ConCutMix (Pan et al., "Enhanced Long-Tailed Recognition with
Contrastive CutMix Augmentation", IEEE TIP 2024) like the real encoders, but
has a few thousand parameters, so accuracies it reaches say nothing about the
method. The encoders of the experiments are in ``resnet_cifar`` and
``encoders``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ccmix.models.resnet_cifar import kaiming_init

TINY_WIDTH = 16


class TinyEncoder(nn.Module):
    """Two stride-2 3x3 conv-BN-ReLU layers (width/2, then width channels) and global average pooling."""

    def __init__(self, width: int = TINY_WIDTH):
        super().__init__()
        hidden = width // 2
        self.layers = nn.Sequential(
            nn.Conv2d(3, hidden, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, width, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        self.feature_dim = width
        self.apply(kaiming_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the pooled feature (N, width) of images x (N, 3, H, W)."""
        # flatten (not view) so channels_last inputs work too
        return F.adaptive_avg_pool2d(self.layers(x), 1).flatten(1)


def tiny() -> TinyEncoder:
    """Return a tiny test encoder with a 16-d output feature (for fast tests and smoke runs, not for results)."""
    return TinyEncoder(width=TINY_WIDTH)
