"""Batched image augmentation with per-sample randomness, for the device-resident fast pipeline.

Implements, for a whole batch at once, the per-image view recipes that Contrastive
CutMix (Pan et al., "Enhanced Long-Tailed Recognition with Contrastive CutMix
Augmentation", IEEE TIP 2024) inherits from balanced contrastive learning (Zhu et al.,
"Balanced Contrastive Learning for Long-Tailed Visual Recognition", CVPR 2022):

* view 0 (CIFAR): pad-4 random crop, horizontal flip and the AutoAugment CIFAR-10
  policy (Cubuk et al., "AutoAugment: Learning Augmentation Strategies from Data",
  CVPR 2019) with torchvision's sub-policy table and magnitude scales;
* contrastive views: RandomResizedCrop, flip, ColorJitter applied with probability p
  (its four operations in a random order drawn per image, as torchvision draws it per
  call), random grayscale and a 3x3 Gaussian blur with a per-image sigma.

Every image gets its own draws, from the same distributions as the per-sample
torchvision recipe in ``ccmix.data.views``. Sampling is separate from applying:
``sample_*`` functions draw the parameters of a batch from a ``torch.Generator`` into a
dict of CPU tensors; ``apply_*`` functions take float images and such a dict. Because
the parameters live on the CPU, the sizes of the groups below are known without a
device synchronisation.

Conventions: images are float32 (B, 3, H, W) on the 0..255 scale (converted from uint8
exactly once, normalised exactly once at the end); any memory format works.

Per-sample dispatch. AutoAugment draws one of 25 sub-policies of two operations per
image, and ColorJitter one of 24 orders per image. Instead of a loop over images, each
operation slot is applied per kind of operation: brightness, contrast and saturation
(and AutoAugment's Brightness, Color, Contrast) are one batch-wide blend with per-image
weights, exact identity weights for the images that do not take them; every other kind
is applied to the group of images that drew it, gathered (``index_select``),
transformed together with per-image magnitudes and written back (``index_copy_``). The
five geometric AutoAugment operations (shear, translate, rotate) form one group with a
per-image affine map. So the number of torch operator calls per batch is bounded by the
number of operation kinds, not by the batch size; only empty groups are skipped.

Library choice. kornia samples crop, flip, colour jitter, grayscale and blur per image,
but it draws one jitter order per batch (not per image) and one AutoAugment sub-policy
per call (as torchvision does), and its generic per-operation machinery costs far more
than the few tensor operations these 32x32 recipes need. Measured on a 2-core CPU, two
contrastive views of 256 images (RandomResizedCrop, flip, ColorJitter p=0.8, grayscale,
blur, normalise) from uint8: kornia 0.9 about 2,200 pairs per CPU-second, this module
about 6,500 (one intra-op thread, best of 8 runs), i.e. about 3x. So this module is
plain batched torch code, written to touch memory as little as possible (on the CPU a
fresh batch-sized tensor costs more than an in-place pass): integer-shift crops by one
``gather`` on uint8; one bilinear ``grid_sample`` for crop + flip + resize; one gather
for all geometric AutoAugment operations; brightness, contrast and saturation as one
in-place per-image blend; a modulo-free HSV hue rotation; a separable 3-tap blur with
per-image weights.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

# ITU-R 601-2 luma weights, as torchvision's rgb_to_grayscale for tensors.
LUMA_WEIGHTS = (0.2989, 0.587, 0.114)
MAX_VALUE = 255.0  # images are float on the uint8 scale

# --------------------------------------------------------------------------- AutoAugment tables

AUTOAUGMENT_OPS = (
    "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast", "Sharpness",
    "Posterize", "Solarize", "AutoContrast", "Equalize", "Invert",
)
_OP = {name: code for code, name in enumerate(AUTOAUGMENT_OPS)}
GEOMETRIC_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
SIGNED_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast", "Sharpness")

# AutoAugment CIFAR-10 policy (Cubuk et al. 2019) as tabulated by torchvision:
# 25 sub-policies of two (operation, probability, magnitude bin or None).
CIFAR10_POLICY = (
    (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
    (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
    (("Color", 0.9, 9), ("Equalize", 0.6, None)),
    (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, None), ("Invert", 0.1, None)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
)
MAGNITUDE_BINS = 10


def autoaugment_magnitudes(height: int, width: int) -> dict[str, torch.Tensor]:
    """Return op name -> float64 (10,) magnitude per bin, torchvision's AutoAugment scales for an HxW image.

    Units: shear as the tangent, translation in pixels, rotation in degrees, colour ops
    as factor - 1, posterize in bits, solarize as the threshold on the 0..255 scale.
    """
    bins = MAGNITUDE_BINS
    linspace = lambda high: torch.linspace(0.0, high, bins, dtype=torch.float64)  # noqa: E731
    return {
        "ShearX": linspace(0.3), "ShearY": linspace(0.3),
        "TranslateX": linspace(150.0 / 331.0 * width), "TranslateY": linspace(150.0 / 331.0 * height),
        "Rotate": linspace(30.0),
        "Brightness": linspace(0.9), "Color": linspace(0.9), "Contrast": linspace(0.9), "Sharpness": linspace(0.9),
        "Posterize": (8 - (torch.arange(bins) / ((bins - 1) / 4)).round()).to(torch.float64),
        "Solarize": torch.linspace(1.0, 0.0, bins, dtype=torch.float64) * MAX_VALUE,
    }


@lru_cache(maxsize=8)
def _policy_tables(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (op code (25, 2) int64, probability (25, 2), magnitude (25, 2) float64, signed (25, 2) bool)."""
    magnitudes = autoaugment_magnitudes(height, width)
    codes, probabilities, values, signed = [], [], [], []
    for sub_policy in CIFAR10_POLICY:
        codes.append([_OP[name] for name, _, _ in sub_policy])
        probabilities.append([p for _, p, _ in sub_policy])
        values.append([float(magnitudes[name][b]) if b is not None else 0.0 for name, _, b in sub_policy])
        signed.append([name in SIGNED_OPS for name, _, _ in sub_policy])
    return (torch.tensor(codes), torch.tensor(probabilities, dtype=torch.float64),
            torch.tensor(values, dtype=torch.float64), torch.tensor(signed))


