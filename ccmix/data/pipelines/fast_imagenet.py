"""The fast ImageNet-scale pipeline: file bytes from workers, batched decoding, crops and views in the main process.

Produces the pair batches of ``ccmix.data.pipelines.classic.ClassicTrainPipeline`` for the
``imagenet`` view recipe of Contrastive CutMix (Pan et al., "Enhanced Long-Tailed Recognition
with Contrastive CutMix Augmentation", IEEE TIP 2024): view 0 of the instance-uniform
background, its two contrastive views (Zhu et al., CVPR 2022) and view 0 of the
class-balanced foreground for CutMix (Yun et al., ICCV 2019). Per step:

1. DataLoader workers read the bytes of the step's distinct files (no decoding, no PIL);
2. the main process decodes them in one batched call (``decode_images``: libjpeg-turbo on
   the CPU, nvJPEG on CUDA; other formats one at a time, counted, reported once);
3. it draws every view's crop box, flip and colour parameters on the CPU
   (``ccmix.data.augment.imagenet_views``), resamples each crop to 224x224 into one
   preallocated uint8 batch (``resized_crops``), and applies the colour recipe to the
   whole batch before normalising with the dataset's statistics
   (``ccmix.data.pipelines.imagenet_steps``).

For CPU training, ``build_in_workers`` (what ``build_train_pipeline`` chooses there when
num_workers >= 1) moves steps 2 and 3 into the workers, one step per worker, so every core
builds batches, each made directly in shared memory; the batches are the same.

``imagenet_test_batches`` is the matching evaluation source: resize 256, centre crop 224.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import torch

from ccmix.config.fields import TrainConfig
from ccmix.data import views as recipe
from ccmix.data.augment.dispatch import to_device
from ccmix.data.augment.resample import resize_centre_crop
from ccmix.data.batch import StepBatch
from ccmix.data.decode import decode_images, read_bytes
from ccmix.data.pipelines.byte_workers import byte_batches
from ccmix.data.pipelines.classic import steps_for
from ccmix.data.pipelines.imagenet_steps import ImageNetStepBuilder, step_generator
from ccmix.data.pipelines.test_batches import shard_indices
from ccmix.data.pipelines.threads import BATCH_THREADS, built_with_threads
from ccmix.data.pipelines.workers import EndWithParent
from ccmix.data.streams import epoch_generator, foreground_class_probabilities, sample_epoch_indices
from ccmix.rng import mix_seed


def _check_rank(rank: int, world_size: int) -> None:
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise ValueError(f"rank={rank!r}, world_size={world_size!r} are not accepted; need 0 <= rank < world_size")


class BuiltSteps(torch.utils.data.Dataset):
    """Item: one step's plan (a dict) -> (its StepBatch on the CPU, images decoded one at a time), built in a worker."""

    def __init__(self, paths: list[str], builder: ImageNetStepBuilder):
        self.paths = paths
        self.builder = builder

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, step: dict) -> tuple[StepBatch, int]:
        data = [read_bytes(self.paths[index]) for index in step["files"]]
        return self.builder.build(data, step["files"], step["background"], step["foreground"], step["columns"],
                                  step["width"], step_generator(step["augment_seed"], step["step"]), shared=True)


def _as_is(item):
    return item


