"""Every training knob in one dataclass, the published presets, and input validation.

Presets follow the run scripts published with Contrastive CutMix (Pan et al.,
"Enhanced Long-Tailed Recognition with Contrastive CutMix Augmentation",
IEEE TIP 2024); the method is described in ``docs/method.md``.

Each :class:`TrainConfig` field says once, in its ``dataclasses.field`` metadata,
what it is: its **role**, what values it accepts, and a one-line help text.
Everything else is derived from that metadata: validation, ``--set`` parsing,
the command line's field list, the notebooks' parameter checks, and the
comparisons between configs. The roles are

- ``recipe``: changes what is learned (method, data subset, schedule, model, ...)
  or what is reported (the many/few thresholds). Two runs with the same recipe
  train the same thing; a config reproduces a preset when every recipe field
  equals the preset's, and sweeps group runs by their recipe.
- ``seed``: the replicate. A resumed run and a reused sweep run must keep it, but
  a run of a preset with another seed still reproduces the preset, and sweeps
  average over it.
- ``runtime``: how and where a run goes, not what it learns (device, workers,
  pipeline, precision, paths, progress display, evaluation interval).

Adding a field is a one-place change: declare it with :func:`spec` and its role.

Validation happens here, before any data is read: every bad value becomes one
:class:`ConfigError` whose sentence names the parameter, the value and what is
accepted.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType

DATASETS = ("cifar10", "cifar100", "folder", "imagenet_lt", "inat2018", "places_lt", "synthetic")
METHODS = ("ce", "la", "cutmix", "bcl", "concutmix")
ARCHS = ("resnet32", "resnet50", "resnext50", "resnet152", "resnext101", "tiny")  # tiny: fast tests, not results
CLASSIFIERS = ("linear", "cosine")
FOREGROUND_SAMPLERS = ("balanced", "reverse", "uniform")
BACKGROUND_SAMPLERS = ("uniform", "balanced", "reverse")  # uniform: the shuffled training set
PROFILES = ("exp", "step")
SCHEDULES = ("step", "cosine")
PIPELINES = ("auto", "classic", "fast")
VIEW_RECIPES = ("auto", "cifar", "imagenet")
# Contrastive-view variants of the published code (imagenet recipe): sim-rand and randstack add its RandAugment.
CONTRASTIVE_VIEWS = ("sim-sim", "sim-rand", "randstack")
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

RECIPE, SEED, RUNTIME = "recipe", "seed", "runtime"
ROLES = (RECIPE, SEED, RUNTIME)
# Seeds seed NumPy's legacy generator (the long-tail subset, the global stream), which takes 0 <= seed < 2**32.
MAX_SEED = 2**32 - 1
# Recipe fields that may still change when a run folder is resumed: a longer or shorter schedule.
RESUMABLE_RECIPE_FIELDS = ("epochs",)

_UNSET = object()


# --------------------------------------------------------------------------- errors


class ConfigError(ValueError):
    """A value that is not accepted. ``str(error)`` is one sentence naming the parameter, the value and what
    is accepted; the parts are attributes (``field``, ``value``, ``accepted``), so a front end can word the
    sentence its own way (``with_source``) without reading the text.

    ``ConfigError("free sentence")`` carries a ready-made sentence (``field`` is then None).
    """

    def __init__(self, message: str | None = None, *, field: str | None = None, value=_UNSET,
                 accepted: str | None = None, meaning: str = "", problem: str = "is not accepted",
                 detail: str | None = None, source: str = ""):
        self.field = field
        self.value = None if value is _UNSET else value
        self.has_value = value is not _UNSET
        self.accepted = accepted
        self.meaning = meaning
        self.problem = problem
        self.detail = detail
        self.source = source
        self._message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        if self._message is not None or self.field is None:
            return self._message or ""
        subject = f"{self.field}={shown_value(self.value)}" if self.has_value else repr(self.field)
        prefix = f"{self.source} " if self.source else ""
        if self.detail is not None:
            reason = self.detail
        else:
            meaning = f"is {self.meaning} and " if self.meaning else ""
            reason = f"{self.field} {meaning}must be {self.accepted}"
        return f"{prefix}{subject} {self.problem}; {reason}"

    def parts(self) -> dict:
        """Return the sentence's parts as a dict (field, value, accepted, problem, detail, source)."""
        return {"field": self.field, "value": self.value, "accepted": self.accepted, "problem": self.problem,
                "detail": self.detail, "source": self.source}

    def with_source(self, source: str, problem: str | None = None) -> ConfigError:
        """Return the same error worded for another front end, e.g. ``"overrides"`` or ``"--set"``."""
        if self.field is None:
            return self
        return ConfigError(field=self.field, value=self.value if self.has_value else _UNSET, accepted=self.accepted,
                           meaning=self.meaning, problem=problem or self.problem, detail=self.detail, source=source)

    def __reduce__(self):  # picklable across processes (keyword-only parts)
        return (_rebuild_error, (self._message, {**self.parts(), "meaning": self.meaning,
                                                 "value": self.value if self.has_value else _UNSET}))


