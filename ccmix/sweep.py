"""Sweeps: training over methods x imbalances x seeds, and mean ± std tables of run folders beside the paper.

Each grid point trains into its own run folder under ``runs_dir``, so a sweep's runs
are the same self-describing folders a single training run writes. Three launchers:

- ``local`` (default): ``python -m ccmix train ... --out DIR`` processes, ``jobs`` at a
  time; on one GPU they share it, several visible GPUs are handed out round-robin;
- ``slurm``: one SLURM job array through submitit, each task requeued on preemption
  and resuming its run folder (see :mod:`ccmix.sweep_slurm`);
- ``papermill``: ``notebooks/train.ipynb`` per point, one after another, the executed
  notebook kept beside its run folder.

A point whose folder already holds a completed run of the same recipe and seed is
skipped, so an interrupted sweep continues where it stopped; a folder holding another
recipe is refused (or, when asked, moved aside and trained again). Every run under
``runs_dir`` is gathered into ``runs_dir/results.csv`` as runs finish, with the
published top-1 (and many/medium/few where published) of the preset a run reproduces
and our gap to it. The methods compared are those of Contrastive CutMix (Pan et al.,
"Enhanced Long-Tailed Recognition with Contrastive CutMix Augmentation", IEEE TIP
2024) and its baselines (logit adjustment: Menon et al., ICLR 2021; BCL: Zhu et al.,
CVPR 2022).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ccmix.config import ConfigError, TrainConfig
from ccmix.io import write_text
from ccmix.notebook_params import (
    NOTEBOOK_PARAMETERS,
    check_notebook_parameters,
    find_repo_root,
    resolve_train_parameters,
)
from ccmix.run_folder import RunFolder

GRID_KEYS = ("method", "imb", "seed")
LAUNCHERS = ("local", "slurm", "papermill")
METRIC_COLUMNS = ("final_top1", "best_top1", "final_many", "final_medium", "final_few")
SHOT_KEYS = ("top1", "many", "medium", "few")
PUBLISHED_COLUMNS = tuple(f"published_{key}" for key in SHOT_KEYS)
GAP_COLUMNS = ("gap_final_top1", "gap_best_top1")  # ours minus published, percentage points
REPLACED_DIR = "replaced"  # runs_dir/replaced/<run>-<time>: run folders moved aside by redo_mismatched
_RESULT_COLUMNS = ("run", "path", "status", "epochs_completed", "final_epoch", "final_top1", "final_many",
                   "final_medium", "final_few", "best_epoch", "best_top1", "best_many", "best_medium", "best_few",
                   *PUBLISHED_COLUMNS, *GAP_COLUMNS, "train_seconds", "error")


# --------------------------------------------------------------------------- the paper's numbers


def differences_text(saved: dict, requested: dict, roles: tuple[str, ...] = ("recipe", "seed")) -> list[str]:
    """Return "field (saved X, requested Y)" for every field of ``roles`` on which the config dicts differ."""
    from ccmix.config import recipe_differences

    return [f"{name} (saved {_comparable(saved[name])!r}, requested {_comparable(requested[name])!r})"
            for name in recipe_differences(saved, requested, roles=roles)]


def _comparable(value):
    return list(value) if isinstance(value, tuple) else value


def published_results(config: dict) -> dict[str, float | None]:
    """Return the published top-1 and many/medium/few (%) of the preset a recorded config reproduces (any seed),
    as ``{"top1": ..., "many": ..., "medium": ..., "few": ...}``; None where nothing is published or no preset
    is reproduced."""
    from ccmix.config import PUBLISHED_SHOT_TOP1, matches_preset, preset_name_for, published_top1_for

    recorded = config.get("preset")
    name = preset_name_for(config, recorded if isinstance(recorded, str) else None)
    if not matches_preset(config, name):
        return dict.fromkeys(SHOT_KEYS)
    shots = PUBLISHED_SHOT_TOP1.get(name, {})
    return {"top1": published_top1_for(config, name), **{key: shots.get(key) for key in SHOT_KEYS[1:]}}


# --------------------------------------------------------------------------- tables of run folders


def _flatten(value):
    """Return a value a table cell can hold and group by (lists become text)."""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return value


def run_row(run_dir: str | os.PathLike) -> dict:
    """Return one table row of a run folder: its summary's final and best accuracies, the published numbers of
    the preset it reproduces with our gap to them, plus every config value."""
    path = Path(run_dir)
    folder = RunFolder(path)
    summary = folder.read_summary() or {}
    config = folder.read_config() or {}
    final, best = summary.get("final") or {}, summary.get("best") or {}
    row = {
        "run": path.name, "path": str(path), "status": summary.get("status", "missing"),
        "epochs_completed": summary.get("epochs_completed"), "final_epoch": final.get("epoch"),
        "best_epoch": best.get("epoch"), "train_seconds": summary.get("train_seconds"), "error": summary.get("error"),
    }
    for key in SHOT_KEYS:
        row[f"final_{key}"] = final.get(key)
        row[f"best_{key}"] = best.get(key)
    published = published_results(config) if config else dict.fromkeys(SHOT_KEYS)
    row.update({f"published_{key}": value for key, value in published.items()})
    for which in ("final", "best"):
        ours, theirs = row[f"{which}_top1"], published["top1"]
        row[f"gap_{which}_top1"] = ours - theirs if ours is not None and theirs is not None else None
    for key, value in config.items():
        if key not in ("class_names", "train_class_counts") and key not in row:
            row[key] = _flatten(value)
    return row


def collect_results(run_dirs: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """Return one row per run folder (see :func:`run_row`), in the order given."""
    rows = [run_row(path) for path in run_dirs]
    table = pd.DataFrame(rows)
    for column in _RESULT_COLUMNS:
        if column not in table:
            table[column] = None
    numeric = [c for c in _RESULT_COLUMNS if c.startswith(("final_", "best_", "published_", "gap_"))
               or c == "train_seconds"]
    for column in numeric:
        table[column] = pd.to_numeric(table[column], errors="coerce")  # JSON null -> NaN
    first = list(_RESULT_COLUMNS)
    return table[first + [c for c in table.columns if c not in first]]


PER_RUN_COLUMNS = ("run", "method", "dataset", "imb", "seed", "epochs", "status", "final_top1", "final_many",
                   "final_medium", "final_few", "best_top1", "best_epoch", "published_top1", "gap_final_top1")


def per_run_view(results: pd.DataFrame) -> pd.DataFrame:
    """Return the columns of :func:`collect_results` worth reading per run (final and best top-1 and groups, the
    published top-1 and our gap to it)."""
    return results[[c for c in PER_RUN_COLUMNS if c in results.columns]]


def run_folders(runs_dir: str | os.PathLike) -> list[Path]:
    """Return the run folders directly under ``runs_dir`` that hold a summary.json, sorted by name."""
    folder = Path(runs_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and (p / "summary.json").is_file())


def setting_columns(results: pd.DataFrame) -> list[str]:
    """Return the config columns that define a setting: the recipe fields (not the seed, nor where or how fast a
    run goes) and the preset."""
    from ccmix.config import recipe_fields

    return [c for c in (*recipe_fields(), "preset") if c in results.columns]


def summarize_runs(results: pd.DataFrame, metrics: Sequence[str] = METRIC_COLUMNS) -> pd.DataFrame:
    """Return mean and standard deviation (over seeds) of ``metrics`` per setting, completed runs only, beside
    the published numbers.

    Runs are grouped by every config value except seed and paths; the index shows the values that
    differ between settings (always method and imb). Columns: runs, seeds, ``<metric>_mean``,
    ``<metric>_std`` (sample standard deviation; NaN for a single run), ``published_top1`` (and
    many/medium/few) of the preset the setting reproduces, and ``gap_final_top1_mean`` /
    ``gap_best_top1_mean``: our mean minus the published top-1 (its std is the metric's std).
    """
    completed = results[results["status"] == "completed"] if "status" in results else results
    if completed.empty:
        return pd.DataFrame(columns=["runs", "seeds"])
    keys = setting_columns(completed)
    shown = [k for k in keys if k in ("method", "imb") or completed[k].astype(str).nunique() > 1]
    first = [k for k in ("method", "dataset", "imb", "preset") if k in shown]
    shown = first + [k for k in shown if k not in first]
    grouped = completed.assign(**{k: completed[k].astype(str) for k in keys}).groupby(keys, dropna=False, sort=False)
    rows = []
    for _, part in grouped:
        row = {k: completed.loc[part.index[0], k] for k in shown}
        row["runs"] = len(part)
        row["seeds"] = ",".join(str(s) for s in part["seed"].tolist()) if "seed" in part else ""
        for metric in metrics:
            values = pd.to_numeric(part[metric], errors="coerce") if metric in part else pd.Series(dtype=float)
            row[f"{metric}_mean"] = values.mean()
            row[f"{metric}_std"] = values.std(ddof=1) if values.count() > 1 else float("nan")
        for column in PUBLISHED_COLUMNS:
            values = pd.to_numeric(part[column], errors="coerce").dropna() if column in part else pd.Series()
            row[column] = values.iloc[0] if not values.empty else float("nan")
        for which in ("final", "best"):
            mean = row.get(f"{which}_top1_mean", float("nan"))
            row[f"gap_{which}_top1_mean"] = mean - row["published_top1"]
        rows.append(row)
    return pd.DataFrame(rows).set_index(shown)


def format_mean_std(table: pd.DataFrame, metrics: Sequence[str] = METRIC_COLUMNS, digits: int = 2) -> pd.DataFrame:
    """Return :func:`summarize_runs`'s table as text cells "mean ± std" (just the mean for a single run), with the
    published top-1 (many / medium / few) and our final and best gap to it when a setting reproduces a preset."""
    shown = pd.DataFrame(index=table.index)
    shown["runs"] = table["runs"]
    for metric in metrics:
        shown[metric.replace("_", " ")] = [_mean_std(m, s, digits) for m, s in
                                           zip(table[f"{metric}_mean"], table[f"{metric}_std"])]
    if "published_top1" in table and table["published_top1"].notna().any():
        shown["published top1"] = ["–" if pd.isna(p) else f"{p:.{digits}f}" for p in table["published_top1"]]
        shots = table[[f"published_{k}" for k in SHOT_KEYS[1:]]]
        shown["published many / medium / few"] = [
            "–" if row.isna().all() else " / ".join("–" if pd.isna(v) else f"{v:.1f}" for v in row)
            for _, row in shots.iterrows()
        ]
        for which in ("final", "best"):
            shown[f"{which} − published"] = [_mean_std(m, s, digits, signed=True) for m, s in
                                             zip(table[f"gap_{which}_top1_mean"], table[f"{which}_top1_std"])]
    return shown


def _mean_std(mean, std, digits: int, signed: bool = False) -> str:
    if pd.isna(mean):
        return "–"
    text = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    return text if pd.isna(std) else f"{text} ± {std:.{digits}f}"


def reproduction_table(results: pd.DataFrame) -> pd.DataFrame:
    """Return one row per published preset that completed runs reproduce: runs, published_top1, final and best
    top-1 mean and std over seeds, and the gaps (ours minus published, percentage points)."""
    completed = results[(results["status"] == "completed") & results["published_top1"].notna()]
    columns = ["preset", "runs", "seeds", "published_top1", "final_top1_mean", "final_top1_std", "best_top1_mean",
               "best_top1_std", "gap_final_top1", "gap_best_top1"]
    if completed.empty:
        return pd.DataFrame(columns=columns).set_index("preset")
    presets = completed["preset"] if "preset" in completed else pd.Series("?", index=completed.index)
    rows = []
    for name, part in completed.groupby(presets.fillna("?"), sort=False):
        row = {"preset": name, "runs": len(part), "published_top1": part["published_top1"].iloc[0],
               "seeds": ",".join(str(s) for s in part["seed"].tolist()) if "seed" in part else ""}
        for which in ("final", "best"):
            values = part[f"{which}_top1"].astype(float)
            row[f"{which}_top1_mean"] = values.mean()
            row[f"{which}_top1_std"] = values.std(ddof=1) if values.count() > 1 else float("nan")
            row[f"gap_{which}_top1"] = row[f"{which}_top1_mean"] - row["published_top1"]
        rows.append(row)
    return pd.DataFrame(rows, columns=columns).set_index("preset")


# --------------------------------------------------------------------------- the sweep's plan


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
        start = (dataclasses.replace(_preset_config(self.preset)) if self.preset else TrainConfig()).to_dict()
        return {key: value for key, value in self.config.to_dict().items() if start[key] != value}

    def train_arguments(self) -> list[str]:
        """Return the arguments of ``python -m ccmix`` that train this run: ``train [--preset P] --set ... --out``."""
        from ccmix.launch import train_arguments

        return train_arguments(self.preset, self.overrides(), self.out_dir)

    def command(self, python: str | None = None) -> list[str]:
        """Return the command that trains this run: ``python -m ccmix train ...``, under torchrun for several
        processes."""
        from ccmix.launch import torchrun_command

        if self.nproc_per_node > 1:
            return torchrun_command(self.preset, self.overrides(), self.out_dir, self.nproc_per_node, python=python)
        return [python or sys.executable, "-m", "ccmix", *self.train_arguments()]


def _preset_config(name: str) -> TrainConfig:
    from ccmix.config import preset

    return preset(name)


def grid_points(methods: Sequence[str], imbs: Sequence[float], seeds: Sequence[int]) -> list[dict]:
    """Return the grid's points as dicts {method, imb, seed}, in order, without repeats."""
    for name, values in (("methods", methods), ("imbs", imbs), ("seeds", seeds)):
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable) or not list(values):
            raise ConfigError(f"{name}={values!r} is not accepted; give a non-empty list")
    points = []
    for method, imb, seed in itertools.product(methods, imbs, seeds):
        point = {"method": method, "imb": imb, "seed": seed}
        if point not in points:
            points.append(point)
    return points


