"""Parameter checking for the notebooks, and the train notebook's parameters turned into a run.

Papermill only warns about ``-p`` names that the notebook does not define, and
injects them anyway; a typo such as ``-p epoch 5`` would then train the full
schedule. The notebooks therefore call :func:`check_notebook_parameters` in
their second cell, which stops with one sentence naming the unknown parameter.
:func:`resolve_train_parameters` turns the train notebook's parameters into a
validated :class:`~ccmix.config.fields.TrainConfig` and a run folder, starting from the
published Contrastive CutMix preset for the dataset and imbalance (Pan et al.,
"Enhanced Long-Tailed Recognition with Contrastive CutMix Augmentation",
IEEE TIP 2024).

Relative paths: ``data_root`` and ``out_dir`` are taken from the repository
root (as on the command line); ``figures_dir`` and ``run_dirs`` from the
notebooks folder (so the notebooks' default ``../figures`` is the repository's
``figures/``), whatever directory the kernel was started in.

The train notebook's parameters live in :mod:`ccmix.experiments.train_params` and the locations in
:mod:`ccmix.experiments.locations`; their public names are importable from here too.
"""

from __future__ import annotations

import ast
import os
import types
from collections.abc import Iterable, Mapping
from pathlib import Path

from ccmix.config.fields import TrainConfig
from ccmix.config.rules import ConfigError
from ccmix.config.validation import check_parameter
from ccmix.experiments.locations import find_repo_root, notebooks_dir, resolve_path
from ccmix.experiments.train_params import (
    TrainRun,
    default_run_name,
    describe_summary,
    nearest_base_preset,
    resolve_train_parameters,
)

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
    "ablate": {
        "grid": {"omega": [0.0, 0.0078]}, "methods": ["concutmix"], "imbs": [100], "seeds": [0, 1, 2],
        "dataset": "cifar10", "epochs": 200, "overrides": {}, "baseline": {"omega": 0.0},
        "runs_dir": "papermill_runs/ablate",
        "launcher": "local", "jobs": 1, "train": True, "figures_dir": "../figures/ablate",
    },
}

# Names IPython puts in a notebook's namespace; never parameters.
_IPYTHON_NAMES = {"In", "Out", "exit", "quit", "get_ipython", "open"}
# The comment papermill writes at the top of the cell it injects.
_INJECTED_HEADER = "# Parameters"


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


# --------------------------------------------------------------------------- the analyze notebook


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


__all__ = [
    "NOTEBOOK_PARAMETERS", "TrainRun", "check_notebook_parameters", "default_run_name", "describe_summary",
    "find_repo_root", "resolve_analyze_parameters", "resolve_run_dirs",
    "injected_parameter_names", "nearest_base_preset", "notebooks_dir", "resolve_path", "resolve_train_parameters",
]