def _rebuild_error(message, parts):
    return ConfigError(message, **parts) if message is not None else ConfigError(**parts)


def shown_value(value) -> str:
    """Return ``value`` as a sentence shows it: repr, with tuples as lists."""
    if isinstance(value, tuple):
        value = list(value)
    return repr(value)


# --------------------------------------------------------------------------- field metadata


def spec(default, role: str, help: str, *, choices: tuple | None = None, minimum: float | None = None,
         maximum: float | None = None, above: float | None = None, meaning: str = "", none_means: str = "",
         path: bool = False) -> dataclasses.Field:
    """Return a dataclass field carrying its metadata: role, accepted choices or range, one-line help.

    ``minimum``/``maximum`` are inclusive bounds, ``above`` an exclusive lower bound; ``meaning`` is
    said in error sentences ("imb is N_max / N_min and must be ..."); ``none_means`` says what None does;
    ``path`` marks text that names a file or folder (it may not be empty).
    """
    if role not in ROLES:
        raise ValueError(f"role {role!r} is unknown; accepted: {', '.join(ROLES)}")
    metadata = {"role": role, "help": help, "choices": choices, "minimum": minimum, "maximum": maximum,
                "above": above, "meaning": meaning, "none_means": none_means, "path": path}
    return dataclasses.field(default=default, metadata=MappingProxyType(metadata))


