"""The classic training pipeline: per-sample PIL views built in DataLoader workers.

Each training item of Contrastive CutMix (Pan et al., "Enhanced Long-Tailed
Recognition with Contrastive CutMix Augmentation", IEEE TIP 2024) is a pair (a, b) of
a background image, drawn instance-uniformly, and a foreground image, drawn
class-balanced. The background gets its classification view (view 0) and, for methods
with the balanced contrastive loss (Zhu et al., CVPR 2022), two contrastive views; the
foreground only its view 0 and only when the method uses CutMix (Yun et al., ICCV
2019). Views that the method never uses are never computed.

Every random draw of an item's views comes from a generator seeded by (seed, epoch, the
item's position in the epoch's global batches), so 0, 1 or any number of DataLoader
workers, and any number of processes sharing the global batch, build identical views.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from ccmix.config.fields import TrainConfig
from ccmix.data.batch import StepBatch
from ccmix.data.pipelines.workers import EndWithParent
from ccmix.data.streams import epoch_generator, sample_epoch_indices
from ccmix.data.views import classification_view, contrastive_view_pair
from ccmix.rng import mix_seed, seeded_torch_draws


class PairViews(torch.utils.data.Dataset):
    """Wraps a training set: item ``(a, b, view_seed)`` is the dict of views of background a and foreground b.

    The dict holds "view0" (3, H, W) float32 and "label" (int); "contrastive" (2, 3, H, W)
    when the two contrastive transforms are given; "foreground" (3, H, W) and
    "foreground_label" when ``b`` is not None. Each image is decoded once per item. Every
    draw of the views comes from torch's global CPU generator seeded with ``view_seed``
    (in the order view 0, contrastive views, foreground view 0) and the generator's state
    is put back afterwards, so an item's views depend on ``view_seed`` alone.
    """

    def __init__(self, train, view0: Callable, contrastive: tuple[Callable, Callable] | None):
        self.train = train
        self.view0 = view0
        self.contrastive = contrastive

    def __len__(self) -> int:
        return len(self.train)

    def __getitem__(self, item: tuple[int, int | None, int]) -> dict:
        """Return the views of ``(background index, foreground index or None, view seed)``."""
        a, b, view_seed = item
        background = self.train.load_image(a)
        foreground = self.train.load_image(b) if b is not None else None
        with seeded_torch_draws(view_seed):
            views = {"view0": self.view0(background), "label": self.train.targets[a]}
            if self.contrastive is not None:
                first, second = self.contrastive
                views["contrastive"] = torch.stack([first(background), second(background)])
            if foreground is not None:
                views["foreground"] = self.view0(foreground)
                views["foreground_label"] = self.train.targets[b]
        return views


def collate_views(items: list[dict]) -> StepBatch:
    """Return the StepBatch of stacked views: present parts stacked, absent parts None; labels int64."""
    first = items[0]
    return StepBatch(
        view0=torch.stack([it["view0"] for it in items]),
        contrastive=torch.stack([it["contrastive"] for it in items]) if "contrastive" in first else None,
        labels=torch.tensor([it["label"] for it in items], dtype=torch.int64),
        foreground=torch.stack([it["foreground"] for it in items]) if "foreground" in first else None,
        foreground_labels=(
            torch.tensor([it["foreground_label"] for it in items], dtype=torch.int64) if "foreground" in first else None
        ),
    )


def steps_for(num_images: int, batch_size: int, max_steps: int | None) -> int:
    """Return the number of steps of an epoch: full batches (at least one), capped by ``max_steps``."""
    steps = max(1, num_images // batch_size)
    return min(steps, max_steps) if max_steps is not None else steps


class ClassicTrainPipeline:
    """Per-sample torchvision views in ``num_workers`` DataLoader workers, batches moved to ``device``.

    ``batches(epoch, rank, world_size)`` yields ``ccmix.data.batch.StepBatch`` objects (view0, contrastive,
    labels, foreground, foreground_labels) of b pairs, where b is the rank's share of the global
    batch (columns ``rank::world_size``). Indices come from ``epoch_generator(seed, epoch)``;
    each item's views from a seed drawn after them, mixed with the item's position in the
    global batches (``epoch_plan``).
    """

    def __init__(self, train, config: TrainConfig, device: torch.device | str = "cpu"):
        self.train = train
        self.config = config
        self.device = torch.device(device)
        recipe = config.resolved_view_recipe
        self.view0 = classification_view(recipe, config.dataset, randaugment_ops=config.randaugment_ops,
                                         randaugment_magnitude=config.randaugment_magnitude)
        self.contrastive = (
            contrastive_view_pair(recipe, config.dataset, config.contrastive_views,
                                  randaugment_ops=config.randaugment_ops,
                                  randaugment_magnitude=config.randaugment_magnitude)
            if config.uses_contrastive else None
        )
        self.need_foreground = config.uses_cutmix
        self.items = PairViews(train, self.view0, self.contrastive)
        self.steps_per_epoch: int = steps_for(len(train), config.batch_size, config.max_steps_per_epoch)

    def epoch_plan(self, epoch: int, rank: int = 0, world_size: int = 1) -> tuple[list[list[tuple]], list[list[int]]]:
        """Return (per-step lists of (background, foreground or None) pairs for ``rank``, their view seeds).

        An item's view seed mixes the epoch's augmentation seed (drawn from
        ``epoch_generator(seed, epoch)`` after the indices) with its position in the epoch's
        global batches (step * global batch + column), so it does not depend on the rank,
        the number of processes or the number of workers.
        """
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise ValueError(f"rank={rank!r}, world_size={world_size!r} are not accepted; need 0 <= rank < world_size")
        generator = epoch_generator(self.config.seed, epoch)
        background, foreground = sample_epoch_indices(
            self.train.targets, self.train.num_classes, self.config.batch_size, self.config.foreground_sampler,
            generator, need_foreground=self.need_foreground, background=self.config.background_sampler,
        )
        augment_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        steps, width = min(self.steps_per_epoch, background.shape[0]), background.shape[1]
        positions = torch.arange(steps * width).reshape(steps, width)[:, rank::world_size].tolist()
        seeds = [[mix_seed(augment_seed, position) for position in row] for row in positions]
        background = background[:steps, rank::world_size].tolist()
        if foreground is None:
            plan = [[(a, None) for a in row] for row in background]
        else:
            foreground = foreground[:steps, rank::world_size].tolist()
            plan = [list(zip(row_a, row_b)) for row_a, row_b in zip(background, foreground)]
        return [row for row in plan if row], [row for row in seeds if row]

    def batches(self, epoch: int, rank: int = 0, world_size: int = 1) -> Iterator[StepBatch]:
        """Yield the ``steps_per_epoch`` StepBatches of ``epoch`` for ``rank``, already on the device."""
        plan, seeds = self.epoch_plan(epoch, rank, world_size)
        items = [[(a, b, seed) for (a, b), seed in zip(pairs, row)] for pairs, row in zip(plan, seeds)]
        num_workers = self.config.num_workers
        loader = torch.utils.data.DataLoader(
            self.items,
            batch_sampler=items,
            num_workers=num_workers,
            collate_fn=collate_views,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            # The views are seeded per item. A generator of its own keeps DataLoader from drawing its
            # workers' base seed from the global one, whose stream would then depend on num_workers.
            generator=torch.Generator().manual_seed(0),
            worker_init_fn=EndWithParent() if num_workers > 0 else None,
        )
        batches = iter(loader)
        while True:
            with _one_thread_when(num_workers == 0):
                batch = next(batches, None)
            if batch is None:
                return
            yield batch.to(self.device, non_blocking=True)


@contextlib.contextmanager
def _one_thread_when(active: bool):
    """Run the block with one intra-op thread when ``active`` (as DataLoader workers do), then restore.

    Per-sample ops on small images gain nothing from intra-op threads and lose much to
    their synchronisation, especially on a busy machine.
    """
    if not active:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


__all__ = ["PairViews", "collate_views", "steps_for", "ClassicTrainPipeline"]
