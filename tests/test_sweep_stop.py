"""Stopping a sweep: SIGTERM or SIGINT to ``python -m ccmix sweep`` stops every run it started, records each
unfinished run as interrupted, says in one line how to resume and exits non-zero; the same command then
resumes. A SLURM sweep (submitit's local executor here) leaves its jobs running unless asked to cancel them."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from run_helpers import REPO_ROOT, plain_env

from ccmix.experiments.stop import SweepStop, mark_interrupted, stopped_sentence

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")

NAMES = ["synthetic_la_imb10_seed0", "synthetic_ce_imb10_seed0"]
# two runs of about ten seconds of training each on two busy cores: long enough to be stopped mid-run
SWEEP = ["sweep", "--methods", "la,ce", "--imbs", "10", "--seeds", "0", "--param", "dataset=synthetic",
         "--param", "epochs=3", "--param",
         "overrides={batch_size: 16, num_workers: 0, max_steps_per_epoch: 4, progress: false, synthetic_classes: 5}"]
RESUME_HINT = "run the same sweep command again to resume"
SLURM = ["--launcher", "slurm", "--slurm", "cluster=local", "--gpus-per-run", "0", "--time-min", "10",
         "--slurm", "poll_seconds=0.5"]


def start_sweep(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, Path]:
    """Start the sweep into tmp_path/runs; its output goes to tmp_path/out.txt and tmp_path/err.txt."""
    runs = tmp_path / "runs"
    process = subprocess.Popen([sys.executable, "-m", "ccmix", *SWEEP, *extra, "--runs-dir", str(runs)],
                               env=plain_env(), cwd=REPO_ROOT, stdout=open(tmp_path / "out.txt", "w"),
                               stderr=open(tmp_path / "err.txt", "w"))
    return process, runs


def status(run: Path) -> str | None:
    try:
        return json.loads((run / "summary.json").read_text()).get("status")
    except (OSError, ValueError):  # not written yet, or being replaced
        return None


def wait_for(condition, process: subprocess.Popen, tmp_path: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        output = (tmp_path / "out.txt").read_text() + (tmp_path / "err.txt").read_text()
        assert process.poll() is None, f"the sweep ended first ({process.returncode}):\n{output}"
        assert time.monotonic() < deadline, f"timed out:\n{output}"
        time.sleep(0.05)


def descendants(pid: int) -> list[int]:
    """Return the pids of every process below ``pid`` (read from /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):  # ended meanwhile
            continue
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, of in parents.items() if of == parent]
        found += children
        frontier += children
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def stop_mid_run(tmp_path: Path, signal_number: int, *extra: str) -> tuple[subprocess.Popen, Path, list[int]]:
    """Start the 2-job sweep, send ``signal_number`` once both runs train, wait for the sweep to exit; return it,
    its runs folder and the pids of the processes it had started."""
    process, runs = start_sweep(tmp_path, *extra)
    wait_for(lambda: all(status(runs / name) == "running" for name in NAMES), process, tmp_path)
    started = descendants(process.pid)
    assert started, "no training process found under the sweep"
    process.send_signal(signal_number)
    process.wait(timeout=90)
    return process, runs, started


def check_stopped(tmp_path: Path, process: subprocess.Popen, runs: Path, started: list[int], code: int,
                  name: str) -> None:
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in started) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in started if alive(pid)], "training processes outlived the stopped sweep"
    out, err = (tmp_path / "out.txt").read_text(), (tmp_path / "err.txt").read_text()
    assert process.returncode == code, out + err
    assert "Traceback" not in out + err and "failed" not in out, out + err
    assert err.splitlines() == [err.strip()] and err.startswith(f"interrupted: sweep stopped by {name} "), err
    assert RESUME_HINT in err, err
    for run in NAMES:
        assert status(runs / run) == "interrupted", (runs / run / "launch.log").read_text()