@dataclass(frozen=True)
class Rule:
    """What one value accepts: its kind, choices or range, whether None is allowed; checks and parses values.

    kind: ``int``, ``float``, ``bool``, ``str``, ``path`` (text naming a file or folder) or ``ints``
    (an increasing list of integers).
    """

    kind: str
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    optional: bool = False
    meaning: str = ""
    none_means: str = ""

    def accepted(self, non_finite: bool = False) -> str:
        """Return what the rule accepts as a noun phrase, e.g. "an integer >= 1" or "one of: a, b"."""
        if self.choices is not None:
            text = "one of: " + ", ".join(map(str, self.choices))
        elif self.kind == "bool":
            text = "true or false"
        elif self.kind in ("str", "path"):
            text = "a path (text)" if self.kind == "path" else "text"
        else:
            noun = {"int": "an integer", "float": "a finite number" if non_finite else "a number",
                    "ints": "a list of increasing integers"}[self.kind]
            text = noun + self._range_text()
        if self.optional:
            text += " or None" + (f" ({self.none_means})" if self.none_means else "")
        return text

    def _range_text(self) -> str:
        low, high = self.minimum, self.maximum
        if low is not None and high is not None:
            return f" in {int(low)}..{int(high)}" if self.kind == "int" else f" in [{low:g}, {high:g}]"
        if self.above is not None:
            return f" > {self.above:g}"
        if low is not None:
            return f" >= {low:g}"
        if high is not None:
            return f" <= {high:g}"
        return ""

    def error(self, name: str, value, source: str = "", problem: str = "is not accepted",
              non_finite: bool = False) -> ConfigError:
        """Return the ConfigError saying that ``value`` is not accepted for ``name``."""
        return ConfigError(field=name, value=value, accepted=self.accepted(non_finite=non_finite),
                           meaning=self.meaning, problem=problem, source=source)

    def check(self, name: str, value, source: str = ""):
        """Return ``value`` when the rule accepts it as it is (no conversion); raise ConfigError otherwise."""
        if value is None and self.optional:
            return value
        if self.choices is not None:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool) or value not in self.choices:
                raise self.error(name, value, source)
            return value
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise self.error(name, value, source)
        elif self.kind in ("str", "path"):
            if not isinstance(value, str) or (self.kind == "path" and not value):
                raise self.error(name, value, source)
        elif self.kind == "ints":
            if not isinstance(value, (tuple, list)) or not all(_is_int(v) for v in value):
                raise self.error(name, value, source)
            if any(b <= a for a, b in zip(value, value[1:])) or not all(self._in_range(v) for v in value):
                raise self.error(name, value, source)
        else:
            if not (_is_int(value) if self.kind == "int" else _is_number(value)):
                raise self.error(name, value, source)
            if not math.isfinite(value):
                raise self.error(name, value, source, non_finite=True)
            if not self._in_range(value):
                raise self.error(name, value, source)
        return value

    def _in_range(self, value) -> bool:
        return ((self.minimum is None or value >= self.minimum) and (self.maximum is None or value <= self.maximum)
                and (self.above is None or value > self.above))

    def coerce(self, name: str, value, source: str = ""):
        """Return ``value`` converted to the rule's kind (text is parsed, 5.0 -> 5, 5 -> 5.0) and checked;
        the error sentence shows the value as it was given."""
        given = value
        try:
            return self._coerce(name, value, source)
        except ConfigError as error:
            if error.field != name or not error.has_value or error.value is given or isinstance(given, str):
                raise
            raise ConfigError(field=name, value=given, accepted=error.accepted, meaning=error.meaning,
                              problem=error.problem, source=source) from None

    def _coerce(self, name: str, value, source: str):
        if isinstance(value, str) and self.kind not in ("str", "path"):
            value = self.parse(name, value, source=source, problem="is not accepted")
        elif value is not None and not isinstance(value, bool):
            if self.kind == "int" and isinstance(value, float) and value.is_integer():
                value = int(value)
            elif self.kind == "float" and isinstance(value, int):
                value = float(value)
            elif self.kind == "ints" and isinstance(value, list):
                value = tuple(value)
        if self.kind == "ints" and isinstance(value, tuple) and all(_is_number(v) and float(v).is_integer()
                                                                     for v in value):
            value = tuple(int(v) for v in value)
        if self.kind == "path" and isinstance(value, os.PathLike):
            value = os.fspath(value)
        return self.check(name, value, source=source)

    def parse(self, name: str, text: str, source: str = "--set", problem: str = "does not parse"):
        """Return ``text`` parsed to the rule's kind (fractions such as 20/255 for numbers); ConfigError if not."""
        stripped = text.strip()
        if self.optional and stripped.lower() in ("none", "null", ""):
            return None
        try:
            if self.kind == "bool":
                lowered = stripped.lower()
                if lowered in ("1", "true", "yes", "on"):
                    return True
                if lowered in ("0", "false", "no", "off"):
                    return False
                raise ValueError(text)
            if self.kind == "int":
                return int(stripped)
            if self.kind == "float":
                if "/" in stripped:  # omega is written as a fraction in the papers, e.g. 20/255
                    numerator, denominator = stripped.split("/", 1)
                    return float(numerator) / float(denominator)
                return float(stripped)
            if self.kind == "ints":
                parts = [p for p in stripped.replace("[", "").replace("]", "").replace("(", "").replace(")", "")
                         .replace(" ", "").split(",") if p]
                return tuple(int(p) for p in parts)
            return text
        except (ValueError, ZeroDivisionError):
            accepted = self.accepted() + (" (fractions like 20/255 are fine)" if self.kind == "float" else "")
            raise ConfigError(field=name, value=text, accepted=accepted, meaning=self.meaning, problem=problem,
                              source=source) from None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --------------------------------------------------------------------------- the config


