"""BatchNorm over k chunks of the batch, as ``nn.DataParallel`` over k devices computes it.

The published ConCutMix runs (Pan et al., "Enhanced Long-Tailed Recognition with
Contrastive CutMix Augmentation", IEEE TIP 2024) wrap the model in ``DataParallel``
over four GPUs. Its scatter splits each forward batch along dim 0 as ``torch.chunk``
does (chunks of ceil(N/k) images, the last one possibly smaller, fewer than k chunks
when N is small); each replica's BatchNorm normalises its chunk by that chunk's own
statistics, and only the replica on the first device shares buffers with the module,
so the running statistics are updated from chunk 0 alone. ``chunked_batch_norm``
computes exactly that on one device in one pass; ``ChunkedBatchNorm`` is the layer,
``chunk_batchnorm`` swaps a model's BatchNorm layers for it. In evaluation mode the
layer is plain BatchNorm (running statistics), as every replica was.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

_BatchNorm = nn.modules.batchnorm._BatchNorm


def chunk_sizes(size: int, chunks: int) -> list[int]:
    """Return the sizes ``torch.chunk`` gives a dim of ``size`` split into ``chunks``: ceil(size/chunks) each,
    the last one smaller when it does not divide, and fewer chunks when ``size`` is small."""
    step = -(-size // chunks)
    return [min(step, size - start) for start in range(0, size, step)]


def chunked_batch_norm(input: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                       weight: torch.Tensor | None, bias: torch.Tensor | None, chunks: int,
                       momentum: float = 0.1, eps: float = 1e-5) -> torch.Tensor:
    """Return ``input`` (N, C, *) batch-normalised in training mode chunk by chunk; shape and dtype kept.

    The N rows are split as ``torch.chunk(input, chunks)`` splits them; each chunk is
    normalised by its own per-channel mean and biased variance, then scaled by ``weight``
    (C,) and shifted by ``bias`` (C,). ``running_mean`` / ``running_var`` (C,), when given,
    are updated in place from chunk 0 only (unbiased variance, factor ``momentum``), as the
    replica on DataParallel's first device updates them. ``chunks == 1`` is
    ``F.batch_norm`` itself. The equal-sized chunks go through one BatchNorm call whose
    channels are (chunk, channel) pairs, so nothing is read back to the host and the
    numerics are BatchNorm's own.
    """
    if chunks == 1:
        return F.batch_norm(input, running_mean, running_var, weight, bias, True, momentum, eps)
    rows, channels, spatial = input.shape[0], input.shape[1], input.shape[2:]
    sizes = chunk_sizes(rows, chunks)
    size = sizes[0]
    full = rows // size  # chunks of the full size; a smaller last one is normalised on its own
    head = input[:full * size]
    # (full*size, C, *) -> (size, full*C, *): channel j*C + c of the BatchNorm below is channel c of chunk j
    grouped = head.reshape(full, size, channels, *spatial).transpose(0, 1).reshape(size, full * channels, *spatial)
    stats = None if running_mean is None else (running_mean.repeat(full), running_var.repeat(full))
    normalised = F.batch_norm(
        grouped, *(stats or (None, None)), None if weight is None else weight.repeat(full),
        None if bias is None else bias.repeat(full), True, momentum, eps,
    )
    if stats is not None:
        with torch.no_grad():  # keep chunk 0's update only
            running_mean.copy_(stats[0][:channels])
            running_var.copy_(stats[1][:channels])
    output = normalised.reshape(size, full, channels, *spatial).transpose(0, 1).reshape(full * size, channels,
                                                                                         *spatial)
    if full * size < rows:
        tail = F.batch_norm(input[full * size:], None, None, weight, bias, True, momentum, eps)
        output = torch.cat([output, tail])
    if input.dim() == 4 and input.is_contiguous(memory_format=torch.channels_last):
        output = output.contiguous(memory_format=torch.channels_last)  # the next convolution expects it
    return output


class ChunkedBatchNorm(_BatchNorm):
    """BatchNorm (1d or 2d) that normalises ``chunks`` chunks of a training batch separately.

    Parameters, buffers and state dict are BatchNorm's, so checkpoints move freely between
    this layer and ``nn.BatchNorm1d/2d``. Training with batch statistics goes through
    ``chunked_batch_norm``; evaluation with running statistics is plain BatchNorm.
    """

    def __init__(self, num_features: int, chunks: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        if not (isinstance(chunks, int) and chunks >= 1):
            raise ValueError(f"chunks={chunks!r} is not accepted; it must be an integer >= 1")
        self.chunks = chunks

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"ChunkedBatchNorm expects (N, C, ...) input; got {input.dim()}D")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, chunks={self.chunks}"

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Return the normalised input (N, C, ...): per chunk in training, by running statistics in evaluation."""
        self._check_input_dim(input)
        batch_statistics = self.training or (self.running_mean is None and self.running_var is None)
        if self.chunks == 1 or not batch_statistics:
            return super().forward(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)  # once per forward, as the first replica counts
            if self.momentum is None:  # cumulative average, as BatchNorm computes it
                factor = 1.0 / float(self.num_batches_tracked)
        update = self.training and self.track_running_stats
        return chunked_batch_norm(input, self.running_mean if update else None, self.running_var if update else None,
                                  self.weight, self.bias, self.chunks, factor, self.eps)


