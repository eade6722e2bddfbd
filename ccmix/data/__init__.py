"""Long-tailed data for Contrastive CutMix: subsets, datasets, sample streams, views and train pipelines.

Implements the data side of Pan et al., "Enhanced Long-Tailed Recognition with
Contrastive CutMix Augmentation" (IEEE TIP 2024): seeded CIFAR-LT subsets, an
instance-uniform background stream and a class-balanced foreground stream, and the
classification and contrastive views of balanced contrastive learning (Zhu et al.,
CVPR 2022).

Submodules load on first use, so importing this package does not import torchvision.
"""

from __future__ import annotations

import importlib

from ccmix.data.longtail import longtail_counts, longtail_indices

# public name -> submodule that defines it (loaded lazily)
_LAZY = {
    "build_datasets": "datasets",
    "DataUnavailableError": "datasets",
    "LabelledImages": "datasets",
    "ArrayImages": "datasets",
    "FileImages": "datasets",
    "foreground_class_probabilities": "streams",
    "sample_epoch_indices": "streams",
    "epoch_generator": "streams",
    "normalization": "views",
    "classification_view": "views",
    "contrastive_view": "views",
    "test_view": "views",
    "ClassicTrainPipeline": "classic",
    "build_train_pipeline": "pipeline",
    "data_identity": "identity",
    "identity_differences": "identity",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"ccmix.data.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ccmix.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["longtail_counts", "longtail_indices", *_LAZY]
