"""Every training knob in one dataclass, the published presets, and input validation.

Presets follow the run scripts published with Contrastive CutMix
(Pan et al., "Enhanced Long-Tailed Recognition with Contrastive CutMix
Augmentation", IEEE TIP 2024); see DESIGN section 5.

Validation happens here, before any data is read: every bad value is turned
into one ``ConfigError`` sentence that names the parameter, the value and what
is accepted.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from dataclasses import dataclass, fields

DATASETS = ("cifar10", "cifar100", "folder", "imagenet_lt", "inat2018", "places_lt", "synthetic")
METHODS = ("ce", "la", "cutmix", "bcl", "concutmix")
ARCHS = ("resnet32", "resnet50", "resnext50")
CLASSIFIERS = ("linear", "cosine")
FOREGROUND_SAMPLERS = ("balanced", "reverse", "uniform")
PROFILES = ("exp", "step")
SCHEDULES = ("step", "cosine")
PIPELINES = ("auto", "classic", "fast")
VIEW_RECIPES = ("auto", "cifar", "imagenet")
DEVICES = ("auto", "cpu", "cuda")

# Datasets whose training split is already long-tailed and given by list files.
LIST_DATASETS = ("imagenet_lt", "inat2018", "places_lt")
# Datasets to which the synthetic long-tail profile (imb, imb_profile) applies.
PROFILED_DATASETS = ("cifar10", "cifar100", "folder", "synthetic")
FIXED_NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet_lt": 1000, "inat2018": 8142, "places_lt": 365}
# Standard OLTR split file names, looked up inside data_root when train_list/test_list are unset.
DEFAULT_LIST_FILES = {
    "imagenet_lt": ("ImageNet_LT_train.txt", "ImageNet_LT_test.txt"),
    "inat2018": ("iNaturalist18_train.txt", "iNaturalist18_val.txt"),
    "places_lt": ("Places_LT_train.txt", "Places_LT_test.txt"),
}


class ConfigError(ValueError):
    """A configuration value that is not accepted; the message is one sentence."""


@dataclass
class TrainConfig:
    """Every knob of a ConCutMix run (DESIGN sections 2 and 5); defaults are cifar100_imb100."""

    # --- data ---
    dataset: str = "cifar100"
    data_root: str = "data"
    train_list: str | None = None  # list datasets: path of the `relative/path label` training file
    test_list: str | None = None
    imb: float = 100.0  # N_max / N_min of the long-tail profile (profiled datasets only)
    imb_profile: str = "exp"
    subset_seed: int = 10  # seed of the fixed long-tailed subset (DESIGN section 2)
    synthetic_classes: int = 10
    foreground_sampler: str = "balanced"
    pipeline: str = "auto"  # classic (PIL workers), fast (batched on the device), auto: fast on CUDA
    view_recipe: str = "auto"  # cifar or imagenet augmentation recipe; auto picks from the dataset
    num_workers: int = 2
    # --- model ---
    arch: str = "resnet32"
    feat_dim: int = 128
    classifier: str = "linear"
    cosine_scale: float = 30.0
    # --- method ---
    method: str = "concutmix"
    tau: float = 0.9  # logit-adjustment strength
    alpha: float = 2.0  # weight of the cross-entropy term
    beta: float = 0.6  # weight of the balanced contrastive term
    temperature: float = 0.1
    cutmix_prob: float = 0.5
    cutmix_alpha: float = 1.0  # lambda ~ Beta(cutmix_alpha, cutmix_alpha)
    cutmix_per_sample: bool = False  # one box per image instead of one per batch (the reference)
    topk: int = 30
    omega: float = 20 / 255  # the preset's scaling factor a / b
    l_d_warm: int = 100  # epochs with area labels before semantic labels start
    # --- optimisation ---
    epochs: int = 200
    batch_size: int = 256  # global batch (all devices together)
    grad_accum_steps: int = 1
    lr: float = 0.15
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 5
    schedule: str = "step"
    milestones: tuple[int, ...] = (160, 180)
    lr_decay: float = 0.1
    # --- run ---
    seed: int = 0
    device: str = "auto"
    eval_interval: int = 1
    many_threshold: int = 100  # classes with more training images are "many-shot"
    few_threshold: int = 20  # classes with fewer training images are "few-shot"
    amp: bool = True  # bf16 autocast, CUDA only
    channels_last: bool = True  # CUDA only
    compile: bool = False
    deterministic: bool = True
    sync_bn: bool | None = None  # None: on when more than one process trains
    max_steps_per_epoch: int | None = None  # cap for smoke runs and benchmarks; None trains full epochs
    progress: bool = True

    def to_dict(self) -> dict:
        """Return the config as a JSON-ready dict (tuples become lists)."""
        data = dataclasses.asdict(self)
        data["milestones"] = list(self.milestones)
        return data

    def to_json(self) -> str:
        """Return the config as indented JSON text."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Return a config from a dict such as ``config.json``; unknown keys are rejected."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config key {unknown[0]!r}; accepted keys are the TrainConfig fields")
        values = dict(data)
        if values.get("milestones") is not None:
            values["milestones"] = tuple(int(m) for m in values["milestones"])
        return cls(**values)

    def replace(self, **changes) -> TrainConfig:
        """Return a copy with the given fields changed (names are checked)."""
        check_field_names(changes)
        if "milestones" in changes and changes["milestones"] is not None:
            changes["milestones"] = tuple(int(m) for m in changes["milestones"])
        return dataclasses.replace(self, **changes)

    # --- derived values: computed, never stored, so a config cannot contradict itself ---
    @property
    def num_classes(self) -> int:
        """Return the number of classes of the dataset (folder datasets list their train/ folder)."""
        if self.dataset == "synthetic":
            return self.synthetic_classes
        if self.dataset == "folder":
            train_dir = os.path.join(self.data_root, "train")
            # hidden folders (.ipynb_checkpoints and the like) are not classes, as in the folder dataset
            return len([d for d in os.listdir(train_dir)
                        if not d.startswith(".") and os.path.isdir(os.path.join(train_dir, d))])
        return FIXED_NUM_CLASSES[self.dataset]

    @property
    def resolved_view_recipe(self) -> str:
        """Return ``cifar`` or ``imagenet``: the augmentation recipe this run uses."""
        if self.view_recipe != "auto":
            return self.view_recipe
        return "imagenet" if self.dataset in LIST_DATASETS else "cifar"

    @property
    def uses_cutmix(self) -> bool:
        """True when the method mixes images (and so needs the foreground stream)."""
        return self.method in ("cutmix", "concutmix")

    @property
    def uses_contrastive(self) -> bool:
        """True when the method needs the two contrastive views and the centre head."""
        return self.method in ("bcl", "concutmix")

    @property
    def uses_logit_adjustment(self) -> bool:
        """True when the cross-entropy is logit-adjusted (every method but plain ``ce``)."""
        return self.method != "ce"


