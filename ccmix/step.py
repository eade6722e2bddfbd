"""One training step of every method: CE, LA, CutMix, BCL and Contrastive CutMix.

The loss is that of Pan et al., "Enhanced Long-Tailed Recognition with Contrastive
CutMix Augmentation" (IEEE TIP 2024): logit-adjusted cross-entropy (Menon et al., ICLR
2021) on the view 0 of the background, CutMix-pasted (Yun et al., ICCV 2019) with a
class-balanced foreground and labelled by area, after epoch ``l_d_warm`` by the semantic
label; plus the balanced contrastive loss (Zhu et al., CVPR 2022) over two more views.
See ``docs/method.md``.

``train_step`` is the one implementation of a step (zero_grad, micro-batches for
gradient accumulation, forward and loss, backward, optimizer step) that training, the
bench and the step benchmark all call. It returns detached device tensors and reads
nothing back to the host.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, fields

import numpy as np
import torch

from ccmix import losses
from ccmix.config import TrainConfig
from ccmix.cutmix import CutMixBoxes, area_labels, kept_fraction, paste, sample_boxes
from ccmix.distributed import DistContext, all_ranks_true, gather_with_grad
from ccmix.rng import CUTMIX_STREAM, numpy_generator

# Positions in the (5,) float64 tensor of sums a step returns and an epoch accumulates.
LOSS, LOSS_CE, LOSS_BCL, CORRECT, COUNT = range(5)


class TrainingDiverged(RuntimeError):
    """Raised when the loss stops being finite; the message names the epoch and step."""


# --------------------------------------------------------------------------- the batch


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


# --------------------------------------------------------------------------- schedule and set-up


def learning_rate(epoch: int, config: TrainConfig) -> float:
    """Return the learning rate of 0-based ``epoch``: linear warm-up, then step decay or cosine."""
    if epoch < config.warmup_epochs:
        return config.lr * (epoch + 1) / config.warmup_epochs
    if config.schedule == "cosine":
        # the published form: (e - warmup + 1) / (E - warmup + 1), so epoch 0 already decays and the last does not reach 0
        progress = (epoch - config.warmup_epochs + 1) / (config.epochs - config.warmup_epochs + 1)
        return 0.5 * config.lr * (1.0 + math.cos(math.pi * progress))
    decays = sum(1 for milestone in config.milestones if epoch >= milestone)
    return config.lr * config.lr_decay**decays


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Return SGD with momentum and weight decay over every trainable parameter."""
    return torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def to_memory_format(images: torch.Tensor, config: TrainConfig | None) -> torch.Tensor:
    """Return ``images`` (N, 3, H, W) in channels_last on CUDA when the config asks for it, else unchanged."""
    if images.device.type == "cuda" and (config is None or config.channels_last):
        return images.contiguous(memory_format=torch.channels_last)
    return images


def autocast_context(device: torch.device, config: TrainConfig):
    """Return bf16 autocast on CUDA when ``config.amp``, else a no-op context."""
    if device.type == "cuda" and config.amp:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


# --------------------------------------------------------------------------- CutMix draws


def cutmix_generator(config: TrainConfig, epoch: int) -> np.random.Generator:
    """Return the NumPy generator of an epoch's CutMix decisions and boxes, seeded by (seed, epoch)."""
    return numpy_generator(config.seed, epoch, CUTMIX_STREAM)


def draw_cutmix_boxes(config: TrainConfig, generator: np.random.Generator, global_batch: int, height: int,
                      width: int, context: DistContext) -> CutMixBoxes | None:
    """Return this rank's CutMix boxes (CPU) for one step, or None when the step is not mixed.

    Drawn on the host for the whole global batch from a generator every rank seeds alike,
    then sliced by rank, so the mixing does not depend on the number of processes.
    """
    if not config.uses_cutmix:
        return None
    if config.cutmix_per_sample:
        boxes = sample_boxes(global_batch, height, width, alpha=config.cutmix_alpha, per_sample=True,
                             generator=generator)
        apply = torch.from_numpy(generator.random(global_batch) < config.cutmix_prob)
        # An unmixed image gets an empty box: it keeps all of its pixels and its hard label.
        boxes = CutMixBoxes(top=boxes.top, left=boxes.left, bottom=torch.where(apply, boxes.bottom, boxes.top),
                            right=boxes.right)
    else:
        if generator.random() >= config.cutmix_prob:
            return None
        boxes = sample_boxes(global_batch, height, width, alpha=config.cutmix_alpha, per_sample=False,
                             generator=generator)
    return boxes[context.rank::context.world_size]


# --------------------------------------------------------------------------- the loss


@dataclass
class StepResult:
    """The loss of one (micro-)batch with its detached parts, all device tensors (no host reads)."""

    loss: torch.Tensor  # () the optimised loss, with its graph
    loss_ce: torch.Tensor  # () detached
    loss_bcl: torch.Tensor | None  # () detached; None without the contrastive loss
    correct: torch.Tensor  # () int64, train top-1 hits on the unmixed labels
    count: int  # pairs in the batch


