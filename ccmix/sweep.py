"""Sweeps: the training notebook over methods x imbalances x seeds, and mean ± std tables of run folders.

Each grid point executes ``notebooks/train.ipynb`` through papermill into its own
run folder under ``runs_dir`` (the executed notebook is kept beside it), so a
sweep's runs are the same self-describing folders a single training run writes.
Points whose run folder already holds a completed ``summary.json`` are skipped,
so an interrupted sweep continues where it stopped. The methods compared are
those of Contrastive CutMix (Pan et al., "Enhanced Long-Tailed Recognition with
Contrastive CutMix Augmentation", IEEE TIP 2024) and its baselines (logit
adjustment: Menon et al., ICLR 2021; BCL: Zhu et al., CVPR 2022).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import pandas as pd

from ccmix.config import ConfigError
from ccmix.io import write_text
from ccmix.notebook_params import (
    NOTEBOOK_PARAMETERS,
    check_notebook_parameters,
    find_repo_root,
    resolve_train_parameters,
)

GRID_KEYS = ("method", "imb", "seed")
METRIC_COLUMNS = ("final_top1", "best_top1", "final_many", "final_medium", "final_few")
# Config keys that do not define a setting: runs differing only in these are repeats of one setting.
_NOT_A_SETTING = {"seed", "out_dir", "data_root", "class_names", "train_class_counts", "ccmix_version", "progress",
                  "num_workers", "device", "pipeline", "world_size"}
_RESULT_COLUMNS = ("run", "path", "status", "epochs_completed", "final_epoch", "final_top1", "final_many",
                   "final_medium", "final_few", "best_epoch", "best_top1", "best_many", "best_medium", "best_few",
                   "published_top1", "train_seconds", "error")


# --------------------------------------------------------------------------- tables of run folders


def _flatten(value):
    """Return a value a table cell can hold and group by (lists become text)."""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return value


def run_row(run_dir: str | os.PathLike) -> dict:
    """Return one table row of a run folder: its summary's final and best accuracies plus every config value."""
    path = Path(run_dir)
    summary = _read_json(path / "summary.json") or {}
    config = _read_json(path / "config.json") or {}
    final, best = summary.get("final") or {}, summary.get("best") or {}
    row = {
        "run": path.name, "path": str(path), "status": summary.get("status", "missing"),
        "epochs_completed": summary.get("epochs_completed"), "final_epoch": final.get("epoch"),
        "best_epoch": best.get("epoch"), "published_top1": summary.get("published_top1"),
        "train_seconds": summary.get("train_seconds"), "error": summary.get("error"),
    }
    for key in ("top1", "many", "medium", "few"):
        row[f"final_{key}"] = final.get(key)
        row[f"best_{key}"] = best.get(key)
    for key, value in config.items():
        if key not in ("class_names", "train_class_counts") and key not in row:
            row[key] = _flatten(value)
    return row


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def collect_results(run_dirs: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """Return one row per run folder (see :func:`run_row`), in the order given."""
    rows = [run_row(path) for path in run_dirs]
    table = pd.DataFrame(rows)
    for column in _RESULT_COLUMNS:
        if column not in table:
            table[column] = None
    numeric = [c for c in _RESULT_COLUMNS if c.startswith(("final_", "best_")) or c in ("published_top1",
                                                                                        "train_seconds")]
    for column in numeric:
        table[column] = pd.to_numeric(table[column], errors="coerce")  # JSON null -> NaN
    first = list(_RESULT_COLUMNS)
    return table[first + [c for c in table.columns if c not in first]]


PER_RUN_COLUMNS = ("run", "method", "dataset", "imb", "seed", "epochs", "status", "final_top1", "final_many",
                   "final_medium", "final_few", "best_top1", "best_epoch")


def per_run_view(results: pd.DataFrame) -> pd.DataFrame:
    """Return the columns of :func:`collect_results` worth reading per run (final and best top-1 and groups)."""
    return results[[c for c in PER_RUN_COLUMNS if c in results.columns]]


def run_folders(runs_dir: str | os.PathLike) -> list[Path]:
    """Return the run folders directly under ``runs_dir`` that hold a summary.json, sorted by name."""
    folder = Path(runs_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and (p / "summary.json").is_file())


def setting_columns(results: pd.DataFrame) -> list[str]:
    """Return the config columns that define a setting (every config key but seed, paths and run plumbing)."""
    from ccmix.config import TrainConfig

    config_keys = [*TrainConfig().to_dict(), "preset"]
    return [c for c in config_keys if c in results.columns and c not in _NOT_A_SETTING]


def summarize_runs(results: pd.DataFrame, metrics: Sequence[str] = METRIC_COLUMNS) -> pd.DataFrame:
    """Return mean and standard deviation (over seeds) of ``metrics`` per setting, completed runs only.

    Runs are grouped by every config value except seed and paths; the index shows the values that
    differ between settings (always method and imb). Columns: runs, seeds, ``<metric>_mean``,
    ``<metric>_std`` (sample standard deviation; NaN for a single run).
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
        rows.append(row)
    return pd.DataFrame(rows).set_index(shown)


def format_mean_std(table: pd.DataFrame, metrics: Sequence[str] = METRIC_COLUMNS, digits: int = 2) -> pd.DataFrame:
    """Return :func:`summarize_runs`'s table as text cells "mean ± std" (just the mean for a single run)."""
    shown = pd.DataFrame(index=table.index)
    shown["runs"] = table["runs"]
    for metric in metrics:
        mean, std = table[f"{metric}_mean"], table[f"{metric}_std"]
        shown[metric.replace("_", " ")] = [
            "–" if pd.isna(m) else f"{m:.{digits}f}" if pd.isna(s) else f"{m:.{digits}f} ± {s:.{digits}f}"
            for m, s in zip(mean, std)
        ]
    return shown


# --------------------------------------------------------------------------- the sweep


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


def is_completed(run_dir: str | os.PathLike) -> bool:
    """True when the run folder holds a summary.json with status "completed"."""
    summary = _read_json(Path(run_dir) / "summary.json")
    return bool(summary) and summary.get("status") == "completed"


def _default_executor(**kwargs):
    import papermill

    return papermill.execute_notebook(**kwargs)


def run_sweep(
    methods: Sequence[str],
    imbs: Sequence[float],
    seeds: Sequence[int],
    base_params: dict | None = None,
    runs_dir: str | os.PathLike = "papermill_runs",
    kernel: str = "python3",
    notebook: str | os.PathLike | None = None,
    progress: bool = True,
    log_output: bool = False,
    stop_on_error: bool = False,
    execute: Callable | None = None,
) -> pd.DataFrame:
    """Run the training notebook for every (method, imb, seed) and return the mean ± std table of the grid.

    ``base_params`` are train-notebook parameters shared by every point (e.g. dataset, epochs,
    overrides). Each point runs into ``runs_dir/<run name>`` with its executed notebook at
    ``runs_dir/<run name>.ipynb``; a point whose folder already holds a completed summary.json is
    skipped. Afterwards every summary under ``runs_dir`` is written to ``runs_dir/results.csv``. The
    returned table (see :func:`summarize_runs`) covers this grid's points; ``table.attrs`` lists the
    points "executed", "skipped" and "failed" (run names). A relative ``runs_dir`` is taken from the
    working directory. ``execute`` replaces ``papermill.execute_notebook`` (same keyword arguments).
    """
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
    notebook_path = Path(notebook) if notebook is not None else root / "notebooks" / "train.ipynb"
    if not notebook_path.is_file():
        raise ValueError(f"notebook {str(notebook_path)!r} does not exist; give the path of train.ipynb")
    runs = Path(runs_dir).expanduser().resolve()
    execute = execute or _default_executor

    # Check every point before anything runs, so a bad value fails the sweep at once.
    plan = []
    for point in grid_points(methods, imbs, seeds):
        params = {**base_params, **point}
        run = resolve_train_parameters(**params, repo_root=root)
        out_dir = runs / run.run_name
        plan.append((run.run_name, out_dir, {**params, "out_dir": str(out_dir)}))
    names = [name for name, _, _ in plan]
    if len(set(names)) != len(names):
        raise ConfigError("the grid gives two points the same run folder name; check methods, imbs and seeds")

    executed, skipped, failed = [], [], []
    runs.mkdir(parents=True, exist_ok=True)
    for index, (name, out_dir, params) in enumerate(plan, start=1):
        if is_completed(out_dir):
            skipped.append(name)
            print(f"[{index}/{len(plan)}] {name}: completed already, skipped", flush=True)
            continue
        print(f"[{index}/{len(plan)}] {name}: training", flush=True)
        try:
            execute(
                input_path=str(notebook_path), output_path=str(runs / f"{name}.ipynb"), parameters=params,
                kernel_name=kernel, cwd=str(notebook_path.parent), progress_bar=progress, log_output=log_output,
            )
            executed.append(name)
        except Exception as error:  # one failed point must not lose the others; it is reported below
            if stop_on_error:
                raise
            failed.append(name)
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[-1]
            print(f"[{index}/{len(plan)}] {name}: failed ({first_line}); see {runs / f'{name}.ipynb'}", flush=True)

    all_results = collect_results(run_folders(runs))
    write_text(runs / "results.csv", all_results.to_csv(index=False))
    grid_results = collect_results([out for _, out, _ in plan if (out / "summary.json").is_file()])
    table = summarize_runs(grid_results) if not grid_results.empty else pd.DataFrame(columns=["runs", "seeds"])
    table.attrs.update(executed=executed, skipped=skipped, failed=failed, results_csv=str(runs / "results.csv"))
    if not table.empty:
        print(format_mean_std(table).to_string(), flush=True)
    print(f"{len(executed)} trained, {len(skipped)} skipped, {len(failed)} failed; every run: {runs / 'results.csv'}",
          flush=True)
    return table


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


def _parse_param(item: str) -> tuple[str, object]:
    """Return (name, value) of ``--param name=value``; the value is read as YAML, like papermill's ``-y``."""
    import yaml

    if "=" not in item:
        raise ConfigError(f"--param {item!r} is not of the form name=value")
    name, text = (part.strip() for part in item.split("=", 1))
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        raise ConfigError(f"--param {item!r} does not parse; write the value as YAML, e.g. overrides={{topk: 10}}") from None
    return name, value


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``python -m ccmix sweep``."""
    defaults = NOTEBOOK_PARAMETERS["sweep"]
    parser = argparse.ArgumentParser(
        prog="python -m ccmix sweep",
        description="Run notebooks/train.ipynb over methods x imbalances x seeds through papermill; completed "
                    "runs are skipped and every summary is collected into RUNS_DIR/results.csv.",
    )
    parser.add_argument("--methods", default=",".join(defaults["methods"]), help="comma-separated, e.g. la,concutmix")
    parser.add_argument("--imbs", default=",".join(str(i) for i in defaults["imbs"]), help="comma-separated, e.g. 100,50")
    parser.add_argument("--seeds", default=",".join(str(s) for s in defaults["seeds"]), help="comma-separated, e.g. 0,1,2")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="a train-notebook parameter for every point, value as YAML (repeatable), "
                             "e.g. --param dataset=cifar10 --param 'overrides={topk: 3}'")
    parser.add_argument("--runs-dir", default=defaults["runs_dir"], help="where run folders and executed notebooks go")
    parser.add_argument("--kernel", default=defaults["kernel"], help="Jupyter kernel name (default python3)")
    parser.add_argument("--notebook", default=None, help="the training notebook (default notebooks/train.ipynb)")
    parser.add_argument("--log-output", action="store_true", help="stream the notebooks' output to this terminal")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m ccmix sweep`` with ``argv``; return 0 when every point completed, 1 when some failed,
    2 on a bad argument."""
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    try:
        imbs = [int(v) if float(v).is_integer() else v for v in _parse_list(args.imbs, float, "imbs")]
        base_params = dict(_parse_param(item) for item in args.param)
        table = run_sweep(
            methods=_parse_list(args.methods, str, "methods"), imbs=imbs, seeds=_parse_list(args.seeds, int, "seeds"),
            base_params=base_params, runs_dir=args.runs_dir, kernel=args.kernel, notebook=args.notebook,
            log_output=args.log_output,
        )
    except (ConfigError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 1 if table.attrs.get("failed") else 0


__all__ = [
    "collect_results", "format_mean_std", "grid_points", "is_completed", "main", "per_run_view", "run_folders",
    "run_row",
    "run_sweep", "setting_columns", "summarize_runs",
]
