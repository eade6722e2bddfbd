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

import torch

from ccmix.data.augment.colour import (
    adjust_sharpness_,
    autocontrast_,
    blend_,
    blend_rows_,
    equalize,
    posterize_,
    solarize,
)
from ccmix.data.augment.dispatch import _per_image, apply_grouped, apply_masked, check_launch
from ccmix.data.augment.draws import _check_batch
from ccmix.data.augment.geometry import autoaugment_coefficients, geometric_coefficients, pil_affine
from ccmix.data.augment.tables import (
    _OP,
    _RA,
    _RA_IS_SIGNED,
    AUTOAUGMENT_FILL,
    MAX_VALUE,
    RANDAUGMENT_MAX_LEVEL,
    RANDAUGMENT_OP_PROB,
    RANDAUGMENT_OPS,
    randaugment_arguments,
)

# --------------------------------------------------------------------------- colour operations
# Operations whose name ends in "_" overwrite their input (a fresh batch or subset) and return it:
# on the CPU, allocating a new batch-sized tensor costs several times more than an in-place pass.


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
_AA_OVERWRITES = (False, False, True, True, False, True, False)  # which handlers modify their input
_NO_GROUP = len(_AA_HANDLERS)
_AA_GROUP_OF_OP = torch.tensor([
    1, 1,  # ShearX, ShearY: bicubic, as published
    0, 0, 0,  # TranslateX, TranslateY, Rotate: nearest neighbour, as published
    _NO_GROUP, _NO_GROUP, _NO_GROUP,  # Brightness, Color, Contrast: one batch-wide blend instead
    2, 3, 4, 5, 6, 4,  # Sharpness, Posterize, Solarize, AutoContrast, Equalize, Invert
])


def _autoaugment_slot(params: dict, slot: int, height: int, width: int) -> dict:
    """Return the CPU per-image parameters of AutoAugment slot ``slot``: blend weights, group, magnitude, affine.

    "blend" float64 (B, 3): factor, luma and mean weights of ``blend_`` (identity (1, 0, 0)
    where the slot is not Brightness, Color or Contrast); "blends" bool (B,): whether any
    image blends; "group" int64 (B,) into ``_AA_HANDLERS`` (``_NO_GROUP``: none);
    "magnitude" float64 (B,); "coefficients" float64 (B, 6).
    """
    op = params["op"][:, slot]
    fire = params["apply"][:, slot]
    magnitude = params["magnitude"][:, slot]  # 0 for Invert: a solarize at threshold 0
    is_blend = {name: fire & (op == _OP[name]) for name in ("Brightness", "Color", "Contrast")}
    blending = is_blend["Brightness"] | is_blend["Color"] | is_blend["Contrast"]
    zeros = torch.zeros_like(magnitude)
    blend = torch.stack((torch.where(blending, 1.0 + magnitude, torch.ones_like(magnitude)),
                         torch.where(is_blend["Color"], -magnitude, zeros),
                         torch.where(is_blend["Contrast"], -magnitude, zeros)), dim=1)
    return {"blend": blend, "blends": blending, "group": torch.where(fire, _AA_GROUP_OF_OP[op], _NO_GROUP),
            "magnitude": magnitude, "coefficients": autoaugment_coefficients(op, magnitude, height, width)}


def prepare_autoaugment(params: dict, height: int, width: int) -> dict:
    """Return ``apply_prepared_autoaugment``'s CPU parameters of ``sample_autoaugment`` draws for HxW images.

    Keys "slot0" and "slot1", each ``_autoaugment_slot``'s dict without "blends", "blend" in
    float32 (the images' dtype: rounded here, not on the device, with the same result).
    """
    return _prepared_slots(params, _autoaugment_slot, height, width)


def _prepared_slots(params: dict, slot_parameters, height: int, width: int) -> dict:
    """Return {"slot0": ..., ...}: ``slot_parameters(params, slot, height, width)`` per slot, "blends" dropped and
    "blend" as float32 (the images' dtype)."""
    slots = {}
    for slot in range(params["op"].shape[1]):
        prepared = slot_parameters(params, slot, height, width)
        del prepared["blends"]
        prepared["blend"] = prepared["blend"].float()
        slots[f"slot{slot}"] = prepared
    return slots


