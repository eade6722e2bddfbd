"""Per-image PIL augmentations with the semantics of the published ConCutMix code.

Contrastive CutMix (Pan et al., "Enhanced Long-Tailed Recognition with Contrastive
CutMix Augmentation", IEEE TIP 2024) builds its views from PIL operations:

* ``CifarAutoAugment``: the AutoAugment CIFAR-10 policy (Cubuk et al., CVPR 2019) as
  the published code applies it: grey (128, 128, 128) fill, shears about the top-left
  corner with bicubic interpolation, translations and rotations with nearest
  neighbour, rotations always counter-clockwise, colour factors 1 ± m;
* ``RandAugment``: the timm-style RandAugment ``rand-n2-m10-mstd0.5`` of the
  ImageNet-scale view 0: two ops drawn uniformly (with replacement) from fifteen, each
  applied with probability 0.5, magnitude ~ N(m, 0.5) clipped to [0, 10], enhancement
  factors 0.1 + 1.8 m / 10 (no random sign), solarize threshold 256 m / 10, random
  bilinear or bicubic resampling, fill with the ImageNet mean colour;
* ``PILGaussianBlur``: PIL's ``GaussianBlur`` with sigma ~ U(0.1, 2.0) pixels.

Randomness comes from torch's global CPU generator only, as for the torchvision
transforms around these ops: the classic pipeline seeds it per item
(``ccmix.rng.seeded_torch_draws``), so a run's views do not depend on which process
builds them. The batched counterparts live in ``ccmix.data.augment.policies`` with the same
tables; ``docs/method.md`` lists the recipes.

timm is not used for the RandAugment: it draws from Python's ``random`` and NumPy's
global state (which the per-item seeding does not cover), its defaults have moved
between releases, and the published semantics are a dozen PIL calls, each pinned to the
published formula by the tests.
"""

from __future__ import annotations

import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from ccmix.data.augment.tables import (
    AUTOAUGMENT_FILL,
    BLUR_SIGMA,
    CIFAR10_POLICY,
    RANDAUGMENT_MAX_LEVEL,
    RANDAUGMENT_OP_PROB,
    RANDAUGMENT_OPS,
    RANDAUGMENT_SIGNED_OPS,
    SIGNED_OPS,
    autoaugment_magnitudes,
    randaugment_arguments,
)

GREY_FILL = tuple(int(value) for value in AUTOAUGMENT_FILL)


def _uniform() -> float:
    """Return one U(0, 1) draw from torch's global generator."""
    return float(torch.rand(()))


def apply_geometric_op(image: Image.Image, name: str, value: float, resample, fill: tuple[int, ...]) -> Image.Image:
    """Return ``image`` after a geometric op as PIL does it, uncovered pixels set to ``fill``.

    ShearX / ShearY: ``value`` is the shear (tangent) about the top-left corner;
    TranslateX / TranslateY: the content moves by -``value`` pixels; Rotate: ``value``
    degrees counter-clockwise about the centre.
    """
    if name == "Rotate":
        return image.rotate(value, resample=resample, fillcolor=fill)
    coefficients = {"ShearX": (1, value, 0, 0, 1, 0), "ShearY": (1, 0, 0, value, 1, 0),
                    "TranslateX": (1, 0, value, 0, 1, 0), "TranslateY": (1, 0, 0, 0, 1, value)}[name]
    return image.transform(image.size, Image.Transform.AFFINE, coefficients, resample, fillcolor=fill)


def apply_autoaugment_op(image: Image.Image, name: str, magnitude: float) -> Image.Image:
    """Return ``image`` after one AutoAugment op with signed ``magnitude`` in ``autoaugment_magnitudes`` units."""
    if name in ("ShearX", "ShearY"):  # bicubic, as published
        return apply_geometric_op(image, name, magnitude, Image.Resampling.BICUBIC, GREY_FILL)
    if name in ("TranslateX", "TranslateY", "Rotate"):  # nearest neighbour, as published
        return apply_geometric_op(image, name, magnitude, Image.Resampling.NEAREST, GREY_FILL)
    if name in ("Brightness", "Color", "Contrast", "Sharpness"):
        return getattr(ImageEnhance, name)(image).enhance(1.0 + magnitude)
    if name in ("Posterize", "Solarize", "AutoContrast", "Equalize", "Invert"):
        return apply_pixel_op(image, name, magnitude)
    raise ValueError(f"AutoAugment op {name!r} is not accepted; choose one of the CIFAR-10 policy's operations")


def apply_pixel_op(image: Image.Image, name: str, argument: float) -> Image.Image:
    """Return ``image`` after a per-pixel op shared by both policies: Posterize (bits), Solarize (threshold),
    SolarizeAdd (amount), AutoContrast, Equalize or Invert."""
    if name == "Posterize":
        return image if argument >= 8 else ImageOps.posterize(image, int(argument))
    if name == "Solarize":
        return ImageOps.solarize(image, argument)
    if name == "SolarizeAdd":
        return solarize_add(image, int(argument))
    operations = {"AutoContrast": ImageOps.autocontrast, "Equalize": ImageOps.equalize, "Invert": ImageOps.invert}
    return operations[name](image)


