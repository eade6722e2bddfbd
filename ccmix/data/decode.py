"""Decoding image files of any size into uint8 RGB tensors, many at once, on the CPU or the GPU.

JPEG files (nearly all of ImageNet-scale data) go to torchvision's batched ``decode_jpeg``
(libjpeg-turbo on the CPU, nvJPEG on CUDA), which gives the pixels of PIL's
``Image.open(path).convert("RGB")``: the same on the CPU for colour, grey and CMYK JPEGs
(tests/test_imagenet_geometry.py measures it). The rest fall back one image at a time:

* CMYK and YCCK JPEGs (4 components) when decoding on a GPU: libjpeg-turbo on the CPU
  converts them as PIL does (Adobe inverted CMYK included); nvJPEG is not relied on for them;
* PNG files with 8-bit RGB or grey pixels and no transparency: ``torchvision.io.decode_image``;
* everything else (other formats, transparency, 16-bit pixels, files the fast decoders
  refuse): PIL with ``ccmix.data.images.to_rgb``, the rule of the classic pipeline.

torchvision's image I/O is deprecated in favour of TorchCodec; its warning is silenced here.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import torch
from PIL import Image

from ccmix.data.images import to_rgb
from ccmix.errors import DataError

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Start-of-frame markers (baseline, progressive, lossless, arithmetic); C4, C8 and CC are other segments.
_START_OF_FRAME = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_HEADER_BYTES = 1 << 17  # the frame header lies after the EXIF and ICC segments, within the first 128 KiB


def read_bytes(path: str | os.PathLike) -> torch.Tensor:
    """Return the bytes of the file at ``path`` as a 1-D uint8 tensor; DataError naming the file when unreadable."""
    try:
        return torch.from_numpy(np.fromfile(path, dtype=np.uint8))
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise DataError(f"image file {os.fspath(path)!r} could not be read ({reason}); replace or remove it") from exc


def jpeg_components(header: bytes) -> int:
    """Return the number of colour components of a JPEG from its first bytes (0 when no frame header is found).

    1 grey, 3 YCbCr/RGB, 4 CMYK/YCCK. Walks the marker segments up to the start of frame.
    """
    position = 2  # after the start-of-image marker
    while position + 9 < len(header):
        if header[position] != 0xFF:
            return 0
        marker = header[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker in _START_OF_FRAME:
            return header[position + 9]
        position += 2 + int.from_bytes(header[position + 2:position + 4], "big")
    return 0


def _silently(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return function(*args, **kwargs)


def _decode_with_pil(data: torch.Tensor, index: int) -> torch.Tensor:
    """Return uint8 (3, h, w) RGB pixels of one file by PIL and the project's ``to_rgb`` rule."""
    try:
        with Image.open(io.BytesIO(data.numpy().tobytes())) as image:
            image.load()
            pixels = np.asarray(to_rgb(image))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"image {index} of the batch could not be decoded ({type(exc).__name__}: {exc}); "
                        f"replace or remove its file") from exc
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)  # stored HWC, as the other decoders return it


def _plain_png(data: torch.Tensor) -> bool:
    """Return whether a PNG holds 8-bit RGB or grey pixels without transparency (its header, read by PIL)."""
    try:
        with Image.open(io.BytesIO(data[:_HEADER_BYTES].numpy().tobytes())) as image:
            return image.mode in ("RGB", "L") and "transparency" not in image.info
    except (OSError, SyntaxError, ValueError):
        return False


def decode_one(data: torch.Tensor, index: int = 0) -> torch.Tensor:
    """Return uint8 (3, h, w) RGB pixels on the CPU of one file's bytes, trying the fast decoders first.

    data: 1-D uint8 CPU tensor of the file's bytes; ``index`` names the image in errors.
    """
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    head = data[:8].numpy().tobytes()
    try:
        if head.startswith(_JPEG_MAGIC):
            return _silently(decode_jpeg, data, mode=ImageReadMode.RGB)
        if head == _PNG_MAGIC and _plain_png(data):
            return _silently(decode_image, data, mode=ImageReadMode.RGB)
    except RuntimeError:
        pass  # a file these decoders refuse: PIL below
    return _decode_with_pil(data, index)


def _batched_on(data: list[torch.Tensor], device: torch.device) -> list[bool]:
    """Return, per file, whether the batched ``decode_jpeg`` on ``device`` takes it."""
    batched = []
    for item in data:
        is_jpeg = item[:3].numpy().tobytes() == _JPEG_MAGIC
        batched.append(is_jpeg and (device.type == "cpu"
                                    or jpeg_components(item[:_HEADER_BYTES].numpy().tobytes()) in (1, 3)))
    return batched


def decode_images(data: list[torch.Tensor], device: torch.device | str = "cpu") -> tuple[list[torch.Tensor], int]:
    """Return (images, fallbacks): each file decoded to uint8 (3, h_i, w_i) RGB on ``device``.

    data: list of 1-D uint8 CPU tensors, the bytes of image files (``read_bytes``).
    JPEGs are decoded in one batched ``decode_jpeg`` call (nvJPEG on CUDA); ``fallbacks``
    counts the images decoded one at a time instead (see the module docstring), all of
    them when the batched call fails. DataError naming the image's index when no decoder can read it.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    device = torch.device(device)
    for index, item in enumerate(data):
        if not isinstance(item, torch.Tensor) or item.dtype != torch.uint8 or item.dim() != 1 or item.is_cuda:
            raise ValueError(f"data[{index}] is not accepted; each item must be a 1-D uint8 CPU tensor of file bytes "
                             f"(read_bytes), not {type(item).__name__} {getattr(item, 'shape', '')}")
    batched = _batched_on(data, device)
    images: list[torch.Tensor | None] = [None] * len(data)
    chosen = [index for index, take in enumerate(batched) if take]
    if chosen:
        try:
            decoded = _silently(decode_jpeg, [data[i] for i in chosen], mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            decoded = None  # one file spoils the batch: every file is decoded on its own below
        if decoded is not None:
            for index, image in zip(chosen, decoded):
                images[index] = image
    fallbacks = 0
    for index, image in enumerate(images):
        if image is None:
            images[index] = decode_one(data[index], index).to(device)
            fallbacks += 1
    return images, fallbacks
