"""Device-resident test batches: evaluation without a DataLoader, PIL or worker processes.

Every method of Contrastive CutMix (Pan et al., "Enhanced Long-Tailed Recognition with
Contrastive CutMix Augmentation", IEEE TIP 2024) is evaluated on the same balanced test
set. With the fast pipeline the test images reach the model as uint8 batches that already
lie on the device; ``DeviceTestSource`` normalises each one there with the arithmetic of
the classic test view (torchvision's ``ToDtype(float32, scale=True)`` then ``Normalize``,
``ccmix.data.views.test_view``), so both paths feed the model the same float32 values to the
last bit.

Where the uint8 batches come from is a callable returning an iterator of
``(uint8 (b, 3, H, W), int64 (b,))`` pairs on the device, called once per evaluation:

* ``ResidentTestImages`` (CIFAR recipe): the rank's shard decoded once, when it is built,
  and kept on the device;
* any other source with that contract, such as a recipe that decodes, resizes and crops
  its test images in large batches at every evaluation.

Each rank holds the strided shard ``rank::world_size`` of the test set, in test-set order,
as the classic DataLoader's sampler does, so merged predictions do not depend on the
number of processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torchvision.transforms.v2 import functional as tvf

# A pair of one test batch: uint8 images (b, 3, H, W) and int64 labels (b,), both on the device.
Uint8Batch = tuple[torch.Tensor, torch.Tensor]


def normalise_uint8(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Return float32 (b, 3, H, W) ``(images / 255 - mean) / std`` of uint8 (b, 3, H, W) ``images``.

    The classic test view's arithmetic, by the same torchvision functions: ``to_dtype`` scales
    by 1/255, ``normalize`` subtracts ``mean`` and divides by ``std``. ``mean`` and ``std``: float32
    (3,) tensors on the images' device; given as tensors, torchvision uses them as they are,
    where lists would be copied to the device at every batch (on CUDA a copy that waits).
    """
    scaled = tvf.to_dtype(images, torch.float32, scale=True)
    return tvf.normalize(scaled, mean=mean, std=std, inplace=True)


def shard_indices(total: int, rank: int = 0, world_size: int = 1) -> range:
    """Return the test-set positions ``rank::world_size`` that one rank evaluates."""
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise ValueError(f"rank={rank!r}, world_size={world_size!r} are not accepted; need 0 <= rank < world_size")
    return range(rank, total, world_size)


class ResidentTestImages:
    """A rank's shard of the test set, decoded once into a uint8 (n, 3, H, W) tensor on ``device``.

    Calling it returns an iterator over ``(uint8 (b, 3, H, W), int64 (b,))`` batches of at most
    ``batch_size`` images, in test-set order; the batches are views of the resident tensor, so
    an evaluation copies nothing from the host. Raises ValueError when the images are not all
    one size (``as_uint8_tensor``).
    """

    def __init__(self, test, batch_size: int, device: torch.device | str, rank: int = 0, world_size: int = 1):
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"batch_size={batch_size!r} is not accepted; need a positive integer")
        positions = shard_indices(len(test), rank, world_size)
        shard = test if world_size == 1 else test.subset(list(positions))
        self.batch_size = batch_size
        self.images = shard.as_uint8_tensor().to(device)
        self.labels = torch.as_tensor([test.targets[i] for i in positions], dtype=torch.int64).to(device)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __call__(self) -> Iterator[Uint8Batch]:
        for start in range(0, len(self), self.batch_size):
            stop = start + self.batch_size
            yield self.images[start:stop], self.labels[start:stop]


class DeviceTestSource:
    """What evaluation iterates with the fast pipeline: a rank's normalised test batches, on the device.

    ``uint8_batches``: called once per evaluation, returns an iterator of uint8 (b, 3, H, W) images
    and int64 (b,) labels on ``device`` (the rank's shard, in test-set order); ``num_images``: the
    whole test set's size, every rank's shard together; ``mean``, ``std``: the RGB normalisation
    of images scaled to [0, 1].
    """

    def __init__(self, uint8_batches: Callable[[], Iterator[Uint8Batch]], num_images: int,
                 mean: Sequence[float], std: Sequence[float], device: torch.device | str):
        self.uint8_batches = uint8_batches
        self.num_images = num_images
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, dtype=torch.float32).to(self.device)
        self.std = torch.tensor(std, dtype=torch.float32).to(self.device)

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield float32 normalised images (b, 3, H, W) and int64 labels (b,), on the device."""
        for images, labels in self.uint8_batches():
            yield normalise_uint8(images, self.mean, self.std), labels


__all__ = ["DeviceTestSource", "ResidentTestImages", "Uint8Batch", "normalise_uint8", "shard_indices"]
