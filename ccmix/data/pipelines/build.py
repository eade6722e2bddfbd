"""Choice of the training pipeline: classic (PIL workers) or fast (batched on the device).

Both produce the pair batches of Contrastive CutMix (Pan et al., "Enhanced Long-Tailed
Recognition with Contrastive CutMix Augmentation", IEEE TIP 2024) with the same
contract; the fast one is imported only when it is chosen. On the CPU the fast one builds each
batch with one torch intra-op thread (``ccmix.data.pipelines.threads``).
"""

from __future__ import annotations

import torch

from ccmix.config.fields import PIPELINES, TrainConfig
from ccmix.config.rules import ConfigError


def resolve_pipeline(pipeline: str, device: torch.device | str) -> str:
    """Return ``classic`` or ``fast``: ``pipeline`` itself, or for ``auto`` fast on CUDA and classic otherwise."""
    return resolve_by_device("pipeline", pipeline, PIPELINES, device, on_cuda="fast", elsewhere="classic")


def resolve_by_device(field: str, value: str, choices, device: torch.device | str, on_cuda: str,
                      elsewhere: str) -> str:
    """Return ``value`` of the runtime ``field``, or for ``auto`` ``on_cuda`` on CUDA and ``elsewhere`` otherwise."""
    if value not in choices:
        raise ConfigError(f"{field} {value!r} is not accepted; choose one of: {', '.join(choices)}")
    if value == "auto":
        return on_cuda if torch.device(device).type == "cuda" else elsewhere
    return value


def build_train_pipeline(train, config: TrainConfig, device: torch.device | str):
    """Return the training pipeline (``steps_per_epoch``, ``batches(epoch, rank, world_size)``) for ``config``.

    The fast pipeline is a ``FastTrainPipeline`` that, on the CPU, builds each batch under one intra-op thread,
    or for the ImageNet recipe on image files a ``FastImageNetPipeline``, whose DataLoader workers build whole
    steps on the CPU.
    """
    device = torch.device(device)
    if resolve_pipeline(config.pipeline, device) == "fast":
        if config.resolved_view_recipe == "imagenet" and hasattr(train, "paths"):  # image files: bytes, then views
            from ccmix.data.pipelines.fast_imagenet import FastImageNetPipeline

            # on the CPU every worker builds whole steps: 2 cores, 256 pairs a step, 2.0x the views/s of building
            # them in the main process from bytes the workers read (bench --recipe imagenet)
            return FastImageNetPipeline(train, config, device,
                                        build_in_workers=device.type == "cpu" and config.num_workers >= 1)
        from ccmix.data.pipelines.threads import CpuFastTrainPipeline

        return CpuFastTrainPipeline(train, config, device)
    from ccmix.data.pipelines.classic import ClassicTrainPipeline

    return ClassicTrainPipeline(train, config, device)


__all__ = ["resolve_pipeline", "build_train_pipeline"]
