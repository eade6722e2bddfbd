"""Parameter checking for the notebooks, and the train notebook's parameters turned into a run.

Papermill only warns about ``-p`` names that the notebook does not define, and
injects them anyway; a typo such as ``-p epoch 5`` would then train the full
schedule. The notebooks therefore call :func:`check_notebook_parameters` in
their second cell, which stops with one sentence naming the unknown parameter.
:func:`resolve_train_parameters` turns the train notebook's parameters into a
validated :class:`~ccmix.config.TrainConfig` and a run folder, starting from the
published Contrastive CutMix preset for the dataset and imbalance (Pan et al.,
"Enhanced Long-Tailed Recognition with Contrastive CutMix Augmentation",
IEEE TIP 2024).

Relative paths: ``data_root`` and ``out_dir`` are taken from the repository
root (as on the command line); ``figures_dir`` and ``run_dirs`` from the
notebooks folder (so the notebooks' default ``../figures`` is the repository's
``figures/``), whatever directory the kernel was started in.
"""

from __future__ import annotations

import ast
import math
import os
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ccmix.config import (
    LIST_DATASETS,
    PRESETS,
    PUBLISHED_TOP1,
    ConfigError,
    TrainConfig,
    apply_overrides,
    check_parameter,
    matches_preset,
    preset_for,
    preset_name_for,
    published_top1_for,
    recipe_differences,
    shown_value,
    validate,
)
from ccmix.config import preset as preset_config

# Every notebook's parameters and their defaults (the notebooks' `parameters` cells hold the same values).
# The train notebook's are all None, "not given": a given value is never mistaken for a default, so one that
# contradicts an explicit preset can be refused.
NOTEBOOK_PARAMETERS: dict[str, dict[str, object]] = {
    "train": {
        "preset": None, "dataset": None, "data_root": None, "imb": None, "method": None, "epochs": None,
        "seed": None, "batch_size": None, "device": None, "out_dir": None, "overrides": None, "figures_dir": None,
        "nproc_per_node": None,
    },
    "explore_cutmix": {
        "dataset": "synthetic", "data_root": "data", "imb": 100, "checkpoint": None, "seed": 0,
        "figures_dir": "../figures",
    },
    "analyze": {"run_dirs": "../papermill_runs/*", "figures_dir": "../figures", "tsne_max_items": 2000},
    "sweep": {
        "methods": ["la", "concutmix"], "imbs": [100], "seeds": [0], "base_params": {},
        "runs_dir": "papermill_runs", "launcher": "local", "jobs": 1, "slurm": {}, "redo_mismatched": False,
        "kernel": "python3",
    },
}

# Names IPython puts in a notebook's namespace; never parameters.
_IPYTHON_NAMES = {"In", "Out", "exit", "quit", "get_ipython", "open"}
# The comment papermill writes at the top of the cell it injects.
_INJECTED_HEADER = "# Parameters"
# Datasets whose published presets are indexed by imbalance (cifar10_imb100, ...).
_CIFAR_PRESET_IMBS = (100, 50, 10)
_DEFAULT_RUNS_DIR = "papermill_runs"
# What the train notebook trains when neither preset nor dataset nor imb is given.
_DEFAULT_DATASET, _DEFAULT_IMB = "cifar100", 100.0


# --------------------------------------------------------------------------- locations


