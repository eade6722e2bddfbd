"""Encoders by name: ResNet-32 (CIFAR) and torchvision's ResNet-50/152 and ResNeXt-50 (32x4d)/101 (32x8d).

The ImageNet-scale encoders of ConCutMix (Pan et al., "Enhanced Long-Tailed
Recognition with Contrastive CutMix Augmentation", IEEE TIP 2024) and BCL (Zhu
et al., CVPR 2022). They start from random weights with torchvision's
initialisation (nothing is downloaded), or from a local file of torchvision-format
weights (``load_pretrained``); their fc layer is replaced by the identity, so
forward returns the 2048-d pooled feature. The published code names ResNet-152
and ResNeXt-101 without defining them; ResNeXt-101 here is torchvision's 32x8d.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torchvision import models as tv_models

from ccmix.config.fields import ARCHS
from ccmix.models.resnet_cifar import resnet32
from ccmix.models.tiny import tiny

ENCODERS = ARCHS  # the encoders build exactly the architectures a config accepts
_TORCHVISION = {
    "resnet50": tv_models.resnet50, "resnext50": tv_models.resnext50_32x4d,
    "resnet152": tv_models.resnet152, "resnext101": tv_models.resnext101_32x8d,
}


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
    if arch in _TORCHVISION:
        return _torchvision_encoder(_TORCHVISION[arch])
    if arch == "tiny":  # fast tests and smoke runs only
        encoder = tiny()
        return encoder, encoder.feature_dim
    raise ValueError(f"arch {arch!r} is not accepted; choose one of: {', '.join(ENCODERS)}")


def _describe(keys: list[str]) -> str:
    """Return up to three keys and how many more, for an error sentence."""
    shown = ", ".join(keys[:3])
    return shown + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def load_pretrained(encoder: nn.Module, path: str) -> None:
    """Load torchvision-format weights from the local file ``path`` into ``encoder`` (in place; returns None).

    The file holds a state dict (``torch.save(model.state_dict())`` of a torchvision
    network, or a dict with it under "state_dict"), read with ``weights_only=True``;
    the ImageNet classifier ("fc.*") is dropped and a "module." prefix is removed. A
    missing file, or keys or shapes that differ from the encoder, raise one ValueError
    sentence naming what differs.
    """
    if not os.path.isfile(path):
        raise ValueError(f"pretrained={path!r} is not accepted; the file does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable or not a tensor-only checkpoint
        raise ValueError(f"pretrained={path!r} is not accepted; it is not a readable weights file ({exc})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"pretrained={path!r} is not accepted; it does not hold a state dict of tensors")
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    state = {key: value for key, value in state.items() if not key.startswith("fc.")}
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    reshaped = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or reshaped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} encoder keys are missing ({_describe(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} keys are not in the encoder ({_describe(unexpected)})")
        if reshaped:
            first = reshaped[0]
            parts.append(f"{len(reshaped)} shapes differ ({first}: file {tuple(state[first].shape)}, "
                         f"encoder {tuple(expected[first].shape)})")
        raise ValueError(f"pretrained={path!r} does not fit this encoder: {'; '.join(parts)}")
    encoder.load_state_dict(state)
