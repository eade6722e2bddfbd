"""Per-image random draws of the batched augmentations, on the CPU from a seeded ``torch.Generator``.

Each ``sample_*`` returns a dict of (B,) tensors that the ``apply_*`` functions read; the draws are
separate from the pixel work so that a batch is reproducible whatever device applies it.
"""

from __future__ import annotations

import math

import torch

from ccmix.data.augment.tables import (
    BLUR_PROB,
    BLUR_SIGMA,
    CIFAR10_POLICY,
    CONTRASTIVE_JITTER,
    CONTRASTIVE_JITTER_PROB,
    GRAYSCALE_PROB,
    _policy_tables,
)


def _check_batch(batch: int) -> None:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch={batch!r} is not accepted; it must be an integer >= 1")


def sample_crop_flip(batch: int, generator: torch.Generator, padding: int = 4, flip_prob: float = 0.5) -> dict:
    """Return pad-crop and flip draws of a batch: "top", "left" int64 (B,) in 0..2*padding, "flip" bool (B,).

    Same distribution as RandomCrop(size, padding) then RandomHorizontalFlip(flip_prob):
    offsets uniform over the 2*padding + 1 positions of the zero-padded image.
    """
    _check_batch(batch)
    top = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
    flip = torch.rand(batch, generator=generator) < flip_prob
    return {"top": top, "left": left, "flip": flip}


def sample_autoaugment(batch: int, generator: torch.Generator, image_size: tuple[int, int] = (32, 32)) -> dict:
    """Return per-image AutoAugment CIFAR-10 draws for HxW images.

    "policy" int64 (B,): sub-policy index 0..24; "op" int64 (B, 2): index into
    ``AUTOAUGMENT_OPS`` of the two operations; "apply" bool (B, 2): whether each fires
    (uniform draw < its probability); "magnitude" float64 (B, 2): the value passed to the
    operation (see ``autoaugment_magnitudes``), sign flipped with probability 0.5 for
    ``SIGNED_OPS``.
    """
    _check_batch(batch)
    codes, probabilities, values, signed = _policy_tables(*image_size)
    policy = torch.randint(0, len(CIFAR10_POLICY), (batch,), generator=generator)
    fire = torch.rand(batch, 2, generator=generator, dtype=torch.float64) < probabilities[policy]
    negative = torch.rand(batch, 2, generator=generator) < 0.5
    magnitude = torch.where(signed[policy] & negative, -values[policy], values[policy])
    return {"policy": policy, "op": codes[policy], "apply": fire, "magnitude": magnitude}


def _image_sizes(batch: int, image_size) -> torch.Tensor:
    """Return int64 (B, 2) per-image (height, width) of a (height, width) pair or an integer (B, 2) tensor."""
    if isinstance(image_size, torch.Tensor):
        if image_size.shape != (batch, 2) or image_size.is_floating_point() or image_size.is_complex():
            raise ValueError(f"image_size of shape {tuple(image_size.shape)} and dtype {image_size.dtype} is not "
                             f"accepted; it must be an integer tensor of shape ({batch}, 2) of (height, width) pixels")
        sizes = image_size.to(device="cpu", dtype=torch.int64)
    else:
        sizes = torch.tensor([[int(side) for side in image_size]], dtype=torch.int64).expand(batch, 2)
    smallest = int(sizes.numpy().min())  # CPU sizes: read through numpy, no tensor operator
    if smallest < 1:
        raise ValueError(f"image_size holds {smallest} pixels; every height and width must be >= 1")
    return sizes


def _fallback_crop(height: torch.Tensor, width: torch.Tensor, ratio: tuple[float, float]) -> tuple:
    """Return int64 (B,) (h, w) of torchvision's fallback: the whole image narrowed to the ratio range."""
    in_ratio = width.double() / height.double()
    narrow_w = (height.double() * max(ratio)).round().long()  # too wide: full height
    narrow_h = (width.double() / min(ratio)).round().long()  # too tall: full width
    fallback_w = torch.where(in_ratio > max(ratio), narrow_w, width)
    fallback_h = torch.where(in_ratio < min(ratio), narrow_h, height)
    return fallback_h, fallback_w


