"""Stopping a sweep: a SIGINT or SIGTERM reaches every run it started, and each unfinished run says so.

A sweep of Contrastive CutMix runs (Pan et al., "Enhanced Long-Tailed Recognition with
Contrastive CutMix Augmentation", IEEE TIP 2024) starts each local run in its own
session, so a terminal's Ctrl-C (sent to the foreground process group) reaches the
sweep alone; the sweep forwards the same signal once to each run's main process, which
stops at its next step boundary and records ``"status": "interrupted"``. The sweep
waits for them (``GRACE_SECONDS``, then SIGKILL), marks as interrupted every run it
started that still says ``"running"`` (or never wrote a summary) and whose folder no
process holds, prints one line saying how to resume and exits with 128 + the signal
number, as ``train`` does. A second signal stops the runs at once (SIGINT, which a run
answers by stopping mid-step), a third kills them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from ccmix.train.interrupt import Interrupted, stop_signals_to

GRACE_SECONDS = 30.0  # how long stopped runs get to reach a step boundary and record their status
LEFTOVER_SECONDS = 5.0  # how long a stopped run's own children (data workers) get to follow it


class SweepStop:
    """The stop signals a sweep received: ``signal_number`` is the first one's (None: go on), ``count`` how many.

    The launcher fills in the rest: ``killed`` counts the runs that had to be killed and
    ``why_killed`` says why; ``left_running`` is True when the runs go on elsewhere (SLURM jobs
    not cancelled), and ``note`` is what the one line adds about them.
    """

    def __init__(self):
        self.signal_number: int | None = None
        self.count = 0
        self.killed = 0
        self.why_killed = ""
        self.left_running = False
        self.note = ""

    def request(self, signal_number: int) -> None:
        """Record a stop signal (what the signal handler does); never raises, so no traceback can follow."""
        self.count += 1
        if self.signal_number is None:
            self.signal_number = signal_number

    @property
    def requested(self) -> bool:
        """True once a stop signal arrived."""
        return self.signal_number is not None

    @property
    def name(self) -> str:
        """The first signal's name, e.g. ``SIGTERM``."""
        return signal.Signals(self.signal_number or signal.SIGINT).name


class SweepInterrupted(Interrupted):
    """The sweep stopped on SIGINT or SIGTERM."""

    default_message = "the sweep was interrupted"


@contextlib.contextmanager
def sweep_stop_signals() -> Iterator[SweepStop]:
    """Yield a SweepStop that SIGINT and SIGTERM feed while the block runs (main thread only)."""
    stop = SweepStop()
    with stop_signals_to(stop.request):
        yield stop


def stop_processes(processes: Iterable, stop: SweepStop, grace_seconds: float = GRACE_SECONDS) -> None:
    """Forward the stop to each process (a Popen leading its own session) and wait up to ``grace_seconds``.

    A second stop signal is forwarded as SIGINT, which stops a run at once (still recording its
    state), and shortens the wait to ``LEFTOVER_SECONDS``; a third, or the end of the wait, kills
    the sessions still alive.
    """
    processes = [process for process in processes if process.poll() is None]
    _forward(processes, stop.signal_number or signal.SIGTERM)
    deadline, hurried = time.monotonic() + grace_seconds, False
    stop.why_killed = f"they did not stop within {grace_seconds:g} s"
    while any(process.poll() is None for process in processes) and time.monotonic() < deadline:
        if stop.count > 2:
            stop.why_killed = "of a third stop signal"
            break
        if stop.count > 1 and not hurried:
            _forward(processes, signal.SIGINT)
            deadline, hurried = min(deadline, time.monotonic() + LEFTOVER_SECONDS), True
            stop.why_killed = f"they did not stop within {LEFTOVER_SECONDS:g} s of a second stop signal"
        time.sleep(0.1)
    for process in processes:
        if process.poll() is None:
            stop.killed += 1
            _kill_session(process.pid)
            process.wait()
    _end_leftovers([process.pid for process in processes])


def _forward(processes: list, number: int) -> None:
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, number)  # the run's main process: it stops its own workers


