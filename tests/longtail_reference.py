"""Independent reference for the tests: the CIFAR-LT subset convention written out with numpy's global RNG.

Kept apart from ccmix.data.longtail on purpose, so tests compare the package with the
convention as the field's code spells it (seed, then shuffle each class in increasing order).
"""

from __future__ import annotations

import numpy as np


def convention_indices(targets, num_classes, counts, seed):
    """Return the kept indices: per class in increasing order, numpy-shuffled, first counts[c] (global RNG restored)."""
    saved = np.random.get_state()
    try:
        np.random.seed(seed)
        targets = np.asarray(targets, dtype=np.int64)
        kept = []
        for cls in range(num_classes):
            idx = np.where(targets == cls)[0]
            np.random.shuffle(idx)
            kept.extend(idx[: counts[cls]].tolist())
        return kept
    finally:
        np.random.set_state(saved)