def plan_sweep(methods: Sequence[str], imbs: Sequence[float], seeds: Sequence[int], base_params: dict | None,
               runs_dir: str | os.PathLike) -> list[PlannedRun]:
    """Return the sweep's runs, every point validated before anything runs; ConfigError (one sentence) on a bad
    value. ``base_params`` are train-notebook parameters shared by every point."""
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
    root = find_repo_root()
    runs = Path(runs_dir).expanduser().resolve()
    plan = []
    for point in grid_points(methods, imbs, seeds):
        params = {**base_params, **point}
        run = resolve_train_parameters(**params, repo_root=root)
        out_dir = runs / run.run_name
        plan.append(PlannedRun(name=run.run_name, out_dir=out_dir, config=run.config, preset=run.preset,
                               params={**params, "out_dir": str(out_dir)}, nproc_per_node=run.nproc_per_node))
    names = [run.name for run in plan]
    if len(set(names)) != len(names):
        raise ConfigError("the grid gives two points the same run folder name; check methods, imbs and seeds")
    return plan


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


def _check_reuse(plan: list[PlannedRun], runs: Path, redo_mismatched: bool) -> None:
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


# --------------------------------------------------------------------------- the sweep


def _default_executor(**kwargs):
    import papermill

    return papermill.execute_notebook(**kwargs)


