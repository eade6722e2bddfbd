"""One training step of every method: CE, LA, CutMix, BCL and Contrastive CutMix.

The loss is that of Pan et al., "Enhanced Long-Tailed Recognition with Contrastive
CutMix Augmentation" (IEEE TIP 2024): logit-adjusted cross-entropy (Menon et al., ICLR
2021) on the view 0 of the background, CutMix-pasted (Yun et al., ICCV 2019) with a
class-balanced foreground and labelled by area, after epoch ``l_d_warm`` by the semantic
label; plus the balanced contrastive loss (Zhu et al., CVPR 2022) over two more views.
See ``docs/method.md``.

``train_step`` is the one implementation of a step (zero_grad, micro-batches for
gradient accumulation, forward and loss, backward, optimizer step) that training, the
bench (``ccmix.experiments.bench``) and ``benchmarks/step_seconds.py`` all call. It returns detached device tensors and reads
nothing back to the host.
"""

from __future__ import annotations

import math
import warnings
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch._dynamo.exc import BackendCompilerFailed

from ccmix.config.fields import TrainConfig
from ccmix.data.batch import StepBatch
from ccmix.method import losses
from ccmix.method.collectives import DistContext, all_reduce_sum, gather_with_grad
from ccmix.method.cutmix import CutMixBoxes
from ccmix.method.mixers import CutMix, Mixer, boxes_tensor, build_mixer
from ccmix.method.semantic_diagnostics import SEMANTIC_SIZE, semantic_sums
from ccmix.rng import CUTMIX_STREAM, numpy_generator

# Positions in the (5,) float64 tensor of sums a step returns and an epoch accumulates; an epoch's reduced sums
# continue from SEMANTIC with the semantic-label sums of ``ccmix.method.semantic_diagnostics``.
LOSS, LOSS_CE, LOSS_BCL, CORRECT, COUNT, SEMANTIC = range(6)


class TrainingDiverged(RuntimeError):
    """Raised when the loss stops being finite; the message names the epoch and step."""


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
    """Return bf16 autocast on CUDA when ``config.amp``, on the CPU when ``config.cpu_bf16``, else a no-op context.

    ``cpu_bf16`` is checked against the CPU when training starts (``ccmix.train.precision``).
    """
    if device.type == "cuda" and config.amp:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and config.cpu_bf16:
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    return nullcontext()


# --------------------------------------------------------------------------- mixing draws


def cutmix_generator(config: TrainConfig, epoch: int) -> np.random.Generator:
    """Return the NumPy generator of an epoch's mixing draws (CutMix's decisions and boxes, or those of
    ``config.mixer``), seeded by (seed, epoch)."""
    return numpy_generator(config.seed, epoch, CUTMIX_STREAM)