def _cifar(dataset: str, imb: int, tau: float, topk: int, omega: float, **extra) -> TrainConfig:
    return TrainConfig(dataset=dataset, imb=float(imb), tau=tau, topk=topk, omega=omega, **extra)


def _imagenet(arch: str, epochs: int, l_d_warm: int) -> TrainConfig:
    return TrainConfig(
        dataset="imagenet_lt", arch=arch, epochs=epochs, l_d_warm=l_d_warm, schedule="cosine",
        classifier="cosine", tau=0.99, topk=30, omega=200 / 255, lr=0.1, batch_size=256,
        weight_decay=5e-4, feat_dim=1024, temperature=0.07, alpha=1.0, beta=0.35, warmup_epochs=0,
        milestones=(), imb=1.0,
    )


PRESETS: dict[str, TrainConfig] = {
    "cifar100_imb100": _cifar("cifar100", 100, 0.9, 30, 20 / 255),
    "cifar100_imb50": _cifar("cifar100", 50, 0.75, 30, 20 / 255),
    "cifar100_imb10": _cifar("cifar100", 10, 1.0, 30, 20 / 255),
    "cifar10_imb100": _cifar("cifar10", 100, 0.85, 3, 2 / 255),
    "cifar10_imb50": _cifar("cifar10", 50, 0.81, 3, 2 / 255),
    "cifar10_imb10": _cifar("cifar10", 10, 1.0, 3, 2 / 255),
    "cifar100_imb100_400": _cifar(
        "cifar100", 100, 0.79, 30, 20 / 255, epochs=400, warmup_epochs=10, milestones=(360, 380), l_d_warm=160
    ),
    "imagenet_lt_resnet50_100": _imagenet("resnet50", 100, 70),
    "imagenet_lt_resnext50_90": _imagenet("resnext50", 90, 60),
    "imagenet_lt_resnext50_180": _imagenet("resnext50", 180, 120),
    "inat2018_resnet50_100": dataclasses.replace(
        _imagenet("resnet50", 100, 80), dataset="inat2018", lr=0.2, weight_decay=1e-4, omega=1628 / 255,
        grad_accum_steps=2,
    ),
}

