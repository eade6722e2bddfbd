"""The train notebook's parameters turned into a validated run, and that run trained.

:func:`resolve_train_parameters` turns the train notebook's parameters into a
validated :class:`~ccmix.config.fields.TrainConfig` and a run folder, starting from the
published Contrastive CutMix preset for the dataset and imbalance (Pan et al.,
"Enhanced Long-Tailed Recognition with Contrastive CutMix Augmentation",
IEEE TIP 2024). ``data_root`` and ``out_dir`` are taken from the repository root,
``figures_dir`` from the notebooks folder. Every public name here is also importable
from :mod:`ccmix.experiments.notebook_params`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ccmix.config.fields import LIST_DATASETS, TrainConfig, recipe_differences
from ccmix.config.presets import (
    PRESETS,
    PUBLISHED_TOP1,
    matches_preset,
    preset_for,
    preset_name_for,
    published_top1_for,
)
from ccmix.config.presets import preset as preset_config
from ccmix.config.rules import ConfigError, shown_value
from ccmix.config.validation import apply_overrides, check_parameter, validate
from ccmix.experiments.locations import find_repo_root, notebooks_dir, resolve_path

# Datasets whose published presets are indexed by imbalance (cifar10_imb100, ...).
_CIFAR_PRESET_IMBS = (100, 50, 10)
_DEFAULT_RUNS_DIR = "papermill_runs"
# What the train notebook trains when neither preset nor dataset nor imb is given.
_DEFAULT_DATASET, _DEFAULT_IMB = "cifar100", 100.0


@dataclass
class TrainRun:
    """What the train notebook runs: the validated config, where it writes, and how it was chosen."""

    config: TrainConfig
    out_dir: Path
    figures_dir: Path
    run_name: str
    base: str | None  # the preset the config started from (None: the TrainConfig defaults)
    preset: str | None  # the published preset this run reproduces (every recipe field equal), else None
    notes: list[str] = field(default_factory=list)
    nproc_per_node: int = 1  # > 1: train under torchrun in a subprocess (one process a GPU)
    requested_preset: str | None = None  # the notebook's explicit preset parameter, handed to training as given

    @property
    def published_top1(self) -> float | None:
        """Return the published top-1 (%) this run can be compared with, or None (the run folder records the same)."""
        return published_top1_for(self.config, self.requested_preset)

    def describe(self) -> str:
        """Return a few lines saying what will be trained, from which preset, and where it is written."""
        cfg = self.config
        lines = [
            f"run        {self.run_name}",
            f"config     {cfg.dataset} imb {cfg.imb:g}, method {cfg.method}, {cfg.epochs} epochs, "
            f"batch {cfg.batch_size}, seed {cfg.seed}, device {cfg.device}",
            f"preset     {self.preset} (published top-1 {self.published_top1:.2f})" if self.published_top1 is not None
            else f"preset     {self.preset}" if self.preset
            else f"preset     none reproduced; the config starts from {self.base or 'the TrainConfig defaults'}",
            f"run folder {self.out_dir}",
            f"figures    {self.figures_dir}",
        ]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def nearest_base_preset(dataset: str, imb: float, num_classes: int | None = None) -> str | None:
    """Return the preset a dataset without a published one for ``imb`` starts from, or None (the defaults).

    ``num_classes`` (folder datasets) picks the CIFAR-10 recipe for up to 10 classes, else CIFAR-100.
    """
    if dataset == "folder":
        dataset = "cifar10" if num_classes is not None and num_classes <= 10 else "cifar100"
    if dataset in ("cifar10", "cifar100"):
        # Nearest published imbalance on a log scale (imb 20 is closer to 10 than to 50).
        nearest = min(_CIFAR_PRESET_IMBS, key=lambda published: (abs(math.log(imb / published)), -published))
        return f"{dataset}_imb{nearest}"
    if dataset == "synthetic":
        return "cifar10_imb100"  # ten classes by default, like CIFAR-10: top-k 3 fits
    if dataset == "inat2018":
        return "inat2018_resnet50_100"
    if dataset in LIST_DATASETS:
        return "imagenet_lt_resnet50_100"
    return "cifar100_imb100"


def default_run_name(preset_name: str | None, dataset: str, method: str, imb: float, seed: int) -> str:
    """Return ``<preset-or-dataset>_<method>_imb<imb>_seed<seed>``, the default run folder name."""
    return f"{preset_name or dataset}_{method}_imb{imb:g}_seed{seed}"


def resolve_train_parameters(
    preset: str | None = None,
    dataset: str | None = None,
    data_root: str | os.PathLike | None = None,
    imb: float | None = None,
    method: str | None = None,
    epochs: int | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    out_dir: str | os.PathLike | None = None,
    overrides: dict | None = None,
    figures_dir: str | os.PathLike | None = None,
    nproc_per_node: int | None = None,
    repo_root: str | os.PathLike | None = None,
) -> TrainRun:
    """Return the :class:`TrainRun` for the train notebook's parameters; ConfigError (one sentence) on a bad value.

    None means "not given". Without ``preset``, the published preset for (dataset, imb) is used
    (default cifar100, imb 100); a combination without one starts from the nearest sensible preset and
    says so in ``notes``. With ``preset``, dataset and imb come from the preset: giving another value
    for either is refused, as the two would contradict each other (change them through ``overrides``
    to start from a preset on purpose). ``method``, ``epochs``, ``seed``, ``batch_size``, ``device`` and
    ``data_root`` change the starting config when given; ``overrides`` (config field -> value) apply last.
    """
    root = Path(repo_root) if repo_root is not None else find_repo_root()
    notes: list[str] = []
    given = {"dataset": dataset, "imb": imb}  # as the user wrote them, for sentences
    checked = _check_train_parameters(
        preset, dataset=dataset, imb=imb, method=method, device=device, epochs=epochs, seed=seed,
        batch_size=batch_size, nproc_per_node=nproc_per_node, data_root=data_root, out_dir=out_dir,
        figures_dir=figures_dir,
    )
    overrides = _check_overrides(overrides)
    config, base, named_after = _starting_config(preset, checked["dataset"], checked["imb"], checked["data_root"],
                                                 given=given, root=root, notes=notes)
    knobs = {key: checked[key] for key in ("method", "seed", "device", "data_root", "epochs", "batch_size")}
    config = _configured(config, knobs, overrides, root=root, notes=notes)
    reproduces = _reproduced_preset(config, preset, base=base, named_after=named_after, notes=notes)

    if named_after is not None and changed_dataset_or_imb(config, PRESETS[named_after]):
        named_after = None  # an override moved the run to another dataset or imbalance
    run_name = default_run_name(named_after, config.dataset, config.method, config.imb, config.seed)
    out_dir, figures_dir = checked["out_dir"], checked["figures_dir"]
    run_dir = resolve_path(out_dir, root) if out_dir is not None else root / _DEFAULT_RUNS_DIR / run_name
    if figures_dir is None:
        figures_path = root / "figures" / run_dir.name
    else:
        figures_path = resolve_path(figures_dir, notebooks_dir(root))
    return TrainRun(
        config=config, out_dir=run_dir, figures_dir=figures_path, run_name=run_dir.name, base=base,
        preset=reproduces, notes=notes, nproc_per_node=checked["nproc_per_node"], requested_preset=preset,
    )


def _check_train_parameters(preset, **values) -> dict:
    """Return the train notebook's parameters (but overrides) checked and converted; ConfigError on a bad one."""
    if preset is not None and not isinstance(preset, str):
        raise ConfigError(f"parameter preset={preset!r} is not accepted; give a preset name or None")
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"parameter preset={preset!r} is unknown; accepted: None, {', '.join(PRESETS)}")
    from_preset = "the preset's" if preset is not None else None
    checked = {
        "dataset": check_parameter("dataset", values["dataset"], optional=True,
                                   none_means=from_preset or f"not given: {_DEFAULT_DATASET}"),
        "imb": check_parameter("imb", values["imb"], optional=True,
                               none_means=from_preset or f"not given: {_DEFAULT_IMB:g}"),
    }
    for name in ("method", "device", "epochs", "seed", "batch_size"):
        checked[name] = check_parameter(name, values[name], optional=True, none_means="the preset's")
    checked["nproc_per_node"] = check_parameter("nproc_per_node", values["nproc_per_node"], kind="int", minimum=1,
                                                optional=True, none_means="1, this process") or 1
    checked["data_root"] = check_parameter("data_root", values["data_root"], optional=True,
                                           none_means="the preset's")
    for name in ("out_dir", "figures_dir"):
        checked[name] = check_parameter(name, values[name], kind="path", optional=True)
    return checked


