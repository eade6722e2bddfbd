"""The augmentation policies as tables: one per policy, read by the PIL and the batched implementations.

AutoAugment's CIFAR-10 policy (Cubuk et al., CVPR 2019) with the published magnitudes, the timm-style
RandAugment ops and level-to-argument rules, and the SimCLR colour jitter, grayscale and blur of the
contrastive views. Changing a number here changes both implementations.
"""

from __future__ import annotations

from functools import lru_cache

import torch

CONTRASTIVE_JITTER = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue


CONTRASTIVE_JITTER_PROB = 0.8


GRAYSCALE_PROB = 0.2


BLUR_PROB = 0.5  # CIFAR contrastive views only


BLUR_SIGMA = (0.1, 2.0)  # pixels, sigma drawn uniformly from this range (PIL GaussianBlur radius)


IMAGENET_VIEW0_JITTER = (0.4, 0.4, 0.4, 0.0)  # brightness, contrast, saturation, hue; always applied


RANDAUGMENT_NUM_OPS = 2


RANDAUGMENT_MAGNITUDE = 10  # on the 0..10 level scale, so the strongest


RANDAUGMENT_MAGNITUDE_STD = 0.5  # level noise per application


# ITU-R 601-2 luma weights, as torchvision's rgb_to_grayscale for tensors.
LUMA_WEIGHTS = (0.2989, 0.587, 0.114)


MAX_VALUE = 255.0  # images are float on the uint8 scale


AUTOAUGMENT_OPS = (
    "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast", "Sharpness",
    "Posterize", "Solarize", "AutoContrast", "Equalize", "Invert",
)


_OP = {name: code for code, name in enumerate(AUTOAUGMENT_OPS)}


GEOMETRIC_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


# Operations whose magnitude gets a random sign; the published policy never mirrors Rotate.
SIGNED_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Brightness", "Color", "Contrast", "Sharpness")


AUTOAUGMENT_FILL = (128.0, 128.0, 128.0)  # grey, on the 0..255 scale, for pixels a geometric op uncovers


# The AutoAugment CIFAR-10 policy, the table of the published code (torchvision has the
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