def find_repo_root(start: str | os.PathLike | None = None) -> Path:
    """Return the repository root: the nearest folder at or above ``start`` (default: the working dir) holding
    ``pyproject.toml`` and ``ccmix/``, else the checkout the imported package lives in, else ``start`` itself."""
    here = Path(start if start is not None else os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if _is_repo_root(folder):
            return folder
    package_checkout = Path(__file__).resolve().parents[1]
    if _is_repo_root(package_checkout):
        return package_checkout
    return here


def _is_repo_root(folder: Path) -> bool:
    return (folder / "pyproject.toml").is_file() and (folder / "ccmix" / "__init__.py").is_file()


def notebooks_dir(repo_root: str | os.PathLike | None = None) -> Path:
    """Return the folder the notebooks live in (``<repo root>/notebooks``)."""
    return Path(repo_root) / "notebooks" if repo_root is not None else find_repo_root() / "notebooks"


def resolve_path(path: str | os.PathLike, base: str | os.PathLike) -> Path:
    """Return ``path`` made absolute: unchanged when absolute, else taken from ``base``; ``~`` is expanded."""
    expanded = Path(os.path.expanduser(os.fspath(path)))
    return expanded if expanded.is_absolute() else (Path(base) / expanded).resolve()


# --------------------------------------------------------------------------- unknown names


def injected_parameter_names(history: Iterable[str]) -> list[str]:
    """Return the names assigned in the cells papermill injected (sources starting ``# Parameters``)."""
    names: list[str] = []
    for source in history:
        if not isinstance(source, str) or not source.lstrip().startswith(_INJECTED_HEADER):
            continue
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            names += [t.id for t in targets if isinstance(t, ast.Name) and t.id not in names]
    return names


def _candidate_names(namespace: Mapping) -> list[str]:
    """Return the names in a plain namespace that look like notebook parameters (data values, not code)."""
    names = []
    for name, value in namespace.items():
        if name.startswith("_") or name in _IPYTHON_NAMES:
            continue
        if isinstance(value, (types.ModuleType, type)) or callable(value):
            continue
        names.append(name)
    return names


def check_notebook_parameters(namespace_or_names: Mapping | Iterable[str], notebook: str = "train") -> dict:
    """Return ``{name: value}`` of the notebook's parameters; raise ConfigError naming the first unknown one.

    Give the notebook's ``globals()``: inside a kernel the names papermill injected are read from the
    cell history, so variables defined later in the notebook are never mistaken for parameters when a
    cell is re-run; a plain dict is checked by its data values. A list of names is checked as given.
    """
    if notebook not in NOTEBOOK_PARAMETERS:
        raise ValueError(f"notebook {notebook!r} is unknown; accepted: {', '.join(NOTEBOOK_PARAMETERS)}")
    known = NOTEBOOK_PARAMETERS[notebook]
    if isinstance(namespace_or_names, Mapping):
        namespace = namespace_or_names
        history = namespace.get("In")
        if isinstance(history, list):
            given = injected_parameter_names(history)
        else:
            given = _candidate_names(namespace)
    else:
        namespace = {}
        given = list(namespace_or_names)
    for name in given:
        if name not in known:
            raise _unknown_parameter_error(name, notebook)
    return {name: namespace.get(name, default) for name, default in known.items()} if namespace else {}


def _unknown_parameter_error(name: str, notebook: str) -> ConfigError:
    accepted = ", ".join(NOTEBOOK_PARAMETERS[notebook])
    problem = f"is not a parameter of the {notebook} notebook"
    if notebook == "train" and name in TrainConfig.__dataclass_fields__:
        return ConfigError(field=name, problem=problem, source="parameter", accepted=accepted,
                           detail=f"it is a config field, so pass it through overrides, e.g. -y \"overrides: "
                                  f"{{{name}: ...}}\" (notebook parameters: {accepted})")
    close = [k for k in NOTEBOOK_PARAMETERS[notebook] if k.startswith(name[:3]) or name.startswith(k[:3])]
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return ConfigError(field=name, problem=problem + hint, source="parameter", accepted=accepted,
                       detail=f"accepted: {accepted}")


# --------------------------------------------------------------------------- the train notebook


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

    if preset is not None and not isinstance(preset, str):
        raise ConfigError(f"parameter preset={preset!r} is not accepted; give a preset name or None")
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"parameter preset={preset!r} is unknown; accepted: None, {', '.join(PRESETS)}")
    given = {"dataset": dataset, "imb": imb}  # as the user wrote them, for sentences
    from_preset = "the preset's" if preset is not None else None
    dataset = check_parameter("dataset", dataset, optional=True, none_means=from_preset or f"not given: {_DEFAULT_DATASET}")
    imb = check_parameter("imb", imb, optional=True, none_means=from_preset or f"not given: {_DEFAULT_IMB:g}")
    method = check_parameter("method", method, optional=True, none_means="the preset's")
    device = check_parameter("device", device, optional=True, none_means="the preset's")
    epochs = check_parameter("epochs", epochs, optional=True, none_means="the preset's")
    seed = check_parameter("seed", seed, optional=True, none_means="the preset's")
    batch_size = check_parameter("batch_size", batch_size, optional=True, none_means="the preset's")
    nproc_per_node = check_parameter("nproc_per_node", nproc_per_node, kind="int", minimum=1, optional=True,
                                     none_means="1, this process") or 1
    data_root = check_parameter("data_root", data_root, optional=True, none_means="the preset's")
    out_dir = check_parameter("out_dir", out_dir, kind="path", optional=True)
    figures_dir = check_parameter("figures_dir", figures_dir, kind="path", optional=True)
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, Mapping):
        raise ConfigError(
            f"parameter overrides={overrides!r} is not accepted; it takes a mapping of config fields to values, "
            "e.g. -y \"overrides: {topk: 10}\""
        )

    # --- where the config starts; `named_after` is the preset whose dataset and imb the run keeps
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
    else:
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

    # --- the notebook's own knobs (those given), then the overrides
    knobs = {"method": method, "seed": seed, "device": device, "data_root": data_root, "epochs": epochs,
             "batch_size": batch_size}
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
    validate(config)

    # --- does this reproduce a published preset? the same rule the run folder's summary.json follows
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

    if named_after is not None and changed_dataset_or_imb(config, PRESETS[named_after]):
        named_after = None  # an override moved the run to another dataset or imbalance
    run_name = default_run_name(named_after, config.dataset, config.method, config.imb, config.seed)
    run_dir = resolve_path(out_dir, root) if out_dir is not None else root / _DEFAULT_RUNS_DIR / run_name
    if figures_dir is None:
        figures_path = root / "figures" / run_dir.name
    else:
        figures_path = resolve_path(figures_dir, notebooks_dir(root))
    return TrainRun(
        config=config, out_dir=run_dir, figures_dir=figures_path, run_name=run_dir.name, base=base,
        preset=reproduces, notes=notes, nproc_per_node=nproc_per_node, requested_preset=preset,
    )


