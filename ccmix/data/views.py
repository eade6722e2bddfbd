"""Per-sample view recipes (torchvision transforms v2) and normalisation constants.

Contrastive CutMix (Pan et al., "Enhanced Long-Tailed Recognition with Contrastive
CutMix Augmentation", IEEE TIP 2024) trains on three views of the background image:
view 0 for classification and CutMix, views 1 and 2 for the balanced contrastive loss
(Zhu et al., "Balanced Contrastive Learning for Long-Tailed Visual Recognition", CVPR
2022). The CIFAR view 0 uses the AutoAugment CIFAR-10 policy (Cubuk et al., CVPR 2019).

Every number of the recipes is a module-level constant (and is also grouped in the
``*_PARAMS`` dataclasses) so that a batched implementation can reuse exactly the same
values. Every view takes a PIL RGB image and returns a float32 normalised (3, H, W)
tensor. Every random draw of a view comes from torch's global CPU generator (torchvision
v2 and ``ccmix.data.augment.pil`` use no other), which the classic pipeline seeds per item;
a transform added here must keep to it (``tests/test_same_seed.py`` checks).

The CIFAR view 0 and the blur of the CIFAR contrastive views are PIL operations with the
semantics of the published code (``ccmix.data.augment.pil``): AutoAugment with grey fill, and
PIL's Gaussian blur (its kernel grows with sigma).

ImageNet-scale choices (recipe ``imagenet``, the ``sim-sim`` setting of the published
scripts):

* view 0: RandomResizedCrop(224, scale 0.08–1), horizontal flip, ColorJitter(0.4, 0.4,
  0.4, 0) always applied, the timm-style RandAugment ``rand-n2-m10-mstd0.5`` of the
  published code (each of the two ops applied with probability 0.5, magnitude noise,
  fill with the ImageNet mean colour), then normalise;
* contrastive views: RandomResizedCrop(224, scale 0.08–1), flip, ColorJitter(0.4, 0.4,
  0.4, 0.1) with p=0.8, grayscale with p=0.2, normalise (no blur, as published).

Contrastive-view variants (``CONTRASTIVE_VARIANTS``, ImageNet recipe): ``sim-sim`` (both
views as above) and ``sim-rand`` (the first view also gets view 0's RandAugment, with the
same n and m: the published "randstack" view) are published choices; ``randstack`` (both
views do) is ccmix's own, since the published command line does not accept that pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms import v2

from ccmix.data.augment.pil import CifarAutoAugment, PILGaussianBlur, RandAugment
from ccmix.data.augment.tables import (
    BLUR_PROB,
    BLUR_SIGMA,
    CONTRASTIVE_JITTER,
    CONTRASTIVE_JITTER_PROB,
    GRAYSCALE_PROB,
    IMAGENET_VIEW0_JITTER,
    RANDAUGMENT_MAGNITUDE,
    RANDAUGMENT_MAGNITUDE_STD,
    RANDAUGMENT_NUM_OPS,
)

RECIPES = ("cifar", "imagenet")
CONTRASTIVE_VARIANTS = ("sim-sim", "sim-rand", "randstack")

# --- normalisation (mean, std) per RGB channel, on images scaled to [0, 1] ---
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INAT_MEAN = (0.466, 0.471, 0.380)
INAT_STD = (0.195, 0.194, 0.192)

# --- geometry ---
CIFAR_SIZE = 32  # pixels, output side of every CIFAR view
CIFAR_PAD = 4  # pixels of zero padding before the random 32x32 crop of view 0
IMAGENET_SIZE = 224  # pixels, output side of every ImageNet-scale training view and of the test crop
IMAGENET_RESIZE = 256  # pixels, shorter side before the test centre crop
CIFAR_CONTRASTIVE_SCALE = (0.2, 1.0)  # RandomResizedCrop area fraction, CIFAR contrastive views
IMAGENET_CROP_SCALE = (0.08, 1.0)  # RandomResizedCrop area fraction, every ImageNet-scale training view
CROP_RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop aspect-ratio range (torchvision default)
FLIP_PROB = 0.5

# --- colour ---


@dataclass(frozen=True)
class ContrastiveViewParams:
    """The numbers of a contrastive view recipe (sizes in pixels, scales as area fractions)."""

    size: int
    crop_scale: tuple[float, float]
    crop_ratio: tuple[float, float]
    flip_prob: float
    jitter: tuple[float, float, float, float]  # brightness, contrast, saturation, hue
    jitter_prob: float
    grayscale_prob: float
    blur_prob: float  # 0 when the recipe has no blur
    blur_sigma: tuple[float, float]  # pixels, PIL GaussianBlur radius


CONTRASTIVE_PARAMS = {
    "cifar": ContrastiveViewParams(
        size=CIFAR_SIZE, crop_scale=CIFAR_CONTRASTIVE_SCALE, crop_ratio=CROP_RATIO, flip_prob=FLIP_PROB,
        jitter=CONTRASTIVE_JITTER, jitter_prob=CONTRASTIVE_JITTER_PROB, grayscale_prob=GRAYSCALE_PROB,
        blur_prob=BLUR_PROB, blur_sigma=BLUR_SIGMA,
    ),
    "imagenet": ContrastiveViewParams(
        size=IMAGENET_SIZE, crop_scale=IMAGENET_CROP_SCALE, crop_ratio=CROP_RATIO, flip_prob=FLIP_PROB,
        jitter=CONTRASTIVE_JITTER, jitter_prob=CONTRASTIVE_JITTER_PROB, grayscale_prob=GRAYSCALE_PROB,
        blur_prob=0.0, blur_sigma=BLUR_SIGMA,
    ),
}

_IMAGENET_STATS_DATASETS = ("imagenet_lt", "places_lt")
_CIFAR_STATS_DATASETS = ("cifar10", "cifar100", "synthetic")


def resolve_recipe(recipe: str, dataset: str) -> str:
    """Return ``cifar`` or ``imagenet``: ``recipe`` itself, or for ``auto`` the recipe that suits ``dataset``."""
    if recipe == "auto":
        return "imagenet" if dataset in ("imagenet_lt", "inat2018", "places_lt") else "cifar"
    if recipe not in RECIPES:
        raise ValueError(f"view recipe {recipe!r} is not accepted; choose one of: auto, {', '.join(RECIPES)}")
    return recipe


def normalization(dataset: str, recipe: str | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Return the (mean, std) RGB tuples used to normalise images of ``dataset``.

    CIFAR statistics for cifar10, cifar100 and synthetic; iNaturalist statistics for
    inat2018; ImageNet statistics for imagenet_lt and places_lt. A ``folder`` dataset
    takes the statistics of its recipe (CIFAR for ``cifar`` or None, ImageNet for ``imagenet``).
    """
    if dataset in _CIFAR_STATS_DATASETS:
        return CIFAR_MEAN, CIFAR_STD
    if dataset == "inat2018":
        return INAT_MEAN, INAT_STD
    if dataset in _IMAGENET_STATS_DATASETS:
        return IMAGENET_MEAN, IMAGENET_STD
    if dataset == "folder":
        resolved = resolve_recipe(recipe or "cifar", dataset)
        return (IMAGENET_MEAN, IMAGENET_STD) if resolved == "imagenet" else (CIFAR_MEAN, CIFAR_STD)
    accepted = "cifar10, cifar100, synthetic, folder, imagenet_lt, inat2018, places_lt"
    raise ValueError(f"dataset {dataset!r} has no normalisation constants; accepted: {accepted}")