# Published top-1 (%) of each preset, for reports that compare against it.
PUBLISHED_TOP1 = {
    "cifar100_imb100": 53.16, "cifar100_imb50": 57.40, "cifar100_imb10": 64.53,
    "cifar10_imb100": 86.07, "cifar10_imb50": 88.00, "cifar10_imb10": 91.42,
    "cifar100_imb100_400": 55.06, "imagenet_lt_resnet50_100": 58.49,
    "imagenet_lt_resnext50_90": 59.76, "imagenet_lt_resnext50_180": 60.37,
}


def preset(name: str) -> TrainConfig:
    """Return a fresh copy of the named preset's config."""
    if name not in PRESETS:
        raise ConfigError(f"preset {name!r} is unknown; accepted: {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name])


def preset_for(dataset: str, imb: float) -> str | None:
    """Return the name of the published preset for a CIFAR dataset and imbalance, or None."""
    imb_text = f"{imb:g}"
    name = f"{dataset}_imb{imb_text}"
    return name if name in PRESETS else None


def presets_table() -> str:
    """Return a plain-text table of every preset's main settings and its published top-1."""
    columns = ("preset", "dataset", "arch", "imb", "epochs", "tau", "topk", "omega", "l_d_warm", "published")
    rows = []
    for name, cfg in PRESETS.items():
        published = PUBLISHED_TOP1.get(name)
        rows.append((
            name, cfg.dataset, cfg.arch, f"{cfg.imb:g}" if cfg.dataset in PROFILED_DATASETS else "-",
            str(cfg.epochs), f"{cfg.tau:g}", str(cfg.topk), f"{cfg.omega:.4f}", str(cfg.l_d_warm),
            f"{published:.2f}" if published is not None else "-",
        ))
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- overrides


def check_field_names(values: dict) -> None:
    """Raise ConfigError when a key is not a TrainConfig field."""
    known = {f.name for f in fields(TrainConfig)}
    for key in values:
        if key not in known:
            close = [k for k in sorted(known) if k.startswith(str(key)[:3])]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"parameter {key!r} is not a config field{hint}; see `python -m ccmix presets` and TrainConfig")


def _field_types() -> dict[str, object]:
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in fields(TrainConfig)}


def _parse_number(text: str, kind: type) -> float | int:
    text = text.strip()
    if kind is float and "/" in text:  # omega is written as a fraction in the papers, e.g. 20/255
        numerator, denominator = text.split("/", 1)
        return float(numerator) / float(denominator)
    return kind(text)


def parse_value(key: str, text: str):
    """Return ``text`` parsed to the type of config field ``key``; ConfigError when it does not parse."""
    check_field_names({key: text})
    hint = _field_types()[key]
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional and text.strip().lower() in ("none", "null", ""):
        return None
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    try:
        if base is bool:
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if base in (int, float):
            return _parse_number(text, base)
        if typing.get_origin(base) is tuple:
            parts = [p for p in text.replace("[", "").replace("]", "").replace(" ", "").split(",") if p]
            return tuple(int(p) for p in parts)
        return text
    except (ValueError, ZeroDivisionError):
        accepted = {bool: "true or false", int: "an integer", float: "a number (fractions like 20/255 are fine)"}
        what = accepted.get(base, "a comma-separated list of integers")
        raise ConfigError(f"--set {key}={text!r} does not parse; {key} takes {what}") from None


