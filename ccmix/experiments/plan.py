"""A sweep's plan: the grid's points as validated runs, and whether a run folder may be reused.

Each point of a sweep over methods x imbalances x seeds (the comparison of Contrastive
CutMix, Pan et al., "Enhanced Long-Tailed Recognition with Contrastive CutMix
Augmentation", IEEE TIP 2024, with its baselines) becomes a :class:`PlannedRun` with
its own run folder. A folder that already holds another recipe or seed is refused, or
moved aside when asked. Every public name here is also importable from
:mod:`ccmix.experiments.sweep`.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ccmix.config.fields import TrainConfig, recipe_differences
from ccmix.config.rules import ConfigError, shown_value
from ccmix.experiments.grid import check_grid, grid_combinations, grid_run_name
from ccmix.experiments.locations import find_repo_root
from ccmix.experiments.notebook_params import check_notebook_parameters
from ccmix.experiments.train_params import resolve_train_parameters
from ccmix.train.run_folder import RunFolder

GRID_KEYS = ("method", "imb", "seed")
REPLACED_DIR = "replaced"  # runs_dir/replaced/<run>-<time>: run folders moved aside by redo_mismatched


def differences_text(saved: dict, requested: dict, roles: tuple[str, ...] = ("recipe", "seed")) -> list[str]:
    """Return "field (saved X, requested Y)" for every field of ``roles`` on which the config dicts differ."""
    return [f"{name} (saved {shown_value(saved[name])}, requested {shown_value(requested[name])})"
            for name in recipe_differences(saved, requested, roles=roles)]


@dataclass(frozen=True)
class PlannedRun:
    """One grid point: its validated config, run folder, and the train-notebook parameters that chose it."""

    name: str
    out_dir: Path
    config: TrainConfig
    preset: str | None  # the published preset it reproduces (recorded in config.json), else None
    params: dict  # train-notebook parameters (the papermill launcher), out_dir included
    nproc_per_node: int = 1

    def overrides(self) -> dict:
        """Return the config fields (name -> value) that differ from the preset (or the defaults) it starts from."""
        start = (_preset_config(self.preset) if self.preset else TrainConfig()).to_dict()
        return {key: value for key, value in self.config.to_dict().items() if start[key] != value}

    def train_arguments(self) -> list[str]:
        """Return the arguments of ``python -m ccmix`` that train this run: ``train [--preset P] --set ... --out``."""
        from ccmix.train.launch import train_arguments

        return train_arguments(self.preset, self.overrides(), self.out_dir)

    def command(self, python: str | None = None) -> list[str]:
        """Return the command that trains this run: ``python -m ccmix train ...``, under torchrun for several
        processes."""
        from ccmix.train.launch import torchrun_command

        if self.nproc_per_node > 1:
            return torchrun_command(self.preset, self.overrides(), self.out_dir, self.nproc_per_node, python=python)
        return [python or sys.executable, "-m", "ccmix", *self.train_arguments()]


def _preset_config(name: str) -> TrainConfig:
    from ccmix.config.presets import preset

    return preset(name)


def grid_points(methods: Sequence[str], imbs: Sequence[float], seeds: Sequence[int],
                grid: dict[str, list] | None = None) -> list[dict]:
    """Return the grid's points as dicts {method, imb, <grid field>..., seed}, in order, without repeats;
    ``grid`` is a checked ``{field: values}`` (see :func:`ccmix.experiments.grid.check_grid`)."""
    for name, values in (("methods", methods), ("imbs", imbs), ("seeds", seeds)):
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable) or not list(values):
            raise ConfigError(f"{name}={values!r} is not accepted; give a non-empty list")
    points = []
    for method, imb, values, seed in itertools.product(methods, imbs, grid_combinations(grid or {}), seeds):
        point = {"method": method, "imb": imb, **values, "seed": seed}
        if point not in points:
            points.append(point)
    return points


def plan_sweep(methods: Sequence[str], imbs: Sequence[float], seeds: Sequence[int], base_params: dict | None,
               runs_dir: str | os.PathLike, grid: dict | None = None) -> list[PlannedRun]:
    """Return the sweep's runs, every point validated before anything runs; ConfigError (one sentence) on a bad
    value. ``base_params`` are train-notebook parameters shared by every point; ``grid`` maps recipe fields to
    the values to vary (each combination becomes overrides, its values part of the run folder name)."""
    if base_params is not None and not isinstance(base_params, dict):
        raise ConfigError(f"base_params={base_params!r} is not accepted; give a dict of train-notebook parameters")
    if not isinstance(runs_dir, (str, os.PathLike)) or not os.fspath(runs_dir):
        raise ConfigError(f"runs_dir={runs_dir!r} is not accepted; give a folder path")
    base_params = dict(base_params or {})
    check_notebook_parameters(list(base_params), notebook="train")
    for key in (*GRID_KEYS, "out_dir"):
        if key in base_params:
            raise ConfigError(
                f"base_params sets {key!r}, which the sweep chooses itself (method, imb and seed from the grid, "
                "out_dir under runs_dir); remove it"
            )
    base_overrides = base_params.get("overrides") or {}
    if not isinstance(base_overrides, dict):
        raise ConfigError(f"parameter overrides={base_overrides!r} is not accepted; it takes a mapping of config "
                          "fields to values, e.g. {'topk': 10}")
    grid = check_grid(grid, base_overrides)
    root = find_repo_root()
    runs = Path(runs_dir).expanduser().resolve()
    plan = []
    for point in grid_points(methods, imbs, seeds, grid):
        varied = {name: _notebook_value(point.pop(name)) for name in grid}
        params = {**base_params, **point}
        if varied:
            params["overrides"] = {**base_overrides, **varied}
        run = resolve_train_parameters(**params, repo_root=root)
        out_dir = runs / grid_run_name(run.run_name, run.config.seed, varied)
        plan.append(PlannedRun(name=out_dir.name, out_dir=out_dir, config=run.config, preset=run.preset,
                               params={**params, "out_dir": str(out_dir)}, nproc_per_node=run.nproc_per_node))
    names = [run.name for run in plan]
    if len(set(names)) != len(names):
        raise ConfigError("the grid gives two points the same run folder name; check methods, imbs, seeds and the "
                          "--grid values (two values that read the same in a folder name)")
    return plan


def _notebook_value(value):
    """Return a grid value as a train-notebook parameter can carry it (YAML/JSON: lists, not tuples)."""
    return list(value) if isinstance(value, tuple) else value


def is_completed(run_dir: str | os.PathLike) -> bool:
    """True when the run folder holds a summary.json with status "completed"."""
    summary = RunFolder(run_dir).read_summary()
    return bool(summary) and summary.get("status") == "completed"


def reuse_differences(run: PlannedRun) -> list[str]:
    """Return how the run already in ``run.out_dir`` differs from the requested one in recipe and seed ([] when
    the folder holds no run yet, or the same one)."""
    config_path = run.out_dir / "config.json"
    if not config_path.is_file():
        return []
    saved = RunFolder(run.out_dir).read_config()
    if saved is None:
        return ["config.json (unreadable)"]
    return differences_text(saved, run.config.to_dict())


def move_aside(run: PlannedRun, runs: Path) -> Path:
    """Return where the run folder (and its executed notebook, if any) was moved: ``runs/replaced/<name>-<time>``."""
    target = runs / REPLACED_DIR / f"{run.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    suffix = 1
    while target.exists():
        target = target.with_name(f"{target.name.rsplit('+', 1)[0]}+{suffix}")
        suffix += 1
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(run.out_dir), str(target))
    notebook = runs / f"{run.name}.ipynb"
    if notebook.is_file():
        shutil.move(str(notebook), str(target / "train.ipynb"))
    return target


def check_reuse(plan: list[PlannedRun], runs: Path, redo_mismatched: bool) -> None:
    mismatched = [(run, differences) for run in plan if (differences := reuse_differences(run))]
    if not mismatched:
        return
    if not redo_mismatched:
        run, differences = mismatched[0]
        more = f" ({len(mismatched) - 1} more run folders differ too)" if len(mismatched) > 1 else ""
        raise ConfigError(
            f"run folder {str(run.out_dir)!r} holds a run that differs from the requested one in "
            f"{'; '.join(differences)}{more}; choose another runs_dir, or redo it (--redo-mismatched, "
            f"redo_mismatched=True), which moves the old folder into {str(runs / REPLACED_DIR)!r} and trains again"
        )
    for run, differences in mismatched:
        target = move_aside(run, runs)
        print(f"{run.name}: differs from the request in {'; '.join(differences)}; moved to {target}, training again",
              flush=True)
