"""The ImageNet-scale training views of a batch: per-image draws, then the batched colour recipe on 224x224 crops.

The recipe is ``ccmix.data.views``' ``imagenet`` one, the ``sim-sim`` setting of Contrastive
CutMix (Pan et al., "Enhanced Long-Tailed Recognition with Contrastive CutMix Augmentation",
IEEE TIP 2024):

* view 0: RandomResizedCrop(224, scale 0.08-1), flip, ColorJitter(0.4, 0.4, 0.4, 0) always,
  RandAugment ``rand-n{ops}-m{magnitude}-mstd0.5`` filling with the ImageNet mean colour;
* contrastive views: RandomResizedCrop(224, scale 0.08-1), flip, ColorJitter(0.4, 0.4, 0.4,
  0.1) with p=0.8, grayscale with p=0.2, no blur; ``sim-rand`` adds view 0's RandAugment to
  the first view of each pair, ``randstack`` to both.

``sample_*`` functions draw a batch's parameters on the CPU from a ``torch.Generator``; the
crop boxes need each source image's (height, width). Every draw of image i sits at fixed
positions of the generator's stream whatever the other images' sizes, so a process can draw
a whole global batch with placeholder sizes for the images other processes crop and keep its
own rows (``select_rows``). The pixel work (``view0_colour_``, ``contrastive_colour_``) takes
float 0..255 crops.
"""

from __future__ import annotations

import torch

from ccmix.data.augment.colour import adjust_hue, blend_, blend_image_, prepare_color_jitter, to_grayscale
from ccmix.data.augment.dispatch import apply_grouped, one_image_at_a_time, to_device
from ccmix.data.augment.draws import sample_color_jitter, sample_contrastive, sample_resized_crop
from ccmix.data.augment.policies import apply_randaugment, sample_randaugment
from ccmix.data.augment.tables import IMAGENET_VIEW0_JITTER, RANDAUGMENT_MAGNITUDE_STD
from ccmix.data.views import (
    CONTRASTIVE_PARAMS,
    CONTRASTIVE_VARIANTS,
    CROP_RATIO,
    FLIP_PROB,
    IMAGENET_CROP_SCALE,
    IMAGENET_MEAN,
    IMAGENET_SIZE,
    mean_fill,
)

_HUE_HANDLERS = [lambda images, p: adjust_hue(images, p["hue"])]
_FILL = tuple(float(v) for v in mean_fill(IMAGENET_MEAN))  # RandAugment's fill: the ImageNet mean colour, 0..255
_GRAYSCALE_HANDLERS = [lambda images, p: to_grayscale(images)]


def sample_view0(batch: int, generator: torch.Generator, image_sizes: torch.Tensor, randaugment_ops: int,
                 randaugment_magnitude: float) -> dict:
    """Return the draws of ``batch`` views 0 (CPU tensors, (B,) unless noted).

    image_sizes: int64 (B, 2) (height, width) of each source image in pixels. Keys: the crop
    box of ``sample_resized_crop``; "flip" bool; the ``sample_color_jitter`` draws of
    ColorJitter(0.4, 0.4, 0.4, 0) applied always ("hue" all 0); "randaugment": the
    ``sample_randaugment`` draws for 224x224 views.
    """
    params = sample_resized_crop(batch, generator, image_sizes, IMAGENET_CROP_SCALE, CROP_RATIO)
    params["flip"] = torch.rand(batch, generator=generator) < FLIP_PROB
    params.update(sample_color_jitter(batch, generator, IMAGENET_VIEW0_JITTER, 1.0))
    params["randaugment"] = sample_randaugment(batch, generator, (IMAGENET_SIZE, IMAGENET_SIZE), randaugment_ops,
                                               randaugment_magnitude, RANDAUGMENT_MAGNITUDE_STD)
    return params


def sample_contrastive_pairs(batch: int, generator: torch.Generator, image_sizes: torch.Tensor, variant: str,
                             randaugment_ops: int, randaugment_magnitude: float) -> dict:
    """Return the draws of ``batch`` contrastive views, two per background, interleaved (views 1, 2, 1, 2, ...).

    image_sizes: int64 (B, 2). Keys: those of ``sample_contrastive`` with the ImageNet numbers
    (its "blur" and "sigma" are drawn and unused: the recipe has no blur); "randaugment": the
    ``sample_randaugment`` draws of every row, or None for ``sim-sim``; "randaugment_rows"
    bool (B,): the rows that take them (the first view of each pair for ``sim-rand``, every
    row for ``randstack``).
    """
    if variant not in CONTRASTIVE_VARIANTS:
        raise ValueError(f"contrastive view variant {variant!r} is not accepted; "
                         f"choose one of: {', '.join(CONTRASTIVE_VARIANTS)}")
    p = CONTRASTIVE_PARAMS["imagenet"]
    params = sample_contrastive(batch, generator, image_sizes, scale=p.crop_scale, ratio=p.crop_ratio,
                                flip_prob=p.flip_prob, jitter=p.jitter, jitter_prob=p.jitter_prob,
                                grayscale_prob=p.grayscale_prob, blur_prob=0.0, blur_sigma=p.blur_sigma)
    params["randaugment"] = None
    params["randaugment_rows"] = torch.zeros(batch, dtype=torch.bool)
    if variant != "sim-sim":
        params["randaugment"] = sample_randaugment(batch, generator, (IMAGENET_SIZE, IMAGENET_SIZE), randaugment_ops,
                                                   randaugment_magnitude, RANDAUGMENT_MAGNITUDE_STD)
        params["randaugment_rows"] = (torch.arange(batch) % 2 == 0) if variant == "sim-rand" else ~params[
            "randaugment_rows"]
    return params