@dataclass
class TrainConfig:
    """Every knob of a ConCutMix run (``docs/method.md``); defaults are the cifar100_imb100 preset.

    Each field's metadata holds its role (recipe, seed or runtime), what it accepts and a help line;
    ``python -m ccmix presets --fields`` lists them.
    """

    # --- data ---
    dataset: str = spec("cifar100", RECIPE, "dataset to train and test on", choices=DATASETS)
    data_root: str = spec("data", RUNTIME, "folder holding the dataset (where it lies, not what it is)", path=True)
    train_list: str | None = spec(None, RUNTIME, "list datasets: the `relative/path label` training file",
                                  path=True, none_means="the standard file inside data_root")
    test_list: str | None = spec(None, RUNTIME, "list datasets: the `relative/path label` test file", path=True,
                                 none_means="the standard file inside data_root")
    imb: float = spec(100.0, RECIPE, "N_max / N_min of the long-tail profile (profiled datasets only)", minimum=1,
                      meaning="N_max / N_min")
    imb_profile: str = spec("exp", RECIPE, "shape of the long-tail profile", choices=PROFILES)
    subset_seed: int = spec(10, RECIPE, "seed of the fixed long-tailed subset: part of the data, not a replicate",
                            minimum=0, maximum=MAX_SEED)
    synthetic_classes: int = spec(10, RECIPE, "number of classes of the synthetic dataset", minimum=2)
    foreground_sampler: str = spec("balanced", RECIPE, "sampler of the images pasted into the mix",
                                   choices=FOREGROUND_SAMPLERS)
    background_sampler: str = spec("uniform", RECIPE, "sampler of the background images: uniform (the shuffled "
                                   "training set) or the published ablation's balanced / reverse",
                                   choices=BACKGROUND_SAMPLERS)
    pipeline: str = spec("auto", RUNTIME, "classic (PIL workers), fast (batched on the device), auto: fast on CUDA",
                         choices=PIPELINES)
    view_recipe: str = spec("auto", RECIPE, "augmentation recipe; auto picks cifar or imagenet from the dataset",
                            choices=VIEW_RECIPES)
    contrastive_views: str = spec("sim-sim", RECIPE, "contrastive-view variant of the published code (sim-rand and "
                                  "randstack add RandAugment to one or both views; imagenet recipe only)",
                                  choices=CONTRASTIVE_VIEWS)
    randaugment_ops: int = spec(2, RECIPE, "ImageNet-scale view 0: RandAugment ops per image (the published n)",
                                minimum=0)
    randaugment_magnitude: int = spec(10, RECIPE, "ImageNet-scale view 0: RandAugment level (the published m, of 10)",
                                      minimum=0, maximum=10)
    num_workers: int = spec(2, RUNTIME, "DataLoader worker processes of the classic pipeline", minimum=0)
    # --- model ---
    arch: str = spec("resnet32", RECIPE, "encoder architecture", choices=ARCHS)
    pretrained: str | None = spec(None, RECIPE, "local file of torchvision-format encoder weights to start from",
                                  path=True, none_means="random initialisation; nothing is downloaded")
    feat_dim: int = spec(128, RECIPE, "width of the contrastive projection", minimum=1)
    classifier: str = spec("linear", RECIPE, "classifier head", choices=CLASSIFIERS)
    cosine_scale: float = spec(30.0, RECIPE, "logit scale of the cosine classifier", above=0)
    # --- method ---
    method: str = spec("concutmix", RECIPE, "training method", choices=METHODS)
    tau: float = spec(0.9, RECIPE, "logit-adjustment strength", minimum=0)
    alpha: float = spec(2.0, RECIPE, "weight of the cross-entropy term", minimum=0)
    beta: float = spec(0.6, RECIPE, "weight of the balanced contrastive term", minimum=0)
    temperature: float = spec(0.1, RECIPE, "temperature of the balanced contrastive loss", above=0)
    cutmix_prob: float = spec(0.5, RECIPE, "probability that a batch is mixed", minimum=0, maximum=1)
    cutmix_alpha: float = spec(1.0, RECIPE, "lambda ~ Beta(cutmix_alpha, cutmix_alpha)", above=0)
    cutmix_per_sample: bool = spec(False, RECIPE, "one box per image instead of one per batch (the reference)")
    topk: int = spec(30, RECIPE, "classes kept in the semantic label (at most the number of classes)", minimum=1)
    # The published code weighs the semantic label by rho * omega without clamping it; rho = log(sum_c N_c y_c) /
    # sum_c log N_c is at most log N_max / sum_c log N_c (about 0.014 for CIFAR-100-LT, 1e-4 for iNaturalist 2018),
    # so omega > 1 (inat2018: 1628/255) is the published setting and only omega >= 0 is required.
    omega: float = spec(
        20 / 255, RECIPE,
        "scaling factor a / b: semantic labels weigh rho * omega, unbounded as in the published code (inat2018: 1628/255)",
        minimum=0,
    )
    l_d_warm: int = spec(100, RECIPE, "epochs with area labels before semantic labels start", minimum=0)
    # --- optimisation ---
    epochs: int = spec(200, RECIPE, "training epochs (may change when a run folder is resumed)", minimum=1)
    batch_size: int = spec(256, RECIPE, "global batch, all devices together (BatchNorm needs two images)",
                           minimum=2)
    grad_accum_steps: int = spec(1, RECIPE, "micro-batches a step (BatchNorm sees each one: part of the recipe)",
                                 minimum=1)
    lr: float = spec(0.15, RECIPE, "peak learning rate", above=0)
    momentum: float = spec(0.9, RECIPE, "SGD momentum", minimum=0, maximum=1)
    weight_decay: float = spec(5e-4, RECIPE, "SGD weight decay", minimum=0)
    warmup_epochs: int = spec(5, RECIPE, "epochs of linear learning-rate warm-up", minimum=0)
    schedule: str = spec("step", RECIPE, "learning-rate schedule after the warm-up", choices=SCHEDULES)
    milestones: tuple[int, ...] = spec((160, 180), RECIPE, "epochs at which the step schedule decays", minimum=1)
    lr_decay: float = spec(0.1, RECIPE, "factor of each step decay", minimum=0, maximum=1)
    # --- run ---
    seed: int = spec(0, SEED, "the replicate: initialisation, sampling, augmentation and CutMix draws", minimum=0,
                     maximum=MAX_SEED)
    device: str = spec("auto", RUNTIME, "where to train; auto: CUDA when available", choices=DEVICES)
    eval_interval: int = spec(1, RUNTIME, "evaluate every this many epochs (and always at the last)", minimum=1)
    many_threshold: int = spec(100, RECIPE, "classes with more training images are many-shot (changes the report)",
                               minimum=0)
    few_threshold: int = spec(20, RECIPE, "classes with fewer training images are few-shot (changes the report)",
                              minimum=0)
    amp: bool = spec(True, RUNTIME, "bf16 autocast, CUDA only")
    channels_last: bool = spec(True, RUNTIME, "channels-last memory format, CUDA only")
    compile: bool = spec(False, RUNTIME, "torch.compile the model")
    deterministic: bool = spec(True, RUNTIME, "deterministic kernels")
    sync_bn: bool | None = spec(None, RUNTIME, "synchronised BatchNorm across processes",
                                none_means="on when more than one process trains")
    max_steps_per_epoch: int | None = spec(None, RECIPE, "cap on steps an epoch for smoke runs and benchmarks",
                                           minimum=1, none_means="full epochs")
    progress: bool = spec(True, RUNTIME, "show progress bars")

    def __post_init__(self):
        if isinstance(self.milestones, list):  # JSON and YAML give lists; the config holds a tuple
            self.milestones = tuple(self.milestones)

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
        return cls(**data)

    def replace(self, **changes) -> TrainConfig:
        """Return a copy with the given fields changed (names are checked)."""
        check_field_names(changes)
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