def _coerce(key: str, value):
    """Coerce a Python value (from a notebook or JSON) to the field's type, or raise ConfigError."""
    if isinstance(value, str):
        return parse_value(key, value)
    hint = _field_types()[key]
    args = typing.get_args(hint)
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"parameter {key} cannot be None; give a value")
    base = next((a for a in args if a is not type(None)), hint) if args and typing.get_origin(hint) is not tuple else hint
    if base is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"parameter {key}={value!r} is not accepted; {key} takes true or false")
    if base is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"parameter {key}={value!r} is not accepted; {key} takes an integer")
        return int(value)
    if base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"parameter {key}={value!r} is not accepted; {key} takes a number")
        return float(value)
    if typing.get_origin(base) is tuple:
        try:
            return tuple(int(v) for v in value)
        except (TypeError, ValueError):
            raise ConfigError(f"parameter {key}={value!r} is not accepted; {key} takes a list of integers") from None
    return value


def apply_overrides(config: TrainConfig, overrides: dict) -> TrainConfig:
    """Return a copy of ``config`` with ``overrides`` applied; string values are parsed to the field type."""
    check_field_names(overrides)
    return dataclasses.replace(config, **{k: _coerce(k, v) for k, v in overrides.items()})


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


def _one_of(name: str, value, accepted: tuple) -> None:
    if value not in accepted:
        raise ConfigError(f"{name} {value!r} is not accepted; choose one of: {', '.join(map(str, accepted))}")


def _at_least(name: str, value, minimum, what: str | None = None) -> None:
    if value is None or not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= minimum:
        raise ConfigError(f"{name}={value!r} is not accepted; {what or f'it must be a number >= {minimum}'}")