class FastImageNetPipeline:
    """Batched ImageNet-recipe training views from image files; the classic pipeline's contract.

    ``train``: a dataset with ``paths`` (image files), ``targets``, ``num_classes`` and
    ``class_counts`` (``ccmix.data.datasets.FileImages``). ``batches(epoch, rank, world_size)``
    yields ``StepBatch`` objects on ``device``: view0 (b, 3, 224, 224) float32 normalised,
    contrastive (b, 2, 3, 224, 224) or None, labels (b,) int64, foreground (b, 3, 224, 224) or
    None, foreground_labels (b,) or None; b is the rank's share (columns ``rank::world_size``)
    of the global batch. Indices come from ``epoch_generator(seed, epoch)`` as in the fast
    CIFAR pipeline, then one augmentation seed per (seed, epoch); step s draws from
    ``step_generator(that seed, s)`` for the whole global batch and keeps the rank's columns,
    so an image's views depend on (seed, epoch, its position in the global batch) and not on
    the number of processes or workers.

    ``num_workers`` DataLoader workers read the files' bytes and the main process builds the
    views (``ImageNetStepBuilder``), on the CPU under ``BATCH_THREADS`` intra-op thread (one
    image's small operators gain nothing from more, and one thread gives the workers' values
    exactly). With ``build_in_workers`` (CPU training only) each worker
    builds whole steps instead, with one torch thread, and the main process only collects
    them: the same batches, with every CPU core busy and no intra-op synchronisation.
    ``fallback_images`` counts the files decoded one at a time (not JPEG); the first step that
    has any is reported with one ``UserWarning``.
    """

    def __init__(self, train, config: TrainConfig, device: torch.device | str = "cpu", build_in_workers: bool = False):
        if not hasattr(train, "paths"):
            raise ValueError(f"the fast ImageNet pipeline reads image files, and the training set "
                             f"({type(train).__name__}) has none; use pipeline=classic")
        self.config = config
        self.device = torch.device(device)
        if build_in_workers and (self.device.type != "cpu" or config.num_workers < 1):
            raise ValueError(f"build_in_workers=True is accepted for CPU training with num_workers >= 1, and the "
                             f"device is {self.device.type!r} with num_workers={config.num_workers}")
        self.build_in_workers = build_in_workers
        self.steps_per_epoch: int = steps_for(len(train), config.batch_size, config.max_steps_per_epoch)
        self.paths = list(train.paths)
        self.targets = torch.as_tensor(train.targets, dtype=torch.int64)
        self.num_classes = train.num_classes
        self.need_foreground = config.uses_cutmix
        self.foreground_probabilities = (
            foreground_class_probabilities(train.class_counts, config.foreground_sampler)
            if self.need_foreground else "balanced"
        )
        self.builder = ImageNetStepBuilder(config, self.targets, self.device)
        self.fallback_images = 0

    def _report_fallbacks(self, fallbacks: int, decoded: int) -> None:
        """Count the images decoded one at a time; warn (UserWarning) the first time any is."""
        if fallbacks and not self.fallback_images:
            warnings.warn(f"{fallbacks} of the {decoded} training images of a step were not decoded by the batched "
                          f"JPEG decoder (not JPEG files, or JPEGs it cannot take) and were decoded one at a time, "
                          f"more slowly; later ones are counted in fallback_images, not reported", UserWarning,
                          stacklevel=3)
        self.fallback_images += fallbacks

    def epoch_plan(self, epoch: int, rank: int = 0, world_size: int = 1) -> list[dict]:
        """Return the rank's steps of ``epoch``, each a dict: "step", "background" and "foreground" (the rank's
        dataset indices; foreground None without CutMix), "files" (the distinct indices to read), "columns"
        int64 (b,), "width" (the global batch) and "augment_seed" (drawn from ``epoch_generator`` after the
        indices, the same for every rank)."""
        _check_rank(rank, world_size)
        generator = epoch_generator(self.config.seed, epoch)
        background, foreground = sample_epoch_indices(
            self.targets, self.num_classes, self.config.batch_size, self.foreground_probabilities, generator,
            need_foreground=self.need_foreground, background=self.config.background_sampler,
        )
        augment_seed = mix_seed(int(torch.randint(0, 2**62, (1,), generator=generator)), 0)
        width = background.shape[1]
        columns = torch.arange(rank, width, world_size)
        if columns.numel() == 0:
            return []
        background = background[: self.steps_per_epoch, rank::world_size].tolist()
        foreground = foreground[: self.steps_per_epoch, rank::world_size].tolist() if foreground is not None else None
        plan = []
        for step, row in enumerate(background):
            other = foreground[step] if foreground is not None else None
            plan.append({"step": step, "background": row, "foreground": other, "files": sorted(set(row + (other or []))),
                         "columns": columns, "width": width, "augment_seed": augment_seed})
        return plan

    def batches(self, epoch: int, rank: int = 0, world_size: int = 1) -> Iterator[StepBatch]:
        """Yield the ``steps_per_epoch`` StepBatches of ``epoch`` for ``rank``, already on the device."""
        plan = self.epoch_plan(epoch, rank, world_size)
        if self.build_in_workers:
            yield from self._worker_built(plan)
        elif self.device.type == "cpu":  # one intra-op thread, as in a worker: the same values, bit for bit
            yield from built_with_threads(self._built_here(plan), BATCH_THREADS)
        else:
            yield from self._built_here(plan)

    def _built_here(self, plan: list[dict]) -> Iterator[StepBatch]:
        """Yield the steps of ``plan`` built in this process from the bytes that ``num_workers`` workers read."""
        data = byte_batches(self.paths, [step["files"] for step in plan], self.config.num_workers)
        for step, step_data in zip(plan, data):
            batch, fallbacks = self.builder.build(step_data, step["files"], step["background"], step["foreground"],
                                                  step["columns"], step["width"],
                                                  step_generator(step["augment_seed"], step["step"]))
            self._report_fallbacks(fallbacks, len(step["files"]))
            yield batch

    def _worker_built(self, plan: list[dict]) -> Iterator[StepBatch]:
        loader = torch.utils.data.DataLoader(
            BuiltSteps(self.paths, ImageNetStepBuilder(self.config, self.targets, "cpu")), batch_size=None,
            sampler=plan, num_workers=self.config.num_workers, collate_fn=_as_is,
            generator=torch.Generator().manual_seed(0), worker_init_fn=EndWithParent(),
        )
        for (batch, fallbacks), step in zip(loader, plan):
            self._report_fallbacks(fallbacks, len(step["files"]))
            yield batch


def imagenet_test_batches(test, batch_size: int, device: torch.device | str, rank: int = 0, world_size: int = 1,
                          num_workers: int = 2) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield the rank's test batches: uint8 (b, 3, 224, 224) images and int64 (b,) labels, both on ``device``.

    ``test``: a dataset with ``paths`` and ``targets``; the rank takes positions
    ``rank::world_size`` in test-set order, in batches of at most ``batch_size``. ``num_workers``
    DataLoader processes read the files' bytes; each batch is decoded at once
    (``decode_images``) and every image resized (shorter side 256, antialiased bilinear) and
    centre-cropped to 224 (``resize_centre_crop``), the classic test view's geometry.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is not accepted; it must be an integer >= 1")
    device = torch.device(device)
    positions = list(shard_indices(len(test), rank, world_size))
    groups = [positions[start:start + batch_size] for start in range(0, len(positions), batch_size)]
    for group, data in zip(groups, byte_batches(test.paths, groups, num_workers)):
        images, _ = decode_images(data, device)
        labels = to_device(torch.tensor([test.targets[i] for i in group], dtype=torch.int64), device)
        yield resize_centre_crop(images, recipe.IMAGENET_RESIZE, recipe.IMAGENET_SIZE), labels


__all__ = ["BuiltSteps", "FastImageNetPipeline", "imagenet_test_batches"]
