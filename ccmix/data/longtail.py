"""Long-tailed subsets of balanced datasets: per-class counts and the seeded choice of images.

The exponential profile and the seeded subset convention are those of the CIFAR-LT
benchmarks used by Contrastive CutMix (Pan et al., "Enhanced Long-Tailed Recognition
with Contrastive CutMix Augmentation", IEEE TIP 2024) and by balanced contrastive
learning (Zhu et al., "Balanced Contrastive Learning for Long-Tailed Visual
Recognition", CVPR 2022): ``numpy.random.seed(seed)``, then for each class in
increasing order shuffle that class's indices (in dataset order) with
``numpy.random.shuffle`` and keep the first n_c. Seed 10 reproduces the ConCutMix
subsets (12,406 CIFAR-10-LT images at imb 100).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ccmix.config.fields import PROFILES

DEFAULT_SUBSET_SEED = 10


def longtail_counts(n_max: int, num_classes: int, imb: float, profile: str = "exp") -> list[int]:
    """Return the number of images each class keeps (index = class id) under a long-tail profile.

    ``exp``: class i keeps ``int(n_max * (1/imb) ** (i / (C - 1)))``; ``step``: the first
    ``C // 2`` classes keep ``n_max`` and the rest ``int(n_max / imb)``. ``imb`` is
    N_max / N_min. A class never drops below one image, so that every class keeps a
    finite log-prior (this only matters when ``n_max / imb < 1``).
    """
    if profile not in PROFILES:
        raise ValueError(f"profile {profile!r} is not accepted; choose one of: {', '.join(PROFILES)}")
    if isinstance(n_max, bool) or not isinstance(n_max, (int, np.integer)) or n_max < 1:
        raise ValueError(f"n_max={n_max!r} is not accepted; it must be an integer >= 1")
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r} is not accepted; it must be an integer >= 1")
    if isinstance(imb, bool) or not isinstance(imb, (int, float, np.number)) or not math.isfinite(imb) or imb < 1:
        raise ValueError(f"imb={imb!r} is not accepted; it is N_max / N_min and must be a finite number >= 1")
    if num_classes == 1:
        return [int(n_max)]
    if profile == "exp":
        counts = [int(n_max * (1 / imb) ** (i / (num_classes - 1))) for i in range(num_classes)]
    else:
        head = num_classes // 2
        counts = [int(n_max)] * head + [int(n_max / imb)] * (num_classes - head)
    return [max(1, c) for c in counts]


def longtail_indices(
    targets: Sequence[int], num_classes: int, imb: float, profile: str = "exp", seed: int = DEFAULT_SUBSET_SEED
) -> np.ndarray:
    """Return the int64 indices (into ``targets``) of the long-tailed subset, class by class.

    ``n_max`` is the size of the largest class; a class that has fewer images than its
    profile asks for keeps all of them. The result lists class 0's kept indices (in
    shuffled order), then class 1's, and so on, which is the order the convention builds
    its subset in. The caller's global numpy random state is left untouched: a private
    ``RandomState(seed)`` draws exactly the numbers ``numpy.random.seed(seed)`` followed by
    ``numpy.random.shuffle`` would.
    """
    labels = np.asarray(targets, dtype=np.int64).reshape(-1)
    if labels.size == 0:
        raise ValueError("targets is empty; a long-tailed subset needs at least one labelled image")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"targets hold label {int(labels.min() if labels.min() < 0 else labels.max())}, "
            f"which is outside 0..{num_classes - 1} (num_classes={num_classes})"
        )
    available = np.bincount(labels, minlength=num_classes)
    wanted = longtail_counts(int(available.max()), num_classes, imb, profile)
    rng = np.random.RandomState(seed)
    kept = []
    for cls in range(num_classes):
        class_indices = np.where(labels == cls)[0]
        rng.shuffle(class_indices)
        kept.append(class_indices[: wanted[cls]])
    return np.concatenate(kept).astype(np.int64)


__all__ = ["PROFILES", "DEFAULT_SUBSET_SEED", "longtail_counts", "longtail_indices"]