def sample_resized_crop(
    batch: int, generator: torch.Generator, image_size: tuple[int, int] | torch.Tensor = (32, 32),
    scale: tuple[float, float] = (0.2, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3), attempts: int = 10,
) -> dict:
    """Return RandomResizedCrop boxes: "top", "left", "height", "width" int64 (B,) in pixels of the input.

    Vectorised form of torchvision's ``RandomResizedCrop.get_params``: up to ``attempts``
    draws of area fraction ~ U(scale) and log aspect ratio ~ U(log ratio) per image, the
    first that fits is kept, else the centre crop clamped to ``ratio``. ``image_size`` is
    one (height, width) for the whole batch, or an integer (B, 2) tensor of each image's
    (height, width) in pixels (variable-size images); both forms draw the same numbers.
    """
    _check_batch(batch)
    sizes = _image_sizes(batch, image_size)
    height, width = sizes[:, 0], sizes[:, 1]
    area = (height * width).double().view(-1, 1)
    target_area = area * torch.empty(batch, attempts, dtype=torch.float64).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(batch, attempts, dtype=torch.float64).uniform_(
        math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_ratio)
    w = torch.sqrt(target_area * aspect).round().long()
    h = torch.sqrt(target_area / aspect).round().long()
    fits = (w > 0) & (w <= width.view(-1, 1)) & (h > 0) & (h <= height.view(-1, 1))
    first = fits.int().argmax(dim=1, keepdim=True)  # first attempt that fits (0 when none does)
    found = fits.any(dim=1)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    fallback_h, fallback_w = _fallback_crop(height, width, ratio)
    w = torch.where(found, w, fallback_w)
    h = torch.where(found, h, fallback_h)
    u = torch.rand(batch, 2, generator=generator, dtype=torch.float64)
    top = (u[:, 0] * (height - h + 1)).long()
    left = (u[:, 1] * (width - w + 1)).long()
    top = torch.where(found, top, (height - h) // 2)
    left = torch.where(found, left, (width - w) // 2)
    return {"top": top, "left": left, "height": h, "width": w}


def sample_color_jitter(
    batch: int, generator: torch.Generator, strength: tuple[float, float, float, float] = CONTRASTIVE_JITTER,
    prob: float = CONTRASTIVE_JITTER_PROB,
) -> dict:
    """Return per-image RandomApply(ColorJitter(*strength), prob) draws.

    "jitter" bool (B,): whether the jitter applies; "order" int64 (B, 4): a uniformly
    random permutation of 0 brightness, 1 contrast, 2 saturation, 3 hue; "brightness",
    "contrast", "saturation" float64 (B,) factors ~ U(max(0, 1 - s), 1 + s); "hue" (B,)
    shift ~ U(-h, h) in turns.
    """
    _check_batch(batch)
    b, c, s, h = strength
    jitter = torch.rand(batch, generator=generator) < prob
    order = torch.argsort(torch.rand(batch, 4, generator=generator), dim=1)

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.empty(batch, dtype=torch.float64).uniform_(low, high, generator=generator)

    return {
        "jitter": jitter, "order": order,
        "brightness": uniform(max(0.0, 1 - b), 1 + b), "contrast": uniform(max(0.0, 1 - c), 1 + c),
        "saturation": uniform(max(0.0, 1 - s), 1 + s), "hue": uniform(-h, h),
    }


def sample_contrastive(
    batch: int, generator: torch.Generator, image_size: tuple[int, int] = (32, 32),
    scale: tuple[float, float] = (0.2, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3), flip_prob: float = 0.5,
    jitter: tuple[float, float, float, float] = CONTRASTIVE_JITTER, jitter_prob: float = CONTRASTIVE_JITTER_PROB,
    grayscale_prob: float = GRAYSCALE_PROB, blur_prob: float = BLUR_PROB, blur_sigma: tuple[float, float] = BLUR_SIGMA,
) -> dict:
    """Return every draw of a contrastive view for a batch (CPU tensors, (B,) unless noted).

    Keys: the crop box of ``sample_resized_crop``; "flip" bool; the colour-jitter draws of
    ``sample_color_jitter``; "grayscale" bool; "blur" bool and "sigma" float64 in pixels.
    """
    params = sample_resized_crop(batch, generator, image_size, scale, ratio)
    params["flip"] = torch.rand(batch, generator=generator) < flip_prob
    params.update(sample_color_jitter(batch, generator, jitter, jitter_prob))
    params["grayscale"] = torch.rand(batch, generator=generator) < grayscale_prob
    params["blur"] = torch.rand(batch, generator=generator) < blur_prob
    params["sigma"] = torch.empty(batch, dtype=torch.float64).uniform_(*blur_sigma, generator=generator)
    return params
