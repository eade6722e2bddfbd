"""Figures of the GPU check, read from command output and run folders (no torch: the check's own process stays
light, so it can refuse bad input at once).

A "sample" is one training pair with every view its method needs, as ``ccmix.train.fit`` counts it in
metrics.jsonl (``samples_per_second``) and ``benchmarks/step_seconds.py`` in its ``samples_per_second``.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

PYTEST_COUNTS = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)")


def last_json_line(lines: list[str]) -> dict | None:
    """Return the last line of ``lines`` that parses as a JSON object, or None."""
    for line in reversed(lines):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


def pytest_counts(lines: list[str]) -> dict[str, int]:
    """Return {"passed": n, "skipped": n, ...} from pytest's closing summary line (the last one that has counts)."""
    for line in reversed(lines):
        if " in " in line and PYTEST_COUNTS.search(line):
            counts = {kind.rstrip("s") if kind.startswith("error") else kind: int(n)
                      for n, kind in PYTEST_COUNTS.findall(line)}
            return counts
    return {}


def step_figures(result: dict | None) -> dict:
    """Return the eager and compiled concutmix figures of one ``step_seconds.py --compile both`` JSON line.

    ``compiled_over_eager``: compiled samples/s divided by eager samples/s (> 1 means the compiled step is faster).
    """
    if not result:
        return {}
    eager = result.get("samples_per_second", {}).get("concutmix")
    compiled_tables = result.get("compiled", {})
    compiled = compiled_tables.get("samples_per_second", {}).get("concutmix")
    return {
        "device": result.get("device"), "torch": result.get("torch"), "batch_size": result.get("batch_size"),
        "arch": result.get("arch"), "steps": result.get("steps"), "deterministic": result.get("deterministic"),
        "eager_samples_per_second": eager, "compiled_samples_per_second": compiled,
        "compiled_over_eager": round(compiled / eager, 3) if compiled and eager else None,
        "compile_seconds": compiled_tables.get("compile_seconds", {}).get("concutmix"),
    }


def read_json(path: Path) -> dict:
    """Return the JSON object in ``path``, or {} when it is missing or unreadable."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def read_metrics(run: Path) -> list[dict]:
    """Return the epoch records of ``run``/metrics.jsonl (complete lines only)."""
    try:
        text = (run / "metrics.jsonl").read_text()
    except OSError:
        return []
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            break  # a line being written
    return records


def samples_per_epoch(config: dict, train_images: int) -> int:
    """Return the training pairs of one epoch: full batches (at least one), capped by max_steps_per_epoch."""
    batch = int(config["batch_size"])
    steps = max(1, train_images // batch)
    if config.get("max_steps_per_epoch"):
        steps = min(steps, int(config["max_steps_per_epoch"]))
    return steps * batch


def epoch_split(record: dict, samples: int) -> tuple[float, float] | None:
    """Return (training seconds, evaluation seconds) of one metrics.jsonl record, or None without a rate.

    ``seconds`` is the epoch's wall time (training and evaluation); training time is samples / samples_per_second.
    """
    rate = record.get("samples_per_second")
    if not rate:
        return None
    training = samples / rate
    return training, max(0.0, record["seconds"] - training)


def run_figures(run: Path, full_epochs: int, published_top1: float | None, wall_seconds: float) -> dict:
    """Return the figures of a training run folder: epochs, final and best top-1, throughput, evaluation seconds.

    The first epoch compiles the step and records its CUDA graphs, so throughput and epoch seconds are medians over
    the later epochs when there are any. ``projected_full_run_minutes``: the run's start-up (wall time not spent in
    epochs) plus ``full_epochs`` median epochs.
    """
    summary, config, records = read_json(run / "summary.json"), read_json(run / "config.json"), read_metrics(run)
    figures: dict = {"run_status": summary.get("status"), "epochs_completed": len(records),
                     "epochs_planned": full_epochs, "published_top1": published_top1}
    if not records or not config or not summary.get("train_images"):
        return figures
    samples = samples_per_epoch(config, int(summary["train_images"]))
    steady = records[1:] or records
    evaluated = [r["top1"] for r in records if r.get("top1") is not None]
    splits = [split for split in (epoch_split(r, samples) for r in records) if split is not None]
    epoch_seconds = statistics.median(r["seconds"] for r in steady)
    startup = max(0.0, wall_seconds - sum(r["seconds"] for r in records))
    figures.update(
        train_images=int(summary["train_images"]), samples_per_epoch=samples,
        final_top1=evaluated[-1] if evaluated else None, best_top1=max(evaluated) if evaluated else None,
        best_epoch=1 + max(range(len(records)), key=lambda i: records[i].get("top1") or -1.0) if evaluated else None,
        train_samples_per_second=round(statistics.median(r["samples_per_second"] for r in steady
                                                         if r.get("samples_per_second")), 1),
        epoch_seconds=round(epoch_seconds, 3),
        mean_eval_seconds_per_epoch=round(statistics.fmean(s[1] for s in splits), 3) if splits else None,
        startup_seconds=round(startup, 1),
        projected_full_run_minutes=round((startup + full_epochs * epoch_seconds) / 60, 2),
    )
    if evaluated and published_top1 is not None:
        figures["final_minus_published"] = round(evaluated[-1] - published_top1, 2)
    return figures


def packed_figures(epoch_ends: dict[str, list[float]], runs: dict[str, Path]) -> dict:
    """Return the aggregate throughput of runs trained at once over one shared wall-clock window.

    ``epoch_ends``: per run, the wall-clock time (s) at which each epoch's line appeared in its metrics.jsonl.
    The window starts when the first run's first epoch began (its end minus its seconds) and ends when the last
    run's last epoch ended; samples are every run's training pairs in that window. Start-up (imports, data
    loading) is outside it; compilation, in the first epochs, is inside.
    """
    samples = 0
    starts, ends = [], []
    for name, run in runs.items():
        records, config, summary = read_metrics(run), read_json(run / "config.json"), read_json(run / "summary.json")
        ends_seen = epoch_ends.get(name, [])
        if not records or not ends_seen or not config or not summary.get("train_images"):
            continue
        count = min(len(records), len(ends_seen))
        samples += count * samples_per_epoch(config, int(summary["train_images"]))
        starts.append(ends_seen[0] - records[0]["seconds"])
        ends.append(ends_seen[count - 1])
    if not starts:
        return {"runs": len(runs), "runs_with_epochs": 0}
    window = max(ends) - min(starts)
    return {"runs": len(runs), "runs_with_epochs": len(starts), "samples": samples,
            "window_seconds": round(window, 2),
            "samples_per_second": round(samples / window, 1) if window > 0 else None}
