"""The batch a training pipeline yields: two streams of images with their labels.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class StepBatch:
    """One step's training pairs as a pipeline yields them (b pairs, this rank's share of the global batch).

    view0: (b, 3, H, W) float32, the classification view of each background;
    contrastive: (b, 2, 3, H, W) float32, two contrastive views of each background, or None;
    labels: (b,) int64; foreground: (b, 3, H, W) float32, view 0 of each foreground, or None;
    foreground_labels: (b,) int64 or None.
    """

    view0: torch.Tensor
    contrastive: torch.Tensor | None
    labels: torch.Tensor
    foreground: torch.Tensor | None = None
    foreground_labels: torch.Tensor | None = None

    @property
    def size(self) -> int:
        """Return the number of pairs b."""
        return int(self.view0.shape[0])

    def _map(self, function) -> StepBatch:
        return StepBatch(**{f.name: None if getattr(self, f.name) is None else function(getattr(self, f.name))
                            for f in fields(self)})

    def to(self, device: torch.device | str, non_blocking: bool = False) -> StepBatch:
        """Return the batch with every present tensor on ``device``."""
        return self._map(lambda tensor: tensor.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> StepBatch:
        """Return the batch in pinned host memory (DataLoader calls this when ``pin_memory=True``)."""
        return self._map(lambda tensor: tensor.pin_memory())

    def __getitem__(self, index: slice) -> StepBatch:
        """Return the pairs selected by ``index`` (a slice along b)."""
        return self._map(lambda tensor: tensor[index])