def _kill_session(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _end_leftovers(group_ids: list[int]) -> None:
    """Kill what is left of each stopped run's process group (e.g. data workers) after a short wait."""
    deadline = time.monotonic() + LEFTOVER_SECONDS
    while group_ids and time.monotonic() < deadline:
        group_ids = [group for group in group_ids if _group_alive(group)]
        if group_ids:
            time.sleep(0.1)
    for group in group_ids:
        _kill_session(group)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def mark_interrupted(runs: Iterable[tuple[Path, object]], sentence: str) -> list[str]:
    """Record ``"status": "interrupted"`` with ``sentence`` in each (run folder, TrainConfig) whose summary still
    says "running" (or is missing) and whose folder no process holds; return the names marked."""
    from ccmix.io import read_json
    from ccmix.train.guard import record_status
    from ccmix.train.lock import live_holder
    from ccmix.train.run_folder import SUMMARY, RunFolder

    marked = []
    for out_dir, config in runs:
        folder = RunFolder(out_dir)
        try:  # the file as written (readers show an unheld "running" as stopped)
            summary = read_json(folder.file(SUMMARY)) if folder.file(SUMMARY).is_file() else None
        except (OSError, ValueError):  # unreadable: a damaged folder is left as it is
            continue
        if summary is not None and (not isinstance(summary, dict) or summary.get("status") != "running"):
            continue
        if not Path(out_dir).is_dir() or live_holder(out_dir) is not None:
            continue
        record_status(folder, config, "interrupted", sentence)
        marked.append(Path(out_dir).name)
    return marked


def run_notebook_thread(function: Callable, kwargs: dict, stop: SweepStop) -> BaseException | None:
    """Return what ``function(**kwargs)`` (a notebook execution) raised in a helper thread, None when it returned.

    The helper thread leaves this (main) thread the sweep's signal handlers; on a stop the
    notebook's kernel is interrupted as its interrupt button does (also once it has started, when
    the stop came first), and the wait ends after ``GRACE_SECONDS``.
    """
    raised: list[BaseException] = []

    def target():
        try:
            function(**kwargs)
        except BaseException as error:  # handed to the main thread
            raised.append(error)

    thread = threading.Thread(target=target, name="ccmix-notebook", daemon=True)
    thread.start()
    interrupted, deadline = 0, None
    while thread.is_alive():
        thread.join(0.2)
        if stop.requested and interrupted < stop.count:
            interrupted += interrupt_kernels()
            deadline = deadline or time.monotonic() + GRACE_SECONDS
        if deadline is not None and time.monotonic() > deadline:  # the kernel is shut down as this process exits
            stop.note = f"the notebook did not stop within {GRACE_SECONDS:g} s"
            break
    return raised[0] if raised else None


def interrupt_kernels() -> int:
    """Send SIGINT (a notebook's interrupt) to this process's Jupyter kernels (Linux: read from /proc); return how
    many got it."""
    count = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):  # a process that ended meanwhile
            continue
        if parent == os.getpid() and b"ipykernel" in command:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(stat.parent.name), signal.SIGINT)
                count += 1
    return count


def stopped_sentence(stop: SweepStop, unfinished: int, command_hint: str) -> str:
    """Return the one line a stopped sweep prints: what stopped, what was killed, and how to resume."""
    what = stop.note
    if not stop.left_running:
        what = f"{unfinished} unfinished run{'s' if unfinished != 1 else ''} recorded as interrupted"
        if stop.killed:
            what += f"; {stop.killed} run{'s' if stop.killed != 1 else ''} killed because {stop.why_killed}"
        what += f"; {stop.note}" if stop.note else ""
    return (f"sweep stopped by {stop.name} ({what}); {command_hint}: completed runs are reused and unfinished "
            "ones resume from their last checkpoint")


__all__ = ["GRACE_SECONDS", "SweepInterrupted", "SweepStop", "interrupt_kernels", "mark_interrupted", "run_notebook_thread",
           "stop_processes", "stopped_sentence", "sweep_stop_signals"]
