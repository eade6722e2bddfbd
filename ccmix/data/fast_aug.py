"""Batched image augmentation with per-sample randomness, for the device-resident fast pipeline.

Implements, for a whole batch at once, the per-image view recipes that Contrastive
CutMix (Pan et al., "Enhanced Long-Tailed Recognition with Contrastive CutMix
Augmentation", IEEE TIP 2024) inherits from balanced contrastive learning (Zhu et al.,
"Balanced Contrastive Learning for Long-Tailed Visual Recognition", CVPR 2022):

* view 0 (CIFAR): pad-4 random crop, horizontal flip and the AutoAugment CIFAR-10
  policy (Cubuk et al., "AutoAugment: Learning Augmentation Strategies from Data",
  CVPR 2019) with the semantics of the published ConCutMix code (PIL operations:
  grey fill, shears about the top-left corner with bicubic interpolation, nearest
  neighbour translations and rotations, rotations never mirrored);
* view 0 (ImageNet scale): the published timm-style RandAugment ``rand-n2-m10-mstd0.5``
  (``sample_randaugment`` / ``apply_randaugment``);
* contrastive views: RandomResizedCrop, flip, ColorJitter applied with probability p
  (its four operations in a random order drawn per image, as torchvision draws it per
  call), random grayscale and PIL's Gaussian blur (three extended-box passes per axis)
  with a per-image sigma.

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
``gather`` on uint8; one bilinear ``grid_sample`` for crop + flip + resize; PIL-convention
affine resampling for the geometric AutoAugment operations, one group per interpolation (one
gather for nearest neighbour, one per kernel tap for bicubic); brightness, contrast and saturation
as one in-place per-image blend; a modulo-free HSV hue rotation; PIL's box-pass blur with
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
# Operations whose magnitude gets a random sign; the published policy never mirrors Rotate.
SIGNED_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Brightness", "Color", "Contrast", "Sharpness")
AUTOAUGMENT_FILL = (128.0, 128.0, 128.0)  # grey, on the 0..255 scale, for pixels a geometric op uncovers

# AutoAugment CIFAR-10 policy (Cubuk et al. 2019), the table of the published code (torchvision has the
# same one): 25 sub-policies of two (operation, probability, magnitude bin or None).
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
    """Return op name -> float64 (10,) magnitude per bin, the published AutoAugment scales for an HxW image.

    Units: shear as the tangent, translation in pixels (fractional), rotation in degrees
    (counter-clockwise), colour ops as factor - 1, posterize in bits, solarize as the
    threshold on the 0..255 scale (linspace(256, 0): bin 0 inverts nothing).
    """
    bins = MAGNITUDE_BINS
    linspace = lambda high: torch.linspace(0.0, high, bins, dtype=torch.float64)  # noqa: E731
    return {
        "ShearX": linspace(0.3), "ShearY": linspace(0.3),
        "TranslateX": linspace(150.0 / 331.0) * width, "TranslateY": linspace(150.0 / 331.0) * height,
        "Rotate": linspace(30.0),
        "Brightness": linspace(0.9), "Color": linspace(0.9), "Contrast": linspace(0.9), "Sharpness": linspace(0.9),
        "Posterize": torch.linspace(8.0, 4.0, bins, dtype=torch.float64).round(),
        "Solarize": torch.linspace(256.0, 0.0, bins, dtype=torch.float64),
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


def box_blur_weights(radius: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Return (float64 (N, 2 * reach + 1) taps, reach) of PIL's extended box filter of per-image ``radius`` (N,).

    The 2 * floor(r) + 1 inner taps weigh 1 / (2r + 1) each and the two outer ones share
    the rest, with PIL's 24-bit fixed-point rounding; reach = max floor(r) + 1 pixels.
    """
    radius = radius.double().cpu()
    whole = torch.floor(radius)
    reach = int(whole.numpy().max()) + 1 if radius.numel() else 1  # .numpy(): a host read, never a device wait
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


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Return new images blurred as PIL's ``ImageFilter.GaussianBlur(radius=sigma)`` blurs, per-image sigma.

    images: float (N, 3, H, W), in [0, 1] or any other scale (the filter is linear);
    sigma: (N,) pixels, ideally a CPU tensor (its kernel sizes are read on the host). Three
    extended-box passes along the rows then three along the columns, edges repeated,
    as in Pillow; unlike Pillow, values are not rounded to 8 bits between passes.
    """
    taps, reach = box_blur_weights(pil_box_radius(sigma.to("cpu")))
    return box_blur(images, taps, reach)


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


# PIL's affine convention: output pixel (x, y) takes the input at (a, b, c, d, e, f) applied to its
# centre, X = a (x + 0.5) + b (y + 0.5) + c and Y = d (x + 0.5) + e (y + 0.5) + f, in pixels from the
# top-left corner; a point outside [0, W) x [0, H) gets the fill colour.
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


def _pil_source(coefficients: torch.Tensor, height: int, width: int, device: torch.device) -> tuple:
    """Return float64 source coordinates (X, Y), each (B, H, W), of PIL affine ``coefficients`` (B, 6)."""
    c = to_device(coefficients, device, torch.float64)
    x = (torch.arange(width, device=device, dtype=torch.float64) + 0.5).view(1, 1, -1)
    y = (torch.arange(height, device=device, dtype=torch.float64) + 0.5).view(1, -1, 1)
    source_x = c[:, 0].view(-1, 1, 1) * x + c[:, 1].view(-1, 1, 1) * y + c[:, 2].view(-1, 1, 1)
    source_y = c[:, 3].view(-1, 1, 1) * x + c[:, 4].view(-1, 1, 1) * y + c[:, 5].view(-1, 1, 1)
    return source_x, source_y


def _cubic_weights(d: torch.Tensor) -> list[torch.Tensor]:
    """Return PIL's four bicubic weights (cubic convolution with a = -1) at fractional offsets ``d``."""
    d2, d3 = d * d, d * d * d
    return [-d + 2.0 * d2 - d3, 1.0 - 2.0 * d2 + d3, d + d2 - d3, d3 - d2]


