"""Training engine: one harness for CE, LA, CutMix, BCL and Contrastive CutMix.

Implements the training procedure of Pan et al., "Enhanced Long-Tailed
Recognition with Contrastive CutMix Augmentation" (IEEE TIP 2024), built on
balanced contrastive learning (Zhu et al., CVPR 2022) and logit adjustment
(Menon et al., ICLR 2021). Every method shares the data, the schedule and the
evaluation, so comparisons are fair by construction (DESIGN section 3).

The run folder (config.json, metrics.jsonl, per_class.csv, summary.json,
predictions.npz, last.pt, best.pt) is written by rank 0 only, each file
atomically; re-running ``fit`` on the same folder resumes from last.pt.
"""

from __future__ import annotations

import csv
import inspect
import io
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import ccmix
from ccmix import checkpoint as ckpt
from ccmix.config import PRESETS, PUBLISHED_TOP1, ConfigError, TrainConfig, validate
from ccmix.distributed import (
    ClassifierPath,
    DistContext,
    all_gather_objects,
    all_ranks_true,
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    check_world_size,
    cleanup,
    convert_sync_batchnorm,
    gather_strided_shards,
    gather_with_grad,
    init_distributed,
    main_process_first,
)
from ccmix.io import read_json, read_jsonl, remove_stale_temporaries, write_json, write_jsonl, write_text

# Fields that may change when a run folder is resumed: they do not change what is learned.
RESUMABLE_CHANGES = frozenset({"epochs", "eval_interval", "progress", "num_workers", "device", "max_steps_per_epoch"})
BEST_NOTE = "selected on the test set, optimistic"


class TrainingDiverged(RuntimeError):
    """Raised when the loss stops being finite; the message names the epoch and step."""


# --------------------------------------------------------------------------- schedule