# --------------------------------------------------------------------------- sampling


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
    (uniform draw <= its probability); "magnitude" float64 (B, 2): the value passed to the
    operation (see ``autoaugment_magnitudes``), sign flipped with probability 0.5 for
    signed operations, translations truncated to whole pixels as torchvision does.
    """
    _check_batch(batch)
    codes, probabilities, values, signed = _policy_tables(*image_size)
    policy = torch.randint(0, len(CIFAR10_POLICY), (batch,), generator=generator)
    fire = torch.rand(batch, 2, generator=generator, dtype=torch.float64) <= probabilities[policy]
    negative = torch.rand(batch, 2, generator=generator) <= 0.5
    magnitude = torch.where(signed[policy] & negative, -values[policy], values[policy])
    op = codes[policy]
    is_translate = (op == _OP["TranslateX"]) | (op == _OP["TranslateY"])
    magnitude = torch.where(is_translate, magnitude.trunc(), magnitude)
    return {"policy": policy, "op": op, "apply": fire, "magnitude": magnitude}


def sample_resized_crop(
    batch: int, generator: torch.Generator, image_size: tuple[int, int] = (32, 32),
    scale: tuple[float, float] = (0.2, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3), attempts: int = 10,
) -> dict:
    """Return RandomResizedCrop boxes: "top", "left", "height", "width" int64 (B,) in pixels of the input.

    Vectorised form of torchvision's ``RandomResizedCrop.get_params``: up to ``attempts``
    draws of area fraction ~ U(scale) and log aspect ratio ~ U(log ratio) per image, the
    first that fits is kept, else the centre crop clamped to ``ratio``.
    """
    _check_batch(batch)
    height, width = image_size
    area = height * width
    target_area = area * torch.empty(batch, attempts, dtype=torch.float64).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(batch, attempts, dtype=torch.float64).uniform_(
        math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_ratio)
    w = torch.sqrt(target_area * aspect).round().long()
    h = torch.sqrt(target_area / aspect).round().long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.int().argmax(dim=1, keepdim=True)  # first attempt that fits (0 when none does)
    found = fits.any(dim=1)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    # Fallback of torchvision: the whole image, narrowed to the ratio range.
    in_ratio = width / height
    if in_ratio < min(ratio):
        fallback_w, fallback_h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fallback_w, fallback_h = int(round(height * max(ratio))), height
    else:
        fallback_w, fallback_h = width, height
    w = torch.where(found, w, torch.full_like(w, fallback_w))
    h = torch.where(found, h, torch.full_like(h, fallback_h))
    u = torch.rand(batch, 2, generator=generator, dtype=torch.float64)
    top = (u[:, 0] * (height - h + 1)).long()
    left = (u[:, 1] * (width - w + 1)).long()
    top = torch.where(found, top, (height - h) // 2)
    left = torch.where(found, left, (width - w) // 2)
    return {"top": top, "left": left, "height": h, "width": w}


def sample_color_jitter(
    batch: int, generator: torch.Generator, strength: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
    prob: float = 0.8,
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
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1), jitter_prob: float = 0.8,
    grayscale_prob: float = 0.2, blur_prob: float = 0.5, blur_sigma: tuple[float, float] = (0.1, 2.0),
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


# --------------------------------------------------------------------------- grouped dispatch


def to_device(values: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Return ``values`` (usually small CPU parameters) on ``device``, converted to ``dtype`` first.

    On CUDA the copy goes through pinned memory, so it is asynchronous and never waits
    for the kernels already queued (a copy from pageable memory would).
    """
    values = values.to(dtype) if dtype is not None else values
    if values.device == device:
        return values
    if device.type == "cuda" and values.device.type == "cpu":
        values = values.pin_memory()
    return values.to(device, non_blocking=True)


