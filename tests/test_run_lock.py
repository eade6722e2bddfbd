"""The run-folder lock belongs to the trainer process alone, and every reader tells a live run from a dead one.

A killed trainer's DataLoader workers outlive it for seconds; the lock must not: the
same command run at once after ``kill -9`` resumes. Readers learn whether a run is alive
without taking the lock, and a summary saying "running" with no live holder reads as
stopped everywhere. The kill tests pause the trainer at a chosen moment through
tests/slow_save_sitecustomize.py, so the kill lands exactly there.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
from run_helpers import helper_env, metric_records, run_cli, start_cli, train_argv, wait_until

from ccmix.experiments.results import run_row
from ccmix.notebook.viz_runs import run_problem
from ccmix.train.lock import LOCK_NAME, RunFolderBusy, RunFolderLock, live_holder
from ccmix.train.run_folder import RunFolder

FORK = multiprocessing.get_context("fork") if hasattr(os, "fork") else None
needs_fork = pytest.mark.skipif(FORK is None or not hasattr(signal, "SIGKILL"), reason="needs fork and SIGKILL")


def _hold(folder: Path, ready, release, let_go, fork_worker: bool) -> None:
    """Child process body: hold ``folder``'s lock (forking a sleeping child first when ``fork_worker``, as a
    DataLoader does) until ``release`` is set; then free it, set ``let_go`` and stay alive."""
    lock = RunFolderLock(folder).acquire()
    if fork_worker:
        worker = os.fork()
        if worker == 0:  # the forked child inherits the descriptor and must not inherit the lock
            kept = lock._descriptor  # keep the lock file open; close the rest (the parent's join waits on them)
            os.closerange(3, kept)
            os.closerange(kept + 1, 4096)
            signal.alarm(60)  # never outlives the test for long
            time.sleep(60)
            os._exit(0)
        (folder / "worker.pid").write_text(str(worker))
    ready.set()
    release.wait(60)
    lock.release()
    let_go.set()
    time.sleep(60)


class Holder:
    """A forked process holding a run folder's lock, as a trainer does; ``fork_worker`` gives it a forked child."""

    def __init__(self, folder: Path, fork_worker: bool = False):
        self.folder = folder
        self.ready, self.release, self.let_go = FORK.Event(), FORK.Event(), FORK.Event()
        self.process = FORK.Process(target=_hold, args=(folder, self.ready, self.release, self.let_go, fork_worker))

    @property
    def pid(self) -> int:
        return self.process.pid

    def __enter__(self) -> Holder:
        self.process.start()
        assert self.ready.wait(60)
        return self

    def __exit__(self, *exc_info) -> None:
        self.process.kill()
        self.process.join(60)
        worker = self.folder / "worker.pid"
        if worker.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(worker.read_text()), signal.SIGKILL)


def _acquire(folder: Path, outcome) -> None:
    """Child process body: try to take ``folder``'s lock once and report what happened."""
    try:
        with RunFolderLock(folder):
            outcome.put("acquired")
    except RunFolderBusy as error:
        outcome.put(f"refused: {error}")


def _probe(folder: Path, outcome) -> None:
    """Child process body: report the pid of the live holder that ``live_holder`` sees (None when none)."""
    holder = live_holder(folder)
    outcome.put(None if holder is None else holder.get("pid"))


def _in_child(target, *args):
    """Run ``target(*args, queue)`` in a forked process (which inherits no POSIX lock) and return its report."""
    outcome = FORK.Queue()
    process = FORK.Process(target=target, args=(*args, outcome))
    process.start()
    try:
        return outcome.get(timeout=60)
    finally:
        process.join(60)


# --------------------------------------------------------------------------- the lock itself


@needs_fork
@pytest.mark.parametrize("how", ["released", "killed"])
def test_a_forked_child_of_the_holder_does_not_keep_the_lock(tmp_path, how):
    """A child forked while the lock is held (as DataLoader workers are) lives on with the descriptor open, yet
    once its parent releases the lock, or is killed with -9, the lock is free at once."""
    folder = tmp_path / "run"
    with Holder(folder, fork_worker=True) as holder:
        assert live_holder(folder)["pid"] == holder.pid
        if how == "released":
            holder.release.set()
            assert holder.let_go.wait(60)
        else:
            os.kill(holder.pid, signal.SIGKILL)
            holder.process.join(60)
        os.kill(int((folder / "worker.pid").read_text()), 0)  # the forked child is alive ...
        assert live_holder(folder) is None  # ... and holds nothing
        assert _in_child(_acquire, folder) == "acquired"