def _check_launcher(launcher: str, jobs: int, slurm) -> None:
    if launcher not in LAUNCHERS:
        raise ConfigError(f"launcher={launcher!r} is not accepted; choose one of: {', '.join(LAUNCHERS)}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs={jobs!r} is not accepted; it must be an integer >= 1")
    if jobs > 1 and launcher != "local":
        raise ConfigError(f"jobs={jobs} is not accepted with launcher {launcher!r}; jobs sets how many runs the local "
                          "launcher packs at once (SLURM runs as many as the array_parallelism option allows)")
    if slurm and launcher != "slurm":
        raise ConfigError(f"slurm={slurm!r} is not accepted with launcher {launcher!r}; SLURM options need "
                          "launcher 'slurm'")


def run_sweep(
    methods: Sequence[str],
    imbs: Sequence[float],
    seeds: Sequence[int],
    base_params: dict | None = None,
    runs_dir: str | os.PathLike = "papermill_runs",
    launcher: str = "local",
    jobs: int = 1,
    slurm: dict | None = None,
    redo_mismatched: bool = False,
    kernel: str = "python3",
    notebook: str | os.PathLike | None = None,
    progress: bool = True,
    log_output: bool = False,
    stop_on_error: bool = False,
    execute: Callable | None = None,
    python: str | None = None,
) -> pd.DataFrame:
    """Train every (method, imb, seed) and return the mean ± std table of the grid beside the published numbers.

    ``base_params`` are train-notebook parameters shared by every point (e.g. dataset, epochs,
    overrides). Each point trains into ``runs_dir/<run name>`` with the ``launcher`` (see the module
    docstring): ``jobs`` runs at once for ``local``; ``slurm`` takes the options of
    :class:`ccmix.sweep_slurm.SlurmOptions` as a dict. A folder that already holds a completed run of
    the same recipe and seed is skipped, an unfinished one resumes; a folder holding another recipe or
    seed stops the sweep before anything runs, unless ``redo_mismatched`` moves it to
    ``runs_dir/replaced/`` and trains again. As runs finish, every run under ``runs_dir`` is written to
    ``runs_dir/results.csv``. The returned table (see :func:`summarize_runs`) covers this grid's
    points; ``table.attrs`` lists the points "executed" (completed now), "skipped" and "failed" (run
    names), and "errors" (run name -> sentence). Papermill only: ``kernel``, ``notebook``,
    ``progress``, ``log_output``, ``stop_on_error`` and ``execute`` (replaces
    ``papermill.execute_notebook``, same keyword arguments). ``python`` is the interpreter of the
    local launcher's processes (default: this one).
    """
    _check_launcher(launcher, jobs, slurm)
    options = None
    if launcher == "slurm":
        from ccmix.sweep_slurm import check_cluster, slurm_options

        options = slurm_options(slurm)
        check_cluster(options)
    notebook_path = None
    if launcher == "papermill":
        notebook_path = Path(notebook) if notebook is not None else find_repo_root() / "notebooks" / "train.ipynb"
        if not notebook_path.is_file():
            raise ValueError(f"notebook {str(notebook_path)!r} does not exist; give the path of train.ipynb")
    plan = plan_sweep(methods, imbs, seeds, base_params, runs_dir)
    runs = Path(runs_dir).expanduser().resolve()
    _check_reuse(plan, runs, redo_mismatched)

    skipped = [run.name for run in plan if is_completed(run.out_dir)]
    to_train = [run for run in plan if run.name not in skipped]
    for run in plan:
        if run.name in skipped:
            print(f"{run.name}: completed already, skipped", flush=True)
    runs.mkdir(parents=True, exist_ok=True)
    executed, failed, errors = [], [], {}
    started = {}

    def on_start(name: str, where: str) -> None:
        started[name] = len(started) + 1
        print(f"[{started[name]}/{len(to_train)}] {name}: training on {where}", flush=True)

    def on_finish(outcome) -> None:
        if outcome.error is None and is_completed(runs / outcome.name):
            executed.append(outcome.name)
            final = (RunFolder(runs / outcome.name).read_summary() or {}).get("final") or {}
            top1 = f"final top-1 {final['top1']:.2f}" if final.get("top1") is not None else "no final top-1"
            print(f"{outcome.name}: completed, {top1}", flush=True)
        else:
            failed.append(outcome.name)
            errors[outcome.name] = outcome.error or "the run ended without a completed summary.json"
            where = f"; log {outcome.log_path}" if outcome.log_path else ""
            print(f"{outcome.name}: failed: {errors[outcome.name]}{where}", flush=True)
        write_results(runs)

    if launcher == "local":
        from ccmix.sweep_local import run_packed

        commands = [(run.name, run.out_dir, run.command(python)) for run in to_train]
        run_packed(commands, jobs, on_start=on_start, on_finish=on_finish,
                   gpus_per_run=max(run.nproc_per_node for run in to_train) if to_train else 1)
    elif launcher == "slurm":
        from ccmix.sweep_slurm import run_slurm

        arguments = [(run.name, run.out_dir, run.train_arguments()) for run in to_train]
        run_slurm(arguments, options, runs / "slurm", on_start=on_start, on_finish=on_finish)
    else:
        _run_notebooks(to_train, runs, notebook_path, execute or _default_executor, on_start, on_finish,
                       kernel=kernel, progress=progress, log_output=log_output, stop_on_error=stop_on_error)

    write_results(runs)
    grid_results = collect_results([run.out_dir for run in plan if (run.out_dir / "summary.json").is_file()])
    table = summarize_runs(grid_results) if not grid_results.empty else pd.DataFrame(columns=["runs", "seeds"])
    table.attrs.update(executed=executed, skipped=skipped, failed=failed, errors=errors,
                       results_csv=str(runs / "results.csv"))
    if not table.empty:
        print(format_mean_std(table).to_string(), flush=True)
    print(f"{len(executed)} trained, {len(skipped)} skipped, {len(failed)} failed; every run: {runs / 'results.csv'}",
          flush=True)
    return table