def select_rows(params: dict | None, rows: torch.Tensor) -> dict | None:
    """Return ``params`` (nested dicts of CPU tensors with one row per image, None kept) with rows ``rows`` only."""
    if params is None:
        return None
    return {key: select_rows(value, rows) if isinstance(value, dict) or value is None else value.index_select(0, rows)
            for key, value in params.items()}


def color_jitter_(images: torch.Tensor, params: dict) -> torch.Tensor:
    """Return float 0..255 images (B, 3, H, W) after each image's colour jitter, in place.

    ``params`` from ``sample_color_jitter``. ``apply_color_jitter``'s stages, except that the
    hue rotation is skipped where the drawn shift is 0 (ColorJitter with hue 0 has no hue
    operation, and a rotation by 0 changes nothing), so view 0 pays for no HSV round trip.
    Large CPU images (``one_image_at_a_time``) go image by image, each stage doing only that
    image's own operation; the same values.
    """
    prepared = prepare_color_jitter(params)
    rotates = params["hue"] != 0
    if one_image_at_a_time(images):
        return _color_jitter_image_by_image_(images, prepared, params["hue"], rotates)
    for stage in range(4):
        weights = prepared[f"stage{stage}"]
        blend_(images, weights["blend"][:, 0], weights["blend"][:, 1], weights["blend"][:, 2])
        group = torch.where(rotates, weights["hue_group"], 1)
        apply_grouped(images, group, _HUE_HANDLERS, {"hue": params["hue"]})
    return images


def _color_jitter_image_by_image_(images: torch.Tensor, prepared: dict, hue: torch.Tensor,
                                  rotates: torch.Tensor) -> torch.Tensor:
    """Return ``color_jitter_``'s images one image at a time: per stage the image's own blend (``blend_image_``,
    none for the identity weights (1, 0, 0)) or its hue rotation."""
    blends = torch.stack([prepared[f"stage{stage}"]["blend"] for stage in range(4)], dim=1)  # (B, 4, 3) float32
    hue_stage = torch.stack([prepared[f"stage{stage}"]["hue_group"] == 0 for stage in range(4)], dim=1) & \
        rotates.unsqueeze(1)
    for row, (weights, rotations) in enumerate(zip(blends.tolist(), hue_stage.tolist())):
        image = images[row:row + 1]
        for stage in range(4):
            if weights[stage] != [1.0, 0.0, 0.0]:
                blend_image_(image, *weights[stage])
            if rotations[stage]:
                image.copy_(adjust_hue(image, hue[row:row + 1]))
    return images


def view0_colour_(images: torch.Tensor, params: dict) -> torch.Tensor:
    """Return float 0..255 views 0 (B, 3, 224, 224) from float 0..255 crops, in place.

    params: ``sample_view0`` draws of the B rows. Colour jitter (``color_jitter_``), then
    RandAugment filling with the ImageNet mean colour.
    """
    color_jitter_(images, params)
    return apply_randaugment(images, params["randaugment"], _FILL)


def contrastive_colour_(images: torch.Tensor, params: dict) -> torch.Tensor:
    """Return float 0..255 contrastive views (B, 3, 224, 224) from float 0..255 crops, in place.

    params: ``sample_contrastive_pairs`` draws of the B rows (``select_rows`` of them for a
    part of a batch). Colour jitter of the rows that drew it, grayscale of those that drew
    it, then RandAugment (fill: the ImageNet mean colour) of the rows in "randaugment_rows".
    """
    color_jitter_(images, params)
    apply_grouped(images, (~params["grayscale"]).long(), _GRAYSCALE_HANDLERS, {})
    if params["randaugment"] is not None:
        rows = params["randaugment_rows"]
        chosen = torch.arange(rows.shape[0])[rows]  # CPU draws: no device sync
        if chosen.numel():
            where = to_device(chosen, images.device)  # pinned on CUDA: no wait for queued kernels
            picked = apply_randaugment(images.index_select(0, where), select_rows(params["randaugment"], chosen), _FILL)
            images.index_copy_(0, where, picked)
    return images


__all__ = ["sample_view0", "sample_contrastive_pairs", "select_rows", "color_jitter_", "view0_colour_",
           "contrastive_colour_"]
