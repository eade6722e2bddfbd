"""Data-parallel training with PyTorch's own stack (torchrun + DistributedDataParallel).

``torchrun`` sets RANK / WORLD_SIZE / LOCAL_RANK; ``init_distributed`` joins the
process group (NCCL on CUDA, gloo on the CPU). ``batch_size`` stays the global
batch: each rank takes every ``world_size``-th column of the global batch, and
the balanced contrastive loss of Zhu et al. (CVPR 2022) is computed over the
embeddings gathered from every rank (with gradients), so the objective does not
depend on the number of processes. BatchNorm statistics can be made global too
(``convert_sync_batchnorm``): ``GlobalBatchNorm`` on every backend, one all-reduce
of per-channel moments a layer, with gradients, and no read back to the host.
Everything written to the run folder is written by rank 0 only.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ccmix.config.fields import TrainConfig
from ccmix.method.collectives import DistContext, all_reduce_sum_autograd
from ccmix.models.chunked_bn import replace_batchnorm, take_over_batchnorm


def launched_by_torchrun() -> bool:
    """True when the environment carries a torchrun world of more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """Return the torch device for ``name`` (auto: CUDA when present), one GPU per local rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' was asked for but no CUDA device is available; use device=cpu or auto")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(device_name: str) -> DistContext:
    """Return the process's DistContext, joining the torchrun process group when there is one."""
    if not launched_by_torchrun():
        return DistContext(device=resolve_device(device_name))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns_group = not dist.is_initialized()
    if owns_group:
        if device.type == "cuda":
            dist.init_process_group(backend="nccl", device_id=device)
        else:
            dist.init_process_group(backend="gloo")
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=device,
                       owns_group=owns_group)


def check_world_size(batch_size: int, grad_accum_steps: int, world_size: int, bn_chunks: int = 1) -> None:
    """Raise ValueError unless the global batch splits evenly over the processes and accumulation steps,
    and the ``bn_chunks`` BatchNorm chunks of each forward split evenly over the processes.

    Equal shares make the DDP average of per-rank mean losses the global mean, and make
    accumulation micro-batch k of every rank a slice of the same global micro-batch.
    """
    if bn_chunks > 1 and bn_chunks % world_size:
        raise ValueError(f"bn_chunks={bn_chunks} is not accepted with {world_size} processes; each process normalises "
                         f"bn_chunks / processes chunks of its share, so bn_chunks must be a multiple of {world_size}")
    if batch_size % (world_size * grad_accum_steps):
        what = f"{world_size} processes" + (f" x {grad_accum_steps} accumulation steps" if grad_accum_steps > 1 else "")
        raise ValueError(
            f"batch_size={batch_size} is not accepted with {what}; batch_size is the global batch and must be "
            f"divisible by {world_size * grad_accum_steps}"
        )


def barrier(context: DistContext) -> None:
    """Wait for every rank (no-op in a single process)."""
    if context.enabled:
        dist.barrier()


def all_gather_objects(value, context: DistContext) -> list:
    """Return the list of every rank's picklable ``value``, in rank order ([value] in a single process)."""
    if not context.enabled:
        return [value]
    values = [None] * context.world_size
    dist.all_gather_object(values, value)
    return values


def broadcast_buffers(module: nn.Module, context: DistContext) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank, in place."""
    if not context.enabled:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


def gather_strided_shards(values: np.ndarray, total: int, context: DistContext) -> np.ndarray:
    """Return the (total, ...) array whose rows r::world_size are rank r's ``values``: dataset order restored."""
    if not context.enabled:
        return values
    shards = all_gather_objects(values, context)
    merged = np.empty((total, *shards[0].shape[1:]), dtype=shards[0].dtype)
    for rank, shard in enumerate(shards):
        merged[rank::context.world_size] = shard
    return merged


