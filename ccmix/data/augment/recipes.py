"""The batched views: normalisation, the classification view and the contrastive views of a batch.
"""

from __future__ import annotations

import torch

from ccmix.data.augment.blur import box_blur, box_blur_weights, pil_box_radius
from ccmix.data.augment.colour import apply_color_jitter, to_grayscale
from ccmix.data.augment.dispatch import _constant, apply_grouped
from ccmix.data.augment.draws import sample_autoaugment, sample_crop_flip
from ccmix.data.augment.geometry import apply_crop_flip, apply_resized_crop
from ccmix.data.augment.policies import apply_autoaugment
from ccmix.data.augment.tables import MAX_VALUE


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
