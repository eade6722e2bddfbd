"""Reading image files: any mode to 8-bit RGB by one rule, sizes from headers, and batched decoding.

The datasets of the long-tailed benchmarks that Contrastive CutMix (Pan et al.,
"Enhanced Long-Tailed Recognition with Contrastive CutMix Augmentation", IEEE TIP
2024) is evaluated on come as image files (image folders, OLTR list files); the
datasets of :mod:`ccmix.data.datasets` read them through these functions, which it
re-exports.

Image files of any mode become 8-bit RGB by one rule (:func:`to_rgb`): grey, palette
and CMYK images are converted as Pillow does, 16-bit and 32-bit grey images are
scaled from their full range to 0..255 (not clipped), and transparent pixels are
composited over white. An image that cannot be read is a ``DataError`` naming the file.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from ccmix.errors import DataError

_JPEG_MAGIC = b"\xff\xd8\xff"
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_TRANSPARENT_BACKGROUND = (255, 255, 255, 255)  # white, as image viewers show transparent pixels


def to_rgb(image: Image.Image) -> Image.Image:
    """Return ``image`` as 8-bit RGB (see the module docstring for the rule of each mode)."""
    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "I":
        # 16-bit grey (32-bit integer images are read as 16-bit): scale 0..65535 to 0..255, round to nearest
        values = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), mode="L").convert("RGB")
    if image.mode == "F":  # floating-point grey: taken as 0..255, clipped
        values = np.clip(np.rint(np.asarray(image, dtype=np.float64)), 0, 255)
        return Image.fromarray(values.astype(np.uint8), mode="L").convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        background = Image.new("RGBA", image.size, _TRANSPARENT_BACKGROUND)
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _unreadable(path: str, exc: BaseException) -> DataError:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return DataError(f"image file {path!r} could not be read ({type(exc).__name__}: {reason}); replace or remove it")


def read_rgb(path: str) -> Image.Image:
    """Return the image file at ``path`` decoded as PIL RGB; ValueError naming the file when it cannot be read."""
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise _unreadable(path, exc) from exc


def read_size(path: str) -> tuple[int, int]:
    """Return the (width, height) in pixels of the image file at ``path`` from its header; ValueError naming it."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise _unreadable(path, exc) from exc


def decode_rgb_tensor(path: str) -> torch.Tensor:
    """Return the image file at ``path`` as a uint8 RGB tensor (3, H, W), decoded by PIL."""
    return torch.from_numpy(np.asarray(read_rgb(path)).copy()).permute(2, 0, 1).contiguous()


def _batched_jpeg_decode(blobs: list[bytes]) -> list[torch.Tensor] | None:
    """Return the (3, H, W) uint8 RGB tensors of JPEG ``blobs`` decoded in one call, or None when that fails.

    torchvision's batched decoder is several times faster than PIL on many small files and
    gives the same pixels; its image I/O is deprecated in favour of TorchCodec, so it is
    an optional fast path and PIL remains the reference.
    """
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            tensors = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in blobs]
            return decode_jpeg(tensors, mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError):
        return None


def _decode_chunk(paths: Sequence[str]) -> list[torch.Tensor]:
    """Return the (3, H, W) uint8 RGB tensors of ``paths``: one batched JPEG decode, else PIL file by file."""
    blobs = []
    try:
        for path in paths:
            with open(path, "rb") as handle:
                blobs.append(handle.read())
    except OSError:
        blobs = []  # decode file by file below, which names the unreadable file
    if blobs and all(blob[:3] == _JPEG_MAGIC for blob in blobs):
        decoded = _batched_jpeg_decode(blobs)
        if decoded is not None:
            return decoded
    return [decode_rgb_tensor(path) for path in paths]  # PIL, file by file; names an unreadable file


def decode_files(paths: Sequence[str], chunk_size: int = 1024) -> torch.Tensor:
    """Return the image files ``paths`` decoded into one uint8 tensor (N, 3, H, W); all must share one size."""
    stacked = None
    for start in range(0, len(paths), chunk_size):
        chunk = paths[start:start + chunk_size]
        for offset, pixels in enumerate(_decode_chunk(chunk)):
            if stacked is None:
                stacked = torch.empty((len(paths), *pixels.shape), dtype=torch.uint8)
            elif pixels.shape != stacked.shape[1:]:
                raise DataError(
                    f"image file {chunk[offset]!r} is {pixels.shape[2]}x{pixels.shape[1]} pixels but "
                    f"{paths[0]!r} is {stacked.shape[3]}x{stacked.shape[2]}; one uint8 tensor needs one image size"
                )
            stacked[start + offset] = pixels
    if stacked is None:
        raise ValueError("no image paths given; there is nothing to decode")
    return stacked
