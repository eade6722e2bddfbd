"""Checking config values before any data is read, and parsing them from front ends.

Part of the configuration of Contrastive CutMix runs (Pan et al., "Enhanced
Long-Tailed Recognition with Contrastive CutMix Augmentation", IEEE TIP 2024;
``docs/method.md``). Every bad value becomes one :class:`~ccmix.config.rules.ConfigError`
whose sentence names the parameter, the value and what is accepted: ``--set`` text,
notebook overrides, front-end parameters and whole configs. Every name here is also
importable from :mod:`ccmix.config.fields`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from ccmix.config.fields import (
    LIST_DATASETS,
    TrainConfig,
    check_field_names,
    eval_splits_of,
    field_names,
    field_rule,
    list_files,
)
from ccmix.config.presets import preset
from ccmix.config.rules import ConfigError, Rule

# --------------------------------------------------------------------------- overrides


def parse_value(key: str, text: str):
    """Return ``text`` parsed to the type of config field ``key``; ConfigError when it does not parse."""
    check_field_names({key: text})
    return field_rule(key).parse(key, text)


def apply_overrides(config: TrainConfig, overrides: Mapping, source: str = "") -> TrainConfig:
    """Return a copy of ``config`` with ``overrides`` applied; text is parsed and numbers converted to the field's
    type, and each value is checked against its field (``source`` starts the error sentence, e.g. "overrides")."""
    check_field_names(overrides, source=f"{source} key" if source else "parameter")
    changes = {key: field_rule(key).coerce(key, value, source=source) for key, value in overrides.items()}
    return dataclasses.replace(config, **changes)


def parse_set_arguments(items: list[str]) -> dict:
    """Return ``{key: parsed value}`` from ``--set key=value`` strings."""
    parsed = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        parsed[key.strip()] = parse_value(key.strip(), text)
    return parsed


# --------------------------------------------------------------------------- validation


def check_parameter(name: str, value, *, like: str | None = None, source: str = "parameter", **rule):
    """Return ``value`` converted and checked for a front-end parameter; ConfigError (one sentence) otherwise.

    ``like`` names the config field whose rule applies (default: ``name`` when it is a field); otherwise
    ``rule`` gives the :class:`Rule` fields (kind, minimum, optional, none_means, ...). Rule fields given
    with ``like`` refine the field's rule (e.g. ``optional=True, none_means="the preset's"``).
    """
    field = like or (name if name in field_names() else None)
    base = dataclasses.replace(field_rule(field), **rule) if field else Rule(**rule)
    return base.coerce(name, value, source=source)


def validate(config: TrainConfig) -> TrainConfig:
    """Return ``config`` unchanged when every value is accepted; raise ConfigError naming the first bad one.

    Only cheap checks (no image is read): every field against its rule (type, choices, range, finite),
    then the relations between fields, the data paths of folder and list datasets, and top-k.
    """
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"config={config!r} is not accepted; give a ccmix.config.fields.TrainConfig")
    for name in field_names():
        field_rule(name).check(name, getattr(config, name))
    if config.batch_size % config.grad_accum_steps:
        raise ConfigError(field="grad_accum_steps", value=config.grad_accum_steps,
                          accepted=f"a divisor of batch_size={config.batch_size}")
    _validate_bn_chunks(config)
    if config.few_threshold > config.many_threshold:
        raise ConfigError(field="few_threshold", value=config.few_threshold,
                          accepted=f"an integer <= many_threshold={config.many_threshold}")
    if config.contrastive_views != "sim-sim" and config.resolved_view_recipe != "imagenet":
        raise ConfigError(field="contrastive_views", value=config.contrastive_views,
                          detail=f"sim-rand and randstack add the 224-pixel RandAugment and are defined for the imagenet "
                                 f"recipe only, and the recipe is {config.resolved_view_recipe!r}; use sim-sim")
    splits = eval_splits_of(config.dataset)
    if config.eval_split not in splits:
        raise ConfigError(field="eval_split", value=config.eval_split,
                          accepted=f"{' or '.join(splits)} for dataset {config.dataset!r}, the "
                                   f"{'only split' if len(splits) == 1 else 'splits'} it has")
    _validate_paths(config)
    num_classes = config.num_classes
    if config.topk > num_classes:
        raise ConfigError(field="topk", value=config.topk,
                          accepted=f"an integer in 1..{num_classes} (the number of classes)")
    _validate_footprint(config, num_classes)
    return config


def _validate_bn_chunks(config: TrainConfig) -> None:
    if config.bn_chunks == 1:
        return
    if config.sync_bn:
        raise ConfigError(field="bn_chunks", value=config.bn_chunks,
                          detail="with sync_bn=True BatchNorm normalises every process's batch at once, so it cannot "
                                 "also split it into chunks: set sync_bn=False (or leave it unset) or bn_chunks=1")
    # One forward per micro-batch: three views each for the contrastive methods, view 0 alone otherwise.
    images = (3 if config.uses_contrastive else 1) * config.batch_size // config.grad_accum_steps
    step = -(-images // config.bn_chunks)  # torch.chunk's chunk size; the last chunk holds what is left
    smallest = images - (-(-images // step) - 1) * step
    if smallest < 2:
        raise ConfigError(field="bn_chunks", value=config.bn_chunks,
                          detail=f"each forward of {images} images would leave a BatchNorm chunk of {smallest} image, "
                                 f"and BatchNorm needs at least 2; use a smaller bn_chunks or a larger batch_size")


def _validate_paths(config: TrainConfig) -> None:
    if config.pretrained is not None and not os.path.isfile(config.pretrained):
        raise ConfigError(field="pretrained", value=config.pretrained, detail="the file does not exist")
    if config.dataset == "folder":
        for split in ("train", "test"):
            path = os.path.join(config.data_root, split)
            if not os.path.isdir(path):
                raise ConfigError(field="data_root", value=config.data_root, problem="is not accepted for dataset 'folder'",
                                  detail=f"it must hold train/<class>/ and test/<class>/ folders and {path!r} does not exist")
        if config.num_classes < 2:
            raise ConfigError(field="data_root", value=config.data_root, problem="has fewer than 2 class folders under train/",
                              detail="a folder dataset needs at least 2 classes")
    elif config.dataset in LIST_DATASETS:
        if not os.path.isdir(config.data_root):
            raise ConfigError(field="data_root", value=config.data_root,
                              problem=f"is not accepted for dataset {config.dataset!r}", detail="the folder does not exist")
        for name, path in zip(("train_list", "test_list"), list_files(config)):
            if not os.path.isfile(path):
                raise ConfigError(field=name, value=path, detail="the file does not exist")


# A rough ceiling on what one training step may need, summed over every device: beyond it a value is a typo.
MAX_FOOTPRINT_BYTES = 16 * 2**40
_ACTIVATION_BYTES_PER_PIXEL = 2048  # ResNet activations kept for the backward pass, per input pixel and view
_WIDEST_HIDDEN = 2048  # the widest encoder output (ResNet-50 / ResNeXt-50)
_SYNTHETIC_IMAGES_PER_CLASS = 520  # the synthetic dataset's training plus test images of its largest class


def footprint_bytes(config: TrainConfig, num_classes: int | None = None) -> dict[str, float]:
    """Return a rough memory estimate (bytes, all devices together) of one training step, by the field that
    drives it: ``batch_size`` (activations of three views), ``feat_dim`` (projection head and centres, with
    gradients and momentum), ``synthetic_classes`` (the in-memory synthetic images and class weights)."""
    classes = num_classes if num_classes is not None else config.num_classes
    side = 224 if config.resolved_view_recipe == "imagenet" else 32
    activations = config.batch_size * 3 * side * side * _ACTIVATION_BYTES_PER_PIXEL
    head = 4 * 3 * (_WIDEST_HIDDEN * config.feat_dim * 2 + classes * config.feat_dim)
    classes_bytes = 4 * 3 * classes * _WIDEST_HIDDEN
    if config.dataset == "synthetic":
        classes_bytes += classes * _SYNTHETIC_IMAGES_PER_CLASS * side * side * 3
    return {"batch_size": float(activations), "feat_dim": float(head),
            "synthetic_classes" if config.dataset == "synthetic" else "dataset": float(classes_bytes)}


def _validate_footprint(config: TrainConfig, num_classes: int) -> None:
    parts = footprint_bytes(config, num_classes)
    total = sum(parts.values())
    if total <= MAX_FOOTPRINT_BYTES:
        return
    name = max((k for k in parts if k in field_names()), key=parts.__getitem__)
    raise ConfigError(
        field=name, value=getattr(config, name),
        detail=f"a training step would need about {total / 2**40:,.0f} TiB of memory (a rough estimate, mostly "
               f"from {name}), far beyond any machine; the limit is {MAX_FOOTPRINT_BYTES / 2**40:g} TiB",
    )


def resolve(preset_name: str | None = None, overrides: dict | None = None) -> TrainConfig:
    """Return a validated config: the preset (or the defaults) with ``overrides`` applied."""
    config = preset(preset_name) if preset_name else TrainConfig()
    if overrides:
        config = apply_overrides(config, overrides)
    return validate(config)