# --------------------------------------------------------------------------- what the metadata gives


def field_names() -> tuple[str, ...]:
    """Return every TrainConfig field name, in declaration order."""
    return tuple(f.name for f in fields(TrainConfig))


def field_role(name: str) -> str:
    """Return the role of config field ``name``: recipe, seed or runtime."""
    return TrainConfig.__dataclass_fields__[name].metadata["role"]


def field_help(name: str) -> str:
    """Return the one-line help text of config field ``name``."""
    return TrainConfig.__dataclass_fields__[name].metadata["help"]


def fields_with_role(role: str) -> tuple[str, ...]:
    """Return the names of the fields with ``role`` (recipe, seed or runtime), in declaration order."""
    if role not in ROLES:
        raise ValueError(f"role {role!r} is unknown; accepted: {', '.join(ROLES)}")
    return tuple(f.name for f in fields(TrainConfig) if f.metadata["role"] == role)


def recipe_fields() -> tuple[str, ...]:
    """Return the names of the fields that change what is learned (compared for presets, resume and sweeps)."""
    return fields_with_role(RECIPE)


def field_rule(name: str) -> Rule:
    """Return the :class:`Rule` (kind, choices or range) of config field ``name``."""
    return _field_rules()[name]


_RULES: dict[str, Rule] = {}