@needs_fork
def test_the_liveness_reader_names_a_live_holder_without_taking_the_lock(tmp_path):
    folder = tmp_path / "run"
    with Holder(folder) as holder:
        record = live_holder(folder)
        assert record["pid"] == holder.pid and record["host"] and record["started"]
        assert _in_child(_probe, folder) == holder.pid
        refused = _in_child(_acquire, folder)
        assert refused.startswith("refused: ") and f"in use by process {holder.pid} on host" in refused
        assert live_holder(folder)["pid"] == holder.pid  # neither the reads nor the refusal disturbed it
    assert live_holder(folder) is None


def _read_for(folder: Path, seconds: float, outcome) -> None:
    """Child process body: read the folder's liveness without pause for ``seconds``; report the reads made."""
    reads, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        live_holder(folder)
        reads += 1
    outcome.put(reads)


@needs_fork
def test_a_reader_never_makes_a_starting_trainer_be_refused(tmp_path):
    """Another process reads the folder's liveness in a tight loop while this one takes and frees the lock:
    every take succeeds, because reading takes no lock."""
    folder = tmp_path / "run"
    RunFolderLock(folder).acquire().release()
    outcome = FORK.Queue()
    reader = FORK.Process(target=_read_for, args=(folder, 1.0, outcome))
    reader.start()
    try:
        takes = 0
        while outcome.empty() and reader.is_alive():
            with RunFolderLock(folder) as lock:  # RunFolderBusy here would be a spurious refusal
                assert lock.held
            takes += 1
        assert outcome.get(timeout=60) > 100 and takes > 10
    finally:
        reader.join(60)


@needs_fork
def test_readers_in_the_holding_process_do_not_drop_its_lock(tmp_path):
    """POSIX locks are dropped when their process closes any descriptor of the file: every reader in the holding
    process goes through the lock's own record, so another process is still refused afterwards."""
    folder = tmp_path / "run"
    _dead_run(folder)  # a summary saying running, as the holder's own would
    with RunFolderLock(folder):
        assert live_holder(folder)["pid"] == os.getpid()
        assert RunFolder(folder).read_summary()["status"] == "running"
        assert run_row(folder)["status"] == "running"
        assert "is running" in run_problem(folder)
        refused = _in_child(_acquire, folder)
        assert refused.startswith("refused: ") and f"process {os.getpid()}" in refused
        with pytest.raises(RunFolderBusy, match=f"in use by process {os.getpid()}"):
            RunFolderLock(folder).acquire()  # a second owner in the same process is refused too
        assert _in_child(_probe, folder) == os.getpid()
    assert _in_child(_acquire, folder) == "acquired"


def test_the_lock_file_records_the_holder_and_its_command(tmp_path):
    folder = tmp_path / "run"
    with RunFolderLock(folder) as lock:
        record = live_holder(folder)
    saved = json.loads((folder / LOCK_NAME).read_text())
    assert saved == record and not lock.held
    assert saved["pid"] == os.getpid() and saved["started"] and saved["command"]


# --------------------------------------------------------------------------- a dead run reads as stopped


def _dead_run(folder: Path, error: str | None = None) -> None:
    """Write a run folder whose summary says running, as a trainer killed mid-run (or out of disk) leaves it."""
    folder.mkdir(parents=True)
    (folder / LOCK_NAME).write_text(json.dumps({"pid": 999999, "host": "elsewhere"}) + "\n")
    summary = {"status": "running", "error": error, "epochs_completed": 1, "method": "la", "dataset": "synthetic",
               "seed": 1, "final": {"epoch": None, "top1": None}, "best": {"epoch": 1, "top1": 40.0}}
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "config.json").write_text(json.dumps({"method": "la", "dataset": "synthetic", "seed": 1}))