@lru_cache(maxsize=64)
def _constant(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Return a cached 1-D tensor of ``values`` on ``device`` (made once, not on every call)."""
    return torch.tensor(values, dtype=dtype).to(device)


def _per_image(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Return (n,) values as an (n, 1, 1, 1) tensor with the dtype and device of ``like``."""
    return to_device(values, like.device, like.dtype).view(-1, 1, 1, 1)


def apply_grouped(images: torch.Tensor, group: torch.Tensor, handlers: list, params: dict) -> torch.Tensor:
    """Return ``images`` (modified in place) after ``handlers[g](subset, subset_params)`` for each group g.

    ``group`` is a CPU int64 (B,) tensor of group ids; ids outside ``range(len(handlers))``
    leave their image untouched. ``params`` maps names to CPU tensors with a leading (B,)
    dimension; each handler receives its images as a fresh tensor (which it may overwrite)
    and the parameters restricted to them, on the images' device. The number of operator
    calls is bounded by the number of groups, not by B.
    """
    if images.shape[0] == 0:
        return images
    group = group.to("cpu").long()
    group = torch.where((group >= 0) & (group < len(handlers)), group, len(handlers))  # len(handlers): untouched
    order = torch.argsort(group, stable=True)
    counts = torch.bincount(group, minlength=len(handlers) + 1).tolist()
    if sum(counts[: len(handlers)]) == 0:
        return images
    device = images.device
    order_device = to_device(order, device)
    sorted_params = {name: to_device(value[order], device) for name, value in params.items()}
    start = 0
    for handler, count in zip(handlers, counts):
        if count:
            index = order_device[start:start + count]
            subset = {name: value[start:start + count] for name, value in sorted_params.items()}
            images.index_copy_(0, index, handler(images.index_select(0, index), subset))
        start += count
    return images


# --------------------------------------------------------------------------- colour operations
# Operations whose name ends in "_" overwrite their input (a fresh batch or subset) and return it:
# on the CPU, allocating a new batch-sized tensor costs several times more than an in-place pass.


def luma(images: torch.Tensor) -> torch.Tensor:
    """Return the (B, H, W) grayscale (ITU-R 601-2 luma) of (B, 3, H, W) images, same scale."""
    red, green, blue = images.unbind(dim=1)
    gray = red * LUMA_WEIGHTS[0]
    return gray.add_(green, alpha=LUMA_WEIGHTS[1]).add_(blue, alpha=LUMA_WEIGHTS[2])


def adjust_brightness_(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Return images * factor clamped to 0..255, in place; factor (B,) per image (torchvision adjust_brightness)."""
    return blend_(images, factor, torch.zeros_like(factor), torch.zeros_like(factor))


def adjust_saturation_(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Return factor * image + (1 - factor) * luma per image, clamped, in place (torchvision adjust_saturation)."""
    return blend_(images, factor, 1.0 - factor, torch.zeros_like(factor))


def adjust_contrast_(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Return factor * image + (1 - factor) * mean luma per image, clamped, in place (torchvision adjust_contrast)."""
    return blend_(images, factor, torch.zeros_like(factor), 1.0 - factor)


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
    # hue in sixths of a turn, as torchvision's _rgb2hsv: red wins ties, then green
    is_red = (red == value).to(images.dtype)
    is_green = (green == value).to(images.dtype).mul_(1.0 - is_red)
    blue_hue = red - green + 4.0 * chroma
    red_minus_blue_hue = green - blue - blue_hue
    green_minus_blue_hue = (blue - red).add_(chroma, alpha=2.0).sub_(blue_hue)
    numerator = blue_hue.addcmul_(is_red, red_minus_blue_hue).addcmul_(is_green, green_minus_blue_hue)
    shift6 = to_device(6.0 * shift, images.device, images.dtype).view(-1, 1, 1)
    hue6 = numerator.div_(chroma.clamp(min=1e-6)).add_(shift6)  # grey pixels: numerator 0
    hue6.sub_(hue6.div(6.0).floor_().mul_(6.0))  # wrap into [0, 6)
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


def gaussian_blur3(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Return new images blurred by a 3x3 Gaussian of per-image ``sigma`` (B,) pixels, reflect padding (torchvision).

    Separable: along each axis, out = centre * w0 + (previous + next) * w1 with the
    normalised taps w0 = 1 / (1 + 2 e), w1 = e / (1 + 2 e), e = exp(-1 / (2 sigma^2)).
    """
    sigma = _per_image(sigma, images)
    edge = torch.exp(-0.5 / sigma.square())
    centre_weight = 1.0 / (1.0 + 2.0 * edge)
    side_weight = edge * centre_weight
    padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
    rows = padded[..., :-2] + padded[..., 2:]
    rows = rows.mul_(side_weight).addcmul_(padded[..., 1:-1], centre_weight)  # (B, C, H + 2, W)
    columns = rows[..., :-2, :] + rows[..., 2:, :]
    return columns.mul_(side_weight).addcmul_(rows[..., 1:-1, :], centre_weight)


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


# --------------------------------------------------------------------------- geometric operations


def inverse_affine_matrices(
    angle: torch.Tensor, translate: torch.Tensor, shear: torch.Tensor, center: torch.Tensor,
) -> torch.Tensor:
    """Return float64 (B, 2, 3) output->input pixel maps, torchvision's ``_get_inverse_affine_matrix`` per image.

    angle (B,) degrees, translate (B, 2) pixels, shear (B, 2) degrees, center (B, 2) pixels
    relative to the image centre; coordinates are centred pixel coordinates; scale 1.
    """
    rot = torch.deg2rad(angle.double())
    shear_x, shear_y = torch.deg2rad(shear.double()).unbind(dim=1)
    cx, cy = center.double().unbind(dim=1)
    tx, ty = translate.double().unbind(dim=1)
    a = torch.cos(rot - shear_y) / torch.cos(shear_y)
    b = -(a * torch.tan(shear_x) + torch.sin(rot))
    c = torch.sin(rot - shear_y) / torch.cos(shear_y)
    d = torch.cos(rot) - c * torch.tan(shear_x)
    m0, m1, m3, m4 = d, -b, -c, a
    m2 = cx - m0 * (cx + tx) - m1 * (cy + ty)
    m5 = cy - m3 * (cx + tx) - m4 * (cy + ty)
    return torch.stack((torch.stack((m0, m1, m2), dim=1), torch.stack((m3, m4, m5), dim=1)), dim=1)


def affine_nearest(images: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Return new images warped by per-image ``matrices`` (B, 2, 3), nearest neighbour, zero fill (torchvision affine).

    ``matrices`` map output to input in centred pixel coordinates (``inverse_affine_matrices``).
    Source pixels are rounded half to even, as grid_sample's nearest mode does; one
    gather from the zero-bordered image replaces a sampling grid.
    """
    batch, channels, height, width = images.shape
    device = images.device
    m = to_device(matrices, device, torch.float32)
    x = torch.arange(width, device=device, dtype=torch.float32) - (width - 1) / 2.0
    y = torch.arange(height, device=device, dtype=torch.float32) - (height - 1) / 2.0

    def source(row: int, size: int) -> torch.Tensor:
        along_x = m[:, row, 0:1] * x  # (B, W)
        along_y = m[:, row, 1:2] * y + (m[:, row, 2:3] + (size - 1) / 2.0)  # (B, H)
        # rounded source index, clamped onto the zero border at -1 and size
        return (along_y.unsqueeze(2) + along_x.unsqueeze(1)).round_().clamp_(-1.0, float(size)).add_(1.0)

    index = source(1, height).mul_(width + 2).add_(source(0, width)).to(torch.int64).view(batch, 1, -1)
    padded = F.pad(images, (1, 1, 1, 1)).reshape(batch, channels, -1)
    return padded.gather(2, index.expand(batch, channels, height * width)).view(batch, channels, height, width)


def autoaugment_matrices(op: torch.Tensor, magnitude: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Return float64 (B, 2, 3) ``affine_nearest`` maps of geometric AutoAugment ops (identity for the others).

    op (B,) codes into ``AUTOAUGMENT_OPS``, magnitude (B,) as drawn by ``sample_autoaugment``.
    """
    zeros = torch.zeros_like(magnitude)
    angle = torch.where(op == _OP["Rotate"], -magnitude, zeros)  # torchvision rotate = affine by -angle
    shear = torch.stack((torch.where(op == _OP["ShearX"], torch.rad2deg(torch.atan(magnitude)), zeros),
                         torch.where(op == _OP["ShearY"], torch.rad2deg(torch.atan(magnitude)), zeros)), dim=1)
    translate = torch.stack((torch.where(op == _OP["TranslateX"], magnitude, zeros),
                             torch.where(op == _OP["TranslateY"], magnitude, zeros)), dim=1)
    is_shear = ((op == _OP["ShearX"]) | (op == _OP["ShearY"])).double()
    # shears turn about the top-left corner (center=[0, 0] in torchvision), the rest about the image centre
    center = torch.stack((-width / 2.0 * is_shear, -height / 2.0 * is_shear), dim=1)
    return inverse_affine_matrices(angle, translate, shear, center)


# --------------------------------------------------------------------------- AutoAugment


_AA_HANDLERS = [  # one group per kind of operation; Invert is Solarize with threshold 0
    lambda images, p: affine_nearest(images, p["matrix"]),
    lambda images, p: adjust_sharpness_(images, 1.0 + p["magnitude"]),
    lambda images, p: posterize_(images, p["magnitude"]),
    lambda images, p: solarize(images, p["magnitude"]),
    lambda images, p: autocontrast_(images),
    lambda images, p: equalize(images),
]
_NO_GROUP = len(_AA_HANDLERS)
_AA_GROUP_OF_OP = torch.tensor([
    0, 0, 0, 0, 0,  # ShearX, ShearY, TranslateX, TranslateY, Rotate: one affine gather
    _NO_GROUP, _NO_GROUP, _NO_GROUP,  # Brightness, Color, Contrast: one batch-wide blend instead
    1, 2, 3, 4, 5, 3,  # Sharpness, Posterize, Solarize, AutoContrast, Equalize, Invert
])


def apply_autoaugment(images: torch.Tensor, params: dict) -> torch.Tensor:
    """Return float 0..255 images (B, 3, H, W) after each image's AutoAugment sub-policy (modified in place).

    ``params`` from ``sample_autoaugment``. Per slot: Brightness, Color and Contrast as one
    batch-wide per-image blend (identity weights elsewhere), then the other operations
    group-wise by kind (one geometric group, five others).
    """
    height, width = images.shape[-2:]
    for slot in range(2):
        op = params["op"][:, slot]
        fire = params["apply"][:, slot]
        magnitude = params["magnitude"][:, slot]  # 0 for Invert: a solarize at threshold 0
        is_blend = {name: fire & (op == _OP[name]) for name in ("Brightness", "Color", "Contrast")}
        if any(mask.any() for mask in is_blend.values()):
            blending = is_blend["Brightness"] | is_blend["Color"] | is_blend["Contrast"]
            zeros = torch.zeros_like(magnitude)
            blend_(images, torch.where(blending, 1.0 + magnitude, torch.ones_like(magnitude)),
                   torch.where(is_blend["Color"], -magnitude, zeros), torch.where(is_blend["Contrast"], -magnitude, zeros))
        group = torch.where(fire, _AA_GROUP_OF_OP[op], torch.full_like(op, _NO_GROUP))
        slot_params = {"magnitude": magnitude, "matrix": autoaugment_matrices(op, magnitude, height, width)}
        apply_grouped(images, group, _AA_HANDLERS, slot_params)
    return images


# --------------------------------------------------------------------------- crops


def apply_crop_flip(images: torch.Tensor, params: dict, padding: int = 4) -> torch.Tensor:
    """Return (B, C, H, W) crops of the zero-padded images at ("top", "left"), mirrored where "flip".

    Works on any dtype (uint8 in the pipeline): one pad and one gather, no interpolation.
    """
    batch, channels, height, width = images.shape
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding)) if padding else images
    padded_width = width + 2 * padding
    top = to_device(params["top"], device).view(-1, 1, 1)
    left = to_device(params["left"], device).view(-1, 1, 1)
    flip = to_device(params["flip"], device).view(-1, 1, 1)
    rows = torch.arange(height, device=device).view(1, -1, 1) + top
    columns = torch.arange(width, device=device).view(1, 1, -1)
    columns = torch.where(flip, width - 1 - columns, columns) + left
    index = (rows * padded_width + columns).view(batch, 1, height * width).expand(batch, channels, height * width)
    return padded.reshape(batch, channels, -1).gather(2, index).view(batch, channels, height, width)


def _crop_coordinates(start: torch.Tensor, length: torch.Tensor, out_size: int, in_size: int,
                      flip: torch.Tensor | None) -> torch.Tensor:
    """Return (B, out_size) normalised grid coordinates that resize [start, start + length) to out_size pixels."""
    position = torch.arange(out_size, dtype=torch.float64).view(1, -1)
    if flip is not None:
        position = torch.where(flip.view(-1, 1), out_size - 1 - position, position)
    start = start.double().view(-1, 1)
    length = length.double().view(-1, 1)
    # pixel-centre convention of bilinear resizing, clamped to the crop as a crop-then-resize would be
    source = start + (position + 0.5) * length / out_size - 0.5
    source = torch.minimum(torch.maximum(source, start), start + length - 1)
    return ((2.0 * source + 1.0) / in_size - 1.0).float()


def apply_resized_crop(images: torch.Tensor, params: dict, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Return new float (B, C, h, w) bilinear resizes of each image's box, mirrored where params["flip"].

    ``params``: "top", "left", "height", "width" (B,) pixels and optional "flip" (B,)
    bool. Same values as crop-then-resize (bilinear, half-pixel centres, no antialias,
    which only matters when shrinking); the output size defaults to the input size. One
    ``grid_sample`` with a separable per-image grid.
    """
    batch, _, height, width = images.shape
    out_h, out_w = size if size is not None else (height, width)
    gx = _crop_coordinates(params["left"], params["width"], out_w, width, params.get("flip"))
    gy = _crop_coordinates(params["top"], params["height"], out_h, height, None)
    gx = to_device(gx, images.device, images.dtype)
    gy = to_device(gy, images.device, images.dtype)
    grid = torch.stack((gx.view(batch, 1, out_w).expand(batch, out_h, out_w),
                        gy.view(batch, out_h, 1).expand(batch, out_h, out_w)), dim=-1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


# --------------------------------------------------------------------------- colour jitter, grayscale, blur

def _jitter_stage(params: dict, stage: int) -> dict:
    """Return the per-image blend weights (CPU float64 (B,)) of colour-jitter stage ``stage`` (identity elsewhere)."""
    operation = torch.where(params["jitter"], params["order"][:, stage], torch.full_like(params["order"][:, 0], -1))
    ones, zeros = torch.ones_like(params["brightness"]), torch.zeros_like(params["brightness"])
    factor = torch.where(operation == 0, params["brightness"], ones)
    factor = torch.where(operation == 1, params["contrast"], factor)
    factor = torch.where(operation == 2, params["saturation"], factor)
    return {
        "factor": factor,
        "mean_weight": torch.where(operation == 1, 1.0 - params["contrast"], zeros),
        "luma_weight": torch.where(operation == 2, 1.0 - params["saturation"], zeros),
        "hue_group": torch.where(operation == 3, 0, 1),
    }


def apply_color_jitter(images: torch.Tensor, params: dict) -> torch.Tensor:
    """Return float 0..255 images after each image's colour jitter in its own order (modified in place).

    ``params`` from ``sample_color_jitter``. Stage k applies operation order[:, k] of each
    image with "jitter" set: brightness, contrast and saturation as one per-image blend
    over the whole batch (identity weights elsewhere, exact), hue on the group of
    images whose stage-k operation it is.
    """
    for stage in range(4):
        weights = _jitter_stage(params, stage)
        blend_(images, weights["factor"], weights["luma_weight"], weights["mean_weight"])
        apply_grouped(images, weights["hue_group"], [lambda x, p: adjust_hue(x, p["hue"])], {"hue": params["hue"]})
    return images


def apply_contrastive(images: torch.Tensor, params: dict) -> torch.Tensor:
    """Return float 0..255 contrastive views: resized crop + flip, colour jitter, grayscale, blur.

    ``images``: float (B, 3, H, W) 0..255; ``params`` from ``sample_contrastive``.
    """
    views = apply_resized_crop(images, params)
    apply_color_jitter(views, params)
    apply_grouped(views, (~params["grayscale"]).long(), [lambda x, p: to_grayscale(x)], {})
    apply_grouped(views, (~params["blur"]).long(), [lambda x, p: gaussian_blur3(x, p["sigma"])],
                  {"sigma": params["sigma"]})
    return views


# --------------------------------------------------------------------------- normalisation and recipes


def normalize_(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Return (images / 255 - mean) / std per channel for 0..255 float images, in place."""
    scale = _constant(tuple(1.0 / (MAX_VALUE * s) for s in std), images.device, images.dtype)
    shift = _constant(tuple(-m / s for m, s in zip(mean, std)), images.device, images.dtype)
    return images.mul_(scale.view(1, -1, 1, 1)).add_(shift.view(1, -1, 1, 1))


def sample_classification(batch: int, generator: torch.Generator, image_size: tuple[int, int] = (32, 32),
                          padding: int = 4, flip_prob: float = 0.5) -> dict:
    """Return the draws of the CIFAR view 0: ``sample_crop_flip`` keys plus "autoaugment" (a nested dict)."""
    params = sample_crop_flip(batch, generator, padding=padding, flip_prob=flip_prob)
    params["autoaugment"] = sample_autoaugment(batch, generator, image_size=image_size)
    return params


def classification_views(images: torch.Tensor, params: dict, mean: tuple[float, ...], std: tuple[float, ...],
                         padding: int = 4) -> torch.Tensor:
    """Return normalised float32 CIFAR views 0 of uint8 (B, 3, H, W) images: pad-crop, flip, AutoAugment."""
    cropped = apply_crop_flip(images, params, padding=padding).float()
    return normalize_(apply_autoaugment(cropped, params["autoaugment"]), mean, std)


def contrastive_views(images: torch.Tensor, params: dict, mean: tuple[float, ...],
                      std: tuple[float, ...]) -> torch.Tensor:
    """Return normalised float32 contrastive views of uint8 (B, 3, H, W) images (``sample_contrastive`` draws)."""
    return normalize_(apply_contrastive(images.float(), params), mean, std)


__all__ = [
    "AUTOAUGMENT_OPS", "GEOMETRIC_OPS", "SIGNED_OPS", "CIFAR10_POLICY", "autoaugment_magnitudes",
    "sample_crop_flip", "sample_autoaugment", "sample_resized_crop", "sample_color_jitter", "sample_contrastive",
    "sample_classification", "to_device", "apply_grouped", "luma", "adjust_brightness_", "adjust_saturation_", "adjust_contrast_",
    "adjust_sharpness_", "adjust_hue", "to_grayscale", "posterize_", "solarize", "autocontrast_", "equalize",
    "gaussian_blur3", "inverse_affine_matrices", "affine_nearest", "autoaugment_matrices", "apply_autoaugment",
    "apply_crop_flip", "apply_resized_crop", "apply_color_jitter", "apply_contrastive", "normalize_", "blend_",
    "classification_views", "contrastive_views",
]
