"""Evaluation: predictions on the evaluation split, many/medium/few accuracy, checkpoints restored as models.

Every method of Pan et al., "Enhanced Long-Tailed Recognition with Contrastive CutMix
Augmentation" (IEEE TIP 2024) is evaluated alike: top-1 accuracy on the balanced evaluation
set (``eval_split``: a list dataset's val or test list, else the test set) and its many/medium/few-shot groups (train counts > 100, 20..100, < 20 for the
CIFAR-LT convention). Under several processes each rank predicts a strided shard of the
test set and the shards are merged back into test-set order.

The test set reaches the model through a DataLoader of PIL test views (the classic
pipeline) or, with the fast pipeline, as uint8 batches already on the device
(``ccmix.data.pipelines.test_batches``), normalised there to the same values;
``build_test_source`` chooses.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ccmix.config.fields import TrainConfig
from ccmix.config.rules import ConfigError
from ccmix.config.validation import apply_overrides, validate
from ccmix.data.pipelines.build import resolve_pipeline
from ccmix.data.pipelines.test_batches import DeviceTestSource, ResidentTestImages
from ccmix.data.pipelines.workers import EndWithParent
from ccmix.data.views import normalization
from ccmix.io import write_json
from ccmix.method.collectives import DistContext
from ccmix.method.metrics import shot_accuracy
from ccmix.method.step import to_memory_format
from ccmix.train import checkpoint as ckpt
from ccmix.train.distributed import broadcast_buffers, gather_strided_shards, resolve_device

DEVICE_TEST_BATCH = 1024  # images per batch of device-resident evaluation (or batch_size, when larger)


@torch.no_grad()
def predict(model, loader, device: torch.device, config: TrainConfig | None = None, with_embedding: bool = False,
            max_items: int | None = None) -> dict:
    """Return test predictions as numpy arrays: preds, labels (and features, embedding when asked).

    ``loader``: a DataLoader of normalised test views, or a ``DeviceTestSource`` (preds and labels only).
    """
    if isinstance(loader, DeviceTestSource):
        if with_embedding or max_items is not None:
            raise ValueError("device-resident test batches give predictions only; use build_test_loader's "
                             "DataLoader for embeddings or max_items")
        return predict_on_device(model, loader, device, config)
    model.eval()
    inner = model.module if hasattr(model, "module") else model
    preds, labels, features, embeddings = [], [], [], []
    seen = 0
    for images, targets in loader:
        images = to_memory_format(images.to(device, non_blocking=True), config)
        # Always fp32, whatever the training precision or an enclosing autocast: bf16 logits tie, and
        # argmax then favours the lowest class index, a head class.
        with torch.autocast(device_type=device.type, enabled=False):
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


@torch.no_grad()
def predict_on_device(model, source: DeviceTestSource, device: torch.device,
                      config: TrainConfig | None = None) -> dict:
    """Return numpy preds and labels (int64 (n,)) of the rank's shard in ``source``, in test-set order.

    Nothing is read back per batch: predictions and labels gather on the device and cross to the
    host in one transfer at the end. Logits in fp32, as ``predict``.
    """
    model.eval()
    inner = model.module if hasattr(model, "module") else model
    preds, labels = [], []
    for images, targets in source.batches():
        with _full_precision(device):
            logits = inner.classify(to_memory_format(images, config))
        preds.append(logits.argmax(dim=1))
        labels.append(targets)
    if not preds:  # a rank whose shard is empty (fewer test images than processes)
        return {"preds": np.zeros(0, dtype=np.int64), "labels": np.zeros(0, dtype=np.int64)}
    pairs = torch.stack((torch.cat(preds), torch.cat(labels).to(torch.int64)), dim=1).cpu().numpy()  # (n, 2)
    return {"preds": pairs[:, 0].copy(), "labels": pairs[:, 1].copy()}


def _full_precision(device: torch.device):
    """Return a context with autocast off on ``device`` (a no-op where the device type has no autocast)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def evaluate(model, loader, device: torch.device, train_counts, config: TrainConfig) -> dict:
    """Return shot_accuracy metrics (percent) on ``loader`` plus the raw preds and labels."""
    predictions = predict(model, loader, device, config)
    metrics = shot_accuracy(predictions["preds"], predictions["labels"], train_counts,
                            many=config.many_threshold, few=config.few_threshold)
    metrics.update(predictions)
    return metrics


