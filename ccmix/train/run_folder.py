"""The run folder: every file a training run of Contrastive CutMix writes, and how it is read back.

A run of Pan et al., "Enhanced Long-Tailed Recognition with Contrastive CutMix
Augmentation" (IEEE TIP 2024) is self-describing: config.json (the settings and the
data's facts), metrics.jsonl (one record per epoch), summary.json (status, final and
best accuracy), per_class.csv and predictions.npz (of the final model), and the
checkpoints last.pt (with previous.pt, its predecessor) and best.pt. Only rank 0
writes, each file atomically; re-running training on a folder resumes from last.pt.

``RunFolder``'s read methods need neither torch nor a finished run (absent files read as
None or []), so notebooks, sweeps and launchers share them; checkpoint work imports torch
only when it is asked for.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import ccmix
from ccmix.config.fields import TrainConfig, resume_differences
from ccmix.config.presets import published_top1_for
from ccmix.config.rules import ConfigError
from ccmix.io import (
    atomic_write,
    read_json,
    read_jsonl,
    remove_stale_temporaries,
    write_json,
    write_jsonl,
    write_text,
)
from ccmix.train.lock import live_holder

CONFIG = "config.json"
METRICS = "metrics.jsonl"
PER_CLASS = "per_class.csv"
SUMMARY = "summary.json"
PREDICTIONS = "predictions.npz"
SPLIT_WORDS = {"test": "test", "val": "validation"}  # eval_split -> how reports name the set


def best_note(eval_split: str = "test") -> str:
    """Return the note of a summary's best record: the best epoch is chosen on the evaluation split itself."""
    return f"selected on the {SPLIT_WORDS.get(eval_split, eval_split)} set, optimistic"


BEST_NOTE = best_note("test")
SHOT_KEYS = ("top1", "many", "medium", "few")
STOPPED = "stopped"  # how readers show a "running" summary that no live process holds
STOPPED_REASON = ("no process holds the run folder, yet its summary says running: the training stopped without "
                  "recording why (killed, or its machine or disk failed); run the same command again to resume")


def check_resume_compatible(saved: dict, config: TrainConfig, path: Path) -> None:
    """Raise ConfigError when ``config`` differs from the checkpoint's ``saved`` settings in a field that may not
    change on resume (``ccmix.config.fields.resume_differences`` decides which)."""
    differences = resume_differences(saved, config)
    if differences:
        key, value = differences[0], getattr(config, differences[0])
        raise ConfigError(
            f"out_dir already holds a run trained with {key}={saved[key]!r} (in {str(path)!r}), not "
            f"{key}={value!r}; use a new out_dir or the same settings to resume"
        )


# --------------------------------------------------------------------------- records


def shot_record(metrics: dict | None, epoch: int | None) -> dict:
    """Return {"epoch", "top1", "many", "medium", "few"} of ``metrics`` (all None without metrics)."""
    return {"epoch": epoch, **{key: None if metrics is None else metrics.get(key) for key in SHOT_KEYS}}


@dataclass
class Resumed:
    """Where a resumed run stands: epochs completed, best record, metric history and saved random states."""

    epoch: int
    best: dict | None
    history: list[dict]
    rng: dict
    path: Path