def train(run: TrainRun) -> dict:
    """Train ``run`` and return its summary: in this process, or under torchrun when nproc_per_node > 1.

    With several processes the run starts as a subprocess (``ccmix.launch``) and its
    progress is followed epoch by epoch from metrics.jsonl, so the notebook stays responsive.
    """
    if run.nproc_per_node == 1:
        from ccmix.engine import fit

        return fit(run.config, run.out_dir, preset=run.requested_preset)
    from ccmix.io import read_json
    from ccmix.launch import follow_run, launch_torchrun

    process = launch_torchrun(run.requested_preset, run.config.to_dict(), run.out_dir, run.nproc_per_node)
    for _ in follow_run(run.out_dir, process):
        pass
    return read_json(Path(run.out_dir) / "summary.json")


def describe_summary(summary: dict) -> str:
    """Return the final and best top-1 (with many/medium/few) of a run summary as a few lines of text."""

    def groups(result: dict) -> str:
        return " / ".join("empty" if result.get(g) is None else f"{result[g]:.2f}" for g in ("many", "medium", "few"))

    final, best = summary.get("final") or {}, summary.get("best") or {}
    lines = [f"status {summary.get('status')}, {summary.get('epochs_completed')} of {summary.get('epochs')} epochs"]
    if summary.get("error"):
        lines.append(f"error: {summary['error']}")
    if final.get("top1") is not None:
        lines.append(f"final top-1 {final['top1']:.2f} (epoch {final.get('epoch')}); many / medium / few: {groups(final)}")
    if best.get("top1") is not None:
        lines.append(f"best top-1  {best['top1']:.2f} (epoch {best.get('epoch')}; {best.get('note') or 'selected on the test set, optimistic'}); "
                     f"many / medium / few: {groups(best)}")
    if summary.get("published_top1") is not None:
        lines.append(f"published top-1 of preset {summary.get('preset')}: {summary['published_top1']:.2f}")
    return "\n".join(lines)


def resolve_run_dirs(run_dirs, base: str | os.PathLike | None = None) -> list[Path]:
    """Return the run folders (holding config.json) named by ``run_dirs``: a glob string or a list of paths
    and globs, relative ones taken from ``base`` (default: the notebooks folder); ConfigError when none."""
    import glob

    if isinstance(run_dirs, (str, os.PathLike)):
        patterns = [os.fspath(run_dirs)]
    elif isinstance(run_dirs, (list, tuple)) and all(isinstance(p, (str, os.PathLike)) for p in run_dirs):
        patterns = [os.fspath(p) for p in run_dirs]
    else:
        raise ConfigError(f"parameter run_dirs={run_dirs!r} is not accepted; give a glob string or a list of folders")
    folder = Path(base) if base is not None else notebooks_dir()
    found: list[Path] = []
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        full = expanded if os.path.isabs(expanded) else os.path.join(folder, expanded)
        matches = sorted(glob.glob(full)) if glob.has_magic(full) else [full]
        for match in matches:
            path = Path(match).resolve()
            if (path / "config.json").is_file() and path not in found:
                found.append(path)
    if not found:
        raise ConfigError(
            f"parameter run_dirs={run_dirs!r} is not accepted; it names no run folder (a folder with config.json) "
            f"when taken from {str(folder)!r}"
        )
    return found


def resolve_analyze_parameters(run_dirs="../papermill_runs/*", figures_dir="../figures", tsne_max_items=2000,
                               repo_root: str | os.PathLike | None = None) -> tuple[list[Path], Path, int | None]:
    """Return (run folders, figures folder, t-SNE image cap) of the analyze notebook's parameters; ConfigError
    (one sentence) on a bad value. Relative paths are taken from the notebooks folder."""
    base = notebooks_dir(repo_root if repo_root is not None else find_repo_root())
    figures_dir = check_parameter("figures_dir", figures_dir, kind="path")
    tsne_max_items = check_parameter("tsne_max_items", tsne_max_items, kind="int", minimum=4, optional=True,
                                     none_means="every test image")
    return resolve_run_dirs(run_dirs, base=base), resolve_path(figures_dir, base), tsne_max_items


def changed_dataset_or_imb(config: TrainConfig, reference: TrainConfig) -> bool:
    """True when ``config`` trains another dataset or imbalance than ``reference``."""
    return config.dataset != reference.dataset or config.imb != reference.imb


__all__ = [
    "NOTEBOOK_PARAMETERS", "TrainRun", "check_notebook_parameters", "default_run_name", "describe_summary",
    "find_repo_root", "resolve_analyze_parameters", "resolve_run_dirs",
    "injected_parameter_names", "nearest_base_preset", "notebooks_dir", "resolve_path", "resolve_train_parameters",
]