def evaluate_distributed(model, loader, device, train_counts, config: TrainConfig, context: DistContext) -> dict:
    """Return evaluate()'s metrics; under several processes each rank predicts its shard (test images r::W)
    and the shards are merged back into test-set order, so predictions.npz does not depend on the world size."""
    if not context.enabled:
        return evaluate(model, loader, device, train_counts, config)
    broadcast_buffers(model, context)  # every shard is predicted by the model rank 0 checkpoints
    local = predict(model, loader, device, config)
    pairs = np.stack([local["preds"], local["labels"]], axis=1).astype(np.int64)  # (shard, 2)
    total = loader.num_images if isinstance(loader, DeviceTestSource) else len(loader.dataset)
    merged = gather_strided_shards(pairs, total, context)
    preds, labels = merged[:, 0], merged[:, 1]
    metrics = shot_accuracy(preds, labels, train_counts, many=config.many_threshold, few=config.few_threshold)
    metrics.update(preds=preds, labels=labels)
    return metrics


def build_test_loader(test, config: TrainConfig, device: torch.device, context: DistContext | None = None):
    """Return a DataLoader over the test set (sharded by rank when distributed)."""
    sampler = None
    if context is not None and context.enabled:
        sampler = list(range(context.rank, len(test), context.world_size))
    return torch.utils.data.DataLoader(
        test, batch_size=max(256, config.batch_size), shuffle=False, sampler=sampler,
        num_workers=config.num_workers, pin_memory=device.type == "cuda",
        worker_init_fn=EndWithParent() if config.num_workers > 0 else None,  # no orphans after a kill -9
    )


def build_test_source(test, config: TrainConfig, device: torch.device, context: DistContext | None = None):
    """Return what evaluation iterates over the test set: a ``DeviceTestSource`` or the DataLoader.

    With the fast pipeline (``resolve_pipeline``) the CIFAR recipe's test set is decoded here, once,
    into a uint8 tensor on ``device`` (``ResidentTestImages``); the ImageNet recipe decodes per
    evaluation with ``ccmix.data.pipelines.fast_imagenet.imagenet_test_batches`` where that exists.
    Otherwise, and for test images that are not all one size, the DataLoader of ``build_test_loader``.
    Each rank takes the shard ``rank::world_size``, as the DataLoader's sampler does.
    """
    if resolve_pipeline(config.pipeline, device) != "fast":
        return build_test_loader(test, config, device, context)
    rank, world_size = (context.rank, context.world_size) if context is not None and context.enabled else (0, 1)
    batch_size = max(DEVICE_TEST_BATCH, config.batch_size)
    recipe = config.resolved_view_recipe
    if recipe == "cifar":
        try:
            uint8_batches = ResidentTestImages(test, batch_size, device, rank, world_size)
        except ValueError as error:  # images of several sizes do not form one tensor
            warnings.warn(f"the test images do not form one uint8 tensor ({error}); evaluating through the "
                          "DataLoader instead.", UserWarning, stacklevel=2)
            return build_test_loader(test, config, device, context)
    else:
        imagenet_test_batches = _imagenet_test_batches()
        if imagenet_test_batches is None:
            return build_test_loader(test, config, device, context)
        uint8_batches = partial(imagenet_test_batches, test, batch_size, device, rank=rank, world_size=world_size)
    mean, std = normalization(config.dataset, recipe)
    return DeviceTestSource(uint8_batches, len(test), mean, std, device)


