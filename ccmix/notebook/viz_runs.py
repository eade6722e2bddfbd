"""Run folders as the figures read them: one record per run, labels that tell runs apart, and which runs
can be analysed at all.

The figures of :mod:`ccmix.notebook.viz` compare runs of Contrastive CutMix (Pan et al.,
"Enhanced Long-Tailed Recognition with Contrastive CutMix Augmentation", IEEE TIP
2024) and its baselines by their many/medium/few accuracy (Zhu et al., "Balanced
Contrastive Learning for Long-Tailed Visual Recognition", CVPR 2022). Every public
name here is also importable from :mod:`ccmix.notebook.viz`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ccmix.train.run_folder import RunFolder

GROUP_ORDER = ("many", "medium", "few")


@dataclass
class RunRecord:
    """What a run folder holds, read once: config, per-epoch metrics, per-class results, summary."""

    path: Path
    config: dict = field(default_factory=dict)
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per epoch (metrics.jsonl)
    per_class: pd.DataFrame | None = None  # per_class.csv, None when the run has not finished
    summary: dict | None = None  # summary.json, None when absent

    @property
    def name(self) -> str:
        """Return the run folder's name."""
        return self.path.name


def load_run(run: str | os.PathLike | RunRecord) -> RunRecord:
    """Return the :class:`RunRecord` of a run folder (files that are absent stay empty)."""
    if isinstance(run, RunRecord):
        return run
    path = Path(run)
    if not path.is_dir():
        raise ValueError(f"run folder {str(path)!r} does not exist")
    folder = RunFolder(path)
    config = folder.read_config() or {}
    metrics = pd.DataFrame.from_records(folder.read_metrics())
    if not metrics.empty:
        metrics = metrics.apply(pd.to_numeric, errors="coerce")  # JSON null -> NaN
    per_class = pd.read_csv(path / "per_class.csv") if (path / "per_class.csv").is_file() else None
    return RunRecord(path=path, config=config, metrics=metrics, per_class=per_class,
                     summary=folder.read_summary())



def as_runs(runs) -> list[RunRecord]:
    """Return the :class:`RunRecord` of each run folder in ``runs`` (one folder or record, or several)."""
    if isinstance(runs, (str, os.PathLike, RunRecord)):
        runs = [runs]
    records = [load_run(run) for run in runs]
    if not records:
        raise ValueError("runs is empty; give at least one run folder")
    return records


def run_labels(runs, exclude: Iterable[str] = ()) -> list[str]:
    """Return one label per run from the config values that differ between runs, e.g. ``method=la, seed=1``.

    ``exclude`` drops keys (``("seed",)`` gives runs that differ only by seed the same label, so bar
    charts average them). Runs whose configs agree are labelled by their folder names (or all alike
    when seeds are excluded).
    """
    from ccmix.config.fields import fields_with_role, recipe_fields

    records = as_runs(runs)
    # what a run learns and its seed tell runs apart; paths, devices and derived values never do
    telling = {*recipe_fields(), *fields_with_role("seed"), "preset"} - set(exclude)
    keys = sorted({key for record in records for key in record.config} & telling)
    varying = [key for key in keys if len({_hashable(r.config.get(key)) for r in records}) > 1]
    if not varying:
        return ["all runs"] * len(records) if exclude else [r.name for r in records]
    priority = ["method", "dataset", "imb", "preset"]
    varying.sort(key=lambda k: (priority.index(k) if k in priority else len(priority), k))
    return [", ".join(f"{key}={_format_value(r.config.get(key))}" for key in varying) for r in records]


def _hashable(value):
    return json.dumps(value, sort_keys=True)


def _format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)



def labels_for(records: list[RunRecord], labels: Sequence[str] | None) -> list[str]:
    """Return ``labels`` as a list, checked to have one entry per record, or :func:`run_labels` when None."""
    if labels is None:
        return run_labels(records)
    if len(labels) != len(records):
        raise ValueError(f"labels has {len(labels)} entries but there are {len(records)} runs")
    return list(labels)


class UnusableRun(ValueError):
    """A run folder the analysis cannot use; the message is one sentence naming it and saying why."""


# what a run's config.json must hold for its figures and tables to mean anything
_REQUIRED_CONFIG_KEYS = ("method", "dataset", "imb", "seed", "num_classes", "train_class_counts")


def run_problem(run) -> str | None:
    """Return why a run folder cannot be analysed, as one sentence naming it, or None when it can: not
    completed (failed, diverged, interrupted, still running, or stopped: "running" in summary.json while no process
    trains it), non-finite results, or a missing or inconsistent config."""
    return _loaded_run(run)[0]


def _loaded_run(run) -> tuple[str | None, RunRecord | None]:
    """Return (:func:`run_problem`'s sentence or None, the run's record when it could be read)."""
    folder = Path(getattr(run, "path", run))
    for filename in ("config.json", "summary.json"):  # checked here: a reader may take a damaged file for none
        if (folder / filename).is_file() and not _is_json(folder / filename):
            return f"run {folder.name!r} has a {filename} that cannot be read as JSON", None
    try:
        record = load_run(run)
    except (ValueError, OSError) as error:  # a missing folder, or a damaged CSV file
        return f"run {str(folder)!r} cannot be read ({error})", None
    return _record_problem(record), record


def _record_problem(record: RunRecord) -> str | None:
    name = f"run {record.name!r}"
    if not record.config:
        return f"{name} has no config.json"
    if record.summary is None:
        return f"{name} has no summary.json (it has not finished an epoch)"
    status = record.summary.get("status")
    if status != "completed":
        error = record.summary.get("error")
        return f"{name} is {status or 'of unknown status'}" + (f": {error}" if error else "")
    missing = [key for key in _REQUIRED_CONFIG_KEYS if key not in record.config]
    if missing:
        return f"{name} has a config.json without {', '.join(missing)}"
    counts = record.config["train_class_counts"]
    if not isinstance(counts, list) or len(counts) != record.config["num_classes"]:
        return f"{name} has a config.json whose train_class_counts do not list its num_classes classes"
    disagreeing = [key for key in ("method", "dataset", "seed")
                   if key in record.summary and record.summary[key] != record.config[key]]
    if disagreeing:
        return f"{name} has a summary.json that disagrees with its config.json on {', '.join(disagreeing)}"
    for which in ("final", "best"):
        result = record.summary.get(which) or {}
        if result.get("top1") is None:
            return f"{name} has no {which} top-1 in summary.json"
        bad = [key for key in ("top1", *GROUP_ORDER) if result.get(key) is not None
               and not (isinstance(result[key], (int, float)) and np.isfinite(result[key]))]
        if bad:
            return f"{name} has non-finite {which} {', '.join(bad)} in summary.json"
    if record.per_class is not None and "accuracy" in record.per_class:
        accuracy = pd.to_numeric(record.per_class["accuracy"], errors="coerce")
        if np.isinf(accuracy).any():
            return f"{name} has non-finite per-class accuracies in per_class.csv"
    return None


def _is_json(path: Path) -> bool:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def usable_runs(runs, report=print) -> list[RunRecord]:
    """Return the :class:`RunRecord` of every run the analysis can use, in order; each other run is skipped
    with one sentence passed to ``report`` (default: printed)."""
    if isinstance(runs, (str, os.PathLike, RunRecord)):
        runs = [runs]
    usable = []
    for run in runs:
        problem, record = _loaded_run(run)
        if problem is not None:
            report(f"skipped: {problem}")
            continue
        usable.append(record)
    return usable
