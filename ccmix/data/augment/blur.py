"""PIL's Gaussian blur as a batch op: three box-blur passes whose radius follows sigma (pixels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ccmix.data.augment.dispatch import to_device

# PIL's GaussianBlur (Pillow's BoxBlur.c): three passes of an "extended" box filter per axis, whose
# fractional radius gives the three passes together the variance of a Gaussian of the requested sigma
# (Gwosdek et al., "Theoretical foundations of Gaussian convolution by extended box filtering", SSVM 2011).
BLUR_PASSES = 3


_FIXED_POINT = float(1 << 24)  # PIL's box weights are 24-bit fixed-point numbers


def pil_box_radius(sigma: torch.Tensor) -> torch.Tensor:
    """Return float64 (N,) fractional box radii that PIL's GaussianBlur uses for per-image ``sigma`` (N,) pixels."""
    variance = sigma.double().square() / BLUR_PASSES
    whole = torch.floor((torch.sqrt(12.0 * variance + 1.0) - 1.0) / 2.0)
    fraction = (2.0 * whole + 1.0) * (whole * (whole + 1.0) - 3.0 * variance)
    return whole + fraction / (6.0 * (variance - (whole + 1.0).square()))


def blur_reach(max_sigma: float) -> int:
    """Return the reach (pixels each side) that PIL's box passes need for every sigma up to ``max_sigma`` pixels.

    The box radius grows with sigma, so the largest sigma needs the most: floor(r) + 1.
    """
    radius = pil_box_radius(torch.tensor([float(max_sigma)], dtype=torch.float64))
    return int(torch.floor(radius).numpy()[0]) + 1  # CPU tensor: .numpy() reads it on the host


def box_blur_weights(radius: torch.Tensor, reach: int | None = None) -> tuple[torch.Tensor, int]:
    """Return (float64 (N, 2 * reach + 1) taps, reach) of PIL's extended box filter of per-image ``radius`` (N,).

    The 2 * floor(r) + 1 inner taps weigh 1 / (2r + 1) each and the two outer ones share
    the rest, with PIL's 24-bit fixed-point rounding; taps further out are 0. reach =
    max floor(r) + 1 pixels, or the given ``reach`` (a fixed kernel size whatever the
    draws; ValueError when a radius needs more).
    """
    radius = radius.double().cpu()
    whole = torch.floor(radius)
    needed = int(whole.numpy().max()) + 1 if radius.numel() else 1  # .numpy(): a host read, never a device wait
    if reach is not None and needed > reach:
        raise ValueError(f"reach={reach} is not accepted; these blur radii need at least {needed} pixels")
    reach = needed if reach is None else reach
    inner = torch.floor(_FIXED_POINT / (2.0 * radius + 1.0))
    outer = torch.floor((_FIXED_POINT - (2.0 * whole + 1.0) * inner) / 2.0)
    distance = torch.arange(-reach, reach + 1, dtype=torch.float64).abs().view(1, -1)
    whole = whole.view(-1, 1)
    taps = torch.where(distance <= whole, inner.view(-1, 1), torch.where(distance == whole + 1, outer.view(-1, 1), 0.0))
    return taps / _FIXED_POINT, reach


def _box_pass(images: torch.Tensor, taps: torch.Tensor, reach: int) -> torch.Tensor:
    """Return one box pass along the last axis, edge pixels repeated beyond the border (as PIL); taps (K, N, 1, 1, 1)."""
    padded = F.pad(images, (reach, reach, 0, 0), mode="replicate")
    width = images.shape[-1]
    out = padded[..., 0:width] * taps[0]
    for k in range(1, taps.shape[0]):
        out.addcmul_(padded[..., k:k + width], taps[k])
    return out


def box_blur(images: torch.Tensor, taps: torch.Tensor, reach: int) -> torch.Tensor:
    """Return new images after ``BLUR_PASSES`` box passes per axis with per-image ``taps`` (N, 2 * reach + 1)."""
    if images.shape[0] == 0:
        return images.clone()
    taps = to_device(taps.t().contiguous(), images.device, images.dtype).view(-1, images.shape[0], 1, 1, 1)
    out = images
    for _ in range(BLUR_PASSES):
        out = _box_pass(out, taps, reach)
    out = out.transpose(-1, -2)
    for _ in range(BLUR_PASSES):
        out = _box_pass(out, taps, reach)
    return out.transpose(-1, -2).contiguous()
