"""The two sample streams of Contrastive CutMix: instance-uniform backgrounds, class-balanced foregrounds.

Pan et al., "Enhanced Long-Tailed Recognition with Contrastive CutMix Augmentation"
(IEEE TIP 2024) pair each background image A, drawn by ordinary shuffling, with a
foreground image B drawn class-balanced (a class uniformly, then an image of it); the
CutMix box of B is pasted into A (Yun et al., "CutMix", ICCV 2019). ``reverse``
(class probability ∝ 1/N_c) and ``uniform`` (∝ N_c, i.e. instance-uniform) are the
alternative foreground samplers; ``balanced`` and ``reverse`` backgrounds are the
published code's background-stream ablation.

Sampling is vectorised with torch and draws only from the generator it is given, so an
epoch's indices are a pure function of ``epoch_generator(seed, epoch)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ccmix.config.fields import BACKGROUND_SAMPLERS, FOREGROUND_SAMPLERS
from ccmix.rng import torch_generator


def foreground_class_probabilities(class_counts: Sequence[int] | torch.Tensor, sampler: str) -> torch.Tensor:
    """Return the foreground stream's class probabilities, float64 (C,) summing to 1.

    balanced: uniform over the classes that have images; reverse: ∝ 1/N_c; uniform: ∝ N_c.
    A class without training images always gets probability 0.
    """
    if sampler not in FOREGROUND_SAMPLERS:
        raise ValueError(f"foreground sampler {sampler!r} is not accepted; choose one of: {', '.join(FOREGROUND_SAMPLERS)}")
    counts = torch.as_tensor(class_counts, dtype=torch.float64).reshape(-1)
    if counts.numel() == 0 or (counts < 0).any() or counts.sum() <= 0:
        raise ValueError(f"class_counts={counts.tolist()} is not accepted; give non-negative counts with a positive sum")
    present = counts > 0
    if sampler == "balanced":
        weights = present.to(torch.float64)
    elif sampler == "reverse":
        weights = torch.where(present, 1.0 / counts.clamp(min=1.0), torch.zeros_like(counts))
    else:
        weights = counts
    return weights / weights.sum()


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """Return a CPU torch.Generator seeded deterministically (and well mixed) from ``(seed, epoch)``."""
    return torch_generator(seed, epoch)


def _as_targets(targets: Sequence[int] | torch.Tensor) -> torch.Tensor:
    labels = torch.as_tensor(targets, dtype=torch.int64).reshape(-1)
    if labels.numel() == 0:
        raise ValueError("targets is empty; the sample streams need at least one training image")
    return labels


def _draw_by_class(labels: torch.Tensor, counts: torch.Tensor, probabilities: torch.Tensor, count: int,
                   generator: torch.Generator) -> torch.Tensor:
    """Return ``count`` dataset indices: per item a class drawn with ``probabilities`` (C,), then one of its images.

    Draw order on ``generator``: the classes, then the within-class positions.
    """
    classes = torch.multinomial(probabilities, count, replacement=True, generator=generator)
    # Images sorted by class: class c occupies positions offsets[c] .. offsets[c] + counts[c] - 1.
    by_class = torch.argsort(labels, stable=True)
    offsets = torch.cumsum(counts, 0) - counts
    class_sizes = counts[classes]
    uniform = torch.rand(count, generator=generator, dtype=torch.float64)
    position = torch.minimum((uniform * class_sizes).long(), class_sizes - 1)
    return by_class[offsets[classes] + position]


def sample_epoch_indices(
    targets: Sequence[int] | torch.Tensor,
    num_classes: int,
    batch_size: int,
    foreground: str | torch.Tensor,
    generator: torch.Generator,
    need_foreground: bool = True,
    background: str = "uniform",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return one epoch's (background, foreground) dataset indices, int64 (steps, batch_size) each.

    background: with the ``uniform`` sampler a fresh permutation of the N training images
    cut into ``steps = N // batch_size`` full batches (one batch of all N images when N <
    batch_size); with ``balanced`` or ``reverse`` (the published background ablation) as
    many items, each a class drawn with that sampler's probabilities
    (``foreground_class_probabilities``), then one of its images uniformly.
    foreground: per item independently, a class drawn with the probabilities of the
    sampler ``foreground`` (a name, or a (C,) probability tensor), then one image of that
    class uniformly; None when ``need_foreground`` is False (and nothing is drawn for it).
    Draw order on ``generator``: background, foreground classes, within-class positions.
    """
    labels = _as_targets(targets)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is not accepted; it must be an integer >= 1")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"targets must lie in 0..{num_classes - 1} (num_classes={num_classes})")
    if background not in BACKGROUND_SAMPLERS:
        raise ValueError(f"background sampler {background!r} is not accepted; "
                         f"choose one of: {', '.join(BACKGROUND_SAMPLERS)}")
    total = labels.numel()
    width = min(batch_size, total)
    steps = total // width
    counts = torch.bincount(labels, minlength=num_classes)
    if background == "uniform":
        background_indices = torch.randperm(total, generator=generator)[: steps * width]
    else:
        background_probabilities = foreground_class_probabilities(counts, background)
        background_indices = _draw_by_class(labels, counts, background_probabilities, steps * width, generator)
    background_indices = background_indices.reshape(steps, width)
    if not need_foreground:
        return background_indices, None

    if isinstance(foreground, str):
        probabilities = foreground_class_probabilities(counts, foreground)
    else:
        probabilities = torch.as_tensor(foreground, dtype=torch.float64).reshape(-1)
        if probabilities.numel() != num_classes or (probabilities < 0).any() or probabilities.sum() <= 0:
            raise ValueError(f"foreground probabilities must be {num_classes} non-negative numbers with a positive sum")
        if (probabilities[counts == 0] > 0).any():
            raise ValueError("foreground probabilities give weight to a class that has no training image")
    foreground_indices = _draw_by_class(labels, counts, probabilities, steps * width, generator)
    return background_indices, foreground_indices.reshape(steps, width)


__all__ = ["BACKGROUND_SAMPLERS", "FOREGROUND_SAMPLERS", "foreground_class_probabilities", "epoch_generator",
           "sample_epoch_indices"]
