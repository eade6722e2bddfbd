"""Batched colour ops on float images of shape (B, 3, H, W) on the 0..255 scale, with PIL's semantics:
enhancement, posterize, solarize, autocontrast, equalize, and the SimCLR colour jitter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ccmix.data.augment.dispatch import (
    _constant,
    _per_image,
    apply_grouped,
    apply_masked,
    check_launch,
    one_image_at_a_time,
    to_device,
)
from ccmix.data.augment.tables import LUMA_WEIGHTS, MAX_VALUE


def luma(images: torch.Tensor) -> torch.Tensor:
    """Return the (B, H, W) grayscale (ITU-R 601-2 luma) of (B, 3, H, W) images, same scale."""
    red, green, blue = images.unbind(dim=1)
    gray = red * LUMA_WEIGHTS[0]
    return gray.add_(green, alpha=LUMA_WEIGHTS[1]).add_(blue, alpha=LUMA_WEIGHTS[2])


def adjust_sharpness_(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Return the per-image blend with the 3x3 smoothed image (border pixels kept), clamped, in place (torchvision).

    The smoothing kernel is [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13: (3x3 sum + 4 * centre) / 13.
    """
    row_sums = images[..., :-2] + images[..., 1:-1] + images[..., 2:]  # (B, C, H, W - 2)
    blurred = row_sums[..., :-2, :] + row_sums[..., 1:-1, :] + row_sums[..., 2:, :]  # (B, C, H - 2, W - 2)
    inner = images[..., 1:-1, 1:-1]
    blurred.add_(inner, alpha=4.0).mul_(1.0 / 13.0)
    # inner <- factor * inner + (1 - factor) * blurred
    inner.lerp_(blurred, 1.0 - _per_image(factor, images))
    return images.clamp_(0.0, MAX_VALUE)


def adjust_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Return new images with their HSV hue rotated by ``shift`` (B,) turns; saturation and value kept.

    Same result as torchvision's adjust_hue (RGB -> HSV, h <- (h + shift) mod 1, HSV ->
    RGB). With V = max, m = min, chroma = V - m and h6 = 6h in [0, 6), channel n (5, 3,
    1 for red, green, blue) is m + chroma * clamp(d - 1, 0, 1), where d = ||h6 + n - 5| - 3|
    is the distance from h6 + n to the nearest of 2 and 8 (the usual (h6 + n) mod 6 form,
    without a modulo).
    """
    red, green, blue = images.unbind(dim=1)
    value = images.amax(dim=1)
    low = images.amin(dim=1)
    chroma = value - low
    # hue in sixths of a turn, as torchvision's _rgb2hsv: red wins ties, then green. In place where it keeps the
    # values: 8 fresh (B, H, W) tensors instead of 16 (13 224x224 images, one CPU thread: 8.7 ms, was 9.4)
    is_red = torch.eq(red, value).to(images.dtype)
    is_green = torch.eq(green, value).to(images.dtype).sub_(is_red).clamp_(min=0.0)  # and not red
    blue_hue = torch.sub(red, green).add_(chroma, alpha=4.0)  # 4 * chroma is exact
    red_minus_blue_hue = torch.sub(green, blue).sub_(blue_hue)
    green_minus_blue_hue = torch.sub(blue, red).add_(chroma, alpha=2.0).sub_(blue_hue)
    numerator = blue_hue.addcmul_(is_red, red_minus_blue_hue).addcmul_(is_green, green_minus_blue_hue)
    shift6 = to_device(6.0 * shift, images.device, images.dtype).view(-1, 1, 1)
    safe_chroma = torch.clamp(chroma, min=1e-6, out=red_minus_blue_hue)
    hue6 = numerator.div_(safe_chroma).add_(shift6)  # grey pixels: numerator 0
    hue6.sub_(torch.div(hue6, 6.0, out=green_minus_blue_hue).floor_().mul_(6.0))  # wrap into [0, 6)
    offsets = _constant((0.0, -2.0, -4.0), images.device, images.dtype).view(1, 3, 1, 1)  # n - 5
    ramp = (hue6.unsqueeze(1) + offsets).abs_().sub_(3.0).abs_().sub_(1.0).clamp_(0.0, 1.0)
    return ramp.mul_(chroma.unsqueeze(1)).add_(low.unsqueeze(1))


def to_grayscale(images: torch.Tensor) -> torch.Tensor:
    """Return the luma of (B, 3, H, W) images repeated over 3 channels (torchvision rgb_to_grayscale, 3 outputs)."""
    return luma(images).unsqueeze(1).expand_as(images).contiguous()


def posterize_(images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Return images keeping only the ``bits`` (B,) high bits of each 0..255 value, in place (torchvision posterize)."""
    step = torch.pow(2.0, 8.0 - _per_image(bits, images))
    return images.div_(step).floor_().mul_(step)