def _check_overrides(overrides) -> Mapping:
    """Return the overrides parameter as a mapping ({} for None); ConfigError when it is not one."""
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise ConfigError(
            f"parameter overrides={overrides!r} is not accepted; it takes a mapping of config fields to values, "
            "e.g. -y \"overrides: {topk: 10}\""
        )
    return overrides


def _starting_config(preset: str | None, dataset: str | None, imb: float | None, data_root, *, given: dict,
                     root: Path, notes: list[str]) -> tuple[TrainConfig, str, str | None]:
    """Return (config, base, named_after): where the config starts, the preset it starts from, and the preset
    whose dataset and imb the run keeps (None when there is no published one for them)."""
    if preset is not None:
        base = named_after = preset
        config = preset_config(base)
        for name, value in (("dataset", dataset), ("imb", imb)):
            if value is not None and value != getattr(config, name):
                raise ConfigError(
                    field=name, value=given[name], source="parameter", problem=f"contradicts preset={base!r}",
                    detail=f"that preset trains {name}={shown_value(getattr(config, name))}; leave {name} None to "
                           f"take it from the preset, or change it through overrides",
                )
        notes.append(f"dataset and imb come from preset {base}: {config.dataset}, imb {config.imb:g}")
        return config, base, named_after
    dataset = dataset if dataset is not None else _DEFAULT_DATASET
    imb_value = imb if imb is not None else _DEFAULT_IMB
    named_after = preset_for(dataset, imb_value) if dataset in ("cifar10", "cifar100") else None
    if named_after is None and dataset == "imagenet_lt":
        named_after = "imagenet_lt_resnet50_100"
    if named_after is None and dataset == "inat2018":
        named_after = "inat2018_resnet50_100"
    if named_after is not None:
        base = named_after
        config = preset_config(base)
    else:
        folder = resolve_path(data_root if data_root is not None else TrainConfig.data_root, root)
        classes = (TrainConfig(dataset="folder", data_root=os.fspath(folder)).num_classes
                   if dataset == "folder" and os.path.isdir(folder / "train") else None)
        base = nearest_base_preset(dataset, imb_value, num_classes=classes)
        config = preset_config(base).replace(dataset=dataset, imb=imb_value)
        notes.append(
            f"there is no published preset for {dataset} at imb {imb_value:g}; starting from {base} "
            f"with dataset={dataset} and imb={imb_value:g}"
        )
    if config.dataset in LIST_DATASETS and imb is not None and imb != config.imb:
        notes.append(f"imb={imb:g} has no effect on {config.dataset}: its training split is long-tailed already")
    return config, base, named_after