def _to_normalised_tensor(dataset: str, recipe: str) -> list:
    """Return the closing transforms: PIL/uint8 image -> float32 in [0, 1] -> normalised."""
    mean, std = normalization(dataset, recipe)
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


def mean_fill(mean: tuple[float, ...]) -> tuple[int, int, int]:
    """Return the 0..255 RGB colour of a normalisation mean, rounded as the published RandAugment fill."""
    return tuple(min(255, round(255 * m)) for m in mean)


def randaugment(num_ops: int = RANDAUGMENT_NUM_OPS, magnitude: int = RANDAUGMENT_MAGNITUDE) -> RandAugment:
    """Return the published RandAugment ``rand-n{num_ops}-m{magnitude}-mstd0.5``, filling with the ImageNet mean colour."""
    return RandAugment(num_ops=num_ops, magnitude=magnitude, magnitude_std=RANDAUGMENT_MAGNITUDE_STD,
                       fill=mean_fill(IMAGENET_MEAN))


def classification_view(recipe: str, dataset: str, randaugment_ops: int = RANDAUGMENT_NUM_OPS,
                        randaugment_magnitude: int = RANDAUGMENT_MAGNITUDE) -> v2.Compose:
    """Return the view-0 transform (PIL RGB -> float32 normalised (3, H, W)) of ``recipe``.

    cifar: pad-4 random 32x32 crop, horizontal flip, the published AutoAugment CIFAR-10 policy.
    imagenet: RandomResizedCrop 224, flip, ColorJitter(0.4, 0.4, 0.4, 0), RandAugment
    rand-n{randaugment_ops}-m{randaugment_magnitude}-mstd0.5 (the published n=2, m=10 by default).
    """
    resolved = resolve_recipe(recipe, dataset)
    if resolved == "cifar":
        steps = [
            v2.RandomCrop(CIFAR_SIZE, padding=CIFAR_PAD),
            v2.RandomHorizontalFlip(p=FLIP_PROB),
            CifarAutoAugment(),
        ]
    else:
        steps = [
            v2.RandomResizedCrop(IMAGENET_SIZE, scale=IMAGENET_CROP_SCALE, ratio=CROP_RATIO),
            v2.RandomHorizontalFlip(p=FLIP_PROB),
            v2.ColorJitter(*IMAGENET_VIEW0_JITTER),
            randaugment(randaugment_ops, randaugment_magnitude),
        ]
    return v2.Compose(steps + _to_normalised_tensor(dataset, resolved))