def write_results(runs_dir: str | os.PathLike) -> Path:
    """Return the path of ``runs_dir/results.csv`` after (re)writing it from every run folder under ``runs_dir``."""
    path = Path(runs_dir) / "results.csv"
    write_text(path, collect_results(run_folders(runs_dir)).to_csv(index=False))
    return path


def _run_notebooks(plan: list[PlannedRun], runs: Path, notebook_path: Path, execute: Callable, on_start, on_finish,
                   kernel: str, progress: bool, log_output: bool, stop_on_error: bool) -> None:
    """Execute the train notebook for each run, one after another (the papermill launcher)."""
    from ccmix.sweep_local import RunOutcome, failure_sentence

    for run in plan:
        output = runs / f"{run.name}.ipynb"
        on_start(run.name, f"the {kernel} kernel")
        try:
            execute(input_path=str(notebook_path), output_path=str(output), parameters=run.params,
                    kernel_name=kernel, cwd=str(notebook_path.parent), progress_bar=progress, log_output=log_output)
            on_finish(RunOutcome(run.name, None, output))
        except Exception as error:  # one failed point must not lose the others; it is reported
            if stop_on_error:
                raise
            on_finish(RunOutcome(run.name, failure_sentence(str(error), type(error).__name__), output))


# --------------------------------------------------------------------------- command line