def _configured(config: TrainConfig, knobs: dict, overrides: Mapping, *, root: Path,
                notes: list[str]) -> TrainConfig:
    """Return ``config`` with the notebook's own knobs (those given), then the overrides, applied and validated;
    data_root made absolute and topk capped at a small dataset's classes."""
    config = config.replace(**{key: value for key, value in knobs.items() if value is not None})
    if overrides and not all(isinstance(key, str) for key in overrides):
        key = next(key for key in overrides if not isinstance(key, str))
        raise ConfigError(f"overrides key {key!r} is not accepted; keys are config field names (text)")
    config = apply_overrides(config, overrides, source="overrides")
    config = config.replace(data_root=os.fspath(resolve_path(config.data_root, root)))
    if config.dataset == "synthetic" and "topk" not in overrides and config.topk > config.synthetic_classes:
        config = config.replace(topk=config.synthetic_classes)
        notes.append(f"topk capped at synthetic_classes={config.synthetic_classes}")
    if config.dataset == "folder" and "topk" not in overrides and os.path.isdir(os.path.join(config.data_root, "train")):
        if config.num_classes >= 2 and config.topk > config.num_classes:
            config = config.replace(topk=config.num_classes)
            notes.append(f"topk capped at the {config.num_classes} classes of the folder dataset")
    return validate(config)