def _within(name: str, value, low: float, high: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not (low <= value <= high):
        raise ConfigError(f"{name}={value!r} is not accepted; it must lie in [{low:g}, {high:g}]")


def validate(config: TrainConfig) -> TrainConfig:
    """Return ``config`` unchanged when every value is accepted; raise ConfigError naming the first bad one.

    Only cheap checks (no image is read): names, ranges, and that the data paths
    of folder and list datasets exist.
    """
    _check_types(config)
    _one_of("dataset", config.dataset, DATASETS)
    _one_of("method", config.method, METHODS)
    _one_of("arch", config.arch, ARCHS)
    _one_of("classifier", config.classifier, CLASSIFIERS)
    _one_of("foreground_sampler", config.foreground_sampler, FOREGROUND_SAMPLERS)
    _one_of("imb_profile", config.imb_profile, PROFILES)
    _one_of("schedule", config.schedule, SCHEDULES)
    _one_of("pipeline", config.pipeline, PIPELINES)
    _one_of("view_recipe", config.view_recipe, VIEW_RECIPES)
    _one_of("device", config.device, DEVICES)
    _at_least("imb", config.imb, 1, "imb is N_max / N_min and must be >= 1")
    if not math.isfinite(config.imb):
        raise ConfigError(f"imb={config.imb!r} is not accepted; it must be a finite number >= 1")
    for name in ("epochs", "eval_interval", "grad_accum_steps", "feat_dim", "synthetic_classes"):
        _at_least(name, getattr(config, name), 1, f"{name} must be an integer >= 1")
    _at_least("batch_size", config.batch_size, 2, "batch_size must be an integer >= 2 (BatchNorm needs two images)")
    if config.batch_size % config.grad_accum_steps:
        raise ConfigError(
            f"grad_accum_steps={config.grad_accum_steps} is not accepted; it must divide batch_size={config.batch_size}"
        )
    for name in ("num_workers", "warmup_epochs", "l_d_warm", "many_threshold", "few_threshold", "seed", "subset_seed"):
        _at_least(name, getattr(config, name), 0, f"{name} must be an integer >= 0")
    if config.few_threshold > config.many_threshold:
        raise ConfigError(
            f"few_threshold={config.few_threshold} is not accepted; it must be <= many_threshold={config.many_threshold}"
        )
    if config.max_steps_per_epoch is not None:
        _at_least("max_steps_per_epoch", config.max_steps_per_epoch, 1, "max_steps_per_epoch must be None or >= 1")
    for name in ("lr", "temperature", "cosine_scale", "cutmix_alpha"):
        value = getattr(config, name)
        if not isinstance(value, (int, float)) or not value > 0:
            raise ConfigError(f"{name}={value!r} is not accepted; it must be a number > 0")
    for name in ("momentum", "cutmix_prob", "omega", "lr_decay"):
        _within(name, getattr(config, name), 0.0, 1.0)
    for name in ("weight_decay", "tau", "alpha", "beta"):
        _at_least(name, getattr(config, name), 0)
    if list(config.milestones) != sorted(config.milestones) or any(m < 1 for m in config.milestones):
        raise ConfigError(f"milestones={list(config.milestones)} is not accepted; give increasing epochs >= 1")
    if config.synthetic_classes < 2:
        raise ConfigError(f"synthetic_classes={config.synthetic_classes} is not accepted; it must be >= 2")
    _validate_paths(config)
    num_classes = config.num_classes
    if not (isinstance(config.topk, int) and 1 <= config.topk <= num_classes):
        raise ConfigError(
            f"topk={config.topk!r} is not accepted; it must be an integer in 1..{num_classes} (the number of classes)"
        )
    return config


def _check_types(config: TrainConfig) -> None:
    """Raise ConfigError when an integer or boolean field holds a value of another type (e.g. epochs=2.5)."""
    for key, hint in _field_types().items():
        value = getattr(config, key)
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            continue
        base = next((a for a in args if a is not type(None)), hint) if type(None) in args else hint
        if base is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{key}={value!r} is not accepted; {key} takes an integer")
        if base is bool and not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} is not accepted; {key} takes true or false")
        if base is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"{key}={value!r} is not accepted; {key} takes a number")


def _validate_paths(config: TrainConfig) -> None:
    if config.dataset == "folder":
        for split in ("train", "test"):
            path = os.path.join(config.data_root, split)
            if not os.path.isdir(path):
                raise ConfigError(
                    f"data_root={config.data_root!r} is not accepted for dataset 'folder'; "
                    f"it must hold train/<class>/ and test/<class>/ folders and {path!r} does not exist"
                )
        if config.num_classes < 2:
            raise ConfigError(f"data_root={config.data_root!r} has fewer than 2 class folders under train/")
    elif config.dataset in LIST_DATASETS:
        if not os.path.isdir(config.data_root):
            raise ConfigError(
                f"data_root={config.data_root!r} is not accepted for dataset {config.dataset!r}; the folder does not exist"
            )
        for name, path in zip(("train_list", "test_list"), list_files(config)):
            if not os.path.isfile(path):
                raise ConfigError(f"{name}={path!r} is not accepted; the file does not exist")


def list_files(config: TrainConfig) -> tuple[str, str]:
    """Return the (train, test) split-file paths of a list dataset."""
    default_train, default_test = DEFAULT_LIST_FILES[config.dataset]
    train = config.train_list or os.path.join(config.data_root, default_train)
    test = config.test_list or os.path.join(config.data_root, default_test)
    return train, test


def resolve(preset_name: str | None = None, overrides: dict | None = None) -> TrainConfig:
    """Return a validated config: the preset (or the defaults) with ``overrides`` applied."""
    config = preset(preset_name) if preset_name else TrainConfig()
    if overrides:
        config = apply_overrides(config, overrides)
    return validate(config)


__all__ = [
    "ConfigError", "TrainConfig", "PRESETS", "PUBLISHED_TOP1", "preset", "preset_for", "presets_table",
    "apply_overrides", "parse_value", "parse_set_arguments", "validate", "resolve", "list_files",
]
