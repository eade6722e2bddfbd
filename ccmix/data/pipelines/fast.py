"""The fast training pipeline: the uint8 training set on the device, batched per-sample views.

Produces the same pair batches as ``ccmix.data.pipelines.classic.ClassicTrainPipeline`` for
Contrastive CutMix (Pan et al., "Enhanced Long-Tailed Recognition with Contrastive
CutMix Augmentation", IEEE TIP 2024): view 0 of the instance-uniform background, its
two contrastive views for the balanced contrastive loss (Zhu et al., CVPR 2022) and
view 0 of the class-balanced foreground for CutMix (Yun et al., ICCV 2019), each image
with its own augmentation draws (``ccmix.data.augment.policies``). No PIL, no worker
processes: each step indexes the device-resident images and augments the whole batch.

Scope: the CIFAR recipe (32x32 images, ``view_recipe`` resolving to ``cifar``). For the
ImageNet-scale recipe, or images that are not all 32x32, ``FastTrainPipeline`` falls
back to the classic pipeline and says so with a ``UserWarning``.

Launch modes (``augment_launch``, see ``ccmix.data.augment.dispatch``): ``constant`` turns
each step's CPU draws into per-image parameters on the host, packs them into one buffer
and copies it to the device once (``ccmix.data.augment.packing``), then augments with the
same operator calls every step; ``subset`` applies the draws group-wise, with one small
copy per parameter. ``auto``: constant on CUDA, subset elsewhere.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ccmix.config.fields import TrainConfig, field_rule
from ccmix.data import views as recipe
from ccmix.data.augment.draws import sample_contrastive
from ccmix.data.augment.packing import pack_to_device
from ccmix.data.augment.recipes import (
    classification_views,
    contrastive_views,
    prepare_classification,
    prepare_contrastive,
    prepared_classification_views,
    prepared_contrastive_views,
    sample_classification,
)
from ccmix.data.batch import StepBatch
from ccmix.data.pipelines.classic import ClassicTrainPipeline, steps_for
from ccmix.data.streams import epoch_generator, foreground_class_probabilities, sample_epoch_indices
from ccmix.rng import mix_seed


def unsupported_reason(config: TrainConfig) -> str | None:
    """Return why the fast pipeline cannot build ``config``'s views (a sentence), or None."""
    if config.resolved_view_recipe != "cifar":
        return (f"the fast pipeline implements the CIFAR view recipe only, and view_recipe resolves to "
                f"{config.resolved_view_recipe!r} for dataset {config.dataset!r}")
    return None


AUGMENT_LAUNCHES = field_rule("augment_launch").choices  # auto, constant, subset


def resolve_augment_launch(launch: str, device: torch.device | str) -> str:
    """Return ``constant`` or ``subset``: ``launch`` itself, or for ``auto`` constant on CUDA and subset otherwise."""
    from ccmix.data.pipelines.build import resolve_by_device  # build imports this module lazily

    return resolve_by_device("augment_launch", launch, AUGMENT_LAUNCHES, device, on_cuda="constant",
                             elsewhere="subset")


@dataclass
class EpochPlan:
    """What the steps of one epoch share: device index tensors (steps, b), the draws' generator, rank columns."""

    background: torch.Tensor
    foreground: torch.Tensor | None
    augment_generator: torch.Generator
    columns: torch.Tensor
    width: int

    @property
    def steps(self) -> int:
        return self.background.shape[0] if self.background.shape[1] else 0


