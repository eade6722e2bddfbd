"""Running a different op per image in one batch, in one of two launch modes.

``subset`` (``apply_grouped``): gather the images of each op, apply the op to them, write
them back; the launches depend on the draws (group sizes, empty groups skipped).
``constant`` (``apply_masked``): apply every op to the whole batch and keep each image's
own result with ``torch.where``; the same launches every step, whatever the draws, so a
step can be captured as a CUDA graph, and the fast pipeline copies all of a step's
parameters to the device at once (``ccmix.data.augment.packing``). Both give the same
views, bit for bit, for the same draws.

Measured (one fast-pipeline concutmix batch of 256 pairs, CIFAR, one torch thread on a
shared 2-core CPU, best of 6): subset 69 ms, constant 630 ms, since constant does every
op for every image (on the CPU ``auto`` keeps subset). Per step, counted on the ``meta``
device (``ccmix.data.pipelines.launch_count``): subset 661 computing operator calls
(more or fewer as groups empty) and 40 host-to-device copies; constant 792 calls, the
same every step, and 1 copy.
"""

from __future__ import annotations

from functools import lru_cache

import torch


def to_device(values: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Return ``values`` (usually small CPU parameters) on ``device``, converted to ``dtype`` first.

    On CUDA the copy goes through pinned memory, so it is asynchronous and never waits
    for the kernels already queued (a copy from pageable memory would).
    """
    values = values.to(dtype) if dtype is not None else values
    if values.device == device:
        return values
    if device.type == "cuda" and values.device.type == "cpu":
        values = values.pin_memory()
    return values.to(device, non_blocking=True)


@lru_cache(maxsize=64)
def _constant(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Return a cached 1-D tensor of ``values`` on ``device`` (made once, not on every call)."""
    return torch.tensor(values, dtype=dtype).to(device)


def _per_image(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Return (n,) values as an (n, 1, 1, 1) tensor with the dtype and device of ``like``."""
    return to_device(values, like.device, like.dtype).view(-1, 1, 1, 1)


def apply_grouped(images: torch.Tensor, group: torch.Tensor, handlers: list, params: dict) -> torch.Tensor:
    """Return ``images`` (modified in place) after ``handlers[g](subset, subset_params)`` for each group g.

    ``group`` is a CPU int64 (B,) tensor of group ids; ids outside ``range(len(handlers))``
    leave their image untouched. ``params`` maps names to CPU tensors with a leading (B,)
    dimension; each handler receives its images as a fresh tensor (which it may overwrite)
    and the parameters restricted to them, on the images' device. The number of operator
    calls is bounded by the number of groups, not by B, except for large CPU images
    (``one_image_at_a_time``), which go one at a time with no gathering: the same values.
    """
    if images.shape[0] == 0:
        return images
    group = group.to("cpu").long()
    group = torch.where((group >= 0) & (group < len(handlers)), group, len(handlers))  # len(handlers): untouched
    if one_image_at_a_time(images):
        return _apply_image_by_image(images, group, handlers, params)
    order = torch.argsort(group, stable=True)
    counts = torch.bincount(group, minlength=len(handlers) + 1).tolist()
    if sum(counts[: len(handlers)]) == 0:
        return images
    device = images.device
    order_device = to_device(order, device)
    sorted_params = {name: to_device(value[order], device) for name, value in params.items()}
    start = 0
    for handler, count in zip(handlers, counts):
        if count:
            index = order_device[start:start + count]
            subset = {name: value[start:start + count] for name, value in sorted_params.items()}
            images.index_copy_(0, index, handler(images.index_select(0, index), subset))
        start += count
    return images


# From this many pixels an image is processed on its own on the CPU where its op differs from its
# neighbours' (``one_image_at_a_time``): a 224x224 float image (0.6 MB) stays in a core's L2 cache
# through its ops, and skipping the images an op leaves unchanged outweighs one call per image.
# One thread, 224x224: colour jitter of 128 contrastive views 0.15 s image by image, 0.24 s in
# batches of 16; a bicubic rotation 6.6 ms an image alone, 23.6 ms in a batch of 8 (its float64
# coordinate planes leave the cache). At 32x32 the calls cost more than the pixels.
ONE_AT_A_TIME_PIXELS = 112 * 112


def one_image_at_a_time(images: torch.Tensor) -> bool:
    """Return whether per-image ops on (B, C, H, W) ``images`` run image by image (CPU, H * W >= 112 * 112)."""
    return images.device.type == "cpu" and images.shape[-2] * images.shape[-1] >= ONE_AT_A_TIME_PIXELS


def _apply_image_by_image(images: torch.Tensor, group: torch.Tensor, handlers: list, params: dict) -> torch.Tensor:
    """Return ``apply_grouped``'s images, each handler called on one image at a time (a view of its row, which it
    may overwrite); rows whose group has no handler are not touched."""
    for row, handler_index in enumerate(group.tolist()):
        if handler_index < len(handlers):
            image = images[row:row + 1]
            result = handlers[handler_index](image, {name: value[row:row + 1] for name, value in params.items()})
            if result.data_ptr() != image.data_ptr():
                image.copy_(result)
    return images


LAUNCH_MODES = ("constant", "subset")


def check_launch(launch: str) -> None:
    """Raise ValueError unless ``launch`` is one of ``LAUNCH_MODES``."""
    if launch not in LAUNCH_MODES:
        raise ValueError(f"launch={launch!r} is not accepted; choose one of: {', '.join(LAUNCH_MODES)}")


def apply_masked(images: torch.Tensor, group: torch.Tensor, handlers: list, params: dict,
                 overwrites: tuple[bool, ...] | None = None) -> torch.Tensor:
    """Return new images: ``handlers[g](images, params)`` where ``group == g``, ``images`` elsewhere.

    The constant-launch form of ``apply_grouped``: every handler runs on the whole batch
    (its result kept only for its own images), so the operator calls never depend on the
    draws. ``group`` int64 (B,) and ``params`` (tensors with a leading (B,) dimension) on
    any device; ids outside ``range(len(handlers))`` leave their image unchanged.
    ``overwrites[g]``: handler g modifies its input, so it gets a copy (default: all do).
    """
    group = to_device(group, images.device).view(-1, 1, 1, 1)
    params = {name: to_device(value, images.device) for name, value in params.items()}
    overwrites = overwrites if overwrites is not None else (True,) * len(handlers)
    out = images
    for index, (handler, copy) in enumerate(zip(handlers, overwrites, strict=True)):
        out = torch.where(group == index, handler(images.clone() if copy else images, params), out)
    return out
