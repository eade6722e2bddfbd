"""The batched views: normalisation, the classification view and the contrastive views of a batch.

Each view comes in two launch modes (``ccmix.data.augment.dispatch``): ``launch="subset"``
applies CPU draws group-wise; ``launch="constant"`` first turns the draws into per-image
parameters on the CPU (``prepare_*``: blend weights, affine coefficients, crop grids,
blur taps of a fixed size, group ids), which the ``prepared_*`` functions apply on any
device with the same operator calls every step.
"""

from __future__ import annotations

import torch

from ccmix.data.augment.blur import blur_reach, box_blur, box_blur_weights, pil_box_radius
from ccmix.data.augment.colour import (
    apply_color_jitter,
    apply_prepared_color_jitter,
    prepare_color_jitter,
    to_grayscale,
)
from ccmix.data.augment.dispatch import _constant, apply_grouped, apply_masked, check_launch
from ccmix.data.augment.draws import sample_autoaugment, sample_crop_flip
from ccmix.data.augment.geometry import apply_crop_flip, apply_resized_crop, resize_with_grid, resized_crop_grid
from ccmix.data.augment.policies import apply_autoaugment, apply_prepared_autoaugment, prepare_autoaugment
from ccmix.data.augment.tables import BLUR_SIGMA, MAX_VALUE

_GRAYSCALE_HANDLERS = [lambda x, p: to_grayscale(x)]


def _blur_handlers(reach: int) -> list:
    return [lambda x, p: box_blur(x, p["taps"], reach)]


def prepare_contrastive(params: dict, image_size: tuple[int, int], max_sigma: float = BLUR_SIGMA[1]) -> dict:
    """Return ``apply_prepared_contrastive``'s CPU parameters of ``sample_contrastive`` draws for HxW images.

    "grid" (``resized_crop_grid``), "jitter" (``prepare_color_jitter``), "grayscale_group"
    and "blur_group" int64 (B,) (0: apply), "taps" float64 (B, 2 * reach + 1) with the
    reach of ``max_sigma`` pixels (the largest sigma the draws may hold).
    """
    taps, _ = box_blur_weights(pil_box_radius(params["sigma"]), reach=blur_reach(max_sigma))
    return {"grid": resized_crop_grid(params, image_size), "jitter": prepare_color_jitter(params),
            "grayscale_group": (~params["grayscale"]).long(), "blur_group": (~params["blur"]).long(), "taps": taps}


def apply_prepared_contrastive(images: torch.Tensor, prepared: dict) -> torch.Tensor:
    """Return float 0..255 contrastive views with constant launches (``prepare_contrastive``'s params, any device)."""
    views = resize_with_grid(images, prepared["grid"])
    views = apply_prepared_color_jitter(views, prepared["jitter"])
    views = apply_masked(views, prepared["grayscale_group"], _GRAYSCALE_HANDLERS, {}, (False,))
    reach = (prepared["taps"].shape[1] - 1) // 2
    return apply_masked(views, prepared["blur_group"], _blur_handlers(reach), {"taps": prepared["taps"]}, (False,))


def apply_contrastive(images: torch.Tensor, params: dict, launch: str = "subset",
                      max_sigma: float = BLUR_SIGMA[1]) -> torch.Tensor:
    """Return float 0..255 contrastive views: resized crop + flip, colour jitter, grayscale, blur.

    ``images``: float (B, 3, H, W) 0..255; ``params`` from ``sample_contrastive``.
    ``launch`` "subset": group-wise, blur taps as wide as this batch's largest sigma needs;
    "constant": ``apply_prepared_contrastive`` with taps as wide as ``max_sigma`` needs
    (the extra taps are 0, so the values are the same).
    """
    check_launch(launch)
    if launch == "constant":
        return apply_prepared_contrastive(images, prepare_contrastive(params, tuple(images.shape[-2:]), max_sigma))
    views = apply_resized_crop(images, params)
    apply_color_jitter(views, params)
    apply_grouped(views, (~params["grayscale"]).long(), _GRAYSCALE_HANDLERS, {})
    # kernel sizes are set on the host from the CPU draws, so the device never waits
    taps, reach = box_blur_weights(pil_box_radius(params["sigma"]))
    apply_grouped(views, (~params["blur"]).long(), _blur_handlers(reach), {"taps": taps})
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


def prepare_classification(params: dict, image_size: tuple[int, int]) -> dict:
    """Return ``prepared_classification_views``'s CPU parameters of ``sample_classification`` draws (HxW images).

    "top", "left" int64 and "flip" bool (B,) as drawn; "autoaugment" (``prepare_autoaugment``).
    """
    return {"top": params["top"], "left": params["left"], "flip": params["flip"],
            "autoaugment": prepare_autoaugment(params["autoaugment"], *image_size)}


def prepared_classification_views(images: torch.Tensor, prepared: dict, mean: tuple[float, ...],
                                  std: tuple[float, ...], padding: int = 4) -> torch.Tensor:
    """Return normalised CIFAR views 0 of uint8 (B, 3, H, W) images, constant launches (``prepare_classification``)."""
    cropped = apply_crop_flip(images, prepared, padding=padding).float()
    return normalize_(apply_prepared_autoaugment(cropped, prepared["autoaugment"]), mean, std)


def classification_views(images: torch.Tensor, params: dict, mean: tuple[float, ...], std: tuple[float, ...],
                         padding: int = 4, launch: str = "subset") -> torch.Tensor:
    """Return normalised float32 CIFAR views 0 of uint8 (B, 3, H, W) images: pad-crop, flip, AutoAugment."""
    cropped = apply_crop_flip(images, params, padding=padding).float()
    return normalize_(apply_autoaugment(cropped, params["autoaugment"], launch=launch), mean, std)


def prepared_contrastive_views(images: torch.Tensor, prepared: dict, mean: tuple[float, ...],
                               std: tuple[float, ...]) -> torch.Tensor:
    """Return normalised contrastive views of uint8 (B, 3, H, W) images, constant launches (``prepare_contrastive``)."""
    return normalize_(apply_prepared_contrastive(images.float(), prepared), mean, std)


def contrastive_views(images: torch.Tensor, params: dict, mean: tuple[float, ...],
                      std: tuple[float, ...], launch: str = "subset") -> torch.Tensor:
    """Return normalised float32 contrastive views of uint8 (B, 3, H, W) images (``sample_contrastive`` draws)."""
    return normalize_(apply_contrastive(images.float(), params, launch=launch), mean, std)