class FastTrainPipeline:
    """Device-resident, batched per-sample training views (CIFAR recipe); the classic pipeline's contract.

    ``batches(epoch, rank, world_size)`` yields ``ccmix.data.batch.StepBatch`` objects: view0 (b, 3, H, W)
    float32 normalised, contrastive (b, 2, 3, H, W) or None, labels (b,) int64, foreground
    (b, 3, H, W) or None and foreground_labels (b,) or None, all on ``device``; b is the
    rank's share (columns ``rank::world_size``) of the global batch. Indices come from
    ``epoch_generator(seed, epoch)``; augmentation draws, made for the whole global batch and
    then cut to the rank's columns, from a CPU generator seeded after them, so an image's
    views depend on (seed, epoch, its position in the global batch) and not on the number
    of processes.
    """

    def __init__(self, train, config: TrainConfig, device: torch.device | str = "cpu"):
        self.config = config
        self.device = torch.device(device)
        self.launch = resolve_augment_launch(config.augment_launch, self.device)
        self.steps_per_epoch: int = steps_for(len(train), config.batch_size, config.max_steps_per_epoch)
        self.fallback: ClassicTrainPipeline | None = None
        reason = unsupported_reason(config)
        images = None
        if reason is None:
            try:
                images = train.as_uint8_tensor()
            except ValueError as exc:  # e.g. images of different sizes
                reason = f"the training images do not form one uint8 tensor ({exc})"
        if reason is None and tuple(images.shape[-2:]) != (recipe.CIFAR_SIZE, recipe.CIFAR_SIZE):
            reason = (f"the CIFAR recipe makes {recipe.CIFAR_SIZE}x{recipe.CIFAR_SIZE} views and the training "
                      f"images are {images.shape[-1]}x{images.shape[-2]}")
        if reason is not None:
            warnings.warn(f"{reason}; using the classic pipeline instead.", UserWarning, stacklevel=2)
            self.fallback = ClassicTrainPipeline(train, config, self.device)
            return
        self.train = train
        self.images = images.to(self.device)
        self.image_size = tuple(self.images.shape[-2:])
        self.targets = torch.as_tensor(train.targets, dtype=torch.int64)
        self.targets_device = self.targets.to(self.device)
        self.num_classes = train.num_classes
        self.need_contrastive = config.uses_contrastive
        self.need_foreground = config.uses_cutmix
        self.foreground_probabilities = (
            foreground_class_probabilities(train.class_counts, config.foreground_sampler)
            if self.need_foreground else None
        )
        self.mean, self.std = recipe.normalization(config.dataset, config.resolved_view_recipe)
        self.contrastive_params = recipe.CONTRASTIVE_PARAMS["cifar"]

    # ------------------------------------------------------------------ one step

    def sample_step(self, batch: int, generator: torch.Generator) -> dict:
        """Return the augmentation draws of one step for ``batch`` pairs (CPU tensors, see ``fast_aug``).

        "view0": draws for 2*batch images when the foreground is needed (backgrounds
        first), else batch; "contrastive": draws for 2*batch images (two views per
        background, interleaved) or None.
        """
        first_views = 2 * batch if self.need_foreground else batch
        draws = {"view0": sample_classification(
            first_views, generator, image_size=self.image_size, padding=recipe.CIFAR_PAD, flip_prob=recipe.FLIP_PROB)}
        draws["contrastive"] = None
        if self.need_contrastive:
            p = self.contrastive_params
            draws["contrastive"] = sample_contrastive(
                2 * batch, generator, image_size=self.image_size, scale=p.crop_scale, ratio=p.crop_ratio,
                flip_prob=p.flip_prob, jitter=p.jitter, jitter_prob=p.jitter_prob, grayscale_prob=p.grayscale_prob,
                blur_prob=p.blur_prob, blur_sigma=p.blur_sigma,
            )
        return draws

    def rank_draws(self, draws: dict, columns: torch.Tensor, width: int) -> dict:
        """Return the draws of the global batch's ``columns`` (int64 (b,)) out of ``sample_step(width, ...)``'s."""
        if columns.numel() == width:
            return draws
        first = torch.cat((columns, width + columns)) if self.need_foreground else columns
        picked = {"view0": _select(draws["view0"], first), "contrastive": None}
        if draws["contrastive"] is not None:  # two views per background, interleaved
            pairs = (2 * columns.unsqueeze(1) + torch.arange(2)).reshape(-1)
            picked["contrastive"] = _select(draws["contrastive"], pairs)
        return picked

    def make_batch(self, background: torch.Tensor, foreground: torch.Tensor | None, draws: dict) -> StepBatch:
        """Return the StepBatch for device index tensors ``background`` (b,) and ``foreground`` (b,) or None."""
        batch = background.shape[0]
        first = background if foreground is None else torch.cat((background, foreground))
        view0, contrastive = self._views(first, background.repeat_interleave(2), draws)
        if contrastive is not None:
            contrastive = contrastive.view(batch, 2, *contrastive.shape[1:])
        return StepBatch(
            view0=view0[:batch],
            contrastive=contrastive,
            labels=self.targets_device.index_select(0, background),
            foreground=view0[batch:] if foreground is not None else None,
            foreground_labels=self.targets_device.index_select(0, foreground) if foreground is not None else None,
        )

    def _views(self, first: torch.Tensor, pairs: torch.Tensor, draws: dict) -> tuple:
        """Return (view 0 of images ``first``, contrastive views of images ``pairs`` or None), normalised."""
        padding, has_pairs = recipe.CIFAR_PAD, draws["contrastive"] is not None
        if self.launch == "subset":
            view0 = classification_views(self.images.index_select(0, first), draws["view0"], self.mean, self.std,
                                         padding=padding)
            return view0, contrastive_views(self.images.index_select(0, pairs), draws["contrastive"], self.mean,
                                            self.std) if has_pairs else None
        # constant: every per-image parameter of the step, prepared on the host, in one copy to the device
        prepared = pack_to_device({
            "view0": prepare_classification(draws["view0"], self.image_size),
            "contrastive": prepare_contrastive(draws["contrastive"], self.image_size,
                                               self.contrastive_params.blur_sigma[1]) if has_pairs else None,
        }, self.device)
        view0 = prepared_classification_views(self.images.index_select(0, first), prepared["view0"], self.mean,
                                              self.std, padding=padding)
        return view0, prepared_contrastive_views(self.images.index_select(0, pairs), prepared["contrastive"],
                                                 self.mean, self.std) if has_pairs else None

    # ------------------------------------------------------------------ epochs

    def epoch_plan(self, epoch: int, rank: int = 0, world_size: int = 1) -> EpochPlan:
        """Return the indices (on the device) and draw generator of ``epoch`` for ``rank`` (fast path only)."""
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise ValueError(f"rank={rank!r}, world_size={world_size!r} are not accepted; need 0 <= rank < world_size")
        generator = epoch_generator(self.config.seed, epoch)
        background, foreground = sample_epoch_indices(
            self.targets, self.num_classes, self.config.batch_size,
            self.foreground_probabilities if self.need_foreground else "balanced", generator,
            need_foreground=self.need_foreground, background=self.config.background_sampler,
        )
        # one draw after the indices (as the classic pipeline), the same for every rank
        augment_generator = torch.Generator().manual_seed(
            mix_seed(int(torch.randint(0, 2**62, (1,), generator=generator)), 0))
        width = background.shape[1]
        background = background[: self.steps_per_epoch, rank::world_size].to(self.device)
        if foreground is not None:
            foreground = foreground[: self.steps_per_epoch, rank::world_size].to(self.device)
        return EpochPlan(background, foreground, augment_generator, torch.arange(rank, width, world_size), width)

    def step_batch(self, plan: EpochPlan, step: int) -> StepBatch:
        """Return the StepBatch of step ``step`` of ``plan`` (steps must be taken in order: the draws are a stream)."""
        draws = self.rank_draws(self.sample_step(plan.width, plan.augment_generator), plan.columns, plan.width)
        foreground = plan.foreground[step] if plan.foreground is not None else None
        return self.make_batch(plan.background[step], foreground, draws)

    def batches(self, epoch: int, rank: int = 0, world_size: int = 1) -> Iterator[StepBatch]:
        """Yield the ``steps_per_epoch`` StepBatches of ``epoch`` for ``rank``, already on the device."""
        if self.fallback is not None:
            yield from self.fallback.batches(epoch, rank, world_size)
            return
        plan = self.epoch_plan(epoch, rank, world_size)
        for step in range(plan.steps):
            yield self.step_batch(plan, step)


def _select(draws: dict, index: torch.Tensor) -> dict:
    """Return ``draws`` (nested dicts of tensors with one row per image) with the rows ``index`` only."""
    return {key: _select(value, index) if isinstance(value, dict) else value.index_select(0, index)
            for key, value in draws.items()}


__all__ = ["AUGMENT_LAUNCHES", "EpochPlan", "FastTrainPipeline", "resolve_augment_launch", "unsupported_reason"]
