"""What a training step needs of the process group: its rank's place, and the collectives of its loss.

The balanced contrastive loss is computed over the embeddings of every rank, gathered with gradients,
so the objective does not depend on the number of processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the job: rank, world size and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # True when init_distributed created the process group (and cleanup ends it)

    @property
    def is_main(self) -> bool:
        """True on the process that writes files (rank 0)."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when more than one process trains."""
        return self.world_size > 1


def gather_with_grad(tensor: torch.Tensor, context: DistContext) -> torch.Tensor:
    """Return the rank-ordered concatenation along dim 0 of ``tensor`` from every rank, gradients flowing back."""
    if not context.enabled:
        return tensor
    return _all_gather_autograd(tensor)


def _all_gather_autograd(tensor: torch.Tensor) -> torch.Tensor:
    """Return the rank-ordered concatenation along dim 0 of every rank's ``tensor`` (same shape on all ranks);
    the backward pass sums each rank's gradient into the rank that owns the rows."""
    from torch.distributed import _functional_collectives as collectives

    gather = getattr(collectives, "all_gather_single_autograd", None) or collectives.all_gather_tensor_autograd
    return collectives.wait_tensor(gather(tensor.contiguous(), 0, dist.group.WORLD))


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward sums the gradients over ranks (the adjoint of a sum that every rank reads).

    Functional collectives, so torch.compile traces it into the graph; written out because
    ``_c10d_functional.all_reduce`` has no autograd formula in every torch this package accepts.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        return _functional_all_reduce_sum(tensor)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        return _functional_all_reduce_sum(grad_output)


def _functional_all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    from torch.distributed import _functional_collectives as collectives

    return collectives.wait_tensor(collectives.all_reduce(tensor.contiguous(), "sum", dist.group.WORLD))


def all_reduce_sum_autograd(tensor: torch.Tensor) -> torch.Tensor:
    """Return ``tensor`` summed over every rank of the default group (a new tensor, same shape and dtype);
    the gradient of each rank's ``tensor`` is the sum of every rank's gradient of the result."""
    return _AllReduceSum.apply(tensor)


def all_reduce_sum(tensor: torch.Tensor, context: DistContext) -> torch.Tensor:
    """Return ``tensor`` summed over ranks (in place where distributed)."""
    if context.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