def contrastive_view(recipe: str, dataset: str, randstack: bool = False, randaugment_ops: int = RANDAUGMENT_NUM_OPS,
                     randaugment_magnitude: int = RANDAUGMENT_MAGNITUDE) -> v2.Compose:
    """Return the contrastive-view transform (PIL RGB -> float32 normalised (3, H, W)) of ``recipe``.

    cifar: RandomResizedCrop(32, scale 0.2–1), flip, ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8,
    grayscale p=0.2, PIL GaussianBlur(sigma 0.1–2) p=0.5. imagenet: the same without blur, at
    224 pixels with scale 0.08–1; ``randstack`` appends the published RandAugment
    rand-n{randaugment_ops}-m{randaugment_magnitude}-mstd0.5 (imagenet only), as view 0 has it.
    """
    resolved = resolve_recipe(recipe, dataset)
    if randstack and resolved != "imagenet":
        raise ValueError(f"the randstack contrastive view is defined for the imagenet recipe only, "
                         f"and the recipe is {resolved!r}; use contrastive_views='sim-sim'")
    params = CONTRASTIVE_PARAMS[resolved]
    steps = [
        v2.RandomResizedCrop(params.size, scale=params.crop_scale, ratio=params.crop_ratio),
        v2.RandomHorizontalFlip(p=params.flip_prob),
        v2.RandomApply([v2.ColorJitter(*params.jitter)], p=params.jitter_prob),
        v2.RandomGrayscale(p=params.grayscale_prob),
    ]
    if params.blur_prob > 0:
        steps.append(v2.RandomApply([PILGaussianBlur(params.blur_sigma)], p=params.blur_prob))
    if randstack:
        steps.append(randaugment(randaugment_ops, randaugment_magnitude))
    return v2.Compose(steps + _to_normalised_tensor(dataset, resolved))


def contrastive_view_pair(recipe: str, dataset: str, variant: str = "sim-sim",
                          randaugment_ops: int = RANDAUGMENT_NUM_OPS,
                          randaugment_magnitude: int = RANDAUGMENT_MAGNITUDE) -> tuple[v2.Compose, v2.Compose]:
    """Return the transforms of contrastive views 1 and 2 for ``variant`` (one of ``CONTRASTIVE_VARIANTS``);
    their RandAugment, where the variant has one, takes ``randaugment_ops`` ops at level ``randaugment_magnitude``."""
    if variant not in CONTRASTIVE_VARIANTS:
        raise ValueError(f"contrastive view variant {variant!r} is not accepted; "
                         f"choose one of: {', '.join(CONTRASTIVE_VARIANTS)}")
    strength = {"randaugment_ops": randaugment_ops, "randaugment_magnitude": randaugment_magnitude}
    first = contrastive_view(recipe, dataset, randstack=variant in ("sim-rand", "randstack"), **strength)
    second = contrastive_view(recipe, dataset, randstack=variant == "randstack", **strength)
    return first, second


def test_view(recipe: str, dataset: str) -> v2.Compose:
    """Return the evaluation transform (PIL RGB -> float32 normalised (3, H, W)).

    cifar: normalise only; imagenet: resize the shorter side to 256, centre-crop 224, normalise.
    """
    resolved = resolve_recipe(recipe, dataset)
    steps = [] if resolved == "cifar" else [v2.Resize(IMAGENET_RESIZE), v2.CenterCrop(IMAGENET_SIZE)]
    return v2.Compose(steps + _to_normalised_tensor(dataset, resolved))


# pytest would otherwise try to collect ``test_view`` from modules that import it.
test_view.__test__ = False

__all__ = [
    "RECIPES", "CIFAR_MEAN", "CIFAR_STD", "IMAGENET_MEAN", "IMAGENET_STD", "INAT_MEAN", "INAT_STD", "CIFAR_SIZE",
    "CIFAR_PAD", "IMAGENET_SIZE", "IMAGENET_RESIZE", "CIFAR_CONTRASTIVE_SCALE", "IMAGENET_CROP_SCALE",
    "CROP_RATIO", "FLIP_PROB", "ContrastiveViewParams", "CONTRASTIVE_PARAMS", "CONTRASTIVE_VARIANTS",
    "resolve_recipe", "normalization", "mean_fill", "randaugment", "classification_view", "contrastive_view",
    "contrastive_view_pair", "test_view"
]