def _linear_weights(d: torch.Tensor) -> list[torch.Tensor]:
    """Return the two bilinear weights at fractional offsets ``d``."""
    return [1.0 - d, d]


def pil_affine(images: torch.Tensor, coefficients: torch.Tensor, fill: tuple[float, float, float],
               interpolation: str = "nearest") -> torch.Tensor:
    """Return new images warped as PIL's ``Image.transform(size, AFFINE, coefficients, resample, fillcolor)``.

    images float (B, C, H, W) 0..255; coefficients float64 (B, 6) per image (output pixel
    centre -> input point); fill: one value per channel for points outside the image.
    nearest takes the pixel containing the point; bilinear and bicubic (PIL's a = -1
    kernel) read neighbours with indices clamped to the image, as Pillow's filters do.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation {interpolation!r} is not accepted; choose one of: {', '.join(INTERPOLATIONS)}")
    batch, channels, height, width = images.shape
    device = images.device
    source_x, source_y = _pil_source(coefficients, height, width, device)
    inside = (source_x >= 0) & (source_x < width) & (source_y >= 0) & (source_y < height)
    flat = images.reshape(batch, channels, height * width)

    def read(rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        index = (rows.clamp(0, height - 1) * width + columns.clamp(0, width - 1)).view(batch, 1, -1)
        return flat.gather(2, index.expand(batch, channels, height * width)).view(batch, channels, height, width)

    if interpolation == "nearest":
        out = read(source_y.floor().long(), source_x.floor().long())
    else:
        weights, first = (_linear_weights, 0) if interpolation == "bilinear" else (_cubic_weights, -1)
        start_x, start_y = (source_x - 0.5).floor(), (source_y - 0.5).floor()
        wx = [w.to(images.dtype).unsqueeze(1) for w in weights(source_x - 0.5 - start_x)]
        wy = [w.to(images.dtype).unsqueeze(1) for w in weights(source_y - 0.5 - start_y)]
        start_x, start_y = start_x.long() + first, start_y.long() + first
        out = torch.zeros_like(images)
        for j, weight_y in enumerate(wy):
            row = sum(weight_x * read(start_y + j, start_x + i) for i, weight_x in enumerate(wx))
            out.add_(row * weight_y)
        if interpolation == "bicubic":
            out.clamp_(0.0, MAX_VALUE)
    fill_values = _constant(tuple(float(v) for v in fill), device, images.dtype).view(1, -1, 1, 1)
    return torch.where(inside.unsqueeze(1), out, fill_values)


def rotation_coefficients(degrees: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Return float64 (B, 6) PIL affine coefficients of ``Image.rotate(degrees)`` (counter-clockwise, about the centre)."""
    angle = -torch.deg2rad(degrees.double())
    cos, sin = torch.cos(angle), torch.sin(angle)
    centre_x, centre_y = width / 2.0, height / 2.0
    return torch.stack((cos, sin, centre_x - cos * centre_x - sin * centre_y,
                        -sin, cos, centre_y + sin * centre_x - cos * centre_y), dim=1)