class CifarAutoAugment:
    """AutoAugment CIFAR-10 policy on PIL RGB images, with the published semantics (see the module docstring)."""

    def __call__(self, image: Image.Image) -> Image.Image:
        """Return ``image`` after one uniformly drawn sub-policy (each op fires with its probability)."""
        magnitudes = autoaugment_magnitudes(image.height, image.width)
        sub_policy = CIFAR10_POLICY[int(torch.randint(len(CIFAR10_POLICY), ()))]
        for name, probability, magnitude_bin in sub_policy:
            if _uniform() < probability:
                magnitude = float(magnitudes[name][magnitude_bin]) if magnitude_bin is not None else 0.0
                if name in SIGNED_OPS and _uniform() < 0.5:
                    magnitude = -magnitude
                image = apply_autoaugment_op(image, name, magnitude)
        return image

    def __repr__(self) -> str:
        return "CifarAutoAugment(published CIFAR-10 policy, grey fill)"


def randaugment_level_argument(name: str, level: float, size: tuple[int, int]) -> float:
    """Return the unsigned argument of RandAugment op ``name`` at ``level`` in [0, 10] for a (width, height) image."""
    width, height = size
    op = torch.tensor([RANDAUGMENT_OPS.index(name)])
    return float(randaugment_arguments(op, torch.tensor([float(level)]), height, width)[0])


def solarize_add(image: Image.Image, amount: int, threshold: int = 128) -> Image.Image:
    """Return ``image`` with ``amount`` added (capped at 255) to every value below ``threshold``."""
    table = [min(255, value + amount) if value < threshold else value for value in range(256)]
    return image.point(table * len(image.getbands()))


def apply_randaugment_op(image: Image.Image, name: str, argument: float, resample,
                         fill: tuple[int, int, int]) -> Image.Image:
    """Return ``image`` after one RandAugment op with its (signed) ``argument`` (see ``randaugment_level_argument``)."""
    if name in ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"):
        return apply_geometric_op(image, name.removesuffix("Rel"), argument, resample, fill)
    if name in ("Brightness", "Color", "Contrast", "Sharpness"):
        return getattr(ImageEnhance, name)(image).enhance(argument)
    if name in ("Posterize", "Solarize", "SolarizeAdd", "AutoContrast", "Equalize", "Invert"):
        return apply_pixel_op(image, name, argument)
    raise ValueError(f"RandAugment op {name!r} is not accepted; choose one of: {', '.join(RANDAUGMENT_OPS)}")


class RandAugment:
    """The published timm-style RandAugment ``rand-n{num_ops}-m{magnitude}-mstd{magnitude_std}`` on PIL images.

    ``fill`` is the RGB colour (0..255) of pixels uncovered by geometric ops: the
    published code uses the ImageNet mean colour.
    """

    def __init__(self, num_ops: int = 2, magnitude: float = 10.0, magnitude_std: float = 0.5,
                 fill: tuple[int, int, int] = (124, 116, 104)):
        self.num_ops = num_ops
        self.magnitude = magnitude
        self.magnitude_std = magnitude_std
        self.fill = tuple(int(v) for v in fill)

    def __call__(self, image: Image.Image) -> Image.Image:
        """Return ``image`` after ``num_ops`` ops drawn with replacement, each applied with probability 0.5."""
        resamplers = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)
        for _ in range(self.num_ops):
            name = RANDAUGMENT_OPS[int(torch.randint(len(RANDAUGMENT_OPS), ()))]
            if _uniform() >= RANDAUGMENT_OP_PROB:
                continue
            level = self.magnitude
            if self.magnitude_std > 0:
                level = level + self.magnitude_std * float(torch.randn(()))
            level = min(RANDAUGMENT_MAX_LEVEL, max(0.0, level))
            argument = randaugment_level_argument(name, level, image.size)
            if name in RANDAUGMENT_SIGNED_OPS and _uniform() < 0.5:
                argument = -argument
            resample = resamplers[int(torch.randint(2, ()))]
            image = apply_randaugment_op(image, name, argument, resample, self.fill)
        return image

    def __repr__(self) -> str:
        return f"RandAugment(rand-n{self.num_ops}-m{self.magnitude:g}-mstd{self.magnitude_std:g}, fill={self.fill})"


class PILGaussianBlur:
    """PIL ``ImageFilter.GaussianBlur`` with sigma drawn uniformly from ``sigma`` (pixels) per call."""

    def __init__(self, sigma: tuple[float, float] = BLUR_SIGMA):
        self.sigma = (float(sigma[0]), float(sigma[1]))

    def __call__(self, image: Image.Image) -> Image.Image:
        """Return ``image`` blurred with a freshly drawn sigma."""
        low, high = self.sigma
        return image.filter(ImageFilter.GaussianBlur(radius=low + (high - low) * _uniform()))

    def __repr__(self) -> str:
        return f"PILGaussianBlur(sigma={self.sigma})"


__all__ = [
    "GREY_FILL", "apply_geometric_op", "apply_autoaugment_op", "apply_pixel_op", "CifarAutoAugment", "randaugment_level_argument", "solarize_add", "apply_randaugment_op",
    "RandAugment", "PILGaussianBlur",
]
