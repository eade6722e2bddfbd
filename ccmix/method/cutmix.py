"""CutMix: box sampling, pasting, and area labels.

Implements CutMix (Yun et al., "CutMix: Regularization Strategy to Train Strong
Classifiers with Localizable Features", ICCV 2019) as used by ConCutMix (Pan et
al., "Enhanced Long-Tailed Recognition with Contrastive CutMix Augmentation",
IEEE TIP 2024): lambda ~ Beta(alpha, alpha), a box of relative side
sqrt(1 - lambda) centred uniformly at random and clipped to the image; the box
region of the background A is replaced by the same region of the foreground B,
and lambda is recomputed as the exact fraction of A's pixels kept.

Sampling the boxes (``sample_boxes``, host-side with NumPy) is separate from
applying them (``paste``), so a box can be drawn once, inspected, and reused;
``box_geometry`` is the one rule from a centre and a relative side to a clipped
box, shared by sampling and by the explorer's hand-placed boxes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class CutMixBoxes:
    """One pasted box per image, pixel coordinates; rows [top, bottom) and columns [left, right)."""

    top: torch.Tensor  # (B,) int64
    left: torch.Tensor  # (B,) int64
    bottom: torch.Tensor  # (B,) int64, exclusive
    right: torch.Tensor  # (B,) int64, exclusive

    def to(self, device) -> CutMixBoxes:
        """Return the boxes with every coordinate tensor on ``device``."""
        return CutMixBoxes(*(t.to(device) for t in (self.top, self.left, self.bottom, self.right)))

    def __len__(self) -> int:
        return int(self.top.shape[0])

    def __getitem__(self, index) -> CutMixBoxes:
        """Return the boxes of the images selected by ``index`` (a slice or index tensor)."""
        return CutMixBoxes(*(t[index] for t in (self.top, self.left, self.bottom, self.right)))


GeneratorLike = np.random.Generator | int | torch.Generator | None


def as_numpy_generator(generator: GeneratorLike) -> np.random.Generator:
    """Return a NumPy Generator for ``generator``: itself, seeded from an int, or seeded by one draw of a
    torch.Generator (torch's global generator when None, so ``torch.manual_seed`` makes the draws repeatable)."""
    if isinstance(generator, np.random.Generator):
        return generator
    if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
        return np.random.default_rng(int(generator))
    if generator is None or isinstance(generator, torch.Generator):
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
    raise ValueError(f"generator={generator!r} is not accepted; give a numpy.random.Generator, an int seed, "
                     "a torch.Generator or None")


def sample_beta(alpha: float, size: int, generator: GeneratorLike = None) -> np.ndarray:
    """Return ``size`` draws of Beta(alpha, alpha) as a float64 array (NumPy's sampler)."""
    if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and alpha > 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha={alpha!r} is not accepted; it must be a finite number > 0")
    return as_numpy_generator(generator).beta(alpha, alpha, size=size)


def box_geometry(center_y, center_x, side_ratio, height: int, width: int) -> tuple[np.ndarray, ...]:
    """Return (top, left, bottom, right) int64 arrays of boxes centred at (center_y, center_x) pixels.

    A box has sides ``floor(height * side_ratio)`` and ``floor(width * side_ratio)``, spans
    [centre - side // 2, centre + side // 2) and is clipped to the image (the reference
    ``rand_bbox`` rule; CutMix uses ``side_ratio = sqrt(1 - lambda)``). Inputs broadcast.
    """
    ratio = np.asarray(side_ratio, dtype=np.float64)
    cut_h = np.floor(height * ratio).astype(np.int64)
    cut_w = np.floor(width * ratio).astype(np.int64)
    center_y = np.asarray(center_y, dtype=np.int64)
    center_x = np.asarray(center_x, dtype=np.int64)
    top = np.clip(center_y - cut_h // 2, 0, height)
    bottom = np.clip(center_y + cut_h // 2, 0, height)
    left = np.clip(center_x - cut_w // 2, 0, width)
    right = np.clip(center_x + cut_w // 2, 0, width)
    return top, left, bottom, right


def sample_boxes(
    batch_size: int,
    height: int,
    width: int,
    alpha: float = 1.0,
    per_sample: bool = False,
    generator: GeneratorLike = None,
) -> CutMixBoxes:
    """Return CutMixBoxes (CPU int64) for a batch: lambda ~ Beta(alpha, alpha), side sqrt(1 - lambda), clipped.

    By default one lambda and one box are shared by the whole batch (as the
    reference does); ``per_sample=True`` draws a box for each image. Draws are made
    on the host with NumPy (see :func:`as_numpy_generator` for ``generator``), in the
    order: lambdas, centre columns, centre rows.
    """
    for name, value, minimum in (("batch_size", batch_size, 1), ("height", height, 1), ("width", width, 1)):
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= minimum):
            raise ValueError(f"{name}={value!r} is not accepted; it must be an integer >= {minimum}")
    rng = as_numpy_generator(generator)
    draws = batch_size if per_sample else 1
    lam = sample_beta(alpha, draws, generator=rng)
    center_x = rng.integers(width, size=draws)
    center_y = rng.integers(height, size=draws)
    corners = box_geometry(center_y, center_x, np.sqrt(1.0 - lam), height, width)
    return CutMixBoxes(*(torch.from_numpy(np.broadcast_to(c, (batch_size,)).copy()) for c in corners))


def box_mask(boxes: CutMixBoxes, height: int, width: int) -> torch.Tensor:
    """Return a (B, 1, H, W) bool mask, True inside each image's box (on the boxes' device)."""
    device = boxes.top.device
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    in_rows = (rows[None, :] >= boxes.top[:, None]) & (rows[None, :] < boxes.bottom[:, None])  # (B, H)
    in_cols = (cols[None, :] >= boxes.left[:, None]) & (cols[None, :] < boxes.right[:, None])  # (B, W)
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


def paste(a: torch.Tensor, b: torch.Tensor, boxes: CutMixBoxes) -> torch.Tensor:
    """Return a copy of a (B, C, H, W) whose box region is replaced by the same region of b."""
    if a.dim() != 4 or a.shape != b.shape:
        raise ValueError(
            f"a and b must be (B, C, H, W) tensors of the same shape; got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if len(boxes) != a.shape[0]:
        raise ValueError(f"boxes holds {len(boxes)} boxes but the batch has {a.shape[0]} images")
    mask = box_mask(boxes.to(a.device), a.shape[-2], a.shape[-1])
    return torch.where(mask, b, a)


def kept_fraction(boxes: CutMixBoxes, height: int, width: int) -> torch.Tensor:
    """Return lambda (B,) float32: the exact fraction of the background's pixels outside the box."""
    box_area = (boxes.bottom - boxes.top).clamp_min(0) * (boxes.right - boxes.left).clamp_min(0)
    return 1.0 - box_area.to(torch.float32) / float(height * width)


def area_labels(y_a: torch.Tensor, y_b: torch.Tensor, lam, num_classes: int, *,
                check_values: bool = True) -> torch.Tensor:
    """Return soft labels (B, C) float32: lam * onehot(y_a) + (1 - lam) * onehot(y_b).

    Labels on the CPU are range-checked unless ``check_values=False`` (the training step, whose
    labels come from the dataset, skips the read); on an accelerator the check would wait for it.
    """
    lam = torch.as_tensor(lam, dtype=torch.float32, device=y_a.device)
    if lam.dim() == 0:
        lam = lam.expand(y_a.shape[0])
    lam = lam[:, None]
    y_b = y_b.to(y_a.device)
    if check_values and y_a.device.type == "cpu":
        for labels in (y_a, y_b):
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
                raise ValueError(f"the labels y_a and y_b must lie in 0..{num_classes - 1} (num_classes={num_classes})")
    return lam * _one_hot(y_a, num_classes) + (1.0 - lam) * _one_hot(y_b, num_classes)


def _one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Return (B, C) float32 one-hot rows of int labels (B,), by comparison: F.one_hot reads the labels back."""
    return (labels.long()[:, None] == torch.arange(num_classes, device=labels.device)).to(torch.float32)


def cutmix(
    a: torch.Tensor,
    b: torch.Tensor,
    y_a: torch.Tensor,
    y_b: torch.Tensor,
    num_classes: int,
    alpha: float = 1.0,
    generator: GeneratorLike = None,
    per_sample: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (mixed (B, C, H, W), area labels (B, num_classes), lam (B,)): b's box pasted into a.

    ``generator`` makes the box draw repeatable: a ``numpy.random.Generator``, an int seed,
    a ``torch.Generator`` (one draw of it seeds NumPy), or None (torch's global generator
    seeds it, so ``torch.manual_seed`` applies).
    """
    batch_size, _, height, width = a.shape
    boxes = sample_boxes(batch_size, height, width, alpha=alpha, per_sample=per_sample, generator=generator)
    boxes = boxes.to(a.device)
    mixed = paste(a, b, boxes)
    lam = kept_fraction(boxes, height, width)
    return mixed, area_labels(y_a, y_b, lam, num_classes), lam


__all__ = [
    "CutMixBoxes", "area_labels", "as_numpy_generator", "box_geometry", "box_mask", "cutmix", "kept_fraction", "paste",
    "sample_beta", "sample_boxes",
]