def compute_step_loss(
    model: torch.nn.Module,
    batch: StepBatch,
    config: TrainConfig,
    epoch: int,
    class_counts: torch.Tensor,
    boxes: CutMixBoxes | None,
    context: DistContext | None = None,
) -> StepResult:
    """Return the training loss of one batch for ``config.method`` (0-based ``epoch``).

    ``boxes`` are this rank's CutMix boxes or None when the batch is not mixed.
    Non-contrastive methods optimise the cross-entropy alone; bcl and concutmix
    optimise alpha*CE + beta*BCL.
    """
    context = context or DistContext()
    view0, labels = batch.view0, batch.labels
    size, height, width = view0.shape[0], view0.shape[-2], view0.shape[-1]
    num_classes = class_counts.numel()
    target = labels
    if boxes is not None:
        view0 = paste(view0, batch.foreground, boxes)
        lam = kept_fraction(boxes, height, width).to(view0.device)
        target = area_labels(labels, batch.foreground_labels, lam, num_classes)
    tau = config.tau if config.uses_logit_adjustment else 0.0
    loss_bcl = None
    if config.uses_contrastive:
        views = batch.contrastive
        inputs = torch.cat([view0, views[:, 0], views[:, 1]], dim=0)  # BatchNorm sees all 3b images
        output = model(to_memory_format(inputs, config))
        logits = output.logits[:size].float()
        embedding = output.embedding[size:].float().view(2, size, -1).transpose(0, 1)  # (b, 2, D)
        all_embedding = gather_with_grad(embedding.contiguous(), context)
        all_labels = gather_with_grad(labels, context) if context.enabled else labels
        loss_bcl = losses.balanced_contrastive_loss(
            all_embedding, output.centers.float(), all_labels, temperature=config.temperature
        )
        # published: `epoch > l_d_warm` on 0-based epochs, so area labels through epoch l_d_warm itself
        if boxes is not None and config.method == "concutmix" and epoch > config.l_d_warm:
            target = losses.semantic_label(
                output.embedding_raw[:size].float(), output.centers_raw.float(), target, class_counts,
                topk=config.topk, omega=config.omega,
            )
    else:
        logits = _classify(model, to_memory_format(view0, config)).float()
    loss_ce = losses.logit_adjusted_ce(logits, target, class_counts, tau)
    loss = config.alpha * loss_ce + config.beta * loss_bcl if config.uses_contrastive else loss_ce
    with torch.no_grad():
        correct = (logits.argmax(dim=1) == labels).sum()
    return StepResult(loss=loss, loss_ce=loss_ce.detach(), loss_bcl=None if loss_bcl is None else loss_bcl.detach(),
                      correct=correct, count=size)


def _classify(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    if hasattr(model, "module"):
        # DDP over ClassifierPath (see wrap_for_training): the cheap path, with gradients synchronised
        output = model(images)
        return output.logits if hasattr(output, "logits") else output
    return model.classify(images)


# --------------------------------------------------------------------------- the step


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: StepBatch, config: TrainConfig,
               epoch: int, class_counts: torch.Tensor, cutmix_rng: np.random.Generator,
               context: DistContext | None = None) -> torch.Tensor:
    """Take one optimizer step on ``batch`` and return its sums, a detached (5,) float64 device tensor.

    The sums are indexed by LOSS, LOSS_CE, LOSS_BCL (each loss times the pairs it covers),
    CORRECT and COUNT. CutMix boxes are drawn from ``cutmix_rng`` for the global batch; with
    ``config.grad_accum_steps`` > 1 the batch is split into micro-batches whose gradients add
    up (DDP synchronises only after the last one).
    """
    context = context or DistContext()
    device = batch.view0.device
    height, width = batch.view0.shape[-2:]
    boxes = draw_cutmix_boxes(config, cutmix_rng, batch.size * context.world_size, height, width, context)
    parts = config.grad_accum_steps
    sums = torch.zeros(5, dtype=torch.float64, device=device)
    optimizer.zero_grad(set_to_none=True)
    micro_batches = _split(batch, boxes, parts)
    for index, (micro_batch, micro_boxes) in enumerate(micro_batches):
        with autocast_context(device, config):
            result = compute_step_loss(model, micro_batch, config, epoch, class_counts, micro_boxes, context)
        no_sync = getattr(model, "no_sync", None) if context.enabled and index < len(micro_batches) - 1 else None
        with no_sync() if no_sync is not None else nullcontext():
            (result.loss / parts).backward()
        bcl = result.loss_bcl if result.loss_bcl is not None else torch.zeros((), device=device)
        parts_sum = torch.stack([result.loss.detach().double(), result.loss_ce.double(), bcl.double()])
        sums[:CORRECT] += parts_sum * result.count
        sums[CORRECT] += result.correct
        sums[COUNT] += result.count
    optimizer.step()
    return sums


def _split(batch: StepBatch, boxes: CutMixBoxes | None, parts: int) -> list[tuple[StepBatch, CutMixBoxes | None]]:
    """Return (micro_batch, micro_boxes) pairs for gradient accumulation (parts=1: the batch itself)."""
    if parts == 1:
        return [(batch, boxes)]
    chunk = math.ceil(batch.size / parts)
    return [(batch[start:start + chunk], None if boxes is None else boxes[start:start + chunk])
            for start in range(0, batch.size, chunk)]


def check_finite_loss(sums: torch.Tensor, epoch: int, step: int, context: DistContext) -> None:
    """Raise TrainingDiverged when a step's loss sum is not finite on any rank (0-based ``epoch`` and ``step``).

    Decided by all ranks together, so no rank waits in a collective for one that stopped.
    """
    loss = sums[LOSS]
    if all_ranks_true(torch.isfinite(loss), context):
        return
    local = bool(torch.isfinite(loss))
    where = " non-finite on another process" if local else f" {float(loss / sums[COUNT].clamp_min(1))}"
    raise TrainingDiverged(
        f"the training loss became{where} at epoch {epoch + 1}, step {step + 1}; training stopped and the last "
        "good checkpoint was kept (try a lower lr)"
    )


__all__ = ["StepBatch", "StepResult", "TrainingDiverged", "autocast_context", "build_optimizer", "check_finite_loss",
           "compute_step_loss", "cutmix_generator", "draw_cutmix_boxes", "learning_rate", "to_memory_format",
           "train_step"]