def _imagenet_test_batches():
    """Return ``ccmix.data.pipelines.fast_imagenet.imagenet_test_batches``, or None where it does not exist."""
    module = "ccmix.data.pipelines.fast_imagenet"
    try:
        from ccmix.data.pipelines.fast_imagenet import imagenet_test_batches
    except ImportError as error:
        if error.name != module:  # the module exists and fails to import: a fault to show, not a fallback
            raise
        return None
    return imagenet_test_batches


# --------------------------------------------------------------------------- models from configs and checkpoints


def model_description(config: TrainConfig, num_classes: int) -> str:
    """Return how a model is described in checkpoint mismatch messages."""
    return ckpt.describe_model(config.to_dict(), num_classes)


def build_run_model(config: TrainConfig, num_classes: int, with_pretrained: bool = False,
                    processes: int = 1) -> torch.nn.Module:
    """Return the model of ``config`` for ``num_classes`` classes, freshly initialised from ``config.seed``.

    ``with_pretrained``: start the encoder from ``config.pretrained`` (a training run's start;
    a model about to receive a checkpoint's weights does not need the file). With
    ``config.bn_chunks`` k > 1 the BatchNorm layers that see the batch normalise k / ``processes``
    chunks of each process's forward (``ccmix.models.chunked_bn``); the state dict is the same.
    """
    from ccmix.models.bcl import build_model
    from ccmix.models.chunked_bn import chunk_batchnorm

    torch.manual_seed(config.seed)
    model = build_model(config.arch, num_classes, feat_dim=config.feat_dim, classifier=config.classifier,
                        cosine_scale=config.cosine_scale, pretrained=config.pretrained if with_pretrained else None)
    return chunk_batchnorm(model, max(1, config.bn_chunks // processes))


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
    from ccmix.data.datasets import build_datasets

    model, config = load_model(Path(run_dir) / checkpoint, device=device)
    config = config.replace(num_workers=0)
    _, test = build_datasets(config)
    loader = build_test_loader(test, config, torch.device(device))
    return predict(model, loader, torch.device(device), config, with_embedding=True, max_items=max_items)


def evaluate_checkpoint(checkpoint_path: str | os.PathLike, overrides: dict | None = None,
                        write: bool = True, split: str | None = None) -> dict:
    """Return the metrics of a checkpoint (JSON-ready); ``write``: also save them beside it (``eval_result_path``).

    ``split``: ``val`` or ``test``, the split to evaluate on (None: the run's own ``eval_split``);
    another split than the run's is saved in its own file (last.eval.test.json), so the run's
    record is never touched. Keys: top1, many, medium, few (percent), per_class (percent per class,
    None for a class without evaluation images), checkpoint, epoch, test_images (the images
    evaluated), split and run_split (the run's own). A result that cannot be saved (a read-only or
    full disk) is still returned, with an EvalNotSavedWarning saying why.
    """
    from ccmix.data.datasets import build_datasets

    payload = ckpt.load_checkpoint(checkpoint_path)
    config = TrainConfig.from_dict(payload["config"])
    run_split = config.eval_split  # the training record's split, whatever the overrides
    if overrides:
        config = apply_overrides(config, overrides)
    config = _with_split(config, split, overrides or {})
    validate(config)
    device = single_device(config)
    num_classes = int(payload["num_classes"])
    if config.dataset == "synthetic" and config.num_classes != num_classes:  # known before any image is built
        _class_count_mismatch(checkpoint_path, payload, config.num_classes)
    model = build_run_model(config, num_classes)
    ckpt.load_model_state(model, payload, checkpoint_path, model_description(config, num_classes),
                          num_classes=num_classes, arch=config.arch)
    model.to(device)
    train, test = build_datasets(config)
    if len(train.class_counts) != num_classes:
        _class_count_mismatch(checkpoint_path, payload, len(train.class_counts))
    _check_same_data(checkpoint_path, payload, train, test)
    metrics = evaluate(model, build_test_loader(test, config, device), device, train.class_counts, config)
    result = {key: metrics[key] for key in ("top1", "many", "medium", "few", "per_class")}
    result.update(checkpoint=str(checkpoint_path), epoch=int(payload["epoch"]), test_images=int(len(test)),
                  split=config.eval_split, run_split=run_split)
    if write:
        problem = save_eval_result(result, checkpoint_path)
        if problem is not None:
            warnings.warn(problem, EvalNotSavedWarning, stacklevel=2)
    return result


class EvalNotSavedWarning(UserWarning):
    """The metrics of an evaluated checkpoint could not be saved as <name>.eval.json; they were still returned."""


def _with_split(config: TrainConfig, split: str | None, overrides: dict) -> TrainConfig:
    """Return ``config`` evaluating on ``split`` (None: its own); refuse a split that an explicit test_list would
    silently override."""
    if split is None or split == config.eval_split:
        return config
    if config.test_list is not None and "test_list" not in overrides:
        raise ConfigError(field="split", value=split,
                          detail=f"the run evaluates the file test_list={config.test_list!r}, which would be used "
                                 f"again; give --set test_list=PATH, the {split} list to evaluate")
    return config.replace(eval_split=split)


def eval_result_path(checkpoint_path: str | os.PathLike, split: str | None = None) -> Path:
    """Return where the metrics of ``checkpoint_path`` are saved: beside it, last.pt -> last.eval.json for the
    run's own split (``split`` None), last.eval.<split>.json for another split."""
    return Path(checkpoint_path).with_suffix(".eval.json" if split is None else f".eval.{split}.json")


def save_eval_result(result: dict, checkpoint_path: str | os.PathLike) -> str | None:
    """Save ``result`` atomically beside the checkpoint (<name>.eval.json, or <name>.eval.<split>.json when its
    ``split`` is not the run's ``run_split``); return None, or the sentence saying why not.

    Any OSError (read-only filesystem, full disk, no permission) is the sentence: it names
    the file and the system's reason, and warns when an older file of that name, which
    may describe another checkpoint, is left as it was.
    """
    other_split = result.get("split") if result.get("split") != result.get("run_split") else None
    target = eval_result_path(checkpoint_path, other_split)
    try:
        write_json(target, result)
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        older = (f"; the older {target.name} there is left as it was and may describe an earlier checkpoint"
                 if target.exists() else "")
        return f"the metrics were not saved: {str(target)!r} cannot be written ({reason}){older}"
    return None


def _check_same_data(checkpoint_path, payload: dict, train, test) -> None:
    """Refuse (RunFolderConflict) data whose classes, counts or training files differ from the checkpoint's."""
    from ccmix.data.identity import data_identity
    from ccmix.train.conflict import check_data_identity

    check_data_identity(ckpt.saved_identity(payload), data_identity(train, test),
                        f"checkpoint {str(checkpoint_path)!r}", compare_test=False)


def _class_count_mismatch(checkpoint_path, payload: dict, dataset_classes: int) -> None:
    raise ckpt.CheckpointError(
        f"checkpoint {str(checkpoint_path)!r} holds a model of {int(payload['num_classes'])} classes and the "
        f"dataset it is evaluated on has {dataset_classes}; evaluate it on the dataset it was trained on"
    )


def single_device(config: TrainConfig) -> torch.device:
    """Return the one device ``config.device`` names, a bad name raised as ConfigError."""
    try:
        return resolve_device(config.device)
    except ValueError as error:
        raise ConfigError(str(error)) from None


__all__ = ["DEVICE_TEST_BATCH", "EvalNotSavedWarning", "build_run_model", "build_test_loader", "build_test_source",
           "embed_test_set", "eval_result_path", "evaluate", "evaluate_checkpoint", "evaluate_distributed",
           "load_model", "model_description", "predict", "predict_on_device", "save_eval_result", "single_device"]
