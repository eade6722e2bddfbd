"""Packed sweep runs on this machine: several ``python -m ccmix train`` processes at once.

A sweep of Contrastive CutMix runs (Pan et al., "Enhanced Long-Tailed Recognition
with Contrastive CutMix Augmentation", IEEE TIP 2024) is many small, independent
trainings; one CIFAR run rarely fills a modern GPU, so running ``jobs`` of them side
by side uses the machine better. Each run is its own process writing its own run
folder (output appended to ``<run folder>/launch.log``); with several visible GPUs
the runs are spread over them through ``CUDA_VISIBLE_DEVICES``, otherwise they share
the device. A failed run is reported and the others go on. Each run leads its own
session, so a terminal's Ctrl-C reaches the sweep only, which forwards the stop to each
run once (see :mod:`ccmix.experiments.stop`).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ccmix.experiments.stop import GRACE_SECONDS, SweepStop, stop_processes
from ccmix.train.launch import LOG_NAME, child_environment

# The command line prints "error: <sentence>" for the errors a user can fix; a traceback ends "Name: message".
_ERROR_LINE = re.compile(r"^error: (?P<sentence>.+)$")
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?(?P<name>[A-Za-z_]\w*(?:Error|Exception|Diverged)): (?P<text>.+)$")


@dataclass(frozen=True)
class RunOutcome:
    """How one launched run ended: ``error`` is None when it completed, else one sentence."""

    name: str
    error: str | None
    log_path: Path | None = None


def failure_sentence(text: str, fallback: str) -> str:
    """Return the sentence that says why a run failed, read from the end of its output, else ``fallback``."""
    lines = [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]
    for line in reversed(lines):
        match = _ERROR_LINE.match(line)
        if match:
            return match["sentence"]
    for line in reversed(lines):
        match = _EXCEPTION_LINE.match(line)
        if match:
            return f"{match['name']}: {match['text']}"
    return f"{fallback}; the output ends: {' | '.join(lines[-3:])}" if lines else fallback


def visible_gpus(environ: dict | None = None) -> list[str]:
    """Return the GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else those torch counts."""
    environ = os.environ if environ is None else environ
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [part.strip() for part in listed.split(",") if part.strip() and part.strip() != "-1"]
    import torch

    return [str(index) for index in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def gpu_groups(gpus: Sequence[str], per_run: int) -> list[tuple[str, ...]]:
    """Return the GPUs cut into groups of ``per_run`` (one group a run), leftovers unused; [] without GPUs."""
    return [tuple(gpus[start:start + per_run]) for start in range(0, len(gpus) - per_run + 1, per_run)]


def pick_group(running: Sequence[int], last: int) -> int:
    """Return the index of the group to start the next run on: the least busy, ties going round-robin after ``last``."""
    count = len(running)
    order = [(last + 1 + step) % count for step in range(count)]
    return min(order, key=lambda index: running[index])


def run_packed(
    commands: Sequence[tuple[str, Path, list[str]]],
    jobs: int,
    on_start: Callable[[str, str], None] | None = None,
    on_finish: Callable[[RunOutcome], None] | None = None,
    gpus: Sequence[str] | None = None,
    gpus_per_run: int = 1,
    poll_seconds: float = 0.5,
    stop: SweepStop | None = None,
    grace_seconds: float = GRACE_SECONDS,
) -> list[RunOutcome]:
    """Run ``(name, run folder, command)`` entries, ``jobs`` at a time, and return their outcomes in finishing order.

    Each command runs in its own session with its output appended to ``<run folder>/launch.log``.
    ``gpus`` (default: the visible ones) are handed out ``gpus_per_run`` at a time through
    ``CUDA_VISIBLE_DEVICES``, to the least busy group first. ``on_start(name, where)`` and
    ``on_finish(outcome)`` are called as runs start and end. Once ``stop`` (fed by the sweep's signal
    handlers) holds a request, no run starts and the running ones are stopped (see
    :func:`ccmix.experiments.stop.stop_processes`) and not reported; the caller says what stopped. An
    interrupt that arrives as KeyboardInterrupt stops them the same way before it propagates.
    Rerunning resumes their run folders.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs={jobs!r} is not accepted; it must be an integer >= 1")
    groups = gpu_groups(list(visible_gpus() if gpus is None else gpus), gpus_per_run)
    base_env = child_environment()
    if not groups and "OMP_NUM_THREADS" not in base_env and jobs > 1:
        # CPU runs side by side: split the cores instead of letting every process claim all of them
        base_env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // min(jobs, len(commands) or 1)))
    pending = list(commands)
    running: dict[str, tuple[subprocess.Popen, Path, int | None]] = {}
    busy = [0] * len(groups)
    last_group = -1
    outcomes: list[RunOutcome] = []
    try:
        while (pending or running) and not (stop is not None and stop.requested):
            while pending and len(running) < jobs:
                name, out_dir, command = pending.pop(0)
                env, where, group = dict(base_env), "this machine's device", None
                if groups:
                    group = last_group = pick_group(busy, last_group)
                    busy[group] += 1
                    env["CUDA_VISIBLE_DEVICES"] = ",".join(groups[group])
                    where = f"GPU {env['CUDA_VISIBLE_DEVICES']}"
                running[name] = (_start(command, out_dir, env, where), out_dir, group)
                if on_start is not None:
                    on_start(name, where)
            time.sleep(poll_seconds)
            for name, (process, out_dir, group) in list(running.items()):
                if process.poll() is None:
                    continue
                del running[name]
                if group is not None:
                    busy[group] -= 1
                outcome = _outcome(name, process.returncode, out_dir / LOG_NAME)
                outcomes.append(outcome)
                if on_finish is not None:
                    on_finish(outcome)
        stop_processes([process for process, _, _ in running.values()], stop or SweepStop(), grace_seconds)
    except BaseException:
        fallback = SweepStop()
        fallback.request(signal.SIGTERM)
        stop_processes([process for process, _, _ in running.values()], fallback, grace_seconds)
        raise
    return outcomes


def _start(command: list[str], out_dir: Path, env: dict, where: str) -> subprocess.Popen:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / LOG_NAME, "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(command)}  # on {where}\n")
        log.flush()
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _outcome(name: str, returncode: int, log_path: Path) -> RunOutcome:
    if returncode == 0:
        return RunOutcome(name, None, log_path)
    text = log_path.read_text(encoding="utf-8", errors="replace")[-20000:] if log_path.is_file() else ""
    fallback = f"the training process exited with status {returncode}"
    return RunOutcome(name, failure_sentence(text, fallback), log_path)


__all__ = ["RunOutcome", "failure_sentence", "gpu_groups", "pick_group", "run_packed", "visible_gpus"]