class RunFolder:
    """The files of one run folder; ``writer`` False (ranks other than 0) makes every write a no-op."""

    def __init__(self, path: str | os.PathLike, writer: bool = True):
        self.path = Path(path)
        self.writer = writer
        self.summary_facts: dict = {}  # what every summary repeats (method, dataset, sizes...); see start_summary

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def file(self, name: str) -> Path:
        """Return the path of file ``name`` in the folder."""
        return self.path / name

    # ------------------------------------------------------------------ reading (no torch)

    def read_config(self) -> dict | None:
        """Return config.json's content, or None when it is absent or unreadable."""
        return _read_json_or_none(self.file(CONFIG))

    def read_summary(self) -> dict | None:
        """Return summary.json's content, or None when it is absent or unreadable; a run it calls "running"
        whose training process is gone reads as "stopped" (see :func:`observed_summary`)."""
        return observed_summary(self.path, _read_json_or_none(self.file(SUMMARY)))

    def read_metrics(self) -> list[dict]:
        """Return metrics.jsonl's records, one per epoch: [] when absent, those before a damaged line if any."""
        records = []
        try:
            with open(self.file(METRICS), encoding="utf-8") as handle:
                for line in handle:
                    if line.strip():
                        records.append(json.loads(line))
        except (FileNotFoundError, json.JSONDecodeError):  # absent; or damaged, which only a foreign writer can do
            pass
        return records

    def load_config(self) -> TrainConfig:
        """Return the TrainConfig recorded in config.json (its data facts left out)."""
        data = read_json(self.file(CONFIG))
        known = set(TrainConfig().to_dict())
        return TrainConfig.from_dict({key: value for key, value in data.items() if key in known})

    # ------------------------------------------------------------------ writing

    def prepare(self) -> None:
        """Remove the half-written temporaries of a run killed while saving."""
        if self.writer:
            remove_stale_temporaries(self.path)

    def write_config(self, config: TrainConfig, preset: str | None, **facts) -> None:
        """Write config.json: every setting, the preset name and ``facts`` (world size, classes, counts...)."""
        if self.writer:
            write_json(self.file(CONFIG), dict(config.to_dict(), preset=preset, **facts,
                                               ccmix_version=ccmix.__version__))

    def write_metrics(self, history: list[dict]) -> None:
        """Write metrics.jsonl, one record per completed epoch."""
        if self.writer:
            write_jsonl(self.file(METRICS), history)

    def start_summary(self, config: TrainConfig, preset: str | None, **facts) -> None:
        """Set what every summary of this run repeats: the setting, its preset and published top-1, ``facts``."""
        self.summary_facts = dict(
            method=config.method, dataset=config.dataset, eval_split=config.eval_split, imb=config.imb,
            seed=config.seed, preset=preset,
            published_top1=published_top1_for(config, preset), epochs=config.epochs, **facts,
        )

    def summary(self, status: str, epochs_completed: int, best: dict | None, train_seconds: float,
                final_metrics: dict | None = None, error: str | None = None) -> dict:
        """Return summary.json's dict: status (running, failed, interrupted, completed), final and best records.

        ``final_metrics`` are the metrics of the model after ``epochs_completed`` epochs (None while
        running); ``best`` the best record so far, else the final one.
        """
        final = shot_record(final_metrics, epochs_completed if final_metrics is not None else None)
        return dict(self.summary_facts, status=status, error=error, epochs_completed=epochs_completed, final=final,
                    best=dict(best or final, note=best_note(self.summary_facts.get("eval_split", "test"))),
                    train_seconds=train_seconds)

    def write_summary(self, summary: dict) -> None:
        """Write summary.json."""
        if self.writer:
            write_json(self.file(SUMMARY), summary)

    def write_per_class(self, metrics: dict, class_names, train_counts, config: TrainConfig) -> None:
        """Write per_class.csv: class, train count, many/medium/few group, test count, accuracy %."""
        if self.writer:
            write_per_class(self.file(PER_CLASS), metrics, class_names, train_counts, config)

    def write_predictions(self, metrics: dict) -> None:
        """Write predictions.npz: the test predictions and labels (int64, test-set order)."""
        if not self.writer:
            return
        preds = np.asarray(metrics["preds"], dtype=np.int64)
        labels = np.asarray(metrics["labels"], dtype=np.int64)
        atomic_write(self.file(PREDICTIONS), lambda handle: np.savez(handle, preds=preds, labels=labels))

    def save_epoch(self, payload: dict, history: list[dict], improved: bool, summary: dict) -> None:
        """Write an epoch's files: metrics.jsonl, best.pt (when ``improved``), last.pt, summary.json.

        In this order: a kill between two writes leaves last.pt behind the others, and resuming
        from it rewrites them identically.
        """
        if not self.writer:
            return
        from ccmix.train import checkpoint as ckpt

        self.write_metrics(history)
        if improved:
            ckpt.save_checkpoint(self.file(ckpt.BEST), payload)
        ckpt.save_checkpoint(self.file(ckpt.LAST), payload, keep_previous=True)
        self.write_summary(summary)

    # ------------------------------------------------------------------ resuming

    def resume(self, config: TrainConfig, model, optimizer, description: str, num_classes: int,
               data: dict | None = None) -> Resumed | None:
        """Load the newest readable checkpoint into ``model`` and ``optimizer`` and return where the run stands;
        None when the folder holds no checkpoint. ConfigError when it was trained with other settings or, given
        the ``data`` identity (``ccmix.data.identity``), on other data."""
        from ccmix.train import checkpoint as ckpt
        from ccmix.train.conflict import check_data_identity

        # loaded on the CPU: generator states must stay CPU byte tensors; load_state_dict moves the rest
        found = ckpt.load_resume_checkpoint(self.path, map_location="cpu", set_aside_damaged=self.writer)
        if found is None:
            return None
        payload, path = found
        check_resume_compatible(payload["config"], config, path)
        if data is not None:
            check_data_identity(ckpt.saved_identity(payload), data, f"the run in {str(self.path)!r} ({path.name})")
        ckpt.check_resumable(payload, path)
        ckpt.load_model_state(model, payload, path, description, num_classes=num_classes, arch=config.arch)
        ckpt.load_optimizer_state(optimizer, payload, path)
        return Resumed(epoch=int(payload["epoch"]), best=payload.get("best"), history=self.resumed_history(payload),
                       rng=payload["rng"], path=path)

    def resumed_history(self, payload: dict) -> list[dict]:
        """Return the metric records of epochs 1..payload['epoch']: the checkpoint's own copy, else
        metrics.jsonl's; CheckpointError when they do not cover those epochs."""
        from ccmix.train.checkpoint import CheckpointError

        epochs = int(payload["epoch"])
        history = payload.get("history")
        if history is None:  # strict here: a damaged line is an error, not the end of the history
            history = [r for r in read_jsonl(self.file(METRICS)) if r["epoch"] <= epochs]
        if [r["epoch"] for r in history] != list(range(1, epochs + 1)):
            raise CheckpointError(
                f"the metric history of {str(self.path)!r} does not cover epochs 1..{epochs} of its checkpoint"
            )
        return list(history)


