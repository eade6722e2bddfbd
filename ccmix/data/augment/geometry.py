"""Batched geometric ops on (B, 3, H, W) images with PIL's semantics: affine warps (shear, translate,
rotate) with nearest, bilinear or bicubic sampling, padded random crops, flips and resized crops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ccmix.data.augment.dispatch import _constant, to_device
from ccmix.data.augment.tables import _OP, GEOMETRIC_OPS, MAX_VALUE

# PIL's affine convention: output pixel (x, y) takes the input at (a, b, c, d, e, f) applied to its
# centre, X = a (x + 0.5) + b (y + 0.5) + c and Y = d (x + 0.5) + e (y + 0.5) + f, in pixels from the
# top-left corner; a point outside [0, W) x [0, H) gets the fill colour.
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


def _pil_source(coefficients: torch.Tensor, height: int, width: int, device: torch.device,
                axis: str | None = None) -> tuple:
    """Return float64 source coordinates (X, Y), each (B, H, W), of PIL affine ``coefficients`` (B, 6).

    ``axis`` "x" or "y" (``pil_affine``'s): the other coordinate is the pixel centre itself,
    always inside the image, and is returned as None instead.
    """
    c = to_device(coefficients, device, torch.float64)
    x = (torch.arange(width, device=device, dtype=torch.float64) + 0.5).view(1, 1, -1)
    y = (torch.arange(height, device=device, dtype=torch.float64) + 0.5).view(1, -1, 1)
    source_x = source_y = None
    if axis != "y":
        source_x = c[:, 0].view(-1, 1, 1) * x + c[:, 1].view(-1, 1, 1) * y + c[:, 2].view(-1, 1, 1)
    if axis != "x":
        source_y = c[:, 3].view(-1, 1, 1) * x + c[:, 4].view(-1, 1, 1) * y + c[:, 5].view(-1, 1, 1)
    return source_x, source_y


def _inside(source_x: torch.Tensor | None, source_y: torch.Tensor | None, height: int, width: int) -> torch.Tensor:
    """Return bool (B, 1, H, W): where the source point lies in [0, W) x [0, H) (a None coordinate always does)."""
    inside = None
    for source, size in ((source_x, width), (source_y, height)):
        if source is not None:
            within = (source >= 0) & (source < size)
            inside = within if inside is None else inside.logical_and_(within)
    return inside.unsqueeze(1)


def _cubic_weights(d: torch.Tensor) -> list[torch.Tensor]:
    """Return PIL's four bicubic weights (cubic convolution with a = -1) at fractional offsets ``d``."""
    d2, d3 = d * d, d * d * d
    return [-d + 2.0 * d2 - d3, 1.0 - 2.0 * d2 + d3, d + d2 - d3, d3 - d2]


def _linear_weights(d: torch.Tensor) -> list[torch.Tensor]:
    """Return the two bilinear weights at fractional offsets ``d``."""
    return [1.0 - d, d]


AXES = (None, "x", "y")


def pil_affine(images: torch.Tensor, coefficients: torch.Tensor, fill: tuple[float, float, float],
               interpolation: str = "nearest", axis: str | None = None) -> torch.Tensor:
    """Return new images warped as PIL's ``Image.transform(size, AFFINE, coefficients, resample, fillcolor)``.

    images float (B, C, H, W) 0..255; coefficients float64 (B, 6) per image (output pixel
    centre -> input point); fill: one value per channel for points outside the image.
    nearest takes the pixel containing the point; bilinear and bicubic (PIL's a = -1
    kernel) read neighbours with indices clamped to the image, as Pillow's filters do.
    ``axis`` "x": every map moves pixels along x only (coefficients (a, b, c, 0, 1, 0):
    ShearX, TranslateX), "y": along y only ((1, 0, 0, d, e, f): ShearY, TranslateY), so
    the other axis's kernel weights are exactly (0, 1, 0, 0) or (1, 0) and one axis is
    interpolated: 4 gathers instead of 16 for bicubic, 2 instead of 4 for bilinear, the same
    values as the 2-D kernel (RandAugment of 64 224x224 images, one CPU thread: 0.14 s
    instead of 0.38). None: any affine map.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation {interpolation!r} is not accepted; choose one of: {', '.join(INTERPOLATIONS)}")
    if axis not in AXES:
        raise ValueError(f"axis {axis!r} is not accepted; choose one of: None, 'x', 'y'")
    batch, channels, height, width = images.shape
    device = images.device
    source_x, source_y = _pil_source(coefficients, height, width, device, axis if interpolation != "nearest" else None)
    flat = images.reshape(batch, channels, height * width)

    def read(index: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Return (B, C, H, W) pixels at (B, H, W) int64 positions in the flattened image (into ``out``)."""
        index = index.view(batch, 1, -1).expand(batch, channels, height * width)
        if out is None:
            return flat.gather(2, index).view(batch, channels, height, width)
        return torch.gather(flat, 2, index, out=out.view(batch, channels, height * width)).view_as(out)

    if interpolation == "nearest":
        rows, columns = source_y.floor().long().clamp_(0, height - 1), source_x.floor().long().clamp_(0, width - 1)
        out = read(rows.mul_(width).add_(columns))
    elif axis is None:
        out = _resample_2d(read, source_x, source_y, interpolation, images.dtype, height, width)
    else:
        out = _resample_1d(read, source_x if axis == "x" else source_y, axis, interpolation, images.dtype,
                           height, width)
    if interpolation == "bicubic":
        out.clamp_(0.0, MAX_VALUE)
    fill_values = _constant(tuple(float(v) for v in fill), device, images.dtype).view(1, -1, 1, 1)
    return torch.where(_inside(source_x, source_y, height, width), out, fill_values)


def _kernel(interpolation: str) -> tuple:
    """Return (weight function, offset of the first tap) of a bilinear or bicubic kernel."""
    return (_linear_weights, 0) if interpolation == "bilinear" else (_cubic_weights, -1)


def _resample_2d(read, source_x: torch.Tensor, source_y: torch.Tensor, interpolation: str, dtype: torch.dtype,
                 height: int, width: int) -> torch.Tensor:
    """Return the unclamped (B, C, H, W) kernel sums at source points (X, Y) (B, H, W): rows of taps, then columns."""
    weights, first = _kernel(interpolation)
    start_x, start_y = (source_x - 0.5).floor(), (source_y - 0.5).floor()
    wx = [w.to(dtype).unsqueeze(1) for w in weights(source_x - 0.5 - start_x)]
    wy = [w.to(dtype).unsqueeze(1) for w in weights(source_y - 0.5 - start_y)]
    start_x, start_y = start_x.long() + first, start_y.long() + first
    # clamped row offsets and columns once per tap, not per (row, column) pair: 44 operator calls instead of 80
    row_offsets = [(start_y + j).clamp_(0, height - 1).mul_(width) for j in range(len(wy))]
    columns = [(start_x + i).clamp_(0, width - 1) for i in range(len(wx))]
    # the index, pixels and product of each tap go to buffers made once (warm in cache); same arithmetic
    index = torch.empty_like(columns[0])
    out = pixels = product = None
    for row_offset, weight_y in zip(row_offsets, wy):
        row = wx[0] * read(torch.add(row_offset, columns[0], out=index))
        if pixels is None:
            pixels, product = torch.empty_like(row), torch.empty_like(row)
        for column, weight_x in zip(columns[1:], wx[1:]):
            row.add_(torch.mul(weight_x, read(torch.add(row_offset, column, out=index), pixels), out=product))
        out = row.mul_(weight_y) if out is None else out.add_(row.mul_(weight_y))
    return out


def _resample_1d(read, source: torch.Tensor, axis: str, interpolation: str, dtype: torch.dtype, height: int,
                 width: int) -> torch.Tensor:
    """Return ``_resample_2d``'s sums where the other axis samples pixel centres (source (B, H, W) along ``axis``).

    The other axis's weights are then exactly (0, 1, 0, 0) or (1, 0): 2-D's terms with
    weight 0 add exact zeros and its weight-1 term is the 1-D sum, so the values are equal.
    """
    weights, first = _kernel(interpolation)
    start = (source - 0.5).floor()
    taps = [w.to(dtype).unsqueeze(1) for w in weights(source - 0.5 - start)]
    start = start.long() + first
    size = width if axis == "x" else height
    rows = torch.arange(height, device=source.device).view(1, -1, 1)
    columns = torch.arange(width, device=source.device).view(1, 1, -1)
    fixed = rows * width if axis == "x" else columns  # the pixel's own row offset or column
    scale = 1 if axis == "x" else width
    out = pixels = product = None
    for tap, weight in enumerate(taps):
        index = (start + tap).clamp_(0, size - 1)
        index = (index.mul_(scale) if scale != 1 else index).add_(fixed)
        if out is None:
            out = weight * read(index)
            pixels, product = torch.empty_like(out), torch.empty_like(out)
        else:
            out.add_(torch.mul(weight, read(index, pixels), out=product))
    return out


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


def resized_crop_grid(params: dict, in_size: tuple[int, int], size: tuple[int, int] | None = None) -> dict:
    """Return the separable sampling grid of ``apply_resized_crop``: "grid_x" (B, w), "grid_y" (B, h) float32.

    Normalised [-1, 1] coordinates (``grid_sample``'s) of HxW inputs ``in_size`` for an
    output of ``size`` (default ``in_size``); computed on the CPU from the CPU draws.
    """
    height, width = in_size
    out_h, out_w = size if size is not None else (height, width)
    return {"grid_x": _crop_coordinates(params["left"], params["width"], out_w, width, params.get("flip")),
            "grid_y": _crop_coordinates(params["top"], params["height"], out_h, height, None)}


def resize_with_grid(images: torch.Tensor, grid: dict) -> torch.Tensor:
    """Return new float (B, C, h, w) bilinear samples of ``images`` on ``resized_crop_grid``'s grid (any device)."""
    batch = images.shape[0]
    gx = to_device(grid["grid_x"], images.device, images.dtype)
    gy = to_device(grid["grid_y"], images.device, images.dtype)
    out_h, out_w = gy.shape[1], gx.shape[1]
    sampling = torch.stack((gx.view(batch, 1, out_w).expand(batch, out_h, out_w),
                            gy.view(batch, out_h, 1).expand(batch, out_h, out_w)), dim=-1)
    return F.grid_sample(images, sampling, mode="bilinear", padding_mode="border", align_corners=False)


def apply_resized_crop(images: torch.Tensor, params: dict, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Return new float (B, C, h, w) bilinear resizes of each image's box, mirrored where params["flip"].

    ``params``: "top", "left", "height", "width" (B,) pixels and optional "flip" (B,)
    bool. Same values as crop-then-resize (bilinear, half-pixel centres, no antialias,
    which only matters when shrinking); the output size defaults to the input size. One
    ``grid_sample`` with a separable per-image grid.
    """
    return resize_with_grid(images, resized_crop_grid(params, tuple(images.shape[-2:]), size))