def _field_rules() -> dict[str, Rule]:
    if not _RULES:
        hints = typing.get_type_hints(TrainConfig)
        for f in fields(TrainConfig):
            hint = hints[f.name]
            args = typing.get_args(hint)
            optional = type(None) in args
            base = next(a for a in args if a is not type(None)) if optional else hint
            if typing.get_origin(base) is tuple:
                kind = "ints"
            else:
                kind = {int: "int", float: "float", bool: "bool", str: "str"}[base]
            meta = f.metadata
            if kind == "str" and meta.get("path"):
                kind = "path"
            _RULES[f.name] = Rule(kind=kind, choices=meta["choices"], minimum=meta["minimum"],
                                  maximum=meta["maximum"], above=meta["above"], optional=optional,
                                  meaning=meta["meaning"], none_means=meta["none_means"])
    return _RULES


def fields_table() -> str:
    """Return a plain-text table of every field: name, role, default, what it accepts and its help."""
    rows = [(f.name, f.metadata["role"], shown_value(f.default), field_rule(f.name).accepted(), f.metadata["help"])
            for f in fields(TrainConfig)]
    columns = ("field", "role", "default", "accepts", "help")
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns[:-1])]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, [*widths, 0])).rstrip()]
    lines += ["  ".join([*(v.ljust(w) for v, w in zip(row[:-1], widths)), row[-1]]) for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- presets


# Training precision of the presets (evaluation always runs in fp32). The published runs train in fp32.
# CIFAR presets keep fp32: ResNet-32 on 32x32 images gains little from bf16, so nothing is traded for speed.
# ImageNet-scale presets train under bf16 autocast on CUDA (weights, BatchNorm statistics and the losses stay
# fp32): it roughly halves the time of these 90-180-epoch ResNet-50/152 runs; set amp=False for fp32.
CIFAR_PRESET_AMP = False
IMAGENET_PRESET_AMP = True


def _cifar(dataset: str, imb: int, tau: float, topk: int, omega: float, **extra) -> TrainConfig:
    return TrainConfig(dataset=dataset, imb=float(imb), tau=tau, topk=topk, omega=omega, amp=CIFAR_PRESET_AMP, **extra)


def _imagenet(arch: str, epochs: int, l_d_warm: int) -> TrainConfig:
    return TrainConfig(
        dataset="imagenet_lt", arch=arch, epochs=epochs, l_d_warm=l_d_warm, schedule="cosine",
        classifier="cosine", tau=0.99, topk=30, omega=200 / 255, lr=0.1, batch_size=256,
        weight_decay=5e-4, feat_dim=1024, temperature=0.07, alpha=1.0, beta=0.35, warmup_epochs=0,
        milestones=(), imb=1.0, amp=IMAGENET_PRESET_AMP,
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
    # Places-LT: the published code reads it and names ResNet-152, but publishes no run script and no number;
    # the ImageNet-LT ResNet-50 script's settings are used at ResNet-152. Set pretrained=PATH to start from
    # ImageNet weights, as the published --reload_torch does.
    "places_lt_resnet152": dataclasses.replace(_imagenet("resnet152", 100, 70), dataset="places_lt"),
}

# Published top-1 (%) of each preset, for reports that compare against it.
PUBLISHED_TOP1 = {
    "cifar100_imb100": 53.16, "cifar100_imb50": 57.40, "cifar100_imb10": 64.53,
    "cifar10_imb100": 86.07, "cifar10_imb50": 88.00, "cifar10_imb10": 91.42,
    "cifar100_imb100_400": 55.06, "imagenet_lt_resnet50_100": 58.49,
    "imagenet_lt_resnext50_90": 59.76, "imagenet_lt_resnext50_180": 60.37,
}
# Published many / medium / few top-1 (%), for the presets whose paper reports them.
PUBLISHED_SHOT_TOP1 = {
    "cifar100_imb100": {"many": 63.8, "medium": 50.5, "few": 43.8},
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


# --------------------------------------------------------------------------- comparing configs


def _config_dict(config: TrainConfig | Mapping) -> Mapping:
    return config.to_dict() if isinstance(config, TrainConfig) else config


def _comparable(value):
    return list(value) if isinstance(value, tuple) else value


def recipe_differences(a: TrainConfig | Mapping, b: TrainConfig | Mapping,
                       roles: tuple[str, ...] = (RECIPE,)) -> list[str]:
    """Return the names of the fields with one of ``roles`` whose values differ between ``a`` and ``b``.

    ``a`` and ``b`` are configs or config dicts (``config.json``); a field missing from either dict
    (a run folder written before the field existed) is not compared.
    """
    for role in roles:
        if role not in ROLES:
            raise ValueError(f"role {role!r} is unknown; accepted: {', '.join(ROLES)}")
    first, second = _config_dict(a), _config_dict(b)
    return [f.name for f in fields(TrainConfig)
            if f.metadata["role"] in roles and f.name in first and f.name in second
            and _comparable(first[f.name]) != _comparable(second[f.name])]


def matches_preset(config: TrainConfig | Mapping, name: str | None) -> bool:
    """True when ``config`` equals preset ``name`` in every recipe field (seed and runtime fields may differ)."""
    return name in PRESETS and not recipe_differences(config, PRESETS[name])


def preset_name_for(config: TrainConfig | Mapping, preset: str | None = None) -> str | None:
    """Return ``preset`` when given, else the first preset ``config`` matches, else None."""
    if preset is not None:
        return preset
    return next((name for name in PRESETS if matches_preset(config, name)), None)


def published_top1_for(config: TrainConfig | Mapping, preset: str | None = None) -> float | None:
    """Return the published top-1 (%) of the preset ``config`` reproduces (``preset`` or the first match), or None."""
    name = preset_name_for(config, preset)
    return PUBLISHED_TOP1.get(name) if matches_preset(config, name) else None


def preset_record(config: TrainConfig | Mapping, preset: str | None = None) -> dict:
    """Return ``{"preset": name or None, "published_top1": number or None}`` as a run folder records them."""
    return {"preset": preset_name_for(config, preset), "published_top1": published_top1_for(config, preset)}


def resume_differences(saved: Mapping, requested: TrainConfig) -> list[str]:
    """Return the fields that differ between a run folder's saved config and ``requested`` and may not change
    on resume: recipe and seed fields, except ``epochs`` (a schedule may be extended or shortened)."""
    return [name for name in recipe_differences(saved, requested, roles=(RECIPE, SEED))
            if name not in RESUMABLE_RECIPE_FIELDS]


# --------------------------------------------------------------------------- overrides


def check_field_names(values: Mapping, source: str = "parameter") -> None:
    """Raise ConfigError when a key is not a TrainConfig field."""
    known = field_names()
    for key in values:
        if key not in known:
            close = [k for k in sorted(known) if k.startswith(str(key)[:3])]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(field=str(key), problem=f"is not a config field{hint}", source=source,
                              detail="see `python -m ccmix presets --fields` and TrainConfig")


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
        raise ConfigError(f"config={config!r} is not accepted; give a ccmix.config.TrainConfig")
    for name in field_names():
        field_rule(name).check(name, getattr(config, name))
    if config.batch_size % config.grad_accum_steps:
        raise ConfigError(field="grad_accum_steps", value=config.grad_accum_steps,
                          accepted=f"a divisor of batch_size={config.batch_size}")
    if config.few_threshold > config.many_threshold:
        raise ConfigError(field="few_threshold", value=config.few_threshold,
                          accepted=f"an integer <= many_threshold={config.many_threshold}")
    if config.contrastive_views != "sim-sim" and config.resolved_view_recipe != "imagenet":
        raise ConfigError(field="contrastive_views", value=config.contrastive_views,
                          detail=f"sim-rand and randstack are published for the imagenet recipe only, and the recipe "
                                 f"is {config.resolved_view_recipe!r}; use sim-sim")
    _validate_paths(config)
    num_classes = config.num_classes
    if config.topk > num_classes:
        raise ConfigError(field="topk", value=config.topk,
                          accepted=f"an integer in 1..{num_classes} (the number of classes)")
    _validate_footprint(config, num_classes)
    return config


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
    "ConfigError", "TrainConfig", "Rule", "PRESETS", "PUBLISHED_TOP1", "ROLES", "RECIPE", "SEED", "RUNTIME", "preset",
    "preset_for", "presets_table", "fields_table", "field_names", "field_role", "field_help", "field_rule",
    "fields_with_role", "recipe_fields", "recipe_differences", "matches_preset", "preset_name_for",
    "published_top1_for", "preset_record", "resume_differences", "apply_overrides", "check_parameter", "parse_value",
    "parse_set_arguments", "validate", "resolve", "list_files", "footprint_bytes", "spec",
    "PUBLISHED_SHOT_TOP1",
]