def geometric_coefficients(op: torch.Tensor, value: torch.Tensor, codes: dict[str, int], height: int,
                           width: int) -> torch.Tensor:
    """Return float64 (B, 6) PIL affine coefficients of geometric ops (identity for the others).

    op (B,) op codes; value (B,) their signed argument; ``codes`` maps "ShearX", "ShearY",
    "TranslateX", "TranslateY" and "Rotate" to the codes of the op table. Shears about the
    top-left corner, translations by ``value`` pixels (the content moves the other way),
    rotations by ``value`` degrees counter-clockwise about the centre, as PIL does them.
    """
    value = value.double()
    zeros, ones = torch.zeros_like(value), torch.ones_like(value)
    coefficients = torch.stack((ones, zeros, zeros, zeros, ones, zeros), dim=1)
    for column, name in ((1, "ShearX"), (3, "ShearY"), (2, "TranslateX"), (5, "TranslateY")):
        coefficients[:, column] = torch.where(op == codes[name], value, zeros)
    rotate = op == codes["Rotate"]
    return torch.where(rotate.view(-1, 1), rotation_coefficients(value, height, width), coefficients)


def autoaugment_coefficients(op: torch.Tensor, magnitude: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Return float64 (B, 6) PIL affine coefficients of geometric AutoAugment ops (``geometric_coefficients``)."""
    return geometric_coefficients(op, magnitude, {name: _OP[name] for name in GEOMETRIC_OPS}, height, width)


# --------------------------------------------------------------------------- AutoAugment


_AA_HANDLERS = [  # one group per kind of operation; Invert is Solarize with threshold 0
    lambda images, p: pil_affine(images, p["coefficients"], AUTOAUGMENT_FILL, "nearest"),
    lambda images, p: pil_affine(images, p["coefficients"], AUTOAUGMENT_FILL, "bicubic"),
    lambda images, p: adjust_sharpness_(images, 1.0 + p["magnitude"]),
    lambda images, p: posterize_(images, p["magnitude"]),
    lambda images, p: solarize(images, p["magnitude"]),
    lambda images, p: autocontrast_(images),
    lambda images, p: equalize(images),
]
_NO_GROUP = len(_AA_HANDLERS)
_AA_GROUP_OF_OP = torch.tensor([
    1, 1,  # ShearX, ShearY: bicubic, as published
    0, 0, 0,  # TranslateX, TranslateY, Rotate: nearest neighbour, as published
    _NO_GROUP, _NO_GROUP, _NO_GROUP,  # Brightness, Color, Contrast: one batch-wide blend instead
    2, 3, 4, 5, 6, 4,  # Sharpness, Posterize, Solarize, AutoContrast, Equalize, Invert
])


def apply_autoaugment(images: torch.Tensor, params: dict) -> torch.Tensor:
    """Return float 0..255 images (B, 3, H, W) after each image's AutoAugment sub-policy (modified in place).

    ``params`` from ``sample_autoaugment``. Per slot: Brightness, Color and Contrast as one
    batch-wide per-image blend (identity weights elsewhere), then the other operations
    group-wise by kind (nearest and bicubic geometric groups filled with grey, five others).
    """
    height, width = images.shape[-2:]
    for slot in range(2):
        op = params["op"][:, slot]
        fire = params["apply"][:, slot]
        magnitude = params["magnitude"][:, slot]  # 0 for Invert: a solarize at threshold 0
        is_blend = {name: fire & (op == _OP[name]) for name in ("Brightness", "Color", "Contrast")}
        if any(mask.numpy().any() for mask in is_blend.values()):  # CPU draws: .numpy() reads them on the host
            blending = is_blend["Brightness"] | is_blend["Color"] | is_blend["Contrast"]
            zeros = torch.zeros_like(magnitude)
            blend_(images, torch.where(blending, 1.0 + magnitude, torch.ones_like(magnitude)),
                   torch.where(is_blend["Color"], -magnitude, zeros), torch.where(is_blend["Contrast"], -magnitude, zeros))
        group = torch.where(fire, _AA_GROUP_OF_OP[op], torch.full_like(op, _NO_GROUP))
        slot_params = {"magnitude": magnitude, "coefficients": autoaugment_coefficients(op, magnitude, height, width)}
        apply_grouped(images, group, _AA_HANDLERS, slot_params)
    return images


# --------------------------------------------------------------------------- RandAugment (ImageNet-scale view 0)

# The published timm-style RandAugment: fifteen ops, drawn uniformly with replacement.
RANDAUGMENT_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color", "Contrast",
    "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)
_RA = {name: code for code, name in enumerate(RANDAUGMENT_OPS)}
RANDAUGMENT_SIGNED_OPS = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
_RA_IS_SIGNED = torch.tensor([name in RANDAUGMENT_SIGNED_OPS for name in RANDAUGMENT_OPS])  # per op code
RANDAUGMENT_MAX_LEVEL = 10.0
RANDAUGMENT_OP_PROB = 0.5


def randaugment_arguments(op: torch.Tensor, level: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Return float64 (B,) unsigned arguments of RandAugment ops ``op`` (B,) at ``level`` (B,) in [0, 10].

    Rotate in degrees (up to 30), shear as the tangent (up to 0.3), relative translations
    in pixels (up to 0.45 of the side), posterize bits int(4 level / 10), solarize
    threshold int(256 level / 10), SolarizeAdd amount int(110 level / 10), enhancement
    factor 0.1 + 1.8 level / 10; 0 for argument-free ops.
    """
    fraction = level.double() / RANDAUGMENT_MAX_LEVEL
    table = torch.zeros(len(RANDAUGMENT_OPS), fraction.shape[0], dtype=torch.float64)
    table[_RA["Rotate"]] = 30.0 * fraction
    table[_RA["ShearX"]] = table[_RA["ShearY"]] = 0.3 * fraction
    table[_RA["TranslateXRel"]] = 0.45 * fraction * width
    table[_RA["TranslateYRel"]] = 0.45 * fraction * height
    table[_RA["Posterize"]] = (4.0 * fraction).floor()
    table[_RA["Solarize"]] = (256.0 * fraction).floor()
    table[_RA["SolarizeAdd"]] = (110.0 * fraction).floor()
    for name in ("Color", "Contrast", "Brightness", "Sharpness"):
        table[_RA[name]] = 0.1 + 1.8 * fraction
    return table.gather(0, op.view(1, -1)).view(-1)


def sample_randaugment(batch: int, generator: torch.Generator, image_size: tuple[int, int] = (224, 224),
                       num_ops: int = 2, magnitude: float = 10.0, magnitude_std: float = 0.5) -> dict:
    """Return per-image draws of RandAugment ``rand-n{num_ops}-m{magnitude}-mstd{magnitude_std}`` for HxW images.

    "op" int64 (B, num_ops) into ``RANDAUGMENT_OPS``; "apply" bool (B, num_ops), each with
    probability 0.5; "level" float64 (B, num_ops) ~ N(magnitude, magnitude_std) clipped to
    [0, 10]; "argument" float64 (B, num_ops), the op argument (``randaugment_arguments``)
    with a random sign for ``RANDAUGMENT_SIGNED_OPS``; "bicubic" bool (B, num_ops), the
    resampling of geometric ops (else bilinear).
    """
    _check_batch(batch)
    op = torch.randint(0, len(RANDAUGMENT_OPS), (batch, num_ops), generator=generator)
    fire = torch.rand(batch, num_ops, generator=generator, dtype=torch.float64) < RANDAUGMENT_OP_PROB
    noise = torch.randn(batch, num_ops, generator=generator, dtype=torch.float64)
    level = (magnitude + magnitude_std * noise).clamp(0.0, RANDAUGMENT_MAX_LEVEL)
    negative = torch.rand(batch, num_ops, generator=generator) < 0.5
    bicubic = torch.rand(batch, num_ops, generator=generator) < 0.5
    argument = randaugment_arguments(op.reshape(-1), level.reshape(-1), *image_size).view(batch, num_ops)
    argument = torch.where(_RA_IS_SIGNED[op] & negative, -argument, argument)
    return {"op": op, "apply": fire, "level": level, "argument": argument, "bicubic": bicubic}


def randaugment_coefficients(op: torch.Tensor, argument: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Return float64 (B, 6) PIL affine coefficients of geometric RandAugment ops (``geometric_coefficients``)."""
    codes = {"ShearX": _RA["ShearX"], "ShearY": _RA["ShearY"], "TranslateX": _RA["TranslateXRel"],
             "TranslateY": _RA["TranslateYRel"], "Rotate": _RA["Rotate"]}
    return geometric_coefficients(op, argument, codes, height, width)


def solarize_add(images: torch.Tensor, amount: torch.Tensor, threshold: float = 128.0) -> torch.Tensor:
    """Return images with ``amount`` (B,) added, capped at 255, to every value below ``threshold`` (published op)."""
    return torch.where(images < threshold, (images + _per_image(amount, images)).clamp_(max=MAX_VALUE), images)


def _randaugment_handlers(fill: tuple[float, float, float]) -> list:
    """Return the group handlers of one RandAugment slot (see ``apply_randaugment``)."""
    return [
        lambda images, p: pil_affine(images, p["coefficients"], fill, "bilinear"),
        lambda images, p: pil_affine(images, p["coefficients"], fill, "bicubic"),
        lambda images, p: adjust_sharpness_(images, p["argument"]),
        lambda images, p: posterize_(images, p["argument"]),
        lambda images, p: solarize(images, p["argument"]),
        lambda images, p: solarize_add(images, p["argument"]),
        lambda images, p: autocontrast_(images),
        lambda images, p: equalize(images),
        lambda images, p: solarize(images, torch.zeros_like(p["argument"])),  # invert
    ]


# Per op code: its group in ``_randaugment_handlers`` (none for Brightness, Color and Contrast, which are one
# blend), and whether it is geometric (group 0 bilinear or 1 bicubic, drawn per image).
_RA_NO_GROUP = 9  # len(_randaugment_handlers(fill))
_RA_GROUP_OF_OP = torch.tensor([
    {"Sharpness": 2, "Posterize": 3, "Solarize": 4, "SolarizeAdd": 5, "AutoContrast": 6, "Equalize": 7,
     "Invert": 8}.get(name, _RA_NO_GROUP) for name in RANDAUGMENT_OPS
])
_RA_IS_GEOMETRIC = torch.tensor([name in ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
                                 for name in RANDAUGMENT_OPS])


def apply_randaugment(images: torch.Tensor, params: dict, fill: tuple[float, float, float]) -> torch.Tensor:
    """Return float 0..255 images (B, 3, H, W) after each image's RandAugment ops (modified in place).

    ``params`` from ``sample_randaugment``; ``fill`` is the 0..255 RGB colour of uncovered
    pixels. Per slot: Brightness, Color and Contrast as one per-image blend with factor
    ``argument``, the rest group-wise by kind (geometric ops by resampling).
    """
    height, width = images.shape[-2:]
    handlers = _randaugment_handlers(fill)
    for slot in range(params["op"].shape[1]):
        op = params["op"][:, slot]
        fire = params["apply"][:, slot]
        argument = params["argument"][:, slot]
        is_blend = {name: fire & (op == _RA[name]) for name in ("Brightness", "Color", "Contrast")}
        if any(mask.numpy().any() for mask in is_blend.values()):  # CPU draws: .numpy() reads them on the host
            blending = is_blend["Brightness"] | is_blend["Color"] | is_blend["Contrast"]
            zeros = torch.zeros_like(argument)
            blend_(images, torch.where(blending, argument, torch.ones_like(argument)),
                   torch.where(is_blend["Color"], 1.0 - argument, zeros),
                   torch.where(is_blend["Contrast"], 1.0 - argument, zeros))
        group = torch.where(_RA_IS_GEOMETRIC[op], params["bicubic"][:, slot].long(), _RA_GROUP_OF_OP[op])
        group = torch.where(fire, group, _RA_NO_GROUP)
        slot_params = {"argument": argument, "coefficients": randaugment_coefficients(op, argument, height, width)}
        apply_grouped(images, group, handlers, slot_params)
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
    # kernel sizes are set on the host from the CPU draws, so the device never waits
    taps, reach = box_blur_weights(pil_box_radius(params["sigma"]))
    apply_grouped(views, (~params["blur"]).long(), [lambda x, p: box_blur(x, p["taps"], reach)], {"taps": taps})
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
    "gaussian_blur", "box_blur", "pil_box_radius", "box_blur_weights", "BLUR_PASSES", "pil_affine", "rotation_coefficients", "geometric_coefficients", "autoaugment_coefficients", "INTERPOLATIONS", "AUTOAUGMENT_FILL", "apply_autoaugment",
    "apply_crop_flip", "apply_resized_crop", "apply_color_jitter", "apply_contrastive", "normalize_", "blend_",
    "classification_views", "contrastive_views", "RANDAUGMENT_OPS", "RANDAUGMENT_SIGNED_OPS", "RANDAUGMENT_MAX_LEVEL",
    "RANDAUGMENT_OP_PROB", "randaugment_arguments", "sample_randaugment", "randaugment_coefficients", "solarize_add",
    "apply_randaugment",
]
