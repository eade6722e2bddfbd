"""Evaluation metrics for long-tailed recognition: top-1, per-class, many/medium/few-shot, confusion.

The many/medium/few split (> 100, 20-100, < 20 training images) follows the
convention of BCL (Zhu et al., "Balanced Contrastive Learning for Long-Tailed
Visual Recognition", CVPR 2022) and ConCutMix (Pan et al., "Enhanced Long-Tailed
Recognition with Contrastive CutMix Augmentation", IEEE TIP 2024). A group's
accuracy is the mean of its classes' accuracies; a group with no class is None.
"""

from __future__ import annotations

import numpy as np
import torch

GROUPS = ("many", "medium", "few")


def _as_int_array(values, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional; got shape {array.shape}")
    return array.astype(np.int64)


def shot_groups(train_counts, many: int = 100, few: int = 20) -> list[str]:
    """Return each class's group: "many" (> many images), "few" (< few images) or "medium" (otherwise)."""
    if few > many:
        raise ValueError(f"few={few!r} is not accepted; it must be <= many={many!r}")
    counts = _as_int_array(train_counts, "train_counts")
    return ["many" if n > many else "few" if n < few else "medium" for n in counts.tolist()]


def shot_accuracy(preds, labels, train_counts, many: int = 100, few: int = 20) -> dict:
    """Return {"top1", "many", "medium", "few", "per_class"} in percent; None for an empty group or class.

    preds, labels: (N,) class indices (tensor, numpy array or list); train_counts: (C,) training
    images per class. A group's accuracy is the mean of the per-class accuracies of its classes
    that have test images.
    """
    preds = _as_int_array(preds, "preds")
    labels = _as_int_array(labels, "labels")
    if preds.shape != labels.shape:
        raise ValueError(f"preds and labels must have the same length; got {preds.shape[0]} and {labels.shape[0]}")
    groups = shot_groups(train_counts, many=many, few=few)
    num_classes = len(groups)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1} (one train count per class)")
    correct = preds == labels
    tested = np.bincount(labels, minlength=num_classes)
    hits = np.bincount(labels, weights=correct.astype(np.float64), minlength=num_classes)
    per_class = [float(100.0 * hits[c] / tested[c]) if tested[c] else None for c in range(num_classes)]
    result: dict = {"top1": float(100.0 * correct.mean()) if labels.size else None}
    for group in GROUPS:
        values = [acc for acc, g in zip(per_class, groups) if g == group and acc is not None]
        result[group] = float(np.mean(values)) if values else None
    result["per_class"] = per_class
    return result


def confusion_matrix(preds, labels, num_classes: int) -> torch.Tensor:
    """Return the (C, C) int64 confusion matrix: rows are true classes, columns predicted classes."""
    preds = torch.as_tensor(_as_int_array(preds, "preds"))
    labels = torch.as_tensor(_as_int_array(labels, "labels"))
    if preds.shape != labels.shape:
        raise ValueError(f"preds and labels must have the same length; got {preds.numel()} and {labels.numel()}")
    for name, values in (("preds", preds), ("labels", labels)):
        if values.numel() and (int(values.min()) < 0 or int(values.max()) >= num_classes):
            raise ValueError(f"{name} must lie in 0..{num_classes - 1}")
    flat = torch.bincount(labels * num_classes + preds, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).to(torch.int64)


def top_confused_pairs(confusion, k: int = 10) -> list[tuple[int, int, int]]:
    """Return up to k (true, predicted, count) off-diagonal pairs with the largest non-zero counts."""
    matrix = torch.as_tensor(confusion).clone().to(torch.int64)
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"confusion must be a square (C, C) matrix; got shape {tuple(matrix.shape)}")
    matrix.fill_diagonal_(0)
    num_classes = matrix.shape[0]
    flat = matrix.flatten()
    # stable sort keeps (true, predicted) order among equal counts
    order = torch.sort(flat, descending=True, stable=True).indices[:k]
    return [
        (int(i) // num_classes, int(i) % num_classes, int(flat[i])) for i in order.tolist() if int(flat[i]) > 0
    ]


__all__ = ["GROUPS", "confusion_matrix", "shot_accuracy", "shot_groups", "top_confused_pairs"]
