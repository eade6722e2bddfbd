"""Choice of the training pipeline: classic (PIL workers) or fast (batched on the device).

Both produce the pair batches of Contrastive CutMix (Pan et al., "Enhanced Long-Tailed
Recognition with Contrastive CutMix Augmentation", IEEE TIP 2024) with the same
contract; the fast one is imported only when it is chosen.
"""

from __future__ import annotations

import torch

from ccmix.config.fields import PIPELINES, TrainConfig
from ccmix.config.rules import ConfigError


def resolve_pipeline(pipeline: str, device: torch.device | str) -> str:
    """Return ``classic`` or ``fast``: ``pipeline`` itself, or for ``auto`` fast on CUDA and classic otherwise."""
    if pipeline not in PIPELINES:
        raise ConfigError(f"pipeline {pipeline!r} is not accepted; choose one of: {', '.join(PIPELINES)}")
    if pipeline == "auto":
        return "fast" if torch.device(device).type == "cuda" else "classic"
    return pipeline


def build_train_pipeline(train, config: TrainConfig, device: torch.device | str):
    """Return the training pipeline (``steps_per_epoch``, ``batches(epoch, rank, world_size)``) for ``config``."""
    device = torch.device(device)
    if resolve_pipeline(config.pipeline, device) == "fast":
        from ccmix.data.pipelines.fast import FastTrainPipeline

        return FastTrainPipeline(train, config, device)
    from ccmix.data.pipelines.classic import ClassicTrainPipeline

    return ClassicTrainPipeline(train, config, device)


__all__ = ["resolve_pipeline", "build_train_pipeline"]
