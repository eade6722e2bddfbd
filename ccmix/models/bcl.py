"""The BCL-style model: encoder, projection head, classifier and class-centre head.

Follows BCL (Zhu et al., "Balanced Contrastive Learning for Long-Tailed Visual
Recognition", CVPR 2022) as used by ConCutMix (Pan et al., "Enhanced
Long-Tailed Recognition with Contrastive CutMix Augmentation", IEEE TIP 2024):

- projection head g: Linear(F, hidden) -> BatchNorm1d -> ReLU -> Linear(hidden, feat_dim);
- classifier: linear, or cosine (normalised features and weight rows, times a scale);
- centre head g_c, the same shape as g, applied to the classifier's weight matrix
  (C, F), so that the centre of class c is g_c(w_c): one centre per class.
  (The public reference transposes a linear classifier's weight here, which gives
  F rows that are not per-class centres; the design intent is one centre per class.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ccmix.config.fields import CLASSIFIERS
from ccmix.models.encoders import ENCODERS, build_encoder, load_pretrained

# Hidden width of the projection and centre heads per encoder (docs/method.md).
HEAD_HIDDEN = {"resnet32": 512, "resnet50": 2048, "resnext50": 2048, "resnet152": 2048, "resnext101": 2048, "tiny": 32}


@dataclass
class ModelOutput:
    """Everything one forward pass produces (N images, C classes, F encoder features, D = feat_dim)."""

    logits: torch.Tensor  # (N, C) raw classifier logits
    features: torch.Tensor  # (N, F) encoder features
    embedding: torch.Tensor  # (N, D) L2-normalised projection
    embedding_raw: torch.Tensor  # (N, D) projection before normalisation
    centers: torch.Tensor  # (C, D) L2-normalised class centres
    centers_raw: torch.Tensor  # (C, D) class centres before normalisation


def projection_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Return the MLP Linear(in, hidden) -> BatchNorm1d -> ReLU -> Linear(hidden, out)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim),
    )


class CosineClassifier(nn.Module):
    """Cosine classifier: scale * <h / ||h||, w_c / ||w_c||>; weight (C, F), no bias."""

    def __init__(self, in_features: int, num_classes: int, scale: float = 30.0):
        super().__init__()
        self.scale = float(scale)
        weight = torch.empty(num_classes, in_features).uniform_(-1.0, 1.0)
        self.weight = nn.Parameter(F.normalize(weight, dim=1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return logits (N, C) of features (N, F): scaled cosine similarity to each class weight."""
        return self.scale * F.normalize(features, dim=1) @ F.normalize(self.weight, dim=1).t()


class BCLModel(nn.Module):
    """Encoder + projection head + classifier + centre head; forward returns a ModelOutput."""

    def __init__(
        self,
        encoder: nn.Module,
        feature_dim: int,
        num_classes: int,
        feat_dim: int = 128,
        hidden_dim: int = 512,
        classifier: str = "linear",
        cosine_scale: float = 30.0,
    ):
        super().__init__()
        if classifier not in CLASSIFIERS:
            raise ValueError(f"classifier {classifier!r} is not accepted; choose one of: {', '.join(CLASSIFIERS)}")
        if not (isinstance(num_classes, int) and num_classes >= 1):
            raise ValueError(f"num_classes={num_classes!r} is not accepted; it must be an integer >= 1")
        self.encoder = encoder
        self.num_classes = num_classes
        self.classifier_kind = classifier
        self.head = projection_head(feature_dim, hidden_dim, feat_dim)
        self.center_head = projection_head(feature_dim, hidden_dim, feat_dim)
        if classifier == "linear":
            self.classifier: nn.Module = nn.Linear(feature_dim, num_classes)
        else:
            self.classifier = CosineClassifier(feature_dim, num_classes, scale=cosine_scale)

    def class_centers_raw(self) -> torch.Tensor:
        """Return the unnormalised class centres (C, D): row c is g_c(w_c)."""
        return self.center_head(self.classifier.weight)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        """Return the ModelOutput of images x (N, 3, H, W)."""
        features = self.encoder(x)
        embedding_raw = self.head(features)
        centers_raw = self.class_centers_raw()
        return ModelOutput(
            logits=self.classifier(features),
            features=features,
            embedding=F.normalize(embedding_raw, dim=1),
            embedding_raw=embedding_raw,
            centers=F.normalize(centers_raw, dim=1),
            centers_raw=centers_raw,
        )

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Return the raw logits (N, C) of images x (N, 3, H, W), skipping both heads."""
        return self.classifier(self.encoder(x))


def build_model(
    arch: str,
    num_classes: int,
    feat_dim: int = 128,
    classifier: str = "linear",
    cosine_scale: float = 30.0,
    pretrained: str | None = None,
) -> BCLModel:
    """Return a freshly initialised BCLModel for ``arch`` (one of ENCODERS).

    Initialisation as published: the encoder's own (Kaiming-normal convolutions in
    ResNet-32, torchvision's scheme in the ImageNet encoders); heads and classifier keep
    PyTorch's default ``nn.Linear`` init. ``pretrained``: a local file of
    torchvision-format encoder weights to start from (``encoders.load_pretrained``).
    """
    if arch not in ENCODERS:
        raise ValueError(f"arch {arch!r} is not accepted; choose one of: {', '.join(ENCODERS)}")
    if classifier not in CLASSIFIERS:
        raise ValueError(f"classifier {classifier!r} is not accepted; choose one of: {', '.join(CLASSIFIERS)}")
    encoder, feature_dim = build_encoder(arch)
    if pretrained is not None:
        load_pretrained(encoder, pretrained)
    return BCLModel(
        encoder, feature_dim, num_classes, feat_dim=feat_dim, hidden_dim=HEAD_HIDDEN[arch],
        classifier=classifier, cosine_scale=cosine_scale,
    )