def apply_prepared_autoaugment(images: torch.Tensor, prepared: dict) -> torch.Tensor:
    """Return new float 0..255 images after AutoAugment with constant launches (``prepare_autoaugment``'s params).

    Per slot, the same operator calls whatever the draws: one per-image blend (identity
    weights leave an image exactly unchanged) and every other kind of operation on the
    whole batch, each image keeping its own (``apply_masked``). ``prepared`` on any device;
    ``images`` may be overwritten.
    """
    for slot in prepared.values():
        blend_(images, slot["blend"][:, 0], slot["blend"][:, 1], slot["blend"][:, 2])
        images = apply_masked(images, slot["group"], _AA_HANDLERS,
                              {"magnitude": slot["magnitude"], "coefficients": slot["coefficients"]}, _AA_OVERWRITES)
    return images


def apply_autoaugment(images: torch.Tensor, params: dict, launch: str = "subset") -> torch.Tensor:
    """Return float 0..255 images (B, 3, H, W) after each image's AutoAugment sub-policy.

    ``params`` from ``sample_autoaugment``. Per slot: Brightness, Color and Contrast as one
    batch-wide per-image blend (identity weights elsewhere), then the other operations by
    kind (nearest and bicubic geometric groups filled with grey, five others). ``launch``
    "subset" (images modified in place): each kind on the group of images that drew it,
    the blend skipped when no image blends; "constant": ``apply_prepared_autoaugment``,
    the same values.
    """
    check_launch(launch)
    height, width = images.shape[-2:]
    if launch == "constant":
        return apply_prepared_autoaugment(images, prepare_autoaugment(params, height, width))
    for slot in range(2):
        slot_params = _autoaugment_slot(params, slot, height, width)
        blend_rows_(images, slot_params["blend"], slot_params["blends"])
        apply_grouped(images, slot_params["group"], _AA_HANDLERS,
                      {"magnitude": slot_params["magnitude"], "coefficients": slot_params["coefficients"]})
    return images


# --------------------------------------------------------------------------- RandAugment (ImageNet-scale view 0)


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
        # subset launch only: warps along one axis (ShearX, TranslateX; ShearY, TranslateY), same values as 0 and 1
        lambda images, p: pil_affine(images, p["coefficients"], fill, "bilinear", "x"),
        lambda images, p: pil_affine(images, p["coefficients"], fill, "bicubic", "x"),
        lambda images, p: pil_affine(images, p["coefficients"], fill, "bilinear", "y"),
        lambda images, p: pil_affine(images, p["coefficients"], fill, "bicubic", "y"),
    ]


_RA_OVERWRITES = (False, False, True, True, False, False, True, False, False)  # handlers modifying their input
_RA_CONSTANT_HANDLERS = len(_RA_OVERWRITES)  # the constant launch keeps the 2-D warps: no extra whole-batch warps
# Per op code: its group in ``_randaugment_handlers`` (none for Brightness, Color and Contrast, which are one
# blend), and whether it is geometric (group 0 bilinear or 1 bicubic, drawn per image; for the subset launch,
# plus the offset of its one-axis pair of groups, 9 for x and 11 for y, or 0 for Rotate).
_RA_NO_GROUP = -1  # outside the handlers: the image is left unchanged
_RA_GROUP_OF_OP = torch.tensor([
    {"Sharpness": 2, "Posterize": 3, "Solarize": 4, "SolarizeAdd": 5, "AutoContrast": 6, "Equalize": 7,
     "Invert": 8}.get(name, _RA_NO_GROUP) for name in RANDAUGMENT_OPS
])
_RA_IS_GEOMETRIC = torch.tensor([name in ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
                                 for name in RANDAUGMENT_OPS])
_RA_AXIS_GROUP = torch.tensor([{"ShearX": 9, "TranslateXRel": 9, "ShearY": 11, "TranslateYRel": 11}.get(name, 0)
                               for name in RANDAUGMENT_OPS])


