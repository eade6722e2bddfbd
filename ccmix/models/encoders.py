"""Encoders by name: ResNet-32 (CIFAR) and torchvision's ResNet-50 / ResNeXt-50 (32x4d).

The ImageNet-scale encoders of ConCutMix (Pan et al., "Enhanced Long-Tailed
Recognition with Contrastive CutMix Augmentation", IEEE TIP 2024) and BCL (Zhu
et al., CVPR 2022). They start from random weights (nothing is downloaded) and
their fc layer is replaced by the identity, so forward returns the 2048-d
pooled feature.
"""

from __future__ import annotations

from torch import nn
from torchvision import models as tv_models

from ccmix.config import ARCHS
from ccmix.models.resnet_cifar import resnet32

ENCODERS = ARCHS  # the encoders build exactly the architectures a config accepts


def _torchvision_encoder(constructor) -> tuple[nn.Module, int]:
    network = constructor(weights=None)
    feature_dim = network.fc.in_features
    network.fc = nn.Identity()
    return network, feature_dim


def build_encoder(arch: str) -> tuple[nn.Module, int]:
    """Return (encoder, feature dimension F) for ``arch``; encoder(x: (N,3,H,W)) -> (N, F)."""
    if arch == "resnet32":
        encoder = resnet32()
        return encoder, encoder.feature_dim
    if arch == "resnet50":
        return _torchvision_encoder(tv_models.resnet50)
    if arch == "resnext50":
        return _torchvision_encoder(tv_models.resnext50_32x4d)
    raise ValueError(f"arch {arch!r} is not accepted; choose one of: {', '.join(ENCODERS)}")
