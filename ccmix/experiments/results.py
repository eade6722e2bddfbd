"""Tables of run folders: one row per run, mean ± std over seeds per setting, and the gap to the paper.

The published numbers are those of Contrastive CutMix (Pan et al., "Enhanced
Long-Tailed Recognition with Contrastive CutMix Augmentation", IEEE TIP 2024), for
the preset a run reproduces; many/medium/few follow Zhu et al. ("Balanced
Contrastive Learning for Long-Tailed Visual Recognition", CVPR 2022). A sweep writes
these tables to ``runs_dir/results.csv`` as its runs finish. Every public name here
is also importable from :mod:`ccmix.experiments.sweep`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from ccmix.io import write_text
from ccmix.train.run_folder import RunFolder

METRIC_COLUMNS = ("final_top1", "best_top1", "final_many", "final_medium", "final_few")
SHOT_KEYS = ("top1", "many", "medium", "few")
PUBLISHED_COLUMNS = tuple(f"published_{key}" for key in SHOT_KEYS)
GAP_COLUMNS = ("gap_final_top1", "gap_best_top1")  # ours minus published, percentage points
_RESULT_COLUMNS = ("run", "path", "status", "eval_split", "epochs_completed", "final_epoch", "final_top1", "final_many",
                   "final_medium", "final_few", "best_epoch", "best_top1", "best_many", "best_medium", "best_few",
                   *PUBLISHED_COLUMNS, *GAP_COLUMNS, "train_seconds", "error")


# --------------------------------------------------------------------------- the paper's numbers


def published_results(config: dict) -> dict[str, float | None]:
    """Return the published top-1 and many/medium/few (%) of the preset a recorded config reproduces (any seed),
    as ``{"top1": ..., "many": ..., "medium": ..., "few": ...}``; None where nothing is published or no preset
    is reproduced."""
    from ccmix.config.presets import PUBLISHED_SHOT_TOP1, matches_preset, preset_name_for, published_top1_for

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


def _legacy_split(config: dict) -> str | None:
    if not config:
        return None
    return "val" if config.get("dataset") == "inat2018" else "test"


def run_row(run_dir: str | os.PathLike) -> dict:
    """Return one table row of a run folder: its summary's status (``stopped`` for a "running" run whose training
    process is gone: ``ccmix.train.run_folder.observed_summary``), final and best accuracies, the published numbers of
    the preset it reproduces with our gap to them, plus every config value."""
    path = Path(run_dir)
    folder = RunFolder(path)
    summary = folder.read_summary() or {}
    config = folder.read_config() or {}
    final, best = summary.get("final") or {}, summary.get("best") or {}
    row = {
        "run": path.name, "path": str(path), "status": summary.get("status", "missing"),
        # the split the accuracies are on; a folder written before eval_split existed was evaluated on "test"
        "eval_split": summary.get("eval_split") or config.get("eval_split") or _legacy_split(config),
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


PER_RUN_COLUMNS = ("run", "method", "dataset", "eval_split", "imb", "seed", "epochs", "status", "final_top1", "final_many",
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
    from ccmix.config.fields import recipe_fields

    return [c for c in (*recipe_fields(), "preset") if c in results.columns]


def summarize_runs(results: pd.DataFrame, metrics: Sequence[str] = METRIC_COLUMNS) -> pd.DataFrame:
    """Return mean and standard deviation (over seeds) of ``metrics`` per setting, completed runs only, beside
    the published numbers.

    Runs are grouped by their recipe fields and preset (:func:`setting_columns`: not the seed, nor the
    runtime fields such as paths and device); the index shows the values that
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


def write_results(runs_dir: str | os.PathLike) -> Path:
    """Return the path of ``runs_dir/results.csv`` after (re)writing it from every run folder under ``runs_dir``."""
    path = Path(runs_dir) / "results.csv"
    write_text(path, collect_results(run_folders(runs_dir)).to_csv(index=False))
    return path