def _randaugment_slot(params: dict, slot: int, height: int, width: int, one_axis: bool = False) -> dict:
    """Return the CPU per-image parameters of RandAugment slot ``slot`` (as ``_autoaugment_slot``; "argument").

    ``one_axis``: shears and translations go to the one-axis warp groups (subset launch).
    """
    op = params["op"][:, slot]
    fire = params["apply"][:, slot]
    argument = params["argument"][:, slot]
    is_blend = {name: fire & (op == _RA[name]) for name in ("Brightness", "Color", "Contrast")}
    blending = is_blend["Brightness"] | is_blend["Color"] | is_blend["Contrast"]
    zeros = torch.zeros_like(argument)
    blend = torch.stack((torch.where(blending, argument, torch.ones_like(argument)),
                         torch.where(is_blend["Color"], 1.0 - argument, zeros),
                         torch.where(is_blend["Contrast"], 1.0 - argument, zeros)), dim=1)
    warp = params["bicubic"][:, slot].long() + (_RA_AXIS_GROUP[op] if one_axis else 0)
    group = torch.where(_RA_IS_GEOMETRIC[op], warp, _RA_GROUP_OF_OP[op])
    return {"blend": blend, "blends": blending, "group": torch.where(fire, group, _RA_NO_GROUP),
            "argument": argument, "coefficients": randaugment_coefficients(op, argument, height, width)}


def prepare_randaugment(params: dict, height: int, width: int) -> dict:
    """Return ``apply_prepared_randaugment``'s CPU parameters of ``sample_randaugment`` draws: "slot0", ...

    As ``prepare_autoaugment``, with "argument" for "magnitude".
    """
    return _prepared_slots(params, _randaugment_slot, height, width)


def apply_prepared_randaugment(images: torch.Tensor, prepared: dict, fill: tuple[float, float, float]) -> torch.Tensor:
    """Return new float 0..255 images after RandAugment with constant launches (``prepare_randaugment``'s params)."""
    handlers = _randaugment_handlers(fill)[:_RA_CONSTANT_HANDLERS]
    for slot in prepared.values():
        blend_(images, slot["blend"][:, 0], slot["blend"][:, 1], slot["blend"][:, 2])
        images = apply_masked(images, slot["group"], handlers,
                              {"argument": slot["argument"], "coefficients": slot["coefficients"]}, _RA_OVERWRITES)
    return images


def apply_randaugment(images: torch.Tensor, params: dict, fill: tuple[float, float, float],
                      launch: str = "subset") -> torch.Tensor:
    """Return float 0..255 images (B, 3, H, W) after each image's RandAugment ops.

    ``params`` from ``sample_randaugment``; ``fill`` is the 0..255 RGB colour of uncovered
    pixels. Per slot: Brightness, Color and Contrast as one per-image blend with factor
    ``argument``, the rest by kind (geometric ops by resampling). ``launch`` "subset"
    (images modified in place): group-wise, as ``apply_autoaugment``, shears and
    translations interpolated along their one axis (``pil_affine``'s ``axis``); "constant":
    ``apply_prepared_randaugment``, the same values.
    """
    check_launch(launch)
    height, width = images.shape[-2:]
    if launch == "constant":
        return apply_prepared_randaugment(images, prepare_randaugment(params, height, width), fill)
    handlers = _randaugment_handlers(fill)
    for slot in range(params["op"].shape[1]):
        slot_params = _randaugment_slot(params, slot, height, width, one_axis=True)
        blend_rows_(images, slot_params["blend"], slot_params["blends"])
        apply_grouped(images, slot_params["group"], handlers,
                      {"argument": slot_params["argument"], "coefficients": slot_params["coefficients"]})
    return images


__all__ = [
    "apply_autoaugment", "prepare_autoaugment", "apply_prepared_autoaugment", "sample_randaugment",
    "randaugment_coefficients", "solarize_add", "apply_randaugment", "prepare_randaugment",
    "apply_prepared_randaugment",
]
