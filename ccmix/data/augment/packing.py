"""One host-to-device copy per step: pack many small CPU tensors into one buffer, copy it, carve typed views.

A step of the fast pipeline needs a few dozen small per-image parameter tensors (draws,
affine coefficients, crop grids, blur taps, group ids). Copied one by one, each is a
separate (pinned) transfer; packed, the step makes exactly one.
"""

from __future__ import annotations

import torch

ALIGNMENT = 8  # bytes: every piece starts at a multiple of the largest element size (int64, float64)


def _flatten(tree: dict, prefix: tuple = ()) -> list[tuple[tuple, torch.Tensor]]:
    """Return (key path, tensor) pairs of a nested dict of tensors (None leaves skipped), in insertion order."""
    leaves = []
    for key, value in tree.items():
        if isinstance(value, dict):
            leaves.extend(_flatten(value, prefix + (key,)))
        elif value is not None:
            leaves.append((prefix + (key,), value))
    return leaves


def _rebuild(tree: dict, values: dict, prefix: tuple = ()) -> dict:
    """Return ``tree`` with every tensor replaced by ``values[its key path]`` (None leaves kept)."""
    return {key: _rebuild(value, values, prefix + (key,)) if isinstance(value, dict)
            else None if value is None else values[prefix + (key,)]
            for key, value in tree.items()}


def _aligned(size: int) -> int:
    return -(-size // ALIGNMENT) * ALIGNMENT


def pack(tree: dict, pin_memory: bool = False) -> tuple[torch.Tensor, list]:
    """Return (uint8 (N,) CPU buffer, layout) holding the bytes of every tensor of ``tree`` (nested dicts).

    Each tensor's bytes start at a multiple of ``ALIGNMENT``; layout lists (key path,
    byte offset, dtype, shape) per tensor, for ``unpack``.
    """
    layout, total = [], 0
    for path, value in _flatten(tree):
        layout.append((path, total, value.dtype, tuple(value.shape)))
        total += _aligned(value.numel() * value.element_size())
    buffer = torch.empty(max(total, ALIGNMENT), dtype=torch.uint8, pin_memory=pin_memory)
    for (_, start, _, _), (_, value) in zip(layout, _flatten(tree)):
        flat = value.detach().contiguous().view(-1)
        if flat.numel():
            buffer[start:start + flat.numel() * flat.element_size()].copy_(flat.view(torch.uint8))
    return buffer, layout


def unpack(buffer: torch.Tensor, layout: list, tree: dict) -> dict:
    """Return ``tree`` with each tensor replaced by its typed view of ``buffer`` (``pack``'s buffer, any device)."""
    values = {}
    for path, start, dtype, shape in layout:
        size = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        values[path] = buffer[start:start + size].view(dtype).view(shape)
    return _rebuild(tree, values)


def pack_to_device(tree: dict, device: torch.device | str) -> dict:
    """Return ``tree`` (nested dicts of CPU tensors, None allowed) with its tensors on ``device``, in one copy.

    Every tensor is written, as bytes, into one contiguous uint8 CPU buffer (pinned on
    CUDA, so the copy is asynchronous and never waits for queued kernels), each piece
    aligned to 8 bytes; the buffer goes to the device with one non-blocking copy, and each
    tensor comes back as a ``view(dtype)`` of its slice, with its shape and dtype. On the
    CPU the tree is returned unchanged.
    """
    device = torch.device(device)
    if device.type == "cpu":
        return tree
    buffer, layout = pack(tree, pin_memory=device.type == "cuda")
    return unpack(buffer.to(device, non_blocking=True), layout, tree)


__all__ = ["ALIGNMENT", "pack", "unpack", "pack_to_device"]