def solarize(images: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Return images with values >= ``threshold`` (B,) inverted (255 - v); threshold 0 inverts all (invert)."""
    return torch.where(images >= _per_image(threshold, images), MAX_VALUE - images, images)


def autocontrast_(images: torch.Tensor) -> torch.Tensor:
    """Return images with each channel stretched to 0..255, in place (constant channels kept; torchvision)."""
    low = images.amin(dim=(2, 3), keepdim=True)
    high = images.amax(dim=(2, 3), keepdim=True)
    flat = high <= low
    scale = MAX_VALUE / torch.where(flat, MAX_VALUE, high - low)
    return images.sub_(low.masked_fill_(flat, 0.0)).mul_(scale).clamp_(0.0, MAX_VALUE)


def equalize(images: torch.Tensor) -> torch.Tensor:
    """Return new images with each channel's histogram equalised by PIL's lookup-table rule (torchvision equalize).

    Values are binned by truncation to integers 0..255, as a uint8 conversion would do;
    a channel with a single non-empty bin (PIL's step 0) is returned truncated.
    """
    batch, channels, height, width = images.shape
    levels = images.detach().clamp(0.0, MAX_VALUE).to(torch.int64).reshape(batch * channels, height * width)
    hist = torch.zeros(batch * channels, 256, dtype=torch.int64, device=images.device)
    hist.scatter_add_(1, levels, hist.new_ones(1, 1).expand_as(levels))
    cumulative = hist.cumsum(dim=1)
    last_bin = cumulative.argmax(dim=1, keepdim=True)  # first bin reaching the total = last non-empty bin
    step = (height * width - hist.gather(1, last_bin)).div(255, rounding_mode="floor")
    lut = (cumulative[:, :-1] + step.div(2, rounding_mode="floor")).div(step.clamp(min=1), rounding_mode="floor")
    lut = F.pad(lut.clamp_(0, 255), (1, 0))  # lut[0] = 0
    identity = torch.arange(256, device=images.device).expand_as(lut)
    lut = torch.where(step > 0, lut, identity).to(images.dtype)
    return lut.gather(1, levels).view(batch, channels, height, width)


def blend_(images: torch.Tensor, factor: torch.Tensor, luma_weight: torch.Tensor,
           mean_weight: torch.Tensor) -> torch.Tensor:
    """Return clamp(factor * image + luma_weight * luma + mean_weight * mean luma) per image, in place.

    factor, luma_weight, mean_weight: (B,). Brightness is (f, 0, 0), saturation
    (f, 1 - f, 0), contrast (f, 0, 1 - f) and (1, 0, 0) leaves an image exactly unchanged,
    so one pass serves a batch whose images each need a different one of them.
    """
    gray = luma(images)
    mean = gray.mean(dim=(1, 2))
    shift = gray.mul_(_per_image(luma_weight, gray).view(-1, 1, 1))
    shift.add_((mean * _per_image(mean_weight, gray).view(-1)).view(-1, 1, 1))
    return images.mul_(_per_image(factor, images)).add_(shift.unsqueeze(1)).clamp_(0.0, MAX_VALUE)


def blend_image_(image: torch.Tensor, factor: float, luma_weight: float, mean_weight: float) -> torch.Tensor:
    """Return ``blend_`` of one float image (1, 3, H, W) with weights given as numbers, in place, the same values.

    The weights are float32 values (as ``blend_`` casts them); the luma plane is computed
    only where a weight needs it (not for brightness), its mean only for contrast. With
    several intra-op threads the mean of a large image is summed in parallel, so it may
    differ from ``blend_``'s in the last bit; the pipelines build on one thread.
    """
    if luma_weight == 0.0 and mean_weight == 0.0:
        return image.mul_(factor).clamp_(0.0, MAX_VALUE)
    gray = luma(image)
    if luma_weight == 0.0:
        shift = (gray.mean(dim=(1, 2)) * mean_weight).view(-1, 1, 1, 1)
    else:
        mean = gray.mean(dim=(1, 2)) if mean_weight != 0.0 else None
        shift = gray.mul_(luma_weight)
        if mean is not None:
            shift.add_((mean * mean_weight).view(-1, 1, 1))
        shift = shift.unsqueeze(1)
    return image.mul_(factor).add_(shift).clamp_(0.0, MAX_VALUE)


def blend_rows_(images: torch.Tensor, blend: torch.Tensor, blends: torch.Tensor) -> torch.Tensor:
    """Return ``blend_(images, *blend.T)`` in place, skipping the work where it can.

    blend: (B, 3) CPU ``blend_`` weights per image; blends: bool (B,) CPU, False where the
    weights are the identity (1, 0, 0). Large CPU images (``one_image_at_a_time``): only the
    rows that blend, one at a time (``blend_image_``); otherwise one pass over the batch if
    any row blends. The same values either way.
    """
    if one_image_at_a_time(images):
        weights = blend.float().tolist()
        for row in torch.arange(blends.shape[0])[blends].tolist():
            blend_image_(images[row:row + 1], *weights[row])
    elif blends.numpy().any():  # CPU draws: .numpy() reads them on the host
        blend_(images, blend[:, 0], blend[:, 1], blend[:, 2])
    return images


def _jitter_stage(params: dict, stage: int) -> dict:
    """Return the per-image parameters (CPU) of colour-jitter stage ``stage`` (identity elsewhere).

    "blend" float64 (B, 3): factor, luma and mean weights of ``blend_``; "hue_group" int64
    (B,): 0 where the stage is the hue rotation, else 1.
    """
    operation = torch.where(params["jitter"], params["order"][:, stage], torch.full_like(params["order"][:, 0], -1))
    ones, zeros = torch.ones_like(params["brightness"]), torch.zeros_like(params["brightness"])
    factor = torch.where(operation == 0, params["brightness"], ones)
    factor = torch.where(operation == 1, params["contrast"], factor)
    factor = torch.where(operation == 2, params["saturation"], factor)
    return {
        "blend": torch.stack((factor, torch.where(operation == 2, 1.0 - params["saturation"], zeros),
                              torch.where(operation == 1, 1.0 - params["contrast"], zeros)), dim=1),
        "hue_group": torch.where(operation == 3, 0, 1),
    }


def prepare_color_jitter(params: dict) -> dict:
    """Return ``apply_prepared_color_jitter``'s CPU parameters of ``sample_color_jitter`` draws.

    "stage0" .. "stage3" (``_jitter_stage``, "blend" in float32, the images' dtype) and "hue"
    float64 (B,) turns.
    """
    prepared = {f"stage{stage}": _jitter_stage(params, stage) for stage in range(4)}
    for stage in prepared.values():
        stage["blend"] = stage["blend"].float()
    prepared["hue"] = params["hue"]
    return prepared


_HUE_HANDLERS = [lambda x, p: adjust_hue(x, p["hue"])]


def apply_prepared_color_jitter(images: torch.Tensor, prepared: dict) -> torch.Tensor:
    """Return new float 0..255 images after colour jitter with constant launches (``prepare_color_jitter``'s params).

    Each stage: one per-image blend and the hue rotation of the whole batch, kept for the
    images whose stage it is (``apply_masked``). ``prepared`` on any device; ``images`` may
    be overwritten.
    """
    for stage in range(4):
        weights = prepared[f"stage{stage}"]
        blend_(images, weights["blend"][:, 0], weights["blend"][:, 1], weights["blend"][:, 2])
        images = apply_masked(images, weights["hue_group"], _HUE_HANDLERS, {"hue": prepared["hue"]}, (False,))
    return images


def apply_color_jitter(images: torch.Tensor, params: dict, launch: str = "subset") -> torch.Tensor:
    """Return float 0..255 images after each image's colour jitter in its own order.

    ``params`` from ``sample_color_jitter``. Stage k applies operation order[:, k] of each
    image with "jitter" set: brightness, contrast and saturation as one per-image blend
    over the whole batch (identity weights elsewhere, exact), hue on the images whose
    stage-k operation it is. ``launch`` "subset" (images modified in place): hue on the
    group of those images; "constant": ``apply_prepared_color_jitter``, the same values.
    """
    check_launch(launch)
    if launch == "constant":
        return apply_prepared_color_jitter(images, prepare_color_jitter(params))
    for stage in range(4):
        weights = _jitter_stage(params, stage)
        blend_(images, weights["blend"][:, 0], weights["blend"][:, 1], weights["blend"][:, 2])
        apply_grouped(images, weights["hue_group"], _HUE_HANDLERS, {"hue": params["hue"]})
    return images