def draw_mixing(mixer: Mixer, config: TrainConfig, generator: np.random.Generator, global_batch: int, height: int,
                width: int, context: DistContext):
    """Return this rank's share of one step's mixing parameters (host side), or None when the step is not mixed.

    ``mixer`` draws on the host for the whole global batch from a generator every rank seeds
    alike; the parameters are then sliced by rank, so the mixing does not depend on the number
    of processes. Methods that do not mix draw nothing. With ``cutmix_per_micro_batch`` and
    ``grad_accum_steps`` > 1 it returns a :class:`MicroBatchMixing`: one draw per micro-batch, in order.
    """
    if not config.uses_cutmix:
        return None
    if config.cutmix_per_micro_batch and config.grad_accum_steps > 1:
        return MicroBatchMixing(tuple(
            _rank_share(mixer.draw(generator, global_batch // config.grad_accum_steps, height, width), context)
            for _ in range(config.grad_accum_steps)))
    return _rank_share(mixer.draw(generator, global_batch, height, width), context)


class MicroBatchMixing(tuple):
    """This rank's mixing parameters of each micro-batch (``cutmix_per_micro_batch``), None where it is not mixed.

    Micro-batch j holds the global images [j G/g, (j+1) G/g) of a step of G images in g micro-batches
    (each rank its columns ``rank::world_size`` of them), so its own draw, made for G/g images, is
    the draw of a run whose step is one micro-batch.
    """


def _rank_share(params, context: DistContext):
    return None if params is None else params[context.rank::context.world_size]


def draw_cutmix_boxes(config: TrainConfig, generator: np.random.Generator, global_batch: int, height: int,
                      width: int, context: DistContext) -> CutMixBoxes | None:
    """Return this rank's CutMix boxes (CPU) for one step, or None when the step is not mixed: the draws of
    the CutMix mixer, whatever ``config.mixer`` (the explorer shows them), one draw for the whole batch
    even with ``cutmix_per_micro_batch``."""
    whole_batch = config.replace(cutmix_per_micro_batch=False) if config.cutmix_per_micro_batch else config
    return draw_mixing(CutMix(config), whole_batch, generator, global_batch, height, width, context)


# --------------------------------------------------------------------------- the loss


@dataclass
class StepResult:
    """The loss of one (micro-)batch with its detached parts, all device tensors (no host reads)."""

    loss: torch.Tensor  # () the optimised loss, with its graph
    loss_ce: torch.Tensor  # () detached
    loss_bcl: torch.Tensor | None  # () detached; None without the contrastive loss
    correct: torch.Tensor  # () int64, train top-1 hits on the unmixed labels
    count: int  # pairs in the batch
    semantic: torch.Tensor | None = None  # (SEMANTIC_SIZE,) float64 semantic-label sums; None without semantic labels


def uses_semantic_labels(config: TrainConfig, epoch: int, mixed: bool) -> bool:
    """Return True when a step of 0-based ``epoch`` labels its mixed images semantically (concutmix only)."""
    # published: `epoch > l_d_warm` on 0-based epochs, so area labels through epoch l_d_warm itself
    return mixed and config.method == "concutmix" and epoch > config.l_d_warm


def loss_parts(model: torch.nn.Module, view0: torch.Tensor, contrastive: torch.Tensor | None, labels: torch.Tensor,
               foreground: torch.Tensor | None, foreground_labels: torch.Tensor | None, mixing: torch.Tensor | None,
               class_counts: torch.Tensor, *, config: TrainConfig, semantic: bool,
               context: DistContext) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor,
                                              torch.Tensor | None]:
    """Return (loss with its graph, detached CE, detached BCL or None, int64 correct, semantic-label sums or
    None) of one micro-batch; the sums are ``semantic_diagnostics.semantic_sums``, present with semantic labels.

    Tensors as in ``StepBatch``; ``mixing`` the device parameters of ``config.mixer``
    (``Mixer.to_device``; CutMix: (4, b) int64 boxes from ``boxes_tensor``) or None when the
    batch is not mixed; ``semantic`` from ``uses_semantic_labels``. This is what ``compile=true``
    compiles: the forward pass and every loss, with no value read back, so on CUDA it can be
    replayed as a CUDA graph. Its variants are mixed or not and semantic labels or not; mixing
    parameters and λ are tensors, so new boxes never recompile it.
    """
    size = view0.shape[0]
    num_classes = class_counts.numel()
    target, lam, mixer, diagnostics = labels, None, None, None
    with autocast_context(view0.device, config):
        if mixing is not None:
            mixer = build_mixer(config)
            view0, target, lam = mixer.apply(mixing, view0, foreground, labels, foreground_labels, num_classes)
        tau = config.tau if config.uses_logit_adjustment else 0.0
        loss_bcl = None
        if config.uses_contrastive:
            inputs = torch.cat([view0, contrastive[:, 0], contrastive[:, 1]], dim=0)  # BatchNorm sees all 3b images
            output = model(to_memory_format(inputs, config))
            logits = output.logits[:size].float()
            embedding = output.embedding[size:].float().view(2, size, -1).transpose(0, 1)  # (b, 2, D)
            all_embedding = gather_with_grad(embedding.contiguous(), context)
            all_labels = gather_with_grad(labels, context) if context.enabled else labels
            loss_bcl = losses.balanced_contrastive_loss(
                all_embedding, output.centers.float(), all_labels, temperature=config.temperature, check_values=False
            )
            if semantic:
                parts = losses.semantic_label_parts(
                    output.embedding_raw[:size].float(), output.centers_raw.float(), target, class_counts,
                    topk=config.topk, omega=config.omega, check_values=False,
                )
                # Per-sample mixing: an image drawn not to mix (CutMix: an empty box) keeps its hard label, since
                # semantic labels are for mixed images. One draw per batch labels the whole batch, as published.
                blends = (lam < 1.0) if mixer.per_sample else torch.ones_like(lam, dtype=torch.bool)
                blended = parts["label"]
                target = torch.where(blends.unsqueeze(1), blended, target) if mixer.per_sample else blended
                diagnostics = semantic_sums(parts, target, labels, foreground_labels, blends, class_counts, config)
        else:
            logits = _classify(model, to_memory_format(view0, config)).float()
        loss_ce = losses.logit_adjusted_ce(logits, target, class_counts, tau, check_values=False)
        loss = config.alpha * loss_ce + config.beta * loss_bcl if config.uses_contrastive else loss_ce
    with torch.no_grad():
        correct = (logits.argmax(dim=1) == labels).sum()
    return loss, loss_ce.detach(), None if loss_bcl is None else loss_bcl.detach(), correct, diagnostics


def compute_step_loss(
    model: torch.nn.Module,
    batch: StepBatch,
    config: TrainConfig,
    epoch: int,
    class_counts: torch.Tensor,
    mixing,
    context: DistContext | None = None,
    loss_function=loss_parts,
) -> StepResult:
    """Return the training loss of one batch for ``config.method`` (0-based ``epoch``).

    ``mixing`` is this rank's share of the step's host-side mixing parameters (``draw_mixing``;
    CutMix: its CutMixBoxes) or None when the batch is not mixed.
    Non-contrastive methods optimise the cross-entropy alone; bcl and concutmix
    optimise alpha*CE + beta*BCL. ``loss_function`` is ``loss_parts`` or its compiled
    form (``step_loss_function``).
    """
    context = context or DistContext()
    device = batch.view0.device
    loss, loss_ce, loss_bcl, correct, semantic = loss_function(
        model, batch.view0, batch.contrastive, batch.labels, batch.foreground, batch.foreground_labels,
        None if mixing is None else build_mixer(config).to_device(mixing, device), class_counts, config=config,
        semantic=uses_semantic_labels(config, epoch, mixing is not None), context=context)
    return StepResult(loss=loss, loss_ce=loss_ce, loss_bcl=loss_bcl, correct=correct, count=batch.size,
                      semantic=semantic)


def _classify(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    if hasattr(model, "module"):
        # DDP over ClassifierPath (see wrap_for_training): the cheap path, with gradients synchronised
        output = model(images)
        return output.logits if hasattr(output, "logits") else output
    return model.classify(images)


# --------------------------------------------------------------------------- compilation


class CompiledLoss:
    """``loss_parts`` under ``torch.compile`` (static shapes); eager again, with a warning, if compiling fails.

    On one CUDA device the step is compiled with CUDA graphs (``mode="reduce-overhead"``):
    each call then replays the recorded kernels. The default mode is used under DDP, whose
    gradient hooks run between the graphs, and with ``cuda_graphs=False`` (the config field
    ``cuda_graphs`` off, or gradient accumulation: gradients kept across replays would live
    in memory a replay reuses).
    """

    def __init__(self, device: torch.device, context: DistContext, backend="inductor", cuda_graphs: bool = True):
        self.cuda_graphs = cuda_graphs and device.type == "cuda" and not context.enabled and backend == "inductor"
        self.compiled = torch.compile(loss_parts, dynamic=False, backend=backend,
                                      mode="reduce-overhead" if self.cuda_graphs else None)
        self.function = self.compiled

    def __call__(self, *args, **kwargs):
        """Return ``loss_parts(*args, **kwargs)``, computed by the compiled graphs."""
        if self.function is loss_parts:
            return loss_parts(*args, **kwargs)
        if self.cuda_graphs:  # a new step: outputs of the previous replay are no longer read
            torch.compiler.cudagraph_mark_step_begin()
        try:
            return self.function(*args, **kwargs)
        except BackendCompilerFailed as error:  # e.g. no C++ compiler: nothing ran yet, so eager can take over
            warnings.warn(f"torch.compile failed here ({type(error.inner_exception).__name__}: "
                          f"{error.inner_exception}); training without it", stacklevel=2)
            self.function = loss_parts
            return loss_parts(*args, **kwargs)


def step_loss_function(config: TrainConfig, device: torch.device, context: DistContext | None = None):
    """Return the function that computes a micro-batch's loss: ``loss_parts``, or a CompiledLoss when
    ``config.compile``. Build it once per run: a compiled function keeps its graphs between calls."""
    if not config.compile:
        return loss_parts
    return CompiledLoss(torch.device(device), context or DistContext(),
                        cuda_graphs=config.cuda_graphs and config.grad_accum_steps == 1)


# --------------------------------------------------------------------------- the step


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: StepBatch, config: TrainConfig,
               epoch: int, class_counts: torch.Tensor, mixing_rng: np.random.Generator,
               context: DistContext | None = None, loss_function=loss_parts,
               semantic_totals: torch.Tensor | None = None) -> torch.Tensor:
    """Take one optimizer step on ``batch`` and return its sums, a detached (5,) float64 device tensor.

    The sums are indexed by LOSS, LOSS_CE, LOSS_BCL (each loss times the pairs it covers),
    CORRECT and COUNT. ``semantic_totals``, a (SEMANTIC_SIZE,) float64 device tensor (``EpochTotals.semantic``),
    gets the step's semantic-label sums added in place. ``config.mixer`` draws from
    ``mixing_rng`` for the global batch; with ``config.grad_accum_steps`` > 1 the batch is split into micro-batches whose gradients add
    up (DDP synchronises only after the last one). Nothing is read back from the device.
    ``loss_function``: see ``step_loss_function``.
    """
    context = context or DistContext()
    device = batch.view0.device
    height, width = batch.view0.shape[-2:]
    mixing = draw_mixing(build_mixer(config), config, mixing_rng, batch.size * context.world_size, height, width,
                         context)
    parts = config.grad_accum_steps
    sums = torch.zeros(5, dtype=torch.float64, device=device)
    optimizer.zero_grad(set_to_none=True)
    micro_batches = _split(batch, mixing, parts)
    for index, (micro_batch, micro_mixing) in enumerate(micro_batches):
        result = compute_step_loss(model, micro_batch, config, epoch, class_counts, micro_mixing, context,
                                   loss_function=loss_function)
        no_sync = getattr(model, "no_sync", None) if context.enabled and index < len(micro_batches) - 1 else None
        with no_sync() if no_sync is not None else nullcontext():
            (result.loss / parts).backward()
        bcl = result.loss_bcl if result.loss_bcl is not None else torch.zeros((), device=device)
        parts_sum = torch.stack([result.loss.detach().double(), result.loss_ce.double(), bcl.double()])
        sums[:CORRECT] += parts_sum * result.count
        sums[CORRECT] += result.correct
        sums[COUNT] += result.count
        if result.semantic is not None and semantic_totals is not None:
            semantic_totals += result.semantic
    optimizer.step()
    return sums


def _split(batch: StepBatch, mixing, parts: int) -> list[tuple[StepBatch, object]]:
    """Return (micro_batch, its mixing parameters) pairs for gradient accumulation (parts=1: the batch itself)."""
    if parts == 1:
        return [(batch, mixing)]
    chunk = math.ceil(batch.size / parts)
    if isinstance(mixing, MicroBatchMixing):  # one draw per micro-batch already
        return [(batch[start:start + chunk], own) for start, own in zip(range(0, batch.size, chunk), mixing)]
    return [(batch[start:start + chunk], None if mixing is None else mixing[start:start + chunk])
            for start in range(0, batch.size, chunk)]


# --------------------------------------------------------------------------- an epoch's totals


class EpochTotals:
    """An epoch's step sums and the finiteness of its losses, kept on the device, read at logging steps only.

    ``add`` takes each step's sums with device operations alone; ``check`` reads them back
    once (after summing the non-finite flags over the processes) and raises TrainingDiverged
    naming the epoch and the first non-finite step; ``reduced`` sums them over processes.
    """

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(5, dtype=torch.float64, device=device)  # indexed by LOSS ... COUNT
        self.semantic = torch.zeros(SEMANTIC_SIZE, dtype=torch.float64, device=device)  # train_step adds to it
        # 0-based step and mean loss of the first non-finite step on this process (inf: none yet)
        self.first_bad = torch.full((2,), math.inf, dtype=torch.float64, device=device)
        self.steps = 0  # steps added
        self.checked = 0  # steps already checked

    def add(self, sums: torch.Tensor) -> None:
        """Add one step's (5,) sums; remember its step and mean loss if the loss is the first non-finite one."""
        mean = sums[LOSS] / sums[COUNT].clamp_min(1)
        new = ~torch.isfinite(mean) & torch.isinf(self.first_bad[0])
        self.first_bad = torch.where(new, torch.stack([torch.full_like(mean, self.steps), mean]), self.first_bad)
        self.sums += sums
        self.steps += 1

    def check(self, epoch: int, context: DistContext) -> dict:
        """Return {"loss", "top1", "count"} of the steps so far on this process (count: pairs); raise
        TrainingDiverged when a loss since the last check was non-finite on any process (0-based ``epoch``).
        One read of the device."""
        local_bad = torch.isfinite(self.first_bad[:1]).to(torch.float64)  # a first non-finite step was recorded
        any_bad = all_reduce_sum(local_bad.clone(), context)
        values = torch.cat([self.sums, any_bad, local_bad, self.first_bad]).tolist()
        loss, correct, count = values[LOSS], values[CORRECT], values[COUNT]
        bad_anywhere, bad_here, bad_step, bad_loss = values[5:]
        first, last = self.checked + 1, self.steps
        self.checked = self.steps
        if bad_anywhere:
            where = (f" {bad_loss} at epoch {epoch + 1}, step {int(bad_step) + 1}" if bad_here else
                     f" non-finite on another process at epoch {epoch + 1}, in steps {first}-{last}")
            raise TrainingDiverged(f"the training loss became{where}; training stopped and the last good checkpoint "
                                   "was kept (try a lower lr)")
        count = max(count, 1.0)
        return {"loss": loss / count, "top1": 100.0 * correct / count, "count": count}

    def reduced(self, context: DistContext) -> torch.Tensor:
        """Return the (5 + SEMANTIC_SIZE,) sums over every process, on the CPU (read once, at the end of the epoch):
        the step sums, then from SEMANTIC on the semantic-label sums."""
        return all_reduce_sum(torch.cat([self.sums, self.semantic]), context).cpu()


__all__ = [
    "CompiledLoss", "EpochTotals", "StepResult", "TrainingDiverged", "autocast_context", "boxes_tensor",
    "build_optimizer", "compute_step_loss", "cutmix_generator", "draw_cutmix_boxes", "draw_mixing",
    "learning_rate", "loss_parts", "MicroBatchMixing", "step_loss_function", "to_memory_format", "train_step", "uses_semantic_labels"
]