@contextmanager
def main_process_first(context: DistContext) -> Iterator[None]:
    """Run the body on rank 0 before the other ranks, so downloads and caches are written once."""
    if context.enabled and not context.is_main:
        barrier(context)
    yield
    if context.enabled and context.is_main:
        barrier(context)


def cleanup(context: DistContext) -> None:
    """Leave the process group if init_distributed created it for this process."""
    if context.enabled and context.owns_group and dist.is_initialized():
        dist.destroy_process_group()


# --------------------------------------------------------------------------- modules


class ClassifierPath(nn.Module):
    """The encoder and classifier of a model as one module: forward(images (N,3,H,W)) -> logits (N, C).

    DDP over this module trains methods without the contrastive loss (ce, la, cutmix):
    only the parameters ``model.classify`` uses are registered, so DDP need not search
    for the unused projection and centre heads every step.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.encoder = model.encoder
        self.classifier = model.classifier
        object.__setattr__(self, "_model", model)  # not a submodule: its heads stay out of DDP

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return the raw logits (N, C) of ``images`` (N, 3, H, W) through the model's classify path."""
        return self._model.classify(images)


def shifted_moments(input: torch.Tensor, shift: torch.Tensor | None) -> torch.Tensor:
    """Return one rank's (2C + 1,) moments of ``input`` (N, C, ...) about ``shift`` (C,) or 0:
    [sum of (x - shift) per channel (C), sum of (x - shift)^2 per channel (C), elements per channel (1)].

    The moments are in ``input``'s dtype (float32 or float64); summed over ranks they give the
    global mean and variance (``moments_statistics``). Two sums of the shifted input, not
    torch.var_mean: forward and backward of (64, 16, 32, 32) float32 take 3.8 ms against 14.7 ms
    on one CPU thread. The count is a tensor built from the shape: nothing is read from the device.
    """
    dims = [0, *range(2, input.dim())]
    shifted = input if shift is None else input - _per_channel(shift, input.dim())
    counts = torch.full((1,), input.numel() // input.shape[1], dtype=input.dtype, device=input.device)
    return torch.cat([shifted.sum(dim=dims), shifted.square().sum(dim=dims), counts])


def moments_statistics(moments: torch.Tensor, shift: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """Return (mean (C,), biased variance (C,), count (1,)) of the moments (2C + 1,) summed over every rank.

    variance = E[(x - shift)^2] - (E[x - shift])^2 loses about eps * (mean - shift)^2 / variance of
    its relative precision (eps = 1.2e-7 in float32): negligible while ``shift`` is near the mean,
    which the running mean is once training has started.
    """
    channels = (moments.shape[0] - 1) // 2
    count = moments[2 * channels:]
    offset = moments[:channels] / count
    variance = (moments[channels:2 * channels] / count - offset.square()).clamp_min(0)
    return (offset if shift is None else shift + offset), variance, count


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch on any backend (NCCL or gloo); state dict as BatchNorm's.

    In training with more than one process, each layer all-reduces ONE tensor, its per-channel
    (sum, sum of squares, count) of (x - running mean) (``shifted_moments``), with gradients, so
    normalisation, its backward pass and the running statistics (unbiased variance over the
    global count) are those of one BatchNorm over all ranks' inputs; otherwise it is plain BatchNorm.
    Statistics and normalisation are computed in float32 (float64 for float64 input) also when the
    input is bfloat16 or float16 under autocast; the output has the input's dtype. Subtracting the
    running mean, equal on every rank (identical updates; DDP broadcasts it at the start), keeps
    the sum of squares from cancelling when a channel's mean is far from 0. Nothing is read back
    from the device: momentum=None divides by ``num_batches_tracked`` as a tensor.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"GlobalBatchNorm expects (N, C, ...) input; got {input.dim()}D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Return the batch-normalised input (N, C, ...), statistics taken over every rank's batch in training."""
        self._check_input_dim(input)
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        values = input.to(torch.promote_types(input.dtype, torch.float32))
        shift = None if self.running_mean is None else self.running_mean.detach().to(values.dtype)
        moments = all_reduce_sum_autograd(shifted_moments(values, shift))
        mean, variance, count = moments_statistics(moments, shift)
        if self.track_running_stats:
            with torch.no_grad():
                self._update_running_statistics(mean, variance, count)
        scale = torch.rsqrt(variance + self.eps)
        if self.affine:
            scale = scale * self.weight
        offset = -mean * scale if self.bias is None else self.bias - mean * scale
        return (values * _per_channel(scale, input.dim()) + _per_channel(offset, input.dim())).to(input.dtype)

    def _update_running_statistics(self, mean: torch.Tensor, variance: torch.Tensor, count: torch.Tensor) -> None:
        """Move the running mean and unbiased variance towards the batch's, as BatchNorm does (no host read)."""
        self.num_batches_tracked.add_(1)
        factor = (1.0 / self.num_batches_tracked.to(mean.dtype)) if self.momentum is None else self.momentum
        unbiased = variance * (count / (count - 1).clamp_min(1))
        self.running_mean.mul_(1 - factor).add_(factor * mean.to(self.running_mean.dtype))
        self.running_var.mul_(1 - factor).add_(factor * unbiased.to(self.running_var.dtype))


def synchronise_batchnorm(model: nn.Module, config: TrainConfig,
                          context: DistContext) -> tuple[nn.Module, bool]:
    """Return (model, whether its BatchNorm statistics are global): synchronised when several processes train
    and ``config.sync_bn`` is True, or None (the default) with ``config.bn_chunks`` 1; per-rank otherwise
    (each rank's BatchNorm then normalises its own share, in ``bn_chunks / world_size`` chunks)."""
    sync_bn = context.enabled and (config.sync_bn if config.sync_bn is not None else config.bn_chunks == 1)
    if sync_bn:
        # The centre head normalises the same C classifier rows on every rank, so its batch statistics are
        # already global; syncing it would only change its running-variance correction.
        model = convert_sync_batchnorm(model, exclude=("center_head",))
    return model, sync_bn


def wrap_for_training(model: nn.Module, config: TrainConfig, context: DistContext,
                      sync_bn: bool = True) -> nn.Module:
    """Return the module the training steps call: ``model`` itself, or DistributedDataParallel when distributed.

    ce, la and cutmix never touch the projection and centre heads, so DDP wraps only
    their classify path (``ClassifierPath``) and need not look for unused parameters.
    With synchronised BatchNorm every rank already holds the same running statistics,
    so DDP does not broadcast buffers before each forward.
    """
    if not context.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    module = model if config.uses_contrastive else ClassifierPath(model)
    options = dict(device_ids=[context.device.index] if context.device.type == "cuda" else None,
                   gradient_as_bucket_view=True)
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
        options["forward_sync_buffers"] = not sync_bn
    else:  # torch before forward_sync_buffers
        options["broadcast_buffers"] = not sync_bn
    return DistributedDataParallel(module, **options)


def _per_channel(values: torch.Tensor, dims: int) -> torch.Tensor:
    return values.view(1, -1, *([1] * (dims - 2)))


def convert_sync_batchnorm(module: nn.Module, exclude: Sequence[str] = ()) -> nn.Module:
    """Return ``module`` with its BatchNorm layers (SyncBatchNorm included) replaced by GlobalBatchNorm, on every
    device; submodules whose qualified names start with an ``exclude`` entry are kept.

    Parameters and buffers are moved over, not copied, so an optimizer built before stays valid.
    """

    def synchronised(layer: nn.modules.batchnorm._BatchNorm) -> nn.Module:
        if isinstance(layer, GlobalBatchNorm):
            return layer
        return take_over_batchnorm(layer, GlobalBatchNorm(layer.num_features, layer.eps, layer.momentum,
                                                          layer.affine, layer.track_running_stats))

    return replace_batchnorm(module, synchronised, exclude)
