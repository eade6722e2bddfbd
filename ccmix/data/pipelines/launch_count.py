"""Counting what one step of the fast pipeline asks of the device: operator calls and host-to-device copies.

A ``TorchDispatchMode`` sees every aten operator call. Counted per step: the calls that
touch a tensor on the pipeline's device (on CUDA, roughly the kernel launches; on the
CPU, every call, the CPU draws included), and the copies from the CPU to another device
(``aten._to_copy`` / ``aten.copy_``). A pipeline built on the ``meta`` device runs every
operator without data, so the copies of a CUDA run can be counted on any machine.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

_COPIES = {torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default}


class StepLaunches(TorchDispatchMode):
    """Record, per operator call, its name and whether it touches ``device`` or copies the CPU to another device."""

    def __init__(self, device: torch.device):
        super().__init__()
        self.device = device
        self.calls: list[str] = []  # operator calls that touch the device, in order
        self.kernels = 0  # those of them that compute (not views such as slice, view, expand, detach)
        self.copies = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if any(t.device.type == self.device.type for t in inputs + outputs):
            self.calls.append(str(func))
            self.kernels += not func.is_view
        if func in _COPIES and self.device.type != "cpu":
            source = args[1] if func is torch.ops.aten.copy_.default else args[0]
            target = args[0] if func is torch.ops.aten.copy_.default else outputs[0]
            if source.device.type == "cpu" and target.device.type != "cpu":
                self.copies += 1
        return out


def count_step_launches(pipeline, steps: int = 3, epoch: int = 0) -> dict:
    """Return the device operator calls and host-to-device copies of ``steps`` steps of a ``FastTrainPipeline``.

    One step (its draws, their preparation and copy, the views, the labels) is made first
    to warm the per-process caches, then ``steps`` steps are counted one by one (after the
    epoch's index tensors are on the device). Returns {"ops_per_step": [int] * steps,
    "kernels_per_step": [int] * steps (the calls that are not views: on CUDA, about the
    kernel launches), "copies_per_step": [int] * steps, "op_sequences": [tuple of operator
    names] * steps}.
    Raises ValueError for a pipeline that fell back to the classic one.
    """
    if getattr(pipeline, "fallback", None) is not None or not hasattr(pipeline, "epoch_plan"):
        raise ValueError("count_step_launches needs a FastTrainPipeline that builds its own batches (no fallback)")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} is not accepted; it must be an integer >= 1")
    plan = pipeline.epoch_plan(epoch)
    if plan.steps == 0:
        raise ValueError("count_step_launches needs a pipeline with at least one step an epoch")
    pipeline.step_batch(plan, 0)
    result = {"ops_per_step": [], "kernels_per_step": [], "copies_per_step": [], "op_sequences": []}
    for step in range(1, steps + 1):
        with StepLaunches(pipeline.device) as counter:
            pipeline.step_batch(plan, step % plan.steps)  # index rows repeat, the draws go on
        result["ops_per_step"].append(len(counter.calls))
        result["kernels_per_step"].append(counter.kernels)
        result["copies_per_step"].append(counter.copies)
        result["op_sequences"].append(tuple(counter.calls))
    return result


__all__ = ["StepLaunches", "count_step_launches"]
