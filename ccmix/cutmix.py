"""CutMix: box sampling, pasting, and area labels.

Implements CutMix (Yun et al., "CutMix: Regularization Strategy to Train Strong
Classifiers with Localizable Features", ICCV 2019) as used by ConCutMix (Pan et
al., "Enhanced Long-Tailed Recognition with Contrastive CutMix Augmentation",
IEEE TIP 2024): lambda ~ Beta(alpha, alpha), a box of relative side
sqrt(1 - lambda) centred uniformly at random and clipped to the image; the box
region of the background A is replaced by the same region of the foreground B,
and lambda is recomputed as the exact fraction of A's pixels kept.

Sampling the boxes (``sample_boxes``) is separate from applying them
(``paste``), so a box can be drawn once, inspected, and reused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


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


def _log_standard_gamma(shape: float, size: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """Return log of ``size`` Gamma(shape, 1) draws (float64), reproducible with ``generator``.

    Marsaglia and Tsang (2000) rejection sampling; for shape < 1 the usual boost
    Gamma(a) = Gamma(a + 1) * U^(1/a), kept in log space so tiny shapes do not underflow.
    """
    boosted = shape < 1.0
    a = shape + 1.0 if boosted else shape
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    log_gamma = torch.empty(size, dtype=torch.float64, device=device)
    pending = torch.arange(size, device=device)
    while pending.numel():
        n = pending.numel()
        x = torch.randn(n, generator=generator, dtype=torch.float64, device=device)
        u = torch.rand(n, generator=generator, dtype=torch.float64, device=device)
        v = (1.0 + c * x) ** 3
        positive = v > 0
        safe_v = torch.where(positive, v, torch.ones_like(v))
        accepted = positive & (torch.log(u) < 0.5 * x * x + d - d * safe_v + d * torch.log(safe_v))
        log_gamma[pending[accepted]] = torch.log(d * safe_v[accepted])
        pending = pending[~accepted]
    if boosted:
        u = torch.rand(size, generator=generator, dtype=torch.float64, device=device)
        log_gamma = log_gamma + torch.log(u) / shape
    return log_gamma


def sample_beta(alpha: float, size: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Return ``size`` draws of Beta(alpha, alpha) as a float64 tensor, reproducible with ``generator``."""
    if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and alpha > 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha={alpha!r} is not accepted; it must be a finite number > 0")
    if device is None:
        device = generator.device if generator is not None else "cpu"
    if alpha == 1.0:  # Beta(1, 1) is Uniform(0, 1)
        return torch.rand(size, generator=generator, dtype=torch.float64, device=device)
    log_x = _log_standard_gamma(float(alpha), size, generator, device)
    log_y = _log_standard_gamma(float(alpha), size, generator, device)
    return torch.sigmoid(log_x - log_y)  # X / (X + Y), computed from logs


def sample_boxes(
    batch_size: int,
    height: int,
    width: int,
    alpha: float = 1.0,
    per_sample: bool = False,
    generator: torch.Generator | None = None,
) -> CutMixBoxes:
    """Return CutMixBoxes for a batch: lambda ~ Beta(alpha, alpha), side sqrt(1 - lambda), clipped.

    By default one lambda and one box are shared by the whole batch (as the
    reference does); ``per_sample=True`` draws a box for each image. Tensors
    live on the generator's device (CPU without a generator).
    """
    for name, value, minimum in (("batch_size", batch_size, 1), ("height", height, 1), ("width", width, 1)):
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= minimum):
            raise ValueError(f"{name}={value!r} is not accepted; it must be an integer >= {minimum}")
    device = generator.device if generator is not None else torch.device("cpu")
    draws = batch_size if per_sample else 1
    lam = sample_beta(alpha, draws, generator=generator, device=device)
    cut_ratio = torch.sqrt(1.0 - lam)
    cut_w = torch.floor(width * cut_ratio).long()
    cut_h = torch.floor(height * cut_ratio).long()
    center_x = torch.randint(width, (draws,), generator=generator, device=device)
    center_y = torch.randint(height, (draws,), generator=generator, device=device)
    top = (center_y - cut_h // 2).clamp(0, height)
    bottom = (center_y + cut_h // 2).clamp(0, height)
    left = (center_x - cut_w // 2).clamp(0, width)
    right = (center_x + cut_w // 2).clamp(0, width)
    if not per_sample:
        top, left, bottom, right = (t.expand(batch_size).clone() for t in (top, left, bottom, right))
    return CutMixBoxes(top=top, left=left, bottom=bottom, right=right)


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


def area_labels(y_a: torch.Tensor, y_b: torch.Tensor, lam, num_classes: int) -> torch.Tensor:
    """Return soft labels (B, C) float32: lam * onehot(y_a) + (1 - lam) * onehot(y_b)."""
    lam = torch.as_tensor(lam, dtype=torch.float32, device=y_a.device)
    if lam.dim() == 0:
        lam = lam.expand(y_a.shape[0])
    lam = lam[:, None]
    onehot_a = F.one_hot(y_a.long(), num_classes).to(torch.float32)
    onehot_b = F.one_hot(y_b.to(y_a.device).long(), num_classes).to(torch.float32)
    return lam * onehot_a + (1.0 - lam) * onehot_b


def cutmix(
    a: torch.Tensor,
    b: torch.Tensor,
    y_a: torch.Tensor,
    y_b: torch.Tensor,
    num_classes: int,
    alpha: float = 1.0,
    generator: torch.Generator | None = None,
    per_sample: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (mixed (B, C, H, W), area labels (B, num_classes), lam (B,)): b's box pasted into a."""
    batch_size, _, height, width = a.shape
    boxes = sample_boxes(batch_size, height, width, alpha=alpha, per_sample=per_sample, generator=generator)
    boxes = boxes.to(a.device)
    mixed = paste(a, b, boxes)
    lam = kept_fraction(boxes, height, width)
    return mixed, area_labels(y_a, y_b, lam, num_classes), lam


__all__ = [
    "CutMixBoxes", "area_labels", "box_mask", "cutmix", "kept_fraction", "paste", "sample_beta", "sample_boxes",
]
