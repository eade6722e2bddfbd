"""Resampling variable-size uint8 images into one fixed-size batch: random resized crops and the eval crop.

Both functions resize like torchvision on a PIL image (``Image.resize`` with BILINEAR, a
triangle filter widened by the scale factor when shrinking, so antialiased): on the CPU
through ``F.interpolate(uint8, mode="bilinear", antialias=True)``, whose uint8 kernel is
Pillow's own algorithm vectorised with AVX2; on a GPU, where that kernel has no uint8
form, through the same call on float32, rounded back to uint8.

Measured choice (one CPU thread, 256 crops of RandomResizedCrop(224, scale 0.08-1) boxes
from 32 images of 360-440 pixels a side, against ``v2.functional.resized_crop`` on the PIL
image; 2-core x86-64 with AVX2, torch 2.14, other jobs running):

==========================================================  ===========  =========  ==========
method                                                      images/s     max diff   mean diff
==========================================================  ===========  =========  ==========
``F.interpolate`` uint8, antialias, images stored HWC        3200         2          0.015
``F.interpolate`` uint8, antialias, images stored CHW        1800         2          0.015
``F.interpolate`` float32, antialias, rounded                 900         1          0.18
``torchvision.ops.roi_align`` float, one call, padded batch   250         30         0.37
``torchvision.ops.roi_align`` float, per image                340         9          0.37
PIL ``resized_crop`` (the reference)                         1100         -          -
==========================================================  ===========  =========  ==========

(differences in grey levels of uint8 pixels). ``roi_align`` averages point samples without
a proper antialiasing filter and reads pixels outside the crop (zeros of the padding at the
batch's edges), so it is both slower and further from PIL; the per-image uint8
``F.interpolate`` is used. ``benchmarks/imagenet_geometry_speed.py`` measures it against
``roi_align`` and PIL. The uint8 call being twice as fast as the float32 one shows the AVX2
uint8 kernel is taken. torchvision's decoders return images stored HWC (strides
(1, 3w, 3)), the layout the AVX2 kernel reads without a copy: keep them so.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_BOX_KEYS = ("top", "left", "height", "width")


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Return uint8 (3, h, w) ``image`` (uint8 (3, H, W)) resized as PIL's antialiased bilinear resize does."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image  # torchvision returns the image untouched at its own size
    if image.device.type == "cpu":
        return F.interpolate(image.unsqueeze(0), size=size, mode="bilinear", antialias=True)[0]
    resized = F.interpolate(image.unsqueeze(0).float(), size=size, mode="bilinear", antialias=True)[0]
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def _output(out: torch.Tensor | None, batch: int, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    if out is None:
        return torch.empty((batch, 3, *size), dtype=torch.uint8, device=device)
    if out.shape != (batch, 3, *size) or out.dtype not in (torch.uint8, torch.float32):
        raise ValueError(f"out of shape {tuple(out.shape)} and dtype {out.dtype} is not accepted; "
                         f"it must be uint8 or float32 of shape {(batch, 3, *size)}")
    return out


def _check_images(images: list[torch.Tensor]) -> None:
    if not images:
        raise ValueError("images is empty; pass at least one uint8 (3, h, w) image")
    for index, image in enumerate(images):
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"images[{index}] of shape {tuple(image.shape)} and dtype {image.dtype} is not "
                             f"accepted; each image must be uint8 (3, h, w) RGB")


def resized_crops(images: list[torch.Tensor], source: torch.Tensor, boxes: dict, flip: torch.Tensor | None = None,
                  size: tuple[int, int] = (224, 224), out: torch.Tensor | None = None) -> torch.Tensor:
    """Return uint8 (B, 3, size[0], size[1]): box i of ``images[source[i]]`` resized to ``size``, mirrored where ``flip``.

    images: list of uint8 (3, h_j, w_j) RGB images on one device; source: int64 (B,)
    index into ``images``; boxes: "top", "left", "height", "width" int64 (B,) pixels, each
    inside its image (``sample_resized_crop`` with the images' sizes draws them); flip:
    bool (B,) or None. source, boxes and flip are read on the host (CPU tensors avoid a
    device sync). Equals torchvision's ``resized_crop`` (bilinear, antialias) then
    ``horizontal_flip`` on the PIL image to within one or two grey levels (module
    docstring). ``out``: optional preallocated uint8 (B, 3, *size) written in place, or float32
    to receive the same values already converted (one copy per crop instead of two).
    """
    _check_images(images)
    size = (int(size[0]), int(size[1]))
    starts = torch.stack([torch.as_tensor(boxes[key]).view(-1) for key in _BOX_KEYS], dim=1).tolist()
    indices = torch.as_tensor(source).view(-1).tolist()
    mirrored = [False] * len(indices) if flip is None else torch.as_tensor(flip).view(-1).tolist()
    if not (len(starts) == len(indices) == len(mirrored)):
        raise ValueError(f"source ({len(indices)}), boxes ({len(starts)}) and flip ({len(mirrored)}) "
                         f"must hold one entry per output image")
    out = _output(out, len(indices), size, images[0].device)
    for row, (index, (top, left, height, width), mirror) in enumerate(zip(indices, starts, mirrored)):
        if not 0 <= index < len(images):
            raise ValueError(f"source[{row}]={index} is not accepted; it must index the {len(images)} images")
        image_height, image_width = images[index].shape[-2:]
        if height < 1 or width < 1 or top < 0 or left < 0 or top + height > image_height or left + width > image_width:
            raise ValueError(f"box {row} (top={top}, left={left}, height={height}, width={width}) is not inside "
                             f"image {index} of {image_height}x{image_width} pixels; boxes must lie inside their image")
        resized = _resize(images[index][:, top:top + height, left:left + width], size)
        out[row].copy_(resized.flip(-1) if mirror else resized)
    return out


def resize_size(height: int, width: int, resize: int) -> tuple[int, int]:
    """Return (height, width) after torchvision ``v2.Resize(resize)``: shorter side ``resize``, longer side truncated."""
    if width <= height:
        return int(resize * height / width), resize
    return resize, int(resize * width / height)


def centre_crop_offsets(height: int, width: int, crop: int) -> tuple[int, int]:
    """Return (top, left) of torchvision's ``CenterCrop(crop)`` of a (height, width) image (offsets rounded)."""
    return int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))


def resize_centre_crop(images: list[torch.Tensor], resize: int = 256, crop: int = 224,
                       out: torch.Tensor | None = None) -> torch.Tensor:
    """Return uint8 (B, 3, crop, crop): each image's shorter side resized to ``resize``, then centre-cropped.

    images: list of uint8 (3, h, w) RGB images on one device. The geometry of torchvision's
    ``v2.Resize(resize)`` (antialiased bilinear) then ``v2.CenterCrop(crop)``, the
    evaluation view of the ImageNet recipe; ``crop`` must not exceed ``resize``.
    ``out``: optional preallocated uint8 (B, 3, crop, crop) written in place.
    """
    _check_images(images)
    if not 1 <= crop <= resize:
        raise ValueError(f"crop={crop} is not accepted with resize={resize}; it must be between 1 and resize")
    out = _output(out, len(images), (crop, crop), images[0].device)
    for row, image in enumerate(images):
        resized = _resize(image, resize_size(image.shape[-2], image.shape[-1], resize))
        top, left = centre_crop_offsets(resized.shape[-2], resized.shape[-1], crop)
        out[row].copy_(resized[:, top:top + crop, left:left + crop])
    return out
