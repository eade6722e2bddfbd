"""Every training knob in one dataclass, with the metadata that says what each one is.

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

The presets live in :mod:`ccmix.config.presets`, the checks and ``--set`` parsing in
:mod:`ccmix.config.validation`, and the value rules with :class:`ConfigError` in
:mod:`ccmix.config.rules`; every one of their public names is importable from here too.
Validation happens before any data is read: every bad value becomes one
:class:`ConfigError` whose sentence names the parameter, the value and what is
accepted.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType

from ccmix.config.rules import ConfigError, Rule, shown_value

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
# Contrastive-view pairs (imagenet recipe): sim-sim and sim-rand are published choices; randstack (RandAugment on
# both views) is ccmix's own: the published code defines that pair but its --cl_views option does not accept it.
CONTRASTIVE_VIEWS = ("sim-sim", "sim-rand", "randstack")
DEVICES = ("auto", "cpu", "cuda")
LOGGERS = ("tensorboard", "wandb", "none")

# Datasets whose training split is already long-tailed and given by list files.
LIST_DATASETS = ("imagenet_lt", "inat2018", "places_lt")
# Datasets to which the synthetic long-tail profile (imb, imb_profile) applies.
PROFILED_DATASETS = ("cifar10", "cifar100", "folder", "synthetic")
FIXED_NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet_lt": 1000, "inat2018": 8142, "places_lt": 365}
# Standard OLTR split file names by split, looked up inside data_root when train_list/test_list are unset.
# iNaturalist 2018 has no labelled test list: its val list is the evaluation set (the published code's too).
SPLIT_FILES = {
    "imagenet_lt": {"train": "ImageNet_LT_train.txt", "val": "ImageNet_LT_val.txt", "test": "ImageNet_LT_test.txt"},
    "inat2018": {"train": "iNaturalist18_train.txt", "val": "iNaturalist18_val.txt"},
    "places_lt": {"train": "Places_LT_train.txt", "val": "Places_LT_val.txt", "test": "Places_LT_test.txt"},
}
# Every standard file of each list dataset, the training list first.
DEFAULT_LIST_FILES = {name: tuple(files.values()) for name, files in SPLIT_FILES.items()}
EVAL_SPLITS = ("val", "test")

RECIPE, SEED, RUNTIME = "recipe", "seed", "runtime"
ROLES = (RECIPE, SEED, RUNTIME)
# Seeds seed NumPy's legacy generator (the long-tail subset, the global stream), which takes 0 <= seed < 2**32.
MAX_SEED = 2**32 - 1
# Recipe fields that may still change when a run folder is resumed: a longer or shorter schedule.
RESUMABLE_RECIPE_FIELDS = ("epochs",)


# --------------------------------------------------------------------------- field metadata


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"role {role!r} is unknown; accepted: {', '.join(ROLES)}")


def spec(default, role: str, help: str, *, choices: tuple | None = None, minimum: float | None = None,
         maximum: float | None = None, above: float | None = None, meaning: str = "", none_means: str = "",
         path: bool = False) -> dataclasses.Field:
    """Return a dataclass field carrying its metadata: role, accepted choices or range, one-line help.

    ``minimum``/``maximum`` are inclusive bounds, ``above`` an exclusive lower bound; ``meaning`` is
    said in error sentences ("imb is N_max / N_min and must be ..."); ``none_means`` says what None does;
    ``path`` marks text that names a file or folder (it may not be empty).
    """
    _check_role(role)
    metadata = {"role": role, "help": help, "choices": choices, "minimum": minimum, "maximum": maximum,
                "above": above, "meaning": meaning, "none_means": none_means, "path": path}
    return dataclasses.field(default=default, metadata=MappingProxyType(metadata))




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
    test_list: str | None = spec(None, RUNTIME, "list datasets: the `relative/path label` evaluation file", path=True,
                                 none_means="the standard file of eval_split inside data_root")
    eval_split: str = spec("test", RECIPE, "split evaluated on: val (list datasets' validation list, where the "
                           "published ImageNet-LT and Places-LT runs evaluate; inat2018's only list) or test",
                           choices=EVAL_SPLITS)
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
    augment_launch: str = spec("auto", RUNTIME, "fast pipeline's augmentation kernels: constant (the same launches every "
                               "step, CUDA-graph friendly), subset (per-op groups), auto: constant on CUDA",
                               choices=("auto", "constant", "subset"))
    view_recipe: str = spec("auto", RECIPE, "augmentation recipe; auto picks cifar or imagenet from the dataset",
                            choices=VIEW_RECIPES)
    contrastive_views: str = spec("sim-sim", RECIPE, "contrastive views: sim-sim, or RandAugment on view 1 (sim-rand, "
                                  "published) or on both (randstack, ccmix's own); imagenet recipe only",
                                  choices=CONTRASTIVE_VIEWS)
    randaugment_ops: int = spec(2, RECIPE, "ImageNet-scale RandAugment ops per image (view 0, and the sim-rand / "
                                "randstack views; the published n)", minimum=0)
    randaugment_magnitude: int = spec(10, RECIPE, "ImageNet-scale RandAugment level (view 0, and the sim-rand / "
                                      "randstack views; the published m, of 10)", minimum=0, maximum=10)
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
    # Registered in ccmix.method.mixers, so the name is checked against that registry when training starts.
    mixer: str = spec("cutmix", RECIPE, "how cutmix and concutmix mix two images: cutmix, or a mixer registered with "
                      "ccmix.method.mixers.register_mixer (ce, la and bcl do not mix)")
    cutmix_prob: float = spec(0.5, RECIPE, "probability that a batch is mixed", minimum=0, maximum=1)
    cutmix_alpha: float = spec(1.0, RECIPE, "lambda ~ Beta(cutmix_alpha, cutmix_alpha)", above=0)
    cutmix_per_sample: bool = spec(False, RECIPE, "one box per image instead of one per batch (the reference)")
    cutmix_per_micro_batch: bool = spec(False, RECIPE, "with grad_accum_steps > 1, draw the mix decision and box "
                                        "per micro-batch (the published inat2018 loop) instead of per step")
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
    # The published scripts run nn.DataParallel over 4 GPUs: each BatchNorm sees a quarter of every forward batch.
    bn_chunks: int = spec(1, RECIPE, "BatchNorm normalises this many chunks of each forward batch separately, "
                          "running statistics from the first, as DataParallel over that many GPUs (published: 4)",
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
    cpu_bf16: bool = spec(False, RUNTIME, "bf16 autocast on the CPU (opt-in; needs native bf16: AVX-512-BF16, "
                          "AMX or Arm BF16); evaluation stays fp32")
    channels_last: bool = spec(True, RUNTIME, "channels-last memory format, CUDA only")
    compile: bool = spec(False, RUNTIME, "torch.compile the training step (model and losses; CUDA graphs on one GPU)")
    deterministic: bool = spec(True, RUNTIME, "deterministic kernels (CUDA: cuDNN, cuBLAS too; off: cuDNN benchmark)")
    tf32: bool = spec(True, RUNTIME, "TF32 for CUDA convolutions and matmuls; on, as torch's default for cuDNN convs "
                      "(nearly all of a ResNet's work; its matmul default is off); no effect on the CPU")
    cuda_graphs: bool = spec(True, RUNTIME, "with compile on one CUDA device: CUDA graphs of the step; CPU: no effect")
    sync_bn: bool | None = spec(None, RUNTIME, "synchronised BatchNorm across processes",
                                none_means="on when more than one process trains and bn_chunks is 1")
    max_steps_per_epoch: int | None = spec(None, RECIPE, "cap on steps an epoch for smoke runs and benchmarks",
                                           minimum=1, none_means="full epochs")
    progress: bool = spec(True, RUNTIME, "show progress bars")
    log_every: int = spec(50, RUNTIME, "steps between reads of the device: loss finiteness check and progress "
                          "figures (and at each epoch's end)", minimum=1)
    logger: str = spec("tensorboard", RUNTIME, "where the run's scalars go besides metrics.jsonl: TensorBoard "
                       "event files in the run folder, W&B (pip install ccmix[wandb]; offline unless WANDB_MODE "
                       "says otherwise) or none", choices=LOGGERS)

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
        if "eval_split" not in data and data.get("dataset") == "inat2018":
            # written before the field existed: inat2018 was evaluated on its val list, its only one
            data = dict(data, eval_split="val")
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
    _check_role(role)
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




def eval_splits_of(dataset: str) -> tuple[str, ...]:
    """Return the evaluation splits ``dataset`` has: its list files' val/test, else test only (CIFAR, folder,
    synthetic, whose test set is their only held-out set)."""
    files = SPLIT_FILES.get(dataset)
    return tuple(split for split in EVAL_SPLITS if split in files) if files else ("test",)


def list_files(config: TrainConfig) -> tuple[str, str]:
    """Return the (train, evaluation) split-file paths of a list dataset: an explicit ``test_list`` wins,
    else the standard file of ``config.eval_split`` inside ``data_root``."""
    files = SPLIT_FILES[config.dataset]
    train = config.train_list or os.path.join(config.data_root, files["train"])
    evaluation = config.test_list or os.path.join(config.data_root, files[config.eval_split])
    return train, evaluation



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
        _check_role(role)
    first, second = _config_dict(a), _config_dict(b)
    return [f.name for f in fields(TrainConfig)
            if f.metadata["role"] in roles and f.name in first and f.name in second
            and _comparable(first[f.name]) != _comparable(second[f.name])]



def resume_differences(saved: Mapping, requested: TrainConfig) -> list[str]:
    """Return the fields that differ between a run folder's saved config and ``requested`` and may not change
    on resume: recipe and seed fields, except ``epochs`` (a schedule may be extended or shortened)."""
    return [name for name in recipe_differences(saved, requested, roles=(RECIPE, SEED))
            if name not in RESUMABLE_RECIPE_FIELDS]



def check_field_names(values: Mapping, source: str = "parameter") -> None:
    """Raise ConfigError when a key is not a TrainConfig field."""
    known = field_names()
    for key in values:
        if key not in known:
            close = [k for k in sorted(known) if k.startswith(str(key)[:3])]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(field=str(key), problem=f"is not a config field{hint}", source=source,
                              detail="see `python -m ccmix presets --fields` and TrainConfig")





__all__ = [
    "ConfigError", "TrainConfig", "Rule", "ROLES", "RECIPE", "SEED", "RUNTIME", "fields_table", "field_names",
    "field_role", "field_help", "field_rule", "fields_with_role", "recipe_fields", "recipe_differences",
    "resume_differences", "list_files", "eval_splits_of", "spec",
]