def learning_rate(epoch: int, config: TrainConfig) -> float:
    """Return the learning rate of 0-based ``epoch``: linear warm-up, then step decay or cosine."""
    if epoch < config.warmup_epochs:
        return config.lr * (epoch + 1) / config.warmup_epochs
    if config.schedule == "cosine":
        span = max(1, config.epochs - config.warmup_epochs)
        progress = (epoch - config.warmup_epochs) / span
        return 0.5 * config.lr * (1.0 + math.cos(math.pi * progress))
    decays = sum(1 for milestone in config.milestones if epoch >= milestone)
    return config.lr * config.lr_decay**decays


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Return SGD with momentum and weight decay over every trainable parameter."""
    return torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def seed_for(config: TrainConfig, epoch: int, stream: int) -> int:
    """Return a seed for one random stream of one epoch, so a resumed run draws exactly the same numbers."""
    return (config.seed * 1_000_003 + epoch * 7_919 + stream * 104_729) % (2**63 - 1)


# --------------------------------------------------------------------------- one step


@dataclass
class StepResult:
    """The loss of one step and its parts (detached floats for logging)."""

    loss: torch.Tensor
    loss_ce: float
    loss_bcl: float | None
    correct: int
    count: int


def to_memory_format(images: torch.Tensor, config: TrainConfig | None) -> torch.Tensor:
    """Return ``images`` (N, 3, H, W) in channels_last on CUDA when the config asks for it, else unchanged."""
    if images.device.type == "cuda" and (config is None or config.channels_last):
        return images.contiguous(memory_format=torch.channels_last)
    return images


def compute_step_loss(
    model: torch.nn.Module,
    batch: dict,
    config: TrainConfig,
    epoch: int,
    class_counts: torch.Tensor,
    boxes,
    context: DistContext | None = None,
) -> StepResult:
    """Return the training loss of one batch for ``config.method`` (0-based ``epoch``).

    ``batch`` is a pipeline dict (view0 (b,3,H,W), contrastive (b,2,3,H,W) or None,
    labels (b,), foreground (b,3,H,W) or None, foreground_labels (b,) or None).
    ``boxes`` are this rank's CutMix boxes (``ccmix.cutmix.CutMixBoxes``) or None
    when the batch is not mixed. Non-contrastive methods optimise the
    cross-entropy alone; bcl and concutmix optimise alpha*CE + beta*BCL.
    """
    from ccmix.cutmix import area_labels, kept_fraction, paste
    from ccmix.losses import balanced_contrastive_loss, logit_adjusted_ce, semantic_label

    context = context or DistContext()
    view0, labels = batch["view0"], batch["labels"]
    size, height, width = view0.shape[0], view0.shape[-2], view0.shape[-1]
    num_classes = class_counts.numel()
    target = labels
    if boxes is not None:
        view0 = paste(view0, batch["foreground"], boxes)
        lam = kept_fraction(boxes, height, width).to(view0.device)
        target = area_labels(labels, batch["foreground_labels"], lam, num_classes)
    tau = config.tau if config.uses_logit_adjustment else 0.0
    loss_bcl = None
    if config.uses_contrastive:
        views = batch["contrastive"]
        inputs = torch.cat([view0, views[:, 0], views[:, 1]], dim=0)  # BatchNorm sees all 3b images
        output = model(to_memory_format(inputs, config))
        logits = output.logits[:size].float()
        embedding = output.embedding[size:].float().view(2, size, -1).transpose(0, 1)  # (b, 2, D)
        all_embedding = gather_with_grad(embedding.contiguous(), context)
        all_labels = gather_with_grad(labels, context) if context.enabled else labels
        loss_bcl = balanced_contrastive_loss(
            all_embedding, output.centers.float(), all_labels, temperature=config.temperature
        )
        if boxes is not None and config.method == "concutmix" and epoch >= config.l_d_warm:
            target = semantic_label(
                output.embedding_raw[:size].float(), output.centers_raw.float(), target, class_counts,
                topk=config.topk, omega=config.omega,
            )
    else:
        logits = _classify(model, to_memory_format(view0, config)).float()
    loss_ce = logit_adjusted_ce(logits, target, class_counts, tau)
    if config.uses_contrastive:
        loss = config.alpha * loss_ce + config.beta * loss_bcl
    else:
        loss = loss_ce
    with torch.no_grad():
        correct = int((logits.argmax(dim=1) == labels).sum())
    return StepResult(
        loss=loss, loss_ce=float(loss_ce.detach()),
        loss_bcl=None if loss_bcl is None else float(loss_bcl.detach()), correct=correct, count=size,
    )


def _classify(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    if hasattr(model, "module"):
        # DDP over ClassifierPath (see wrap_for_training): the cheap path, with gradients synchronised
        output = model(images)
        return output.logits if hasattr(output, "logits") else output
    return model.classify(images)


def synchronise_batchnorm(model: torch.nn.Module, config: TrainConfig,
                          context: DistContext) -> tuple[torch.nn.Module, bool]:
    """Return (model, whether its BatchNorm statistics are global): synchronised when several processes train
    and ``config.sync_bn`` is True or None (the default); per-rank otherwise."""
    sync_bn = context.enabled and (config.sync_bn if config.sync_bn is not None else True)
    if sync_bn:
        # The centre head normalises the same C classifier rows on every rank, so its batch statistics are
        # already global; syncing it would only change its running-variance correction.
        model = convert_sync_batchnorm(model, context.device, exclude=("center_head",))
    return model, sync_bn


def wrap_for_training(model: torch.nn.Module, config: TrainConfig, context: DistContext,
                      sync_bn: bool = True) -> torch.nn.Module:
    """Return the module the training steps call: ``model`` itself, or DistributedDataParallel when distributed.

    ce, la and cutmix never touch the projection and centre heads, so DDP wraps only
    their classify path (``ClassifierPath``) and need not look for unused parameters.
    With synchronised BatchNorm every rank already holds the same running statistics,
    so DDP does not broadcast buffers before each forward.
    """
    if not context.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    module = model if config.uses_contrastive else ClassifierPath(model)
    options = dict(device_ids=[context.device.index] if context.device.type == "cuda" else None,
                   gradient_as_bucket_view=True)
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
        options["forward_sync_buffers"] = not sync_bn
    else:  # torch before forward_sync_buffers
        options["broadcast_buffers"] = not sync_bn
    return DistributedDataParallel(module, **options)


def draw_cutmix_boxes(config: TrainConfig, generator: torch.Generator, global_batch: int, height: int, width: int,
                      context: DistContext):
    """Return this rank's CutMix boxes for one step, or None when the step is not mixed.

    Drawn for the whole global batch from a generator every rank seeds alike, then
    sliced by rank, so the mixing does not depend on the number of processes.
    """
    from ccmix.cutmix import CutMixBoxes, sample_boxes

    if not config.uses_cutmix:
        return None
    if config.cutmix_per_sample:
        boxes = sample_boxes(global_batch, height, width, alpha=config.cutmix_alpha, per_sample=True,
                             generator=generator)
        apply = torch.rand(global_batch, generator=generator) < config.cutmix_prob
        # An unmixed image gets an empty box: it keeps all of its pixels and its hard label.
        boxes = CutMixBoxes(top=boxes.top, left=boxes.left, bottom=torch.where(apply, boxes.bottom, boxes.top),
                            right=boxes.right)
    else:
        if float(torch.rand(1, generator=generator)) >= config.cutmix_prob:
            return None
        boxes = sample_boxes(global_batch, height, width, alpha=config.cutmix_alpha, per_sample=False,
                             generator=generator)
    return boxes[context.rank::context.world_size]


# --------------------------------------------------------------------------- epochs


def autocast_context(device: torch.device, config: TrainConfig):
    """Return bf16 autocast on CUDA when ``config.amp``, else a no-op context."""
    if device.type == "cuda" and config.amp:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def train_one_epoch(model, pipeline, optimizer, config: TrainConfig, epoch: int, class_counts: torch.Tensor,
                    device: torch.device, context: DistContext | None = None, progress: bool = True) -> dict:
    """Train one epoch (0-based) and return its mean losses, train top-1 (%) and samples/s."""
    context = context or DistContext()
    model.train()
    lr = learning_rate(epoch, config)
    for group in optimizer.param_groups:
        group["lr"] = lr
    box_generator = torch.Generator().manual_seed(seed_for(config, epoch, stream=2))
    totals = torch.zeros(5, dtype=torch.float64)  # loss sum, ce sum, bcl sum, correct, count
    steps = pipeline.steps_per_epoch
    started = time.perf_counter()
    bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
               disable=not (progress and context.is_main))
    accumulation = config.grad_accum_steps
    for step, batch in enumerate(pipeline.batches(epoch, rank=context.rank, world_size=context.world_size)):
        if step >= steps:
            break
        height, width = batch["view0"].shape[-2:]
        boxes = draw_cutmix_boxes(config, box_generator, batch["view0"].shape[0] * context.world_size,
                                  height, width, context)
        optimizer.zero_grad(set_to_none=True)
        parts = list(_split_batch(batch, boxes, accumulation))
        for index, (micro_batch, micro_boxes) in enumerate(parts):
            with autocast_context(device, config):
                result = compute_step_loss(model, micro_batch, config, epoch, class_counts, micro_boxes, context)
            # decided by all ranks together, so no rank waits in a collective for one that stopped
            if not all_ranks_true(torch.isfinite(result.loss.detach()), context):
                where = "" if torch.isfinite(result.loss.detach()) else f" {float(result.loss.detach())}"
                raise TrainingDiverged(
                    f"the training loss became{where or ' non-finite on another process'} at epoch {epoch + 1}, "
                    f"step {step + 1}; training stopped and the last good checkpoint was kept (try a lower lr)"
                )
            # DDP all-reduces gradients only after the last micro-batch of a step
            no_sync = getattr(model, "no_sync", None) if context.enabled and index < len(parts) - 1 else None
            with no_sync() if no_sync is not None else nullcontext():
                (result.loss / accumulation).backward()
            totals += torch.tensor([float(result.loss.detach()) * result.count, result.loss_ce * result.count,
                                    (result.loss_bcl or 0.0) * result.count, result.correct, result.count],
                                   dtype=torch.float64)
        optimizer.step()
        bar.update(1)
        bar.set_postfix(loss=f"{totals[0] / max(totals[4], 1):.3f}", acc=f"{100 * totals[3] / max(totals[4], 1):.1f}")
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    totals = all_reduce_sum(totals.to(device), context).cpu() if context.enabled else totals
    count = max(float(totals[4]), 1.0)
    return {
        "lr": lr,
        "loss": float(totals[0]) / count,
        "loss_ce": float(totals[1]) / count,
        "loss_bcl": float(totals[2]) / count if config.uses_contrastive else None,
        "train_top1": 100.0 * float(totals[3]) / count,
        "train_seconds": seconds,
        "samples_per_second": float(totals[4]) / seconds if seconds > 0 else None,
    }


def _split_batch(batch: dict, boxes, parts: int):
    """Yield (micro_batch, micro_boxes) pairs for gradient accumulation (parts=1: the batch itself)."""
    if parts == 1:
        yield batch, boxes
        return
    size = batch["view0"].shape[0]
    chunk = math.ceil(size / parts)
    for start in range(0, size, chunk):
        piece = slice(start, start + chunk)
        micro = {key: (value[piece] if torch.is_tensor(value) else value) for key, value in batch.items()}
        yield micro, None if boxes is None else boxes[piece]


@torch.no_grad()
def predict(model, loader, device: torch.device, config: TrainConfig | None = None, with_embedding: bool = False,
            max_items: int | None = None) -> dict:
    """Return test predictions as numpy arrays: preds, labels (and features, embedding when asked)."""
    model.eval()
    inner = model.module if hasattr(model, "module") else model
    preds, labels, features, embeddings = [], [], [], []
    seen = 0
    for images, targets in loader:
        images = to_memory_format(images.to(device, non_blocking=True), config)
        with autocast_context(device, config) if config is not None else nullcontext():
            if with_embedding:
                output = inner(images)
                features.append(output.features.float().cpu())
                embeddings.append(output.embedding.float().cpu())
                logits = output.logits
            else:
                logits = inner.classify(images)
        preds.append(logits.argmax(dim=1).cpu())
        labels.append(torch.as_tensor(targets))
        seen += len(images)
        if max_items is not None and seen >= max_items:
            break
    result = {"preds": torch.cat(preds).numpy(), "labels": torch.cat(labels).numpy()}
    if with_embedding:
        result["features"] = torch.cat(features).numpy()
        result["embedding"] = torch.cat(embeddings).numpy()
    if max_items is not None:
        result = {key: value[:max_items] for key, value in result.items()}
    return result


def evaluate(model, loader, device: torch.device, train_counts, config: TrainConfig) -> dict:
    """Return shot_accuracy metrics (percent) on ``loader`` plus the raw preds and labels."""
    from ccmix.metrics import shot_accuracy

    predictions = predict(model, loader, device, config)
    metrics = shot_accuracy(predictions["preds"], predictions["labels"], train_counts,
                            many=config.many_threshold, few=config.few_threshold)
    metrics.update(predictions)
    return metrics


def build_test_loader(test, config: TrainConfig, device: torch.device, context: DistContext | None = None):
    """Return a DataLoader over the test set (sharded by rank when distributed)."""
    sampler = None
    if context is not None and context.enabled:
        indices = list(range(context.rank, len(test), context.world_size))
        sampler = indices
    return torch.utils.data.DataLoader(
        test, batch_size=max(256, config.batch_size), shuffle=False, sampler=sampler,
        num_workers=config.num_workers, pin_memory=device.type == "cuda",
    )


# --------------------------------------------------------------------------- run folder


def model_description(config: TrainConfig, num_classes: int) -> str:
    """Return how a model is described in checkpoint mismatch messages."""
    return ckpt.describe_model(config.to_dict(), num_classes)


def build_run_model(config: TrainConfig, num_classes: int) -> torch.nn.Module:
    """Return the model of ``config`` for ``num_classes`` classes, freshly initialised from ``config.seed``."""
    from ccmix.models import build_model

    torch.manual_seed(config.seed)
    return build_model(config.arch, num_classes, feat_dim=config.feat_dim, classifier=config.classifier,
                       cosine_scale=config.cosine_scale)


def _rng_state() -> dict:
    numpy_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *map(float, numpy_state[2:])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng_state(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), int(position), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        # a run may resume on a machine with another number of GPUs than the one that saved it
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), index)


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def _resumed_history(payload: dict, metrics_path: Path) -> list[dict]:
    """Return the metric lines of epochs 1..payload['epoch']: the checkpoint's own copy, else metrics.jsonl's."""
    epochs = int(payload["epoch"])
    history = payload.get("history")
    if history is None:
        history = [r for r in read_jsonl(metrics_path) if r["epoch"] <= epochs]
    if [r["epoch"] for r in history] != list(range(1, epochs + 1)):
        raise ckpt.CheckpointError(
            f"the metric history of {str(metrics_path.parent)!r} does not cover epochs 1..{epochs} of its checkpoint"
        )
    return list(history)


def _check_finite_state(model: torch.nn.Module, epoch: int, steps: int) -> None:
    """Raise TrainingDiverged when a parameter or buffer of ``model`` holds inf or nan after 0-based ``epoch``."""
    for name, value in model.state_dict().items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise TrainingDiverged(
                f"the model's {name} became non-finite at epoch {epoch + 1}, step {steps}; training stopped "
                "and the last good checkpoint was kept (try a lower lr)"
            )


def write_per_class(path: Path, metrics: dict, class_names, train_counts, config: TrainConfig) -> None:
    """Write per_class.csv (class, train count, many/medium/few group, test count, accuracy %) atomically."""
    from ccmix.metrics import shot_groups

    groups = shot_groups(train_counts, many=config.many_threshold, few=config.few_threshold)
    test_counts = np.bincount(metrics["labels"], minlength=len(train_counts))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["class_index", "class_name", "train_count", "group", "test_count", "accuracy"])
    for index, (name, count, group) in enumerate(zip(class_names, train_counts, groups)):
        accuracy = metrics["per_class"][index]
        writer.writerow([index, name, count, group, int(test_counts[index]),
                         "" if accuracy is None else f"{accuracy:.4f}"])
    write_text(path, buffer.getvalue())


def _shot_record(metrics: dict | None, epoch: int | None) -> dict:
    keys = ("top1", "many", "medium", "few")
    if metrics is None:
        return {"epoch": epoch, **{key: None for key in keys}}
    return {"epoch": epoch, **{key: metrics.get(key) for key in keys}}


# Fields that do not change what is learned: a run differing only in these still matches its preset.
NON_LEARNING_FIELDS = frozenset({"num_workers", "progress", "device", "eval_interval", "pipeline", "amp",
                                 "channels_last", "compile", "deterministic", "data_root"})


def matches_preset(config: TrainConfig, name: str | None) -> bool:
    """True when ``config`` equals preset ``name`` in every field that changes what is learned."""
    if name not in PRESETS:
        return False
    reference = PRESETS[name].to_dict()
    return all(value == reference[key] for key, value in config.to_dict().items() if key not in NON_LEARNING_FIELDS)


def _preset_name(config: TrainConfig, preset: str | None) -> str | None:
    if preset is not None:
        return preset
    return next((name for name in PRESETS if matches_preset(config, name)), None)


def _check_resume_compatible(saved: dict, config: TrainConfig, path: Path) -> None:
    requested = config.to_dict()
    for key, value in requested.items():
        if key in RESUMABLE_CHANGES or key not in saved:
            continue
        if saved[key] != value:
            raise ConfigError(
                f"out_dir already holds a run trained with {key}={saved[key]!r} (in {str(path)!r}), not "
                f"{key}={value!r}; use a new out_dir or the same settings to resume"
            )


def load_run_config(run_dir: str | os.PathLike) -> TrainConfig:
    """Return the TrainConfig recorded in a run folder's config.json."""
    data = read_json(Path(run_dir) / "config.json")
    known = set(TrainConfig().to_dict())
    return TrainConfig.from_dict({key: value for key, value in data.items() if key in known})