def write_per_class(path: Path, metrics: dict, class_names, train_counts, config: TrainConfig) -> None:
    """Write per_class.csv (class, train count, many/medium/few group, test count, accuracy %) atomically."""
    from ccmix.method.metrics import shot_groups

    groups = shot_groups(train_counts, many=config.many_threshold, few=config.few_threshold)
    test_counts = np.bincount(metrics["labels"], minlength=len(train_counts))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["class_index", "class_name", "train_count", "group", "test_count", "accuracy"])
    for index, (name, count, group) in enumerate(zip(class_names, train_counts, groups)):
        accuracy = metrics["per_class"][index]
        writer.writerow([index, name, count, group, int(test_counts[index]),
                         "" if accuracy is None else f"{accuracy:.4f}"])
    write_text(path, buffer.getvalue())


def observed_summary(run_dir: str | os.PathLike, summary: dict | None) -> dict | None:
    """Return ``summary`` (summary.json's content) as it stands: "running" only while a live process holds the run
    folder's lock (``ccmix.train.lock.live_holder``), else "stopped", keeping the recorded error or saying why not.

    A trainer killed with -9, or one whose disk filled before it could record its failure, leaves
    "running" behind; every reader of run folders goes through here so none trusts it.
    """
    if not isinstance(summary, dict) or summary.get("status") != "running" or live_holder(run_dir) is not None:
        return summary
    return dict(summary, status=STOPPED, error=summary.get("error") or STOPPED_REASON)


def load_run_config(run_dir: str | os.PathLike) -> TrainConfig:
    """Return the TrainConfig recorded in a run folder's config.json."""
    return RunFolder(run_dir).load_config()


def _read_json_or_none(path: Path) -> dict | None:
    try:
        return read_json(path)
    except (OSError, ValueError):  # absent, or damaged by a foreign writer: reads as absent
        return None


__all__ = ["BEST_NOTE", "SPLIT_WORDS", "best_note", "STOPPED", "Resumed", "RunFolder", "check_resume_compatible", "load_run_config",
           "observed_summary", "shot_record", "write_per_class"]