@pytest.mark.integration
def test_sigterm_stops_both_packed_runs_and_the_same_command_resumes(tmp_path):
    process, runs, started = stop_mid_run(tmp_path, signal.SIGTERM, "--jobs", "2")
    check_stopped(tmp_path, process, runs, started, 143, "SIGTERM")
    again = subprocess.run([sys.executable, "-m", "ccmix", *SWEEP, "--jobs", "2", "--runs-dir", str(runs)],
                           env=plain_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0 and "2 trained, 0 skipped, 0 failed" in again.stdout, again.stdout + again.stderr
    assert all(status(runs / name) == "completed" for name in NAMES)


@pytest.mark.integration
def test_sigint_stops_both_packed_runs_in_one_line(tmp_path):
    process, runs, started = stop_mid_run(tmp_path, signal.SIGINT, "--jobs", "2")
    check_stopped(tmp_path, process, runs, started, 130, "SIGINT")


@pytest.mark.integration
def test_a_stopped_slurm_sweep_leaves_its_jobs_running_unless_asked(tmp_path):
    """SIGTERM to a SLURM sweep (submitit's local executor): the sweep exits at once with one line naming the jobs
    and how to cancel them; the jobs go on training, and the command the line gives stops them cleanly."""
    process, runs, started = stop_mid_run(tmp_path, signal.SIGTERM, *SLURM)
    err = (tmp_path / "err.txt").read_text()
    assert process.returncode == 143 and "Traceback" not in err, err
    assert err.splitlines() == [err.strip()] and "keep running on the local cluster" in err, err
    assert all(alive(pid) for pid in started), "the jobs were stopped with the sweep"
    assert all(json.loads((runs / name / "summary.json").read_text())["status"] == "running" for name in NAMES)
    cancel = re.search(r"cancel them with `([^`]+)`", err)
    assert cancel is not None, err
    subprocess.run(cancel[1].split(), check=True)
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in started) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in started if alive(pid)], f"`{cancel[1]}` did not stop the jobs"
    assert [status(runs / name) for name in NAMES] == ["interrupted", "interrupted"]


@pytest.mark.integration
def test_a_stopped_slurm_sweep_cancels_its_jobs_when_asked(tmp_path):
    process, runs, started = stop_mid_run(tmp_path, signal.SIGTERM, *SLURM, "--cancel-on-stop")
    err = (tmp_path / "err.txt").read_text()
    assert process.returncode == 143 and "Traceback" not in err, err
    assert err.splitlines() == [err.strip()] and "2 unfinished jobs" in err and "were cancelled" in err, err
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in started) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in started if alive(pid)], "cancelled jobs are still running"
    assert [status(runs / name) for name in NAMES] == ["interrupted", "interrupted"]


def test_a_run_left_running_is_marked_only_when_no_process_holds_it(tmp_path):
    """A summary saying "running" becomes "interrupted" once no process holds the folder; a held folder, a
    finished run and a folder that never started are left as they are, or (no summary) recorded."""
    from ccmix.config.fields import TrainConfig
    from ccmix.train.lock import RunFolderLock

    config = TrainConfig(dataset="synthetic")
    held, free, done, blank = (tmp_path / name for name in ("held", "free", "done", "blank"))
    for folder, state in ((held, "running"), (free, "running"), (done, "completed")):
        folder.mkdir()
        (folder / "summary.json").write_text(json.dumps({"status": state, "epochs_completed": 1}))
    blank.mkdir()
    lock = RunFolderLock(held).acquire()
    try:
        marked = mark_interrupted([(f, config) for f in (held, free, done, blank)], "stopped by the sweep")
    finally:
        lock.release()
    assert sorted(marked) == ["blank", "free"]
    assert [status(f) for f in (held, free, done, blank)] == ["running", "interrupted", "completed", "interrupted"]
    assert json.loads((free / "summary.json").read_text())["epochs_completed"] == 1


def test_the_stop_line_says_what_was_killed_and_how_to_resume():
    stop = SweepStop()
    stop.request(signal.SIGINT)
    stop.request(signal.SIGINT)
    stop.killed, stop.why_killed = 2, "of a third stop signal"
    line = stopped_sentence(stop, 2, RESUME_HINT)
    assert line.startswith("sweep stopped by SIGINT (2 unfinished runs recorded as interrupted; 2 runs killed "
                           "because of a third stop signal); " + RESUME_HINT)
    assert "\n" not in line