def take_over_batchnorm(source: _BatchNorm, target: _BatchNorm) -> _BatchNorm:
    """Return ``target`` holding ``source``'s parameters and buffers (moved, not copied) and its mode.

    An optimizer built over ``source``'s parameters stays valid for ``target``.
    """
    if source.affine:
        target.weight, target.bias = source.weight, source.bias
    if source.track_running_stats:
        target.running_mean, target.running_var = source.running_mean, source.running_var
        target.num_batches_tracked = source.num_batches_tracked
    return target.train(source.training)


def replace_batchnorm(module: nn.Module, make: Callable[[_BatchNorm], nn.Module],
                      exclude: Sequence[str] = (), name: str = "") -> nn.Module:
    """Return ``module`` with every BatchNorm layer ``layer`` replaced by ``make(layer)`` (in place);
    submodules whose qualified names start with an ``exclude`` entry are kept as they are."""
    if name and any(name == prefix or name.startswith(prefix + ".") for prefix in exclude):
        return module
    if isinstance(module, _BatchNorm):
        return make(module)
    for child_name, child in list(module.named_children()):
        qualified = f"{name}.{child_name}" if name else child_name
        setattr(module, child_name, replace_batchnorm(child, make, exclude, qualified))
    return module


# The centre head normalises the classifier's C weight rows, not the batch: every DataParallel replica saw all of
# them, so it is never chunked.
NOT_BATCH_INPUT = ("center_head",)


def chunk_batchnorm(model: nn.Module, chunks: int, exclude: Sequence[str] = NOT_BATCH_INPUT) -> nn.Module:
    """Return ``model`` with the BatchNorm layers whose input is the batch normalising ``chunks`` chunks of it.

    ``chunks == 1`` returns ``model`` untouched. Otherwise each BatchNorm outside ``exclude``
    becomes a ``ChunkedBatchNorm`` holding the same parameters and buffers (moved, in place).
    """
    if chunks == 1:
        return model

    def chunked(layer: _BatchNorm) -> ChunkedBatchNorm:
        if isinstance(layer, ChunkedBatchNorm):
            raise ValueError("chunk_batchnorm was given a model whose BatchNorm layers are already chunked")
        fresh = ChunkedBatchNorm(layer.num_features, chunks, layer.eps, layer.momentum, layer.affine,
                                 layer.track_running_stats)
        return take_over_batchnorm(layer, fresh)

    return replace_batchnorm(model, chunked, exclude)