def _parse_list(text: str, kind: type, name: str) -> list:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        values = [kind(p) for p in parts]
    except ValueError:
        what = {int: "integers", float: "numbers", str: "names"}[kind]
        raise ConfigError(f"--{name} {text!r} is not accepted; give comma-separated {what}") from None
    if not values:
        raise ConfigError(f"--{name} {text!r} is not accepted; give at least one value")
    return values


def _parse_param(item: str, option: str = "--param") -> tuple[str, object]:
    """Return (name, value) of ``--param name=value``; the value is read as YAML, like papermill's ``-y``."""
    import yaml

    if "=" not in item:
        raise ConfigError(f"{option} {item!r} is not of the form name=value")
    name, text = (part.strip() for part in item.split("=", 1))
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        raise ConfigError(f"{option} {item!r} does not parse; write the value as YAML, e.g. "
                          "overrides={topk: 10}") from None
    return name, value


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``python -m ccmix sweep``."""
    defaults = NOTEBOOK_PARAMETERS["sweep"]
    parser = argparse.ArgumentParser(
        prog="python -m ccmix sweep",
        description="Train over methods x imbalances x seeds: JOBS local `python -m ccmix train` processes at once, "
                    "a SLURM job array (--launcher slurm), or train.ipynb through papermill. Completed runs of the "
                    "same recipe are skipped and every run is collected into RUNS_DIR/results.csv beside the "
                    "published top-1. Exit status: 0 every run completed, 1 some failed, 2 bad input.",
    )
    parser.add_argument("--methods", default=",".join(defaults["methods"]), help="comma-separated, e.g. la,concutmix")
    parser.add_argument("--imbs", default=",".join(str(i) for i in defaults["imbs"]), help="comma-separated, e.g. 100,50")
    parser.add_argument("--seeds", default=",".join(str(s) for s in defaults["seeds"]), help="comma-separated, e.g. 0,1,2")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="a train-notebook parameter for every point, value as YAML (repeatable), "
                             "e.g. --param dataset=cifar10 --param 'overrides={topk: 3}'")
    parser.add_argument("--runs-dir", default=defaults["runs_dir"], help="where run folders go")
    parser.add_argument("--launcher", choices=LAUNCHERS, default=defaults["launcher"],
                        help="local processes (default), a SLURM job array through submitit, or papermill")
    parser.add_argument("--jobs", type=int, default=defaults["jobs"],
                        help="local launcher: runs trained at once (default 1); several GPUs are shared round-robin")
    parser.add_argument("--redo-mismatched", action="store_true",
                        help="a run folder holding another recipe or seed is moved to RUNS_DIR/replaced/ and trained "
                             "again (without it the sweep refuses)")
    slurm = parser.add_argument_group("SLURM (--launcher slurm)")
    slurm.add_argument("--partition", default=None, help="SLURM partition (default: the cluster's)")
    slurm.add_argument("--gpus-per-run", type=int, default=None, help="GPUs per run, one process each (default 1)")
    slurm.add_argument("--time-min", type=int, default=None,
                       help="time limit of one task in minutes (default 1440); longer runs are requeued and resume")
    slurm.add_argument("--no-requeue", action="store_true", help="do not requeue preempted or timed-out tasks")
    slurm.add_argument("--slurm", action="append", default=[], metavar="NAME=VALUE",
                       help="any other SlurmOptions field, value as YAML (repeatable), e.g. --slurm cpus_per_run=8 "
                            "--slurm 'extra={slurm_account: lab}'")
    papermill = parser.add_argument_group("papermill (--launcher papermill)")
    papermill.add_argument("--kernel", default=defaults["kernel"], help="Jupyter kernel name (default python3)")
    papermill.add_argument("--notebook", default=None, help="the training notebook (default notebooks/train.ipynb)")
    papermill.add_argument("--log-output", action="store_true", help="stream the notebooks' output to this terminal")
    return parser


def _slurm_arguments(args: argparse.Namespace) -> dict | None:
    options = dict(_parse_param(item, "--slurm") for item in args.slurm)
    for key, value in (("partition", args.partition), ("gpus_per_run", args.gpus_per_run),
                       ("time_min", args.time_min), ("requeue", False if args.no_requeue else None)):
        if value is not None:
            options[key] = value
    return options or None


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m ccmix sweep`` with ``argv``; return 0 when every point completed, 1 when some failed,
    2 on a bad argument."""
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    try:
        imbs = [int(v) if float(v).is_integer() else v for v in _parse_list(args.imbs, float, "imbs")]
        base_params = dict(_parse_param(item) for item in args.param)
        table = run_sweep(
            methods=_parse_list(args.methods, str, "methods"), imbs=imbs, seeds=_parse_list(args.seeds, int, "seeds"),
            base_params=base_params, runs_dir=args.runs_dir, launcher=args.launcher, jobs=args.jobs,
            slurm=_slurm_arguments(args), redo_mismatched=args.redo_mismatched, kernel=args.kernel,
            notebook=args.notebook, log_output=args.log_output,
        )
    except (ConfigError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 1 if table.attrs.get("failed") else 0


__all__ = [
    "LAUNCHERS", "PlannedRun", "collect_results", "format_mean_std", "grid_points", "is_completed", "main",
    "move_aside", "per_run_view", "plan_sweep", "published_results", "differences_text", "reproduction_table",
    "reuse_differences", "run_folders", "run_row", "run_sweep", "setting_columns", "summarize_runs", "write_results",
]