@pytest.mark.parametrize("error", [None, "writing 'last.pt' failed: No space left on device"])
def test_a_running_summary_without_a_live_holder_reads_as_stopped_everywhere(tmp_path, error):
    folder = tmp_path / "run"
    _dead_run(folder, error)
    summary = RunFolder(folder).read_summary()
    assert summary["status"] == "stopped"
    if error:
        assert summary["error"] == error  # the recorded reason is kept
    else:
        assert "no process holds" in summary["error"] and "run the same command again" in summary["error"]
    row = run_row(folder)
    assert row["status"] == "stopped" and row["error"] == summary["error"]
    assert run_problem(folder) == f"run 'run' is stopped: {summary['error']}"
    assert json.loads((folder / "summary.json").read_text())["status"] == "running"  # a reader changes nothing


@needs_fork
def test_a_running_summary_with_a_live_holder_reads_as_running(tmp_path):
    folder = tmp_path / "run"
    _dead_run(folder)
    with Holder(folder):
        assert RunFolder(folder).read_summary()["status"] == "running"
        assert run_row(folder)["status"] == "running"
    assert RunFolder(folder).read_summary()["status"] == "stopped"


# --------------------------------------------------------------------------- kill -9 with workers, then at once


# the tiny run with two DataLoader workers, evaluated every epoch
WORKER_RUN = ("num_workers=2", "arch=tiny", "method=cutmix", "epochs=2", "eval_interval=1")
KILL_MOMENTS = {  # helper settings that stop the trainer at the moment (see slow_save_sitecustomize.py)
    "during-the-first-epoch": {"PAUSE_AT_STEP": "1"},
    "during-evaluation": {"PAUSE_IN_EVALUATION": "2"},  # epoch 2's evaluation: epoch 1 is saved
    "during-the-checkpoint-write": {"SLOW_SAVE_MATCH": "last.pt", "SLOW_SAVE_NTH": "2"},
}


def _outcome(folder: Path) -> tuple[list[dict], dict]:
    """Return (metrics.jsonl records without timings, summary's final and best) of a finished run."""
    records = metric_records(folder)
    summary = json.loads((folder / "summary.json").read_text())
    return records, {key: summary[key] for key in ("status", "final", "best", "epochs_completed")}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[list[dict], dict]:
    """Return the outcome of the worker run trained without interruption."""
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = run_cli(train_argv(out, *WORKER_RUN))
    assert result.returncode == 0, result.stdout + result.stderr
    return _outcome(out)


def _children(pid: int) -> list[int] | None:
    """Return the pids of the live children of process ``pid``; None where the kernel does not list them."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else None


@pytest.mark.integration
@pytest.mark.skipif(not hasattr(signal, "SIGKILL") or not Path("/proc/self/fd").is_dir(),
                    reason="needs SIGKILL and /proc (the helper finds file names there)")
@pytest.mark.parametrize("moment", list(KILL_MOMENTS))
def test_a_trainer_killed_with_workers_alive_resumes_at_once_and_ends_as_an_uninterrupted_run(
        tmp_path, started, uninterrupted, moment):
    out, marker, log = tmp_path / "run", tmp_path / "paused", tmp_path / "killed.log"
    env = helper_env(tmp_path, "slow_save_sitecustomize.py", PAUSE_MARKER=str(marker),
                     SLOW_SAVE_MARKER=str(marker), **KILL_MOMENTS[moment])
    trainer = start_cli(train_argv(out, *WORKER_RUN), env, log)
    started.append(trainer)
    wait_until(marker.exists, trainer, log)
    workers = _children(trainer.pid)
    if workers is not None and moment != "during-the-checkpoint-write":  # the loaders' workers are busy then
        assert len(workers) >= 1, workers
    os.kill(trainer.pid, signal.SIGKILL)
    trainer.wait(timeout=60)
    assert live_holder(out) is None  # at once, whatever its orphaned workers still do
    with RunFolderLock(out) as lock:
        assert lock.held
    saved = (out / "metrics.jsonl").read_text() if (out / "last.pt").exists() else None
    if moment != "during-the-first-epoch":  # killed in epoch 2, after epoch 1 was saved
        import torch

        assert torch.load(out / "last.pt", map_location="cpu", weights_only=True)["epoch"] == 1

    rerun = run_cli(train_argv(out, *WORKER_RUN))
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "in use by" not in rerun.stderr
    assert _outcome(out) == uninterrupted
    if saved is not None:  # resumed from epoch 1: its record (timings too) kept as it was
        assert (out / "metrics.jsonl").read_text().splitlines()[0] == saved.splitlines()[0]