def _reproduced_preset(config: TrainConfig, preset: str | None, *, base: str, named_after: str | None,
                       notes: list[str]) -> str | None:
    """Return the published preset ``config`` reproduces (the rule the run folder's summary.json follows), or
    None; notes say when a preset was changed and when the schedule skips semantic labels or decays."""
    candidate = preset_name_for(config, preset)
    reproduces = candidate if matches_preset(config, candidate) else None
    if reproduces is None and named_after is not None and base in PUBLISHED_TOP1:
        differences = ", ".join(f"{key}={shown_value(getattr(config, key))}"
                                for key in recipe_differences(config, PRESETS[base]))
        notes.append(
            f"{base} changed ({differences}): its published top-1 {PUBLISHED_TOP1[base]:.2f} does not apply directly"
        )
    if config.method == "concutmix" and config.epochs <= config.l_d_warm + 1:
        notes.append(
            f"epochs={config.epochs} <= l_d_warm + 1={config.l_d_warm + 1}: semantic labels never start (they start "
            "after epoch l_d_warm, 0-based), every mixed "
            "image keeps its area label"
        )
    late = [m for m in config.milestones if m > config.epochs]
    if config.schedule == "step" and late:
        notes.append(f"milestones {', '.join(map(str, late))} lie beyond epoch {config.epochs}: those decays never happen")
    return reproduces


def train(run: TrainRun, on_epoch: Sequence[Callable[[dict], None]] | None = None) -> dict:
    """Train ``run`` and return its summary: in this process, or under torchrun when nproc_per_node > 1.

    ``on_epoch``: callables given each epoch's metrics.jsonl record as it is saved (live curves).
    With several processes the run starts as a subprocess (``ccmix.train.launch``) whose output goes to
    its launch.log; its progress is followed epoch by epoch from metrics.jsonl, so the notebook stays
    responsive and prints each epoch's line once, as an in-process run does.
    """
    if run.nproc_per_node == 1:
        from ccmix.train.fit import fit

        return fit(run.config, run.out_dir, preset=run.requested_preset, on_epoch=on_epoch)
    from tqdm.auto import tqdm

    from ccmix.io import read_json
    from ccmix.train.launch import follow_run, launch_torchrun
    from ccmix.train.report import epoch_line

    process = launch_torchrun(run.requested_preset, run.config.to_dict(), run.out_dir, run.nproc_per_node)
    for record in follow_run(run.out_dir, process, progress=run.config.progress):
        if run.config.progress:
            tqdm.write(epoch_line(record, epochs=run.config.epochs, seconds_left=None))
        for callback in on_epoch or ():
            callback(record)
    return read_json(Path(run.out_dir) / "summary.json")


def describe_summary(summary: dict) -> str:
    """Return the final and best top-1 (with many/medium/few) of a run summary as a few lines of text."""

    def groups(result: dict) -> str:
        return " / ".join("empty" if result.get(g) is None else f"{result[g]:.2f}" for g in ("many", "medium", "few"))

    final, best = summary.get("final") or {}, summary.get("best") or {}
    from ccmix.train.run_folder import SPLIT_WORDS, best_note

    split = summary.get("eval_split", "test")
    lines = [f"status {summary.get('status')}, {summary.get('epochs_completed')} of {summary.get('epochs')} epochs, "
             f"evaluated on the {SPLIT_WORDS.get(split, split)} set"]
    if summary.get("error"):
        lines.append(f"error: {summary['error']}")
    if final.get("top1") is not None:
        lines.append(f"final top-1 {final['top1']:.2f} (epoch {final.get('epoch')}); many / medium / few: {groups(final)}")
    if best.get("top1") is not None:
        lines.append(f"best top-1  {best['top1']:.2f} (epoch {best.get('epoch')}; {best.get('note') or best_note(split)}); "
                     f"many / medium / few: {groups(best)}")
    if summary.get("published_top1") is not None:
        lines.append(f"published top-1 of preset {summary.get('preset')}: {summary['published_top1']:.2f}")
    return "\n".join(lines)


def changed_dataset_or_imb(config: TrainConfig, reference: TrainConfig) -> bool:
    """True when ``config`` trains another dataset or imbalance than ``reference``."""
    return config.dataset != reference.dataset or config.imb != reference.imb
