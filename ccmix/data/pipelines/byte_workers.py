"""DataLoader workers that only read image files' bytes: decoding and augmentation stay in the main process.

Reading files is the part of an ImageNet-scale input pipeline that waits on the disk; the
workers overlap it with the main process's work. They neither decode nor augment, so they
need no PIL and hold no pixels: the main process decodes each batch at once
(``ccmix.data.decode.decode_images``, nvJPEG on CUDA).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from ccmix.data.decode import read_bytes
from ccmix.data.pipelines.workers import EndWithParent


class FileBytes(torch.utils.data.Dataset):
    """Item ``indices`` (a list of dataset indices): the list of those files' bytes, 1-D uint8 CPU tensors."""

    def __init__(self, paths: Sequence[str]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, indices: list[int]) -> list[torch.Tensor]:
        return [read_bytes(self.paths[index]) for index in indices]


def _as_is(item):
    return item


def byte_batches(paths: Sequence[str], groups: list[list[int]], num_workers: int) -> Iterator[list[torch.Tensor]]:
    """Yield, for each list of dataset indices in ``groups`` (in order), the list of its files' bytes.

    ``num_workers`` DataLoader processes read the files ahead of the consumer (0: read in
    this process); each worker ends with the process that started it.
    """
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers={num_workers!r} is not accepted; it must be an integer >= 0")
    loader = torch.utils.data.DataLoader(
        FileBytes(paths), batch_size=None, sampler=groups, num_workers=num_workers, collate_fn=_as_is,
        generator=torch.Generator().manual_seed(0),  # keeps DataLoader off the global generator's stream
        worker_init_fn=EndWithParent() if num_workers > 0 else None,
    )
    yield from loader


__all__ = ["FileBytes", "byte_batches"]