def load_model(checkpoint_path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Return (model in eval mode, TrainConfig) restored from a checkpoint file."""
    payload = ckpt.load_checkpoint(checkpoint_path)
    config = TrainConfig.from_dict(payload["config"])
    num_classes = int(payload["num_classes"])
    model = build_run_model(config, num_classes)
    ckpt.load_model_state(model, payload, checkpoint_path, model_description(config, num_classes),
                          num_classes=num_classes, arch=config.arch)
    return model.to(device).eval(), config


def embed_test_set(run_dir: str | os.PathLike, checkpoint: str = "last.pt", max_items: int | None = None,
                   device: str = "cpu") -> dict:
    """Return test features, embedding, labels and preds (numpy) of a run's checkpoint."""
    from ccmix.data import build_datasets

    model, config = load_model(Path(run_dir) / checkpoint, device=device)
    config = config.replace(num_workers=0)
    _, test = build_datasets(config)
    loader = build_test_loader(test, config, torch.device(device))
    return predict(model, loader, torch.device(device), config, with_embedding=True, max_items=max_items)


def evaluate_checkpoint(checkpoint_path: str | os.PathLike, overrides: dict | None = None) -> dict:
    """Return the test metrics of a checkpoint (JSON-ready) and write them beside it as <name>.eval.json."""
    from ccmix.config import apply_overrides
    from ccmix.data import build_datasets

    payload = ckpt.load_checkpoint(checkpoint_path)
    config = TrainConfig.from_dict(payload["config"])
    if overrides:
        config = apply_overrides(config, overrides)
    validate(config)
    context = DistContext(device=_single_device(config))
    num_classes = int(payload["num_classes"])
    if config.dataset == "synthetic" and config.num_classes != num_classes:  # known before any image is built
        _class_count_mismatch(checkpoint_path, payload, config.num_classes)
    model = build_run_model(config, num_classes)
    ckpt.load_model_state(model, payload, checkpoint_path, model_description(config, num_classes),
                          num_classes=num_classes, arch=config.arch)
    model.to(context.device)
    train, test = build_datasets(config)
    if len(train.class_counts) != num_classes:
        _class_count_mismatch(checkpoint_path, payload, len(train.class_counts))
    metrics = evaluate(model, build_test_loader(test, config, context.device), context.device,
                       train.class_counts, config)
    result = {key: metrics[key] for key in ("top1", "many", "medium", "few", "per_class")}
    result.update(checkpoint=str(checkpoint_path), epoch=int(payload["epoch"]), test_images=int(len(test)))
    write_json(Path(checkpoint_path).with_suffix(".eval.json"), result)
    return result


def _class_count_mismatch(checkpoint_path, payload: dict, dataset_classes: int) -> None:
    raise ckpt.CheckpointError(
        f"checkpoint {str(checkpoint_path)!r} holds a model of {int(payload['num_classes'])} classes and the "
        f"dataset it is evaluated on has {dataset_classes}; evaluate it on the dataset it was trained on"
    )


def _single_device(config: TrainConfig) -> torch.device:
    from ccmix.distributed import resolve_device

    try:
        return resolve_device(config.device)
    except ValueError as error:
        raise ConfigError(str(error)) from None


# --------------------------------------------------------------------------- fit


def fit(config: TrainConfig, out_dir: str | os.PathLike, preset: str | None = None) -> dict:
    """Train ``config`` into the run folder ``out_dir`` (resuming when it holds last.pt) and return the summary."""
    from ccmix.data import build_datasets, build_train_pipeline

    config = validate(config)
    out = Path(out_dir)
    try:
        context = init_distributed(config.device)
    except ValueError as error:  # device=cuda on a machine without CUDA
        raise ConfigError(str(error)) from None
    device = context.device
    try:
        if context.enabled:
            try:
                check_world_size(config.batch_size, config.grad_accum_steps, context.world_size)
            except ValueError as error:
                raise ConfigError(str(error)) from None
        if config.deterministic and device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.manual_seed(config.seed)
        np.random.seed(config.seed % (2**32))
        random.seed(config.seed)
        with main_process_first(context):  # a download or cache is written once, by rank 0
            train, test = build_datasets(config)
        if context.enabled and len(train) < config.batch_size and len(train) % (
                context.world_size * config.grad_accum_steps):
            raise ConfigError(
                f"batch_size={config.batch_size} is not accepted with {context.world_size} processes: it exceeds the "
                f"{len(train)} training images, so each step's global batch is all {len(train)} of them, which does "
                f"not split evenly; use a batch_size <= {len(train)}"
            )
        class_counts = torch.tensor(train.class_counts, dtype=torch.float32, device=device)
        num_classes = len(train.class_counts)
        model = build_run_model(config, num_classes).to(device)
        if device.type == "cuda" and config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        model, sync_bn = synchronise_batchnorm(model, config, context)
        optimizer = build_optimizer(model, config)
        description = model_description(config, num_classes)

        start_epoch, best, history, rng_state = 0, None, [], None
        if context.is_main:
            remove_stale_temporaries(out)  # half-written files of a run killed while saving
        # loaded on the CPU: generator states must stay CPU byte tensors; load_state_dict moves the rest
        resumed = ckpt.load_resume_checkpoint(out, map_location="cpu", set_aside_damaged=context.is_main)
        if resumed is not None:
            payload, path = resumed
            _check_resume_compatible(payload["config"], config, path)
            ckpt.load_model_state(model, payload, path, description, num_classes=num_classes, arch=config.arch)
            optimizer.load_state_dict(payload["optimizer"])
            start_epoch = int(payload["epoch"])
            best = payload.get("best")
            rng_state = payload["rng"]  # restored just before the first epoch, after everything set-up draws
            history = _resumed_history(payload, out / "metrics.jsonl")
            if context.is_main and config.progress:
                tqdm.write(f"resuming {str(out)!r} from {path.name} after epoch {start_epoch} of {config.epochs}")
        if context.enabled:
            starts = all_gather_objects(start_epoch, context)
            if len(set(starts)) > 1:
                raise ckpt.CheckpointError(
                    f"the processes found different checkpoints in {str(out)!r} (epochs completed per rank: {starts}); "
                    "the run folder must be on a filesystem that every node shares"
                )

        training_model = wrap_for_training(model, config, context, sync_bn=sync_bn)
        if config.compile:
            training_model = _try_compile(training_model)

        pipeline = build_train_pipeline(train, config, device)
        test_loader = build_test_loader(test, config, device, context)
        class_names = list(train.classes)
        preset_name = _preset_name(config, preset)
        if context.is_main:
            run_info = dict(config.to_dict(), preset=preset_name, world_size=context.world_size,
                            num_classes=num_classes, class_names=class_names,
                            train_class_counts=list(map(int, train.class_counts)), ccmix_version=ccmix.__version__)
            write_json(out / "config.json", run_info)
            write_jsonl(out / "metrics.jsonl", history)

        summary_base = dict(
            method=config.method, dataset=config.dataset, imb=config.imb, seed=config.seed, preset=preset_name,
            published_top1=PUBLISHED_TOP1.get(preset_name) if matches_preset(config, preset_name) else None,
            epochs=config.epochs,
            world_size=context.world_size, num_classes=num_classes, train_images=len(train), test_images=len(test),
        )
        last_metrics = None
        train_seconds = sum(r.get("seconds", 0.0) for r in history)
        if rng_state is not None:
            _restore_rng_state(rng_state)  # the generators stand exactly where the saved run's stood
        epochs_bar = tqdm(range(start_epoch, config.epochs), desc="training", initial=start_epoch,
                          total=config.epochs, disable=not (config.progress and context.is_main))
        epoch = start_epoch
        try:
            for epoch in epochs_bar:
                started = time.perf_counter()
                record = train_one_epoch(training_model, pipeline, optimizer, config, epoch, class_counts, device,
                                         context, progress=config.progress)
                _check_finite_state(model, epoch, pipeline.steps_per_epoch)  # never checkpoint broken weights
                is_last = epoch + 1 == config.epochs
                metrics = None
                if is_last or (epoch + 1) % config.eval_interval == 0:
                    metrics = _evaluate_distributed(model, test_loader, device, train.class_counts, config, context)
                    last_metrics = metrics
                seconds = time.perf_counter() - started
                train_seconds += seconds
                line = {"epoch": epoch + 1, **{k: v for k, v in record.items() if k != "train_seconds"},
                        "seconds": seconds, **{k: v for k, v in _shot_record(metrics, None).items() if k != "epoch"}}
                history.append(line)
                improved = metrics is not None and (best is None or metrics["top1"] > best["top1"])
                if improved:
                    best = _shot_record(metrics, epoch + 1)
                if context.is_main:
                    # No scheduler state: the learning rate is a pure function of the epoch (learning_rate).
                    # Samplers, views and CutMix boxes draw from generators seeded by (seed, epoch), so the
                    # global generators in "rng" are all the random state there is.
                    payload = {
                        "config": config.to_dict(), "epoch": epoch + 1, "num_classes": num_classes,
                        "model_description": description, "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(), "best": best, "rng": _rng_state(),
                        "class_counts": list(map(int, train.class_counts)), "world_size": context.world_size,
                        "history": history, "train_seconds": train_seconds,
                    }
                    # metrics first, best.pt before last.pt: a kill between two writes leaves last.pt
                    # behind the others, and resuming from it rewrites them identically
                    write_jsonl(out / "metrics.jsonl", history)
                    if improved:
                        ckpt.save_checkpoint(out / ckpt.BEST, payload)
                    ckpt.save_checkpoint(out / ckpt.LAST, payload, keep_previous=True)
                    write_json(out / "summary.json", dict(
                        summary_base, status="running", error=None, epochs_completed=epoch + 1,
                        final=_shot_record(None, None), best=dict(best or _shot_record(None, None), note=BEST_NOTE),
                        train_seconds=train_seconds,
                    ))
                if metrics is not None:
                    epochs_bar.set_postfix(top1=f"{metrics['top1']:.2f}", best=f"{best['top1']:.2f}")
                barrier(context)
        except TrainingDiverged as error:
            kept = f"{ckpt.LAST} holds epoch {epoch}" if epoch > 0 else "no epoch completed, so no checkpoint was written"
            message = f"{error}; {kept}"
            if context.is_main:
                write_jsonl(out / "metrics.jsonl", history)
                summary = dict(summary_base, status="failed", error=message, epochs_completed=epoch,
                               final=_shot_record(None, None), best=dict(best or _shot_record(None, None),
                                                                         note=BEST_NOTE),
                               train_seconds=train_seconds)
                write_json(out / "summary.json", summary)
            raise TrainingDiverged(message) from None
        finally:
            epochs_bar.close()

        if last_metrics is None:  # resumed a run whose last epoch was already trained: evaluate it again
            last_metrics = _evaluate_distributed(model, test_loader, device, train.class_counts, config, context)
        summary = dict(
            summary_base, status="completed", error=None, epochs_completed=config.epochs,
            final=_shot_record(last_metrics, config.epochs),
            best=dict(best or _shot_record(last_metrics, config.epochs), note=BEST_NOTE),
            train_seconds=train_seconds,
        )
        if context.is_main:
            write_per_class(out / "per_class.csv", last_metrics, class_names, train.class_counts, config)
            _write_predictions(out / "predictions.npz", last_metrics)
            write_json(out / "summary.json", summary)
        barrier(context)
        return summary
    finally:
        cleanup(context)


def _evaluate_distributed(model, loader, device, train_counts, config: TrainConfig, context: DistContext) -> dict:
    """Return evaluate()'s metrics; under several processes each rank predicts its shard (test images r::W)
    and the shards are merged back into test-set order, so predictions.npz does not depend on the world size."""
    if not context.enabled:
        return evaluate(model, loader, device, train_counts, config)
    from ccmix.metrics import shot_accuracy

    broadcast_buffers(model, context)  # every shard is predicted by the model rank 0 checkpoints
    local = predict(model, loader, device, config)
    pairs = np.stack([local["preds"], local["labels"]], axis=1).astype(np.int64)  # (shard, 2)
    merged = gather_strided_shards(pairs, len(loader.dataset), context)
    preds, labels = merged[:, 0], merged[:, 1]
    metrics = shot_accuracy(preds, labels, train_counts, many=config.many_threshold, few=config.few_threshold)
    metrics.update(preds=preds, labels=labels)
    return metrics


def _write_predictions(path: Path, metrics: dict) -> None:
    from ccmix.io import atomic_write

    atomic_write(path, lambda handle: np.savez(handle, preds=np.asarray(metrics["preds"], dtype=np.int64),
                                                labels=np.asarray(metrics["labels"], dtype=np.int64)))


def _try_compile(model: torch.nn.Module) -> torch.nn.Module:
    """Return torch.compile(model), or the model itself with a warning when compilation is unavailable."""
    import warnings

    try:
        return torch.compile(model)
    except Exception as error:  # compile support varies by platform; training works without it
        warnings.warn(f"torch.compile is unavailable here ({error}); training without it", stacklevel=2)
        return model


__all__ = [
    "fit", "train_one_epoch", "evaluate", "predict", "learning_rate", "compute_step_loss", "load_run_config",
    "load_model", "embed_test_set", "evaluate_checkpoint", "TrainingDiverged",
]
