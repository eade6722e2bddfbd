"""The command line ends every way as one line: read-only disks, Ctrl-C and SIGTERM, bad devices and paths.

Each case is run as a user meets it: ``python -m ccmix ...`` in this process where that
is faithful (fast), or as a real subprocess receiving real signals (``integration``).
Each asserts the one line on stderr (no traceback), the exit status and, for ``eval``,
that the metrics were shown.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from run_helpers import REPO_ROOT, error_lines, folder_state, helper_env, plain_env, read_summary, train_argv

from ccmix.cli import CommandStopped, main, stop_on_signals

POSIX_SIGNALS = pytest.mark.skipif(os.name == "nt", reason="needs POSIX signals")


def run_main(*argv: str) -> tuple[int, str, str]:
    """Run ``python -m ccmix *argv`` in this process; return (exit status, stdout, stderr)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = main(list(argv))
    return status, stdout.getvalue(), stderr.getvalue()


def one_line(stderr: str) -> str:
    """Return the single line of ``stderr``; fail when it holds a traceback or more than one line."""
    assert "Traceback" not in stderr, stderr
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> tuple[Path, dict]:
    """Return (run folder, summary) of a tiny finished run; tests copy it before changing anything."""
    folder = tmp_path_factory.mktemp("cli") / "run"
    status, stdout, stderr = run_main(*train_argv(folder))
    assert status == 0, stderr
    return folder, read_summary(folder)


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    """Return a private copy of the tiny finished run."""
    return Path(shutil.copytree(trained_run[0], tmp_path / "run"))


def printed_metrics(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- eval on a disk that refuses writes


@pytest.fixture
def read_only_folder(monkeypatch):
    """Return a function making a folder behave as on a read-only filesystem: creating a file in it raises
    EROFS, as the kernel does (tests run as root, whom chmod does not stop)."""
    real_open = os.open

    def make_read_only(folder: Path) -> None:
        def refusing_open(path, flags, *args, **kwargs):
            if flags & os.O_CREAT and Path(os.fspath(path)).resolve().parent == folder.resolve():
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", refusing_open)

    return make_read_only


def test_eval_on_a_read_only_filesystem_shows_the_metrics_then_one_warning_line(run_copy, trained_run,
                                                                                read_only_folder):
    read_only_folder(run_copy)
    before = folder_state(run_copy)
    status, stdout, stderr = run_main("eval", "--checkpoint", str(run_copy / "last.pt"))
    assert status == 0  # the evaluation succeeded; only saving it did not
    metrics = printed_metrics(stdout)
    final = trained_run[1]["final"]
    assert metrics["top1"] == pytest.approx(final["top1"]) and metrics["epoch"] == final["epoch"]
    target = run_copy / "last.eval.json"
    assert one_line(stderr) == (f"warning: the metrics were not saved: {str(target)!r} cannot be written "
                                "(Read-only file system)")
    assert folder_state(run_copy) == before  # nothing written, no temporary file left


def test_a_stale_eval_file_that_cannot_be_replaced_is_named_in_the_warning(run_copy, read_only_folder):
    stale = run_copy / "last.eval.json"
    stale.write_text('{"top1": 99.0}')
    read_only_folder(run_copy)
    status, stdout, stderr = run_main("eval", "--checkpoint", str(run_copy / "last.pt"))
    assert status == 0 and printed_metrics(stdout)["top1"] != 99.0
    assert one_line(stderr).endswith("(Read-only file system); the older last.eval.json there is left as it was "
                                     "and may describe an earlier checkpoint")
    assert stale.read_text() == '{"top1": 99.0}'


def test_in_python_an_unsaved_evaluation_still_returns_its_metrics_with_a_warning(run_copy, read_only_folder):
    from ccmix.train.evaluation import EvalNotSavedWarning, evaluate_checkpoint

    read_only_folder(run_copy)
    with pytest.warns(EvalNotSavedWarning, match=r"last\.eval\.json' cannot be written \(Read-only file system\)"):
        result = evaluate_checkpoint(run_copy / "last.pt")
    assert result["epoch"] == 2 and 0 <= result["top1"] <= 100


def test_eval_writes_its_file_when_it_can(run_copy):
    status, stdout, stderr = run_main("eval", "--checkpoint", str(run_copy / "best.pt"))
    assert status == 0 and stderr == ""
    assert json.loads((run_copy / "best.eval.json").read_text()) == printed_metrics(stdout)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root writes through folder permissions; the read-only cases above cover it")
def test_eval_in_a_folder_without_write_permission_shows_the_metrics(run_copy):
    run_copy.chmod(0o555)
    try:
        status, stdout, stderr = run_main("eval", "--checkpoint", str(run_copy / "last.pt"))
    finally:
        run_copy.chmod(0o755)
    assert status == 0 and "top1" in printed_metrics(stdout)
    assert one_line(stderr) == (f"warning: the metrics were not saved: {str(run_copy / 'last.eval.json')!r} "
                                "cannot be written (Permission denied)")


def _can_mount_read_only() -> bool:
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.integration
@pytest.mark.skipif(not _can_mount_read_only(), reason="needs a private mount namespace (unshare -m) to mount read-only")
def test_eval_on_a_real_read_only_mount(run_copy, tmp_path):
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    script = (f"mount --bind {run_copy} {mounted} && mount -o remount,ro,bind {mounted} && "
              f"exec {sys.executable} -m ccmix eval --checkpoint {mounted / 'last.pt'}")
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], env=plain_env(), cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "top1" in printed_metrics(result.stdout)
    assert one_line(result.stderr) == (f"warning: the metrics were not saved: {str(mounted / 'last.eval.json')!r} "
                                       "cannot be written (Read-only file system)")
    assert not (run_copy / "last.eval.json").exists()


# --------------------------------------------------------------------------- Ctrl-C and SIGTERM


def test_ctrl_c_during_eval_is_one_line_and_status_130(run_copy, monkeypatch):
    def interrupted_iteration(self):  # Python's own SIGINT handler raises KeyboardInterrupt where the code is
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.utils.data.DataLoader, "__iter__", interrupted_iteration)
    status, stdout, stderr = run_main("eval", "--checkpoint", str(run_copy / "last.pt"))
    assert status == 130 and stdout == ""
    assert one_line(stderr) == "interrupted: python -m ccmix eval was stopped by SIGINT before it finished"
    assert not (run_copy / "last.eval.json").exists()


SLOW_EVAL_SITECUSTOMIZE = '''
import os
import time

import torch.utils.data

_real_iter = torch.utils.data.DataLoader.__iter__


def _slow_iter(self):  # the test loader's workers are started; then the evaluation waits for the test's signal
    iterator = _real_iter(self)
    with open(os.environ["SLOW_EVAL_MARKER"], "w") as marker:
        marker.write("evaluating")
    for _ in range(2400):  # short sleeps: a signal that another thread took is acted on within one of them
        time.sleep(0.05)
    return iterator


torch.utils.data.DataLoader.__iter__ = _slow_iter
'''


@pytest.mark.integration
@POSIX_SIGNALS
@pytest.mark.parametrize("signal_name, status", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_during_eval_with_workers_is_one_line_and_leaves_no_process(run_copy, tmp_path, signal_name,
                                                                             status):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SLOW_EVAL_SITECUSTOMIZE)
    marker = tmp_path / "evaluating"
    env = dict(plain_env(), SLOW_EVAL_MARKER=str(marker))
    env["PYTHONPATH"] = os.pathsep.join([str(site), env["PYTHONPATH"]])
    process = subprocess.Popen([sys.executable, "-m", "ccmix", "eval", "--checkpoint", str(run_copy / "last.pt"),
                                "--set", "num_workers=2"], env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), process.communicate()[1]
        os.killpg(process.pid, getattr(signal, signal_name))  # as a terminal's Ctrl-C: workers get it too
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == status and stdout == ""
    assert one_line(stderr) == f"interrupted: python -m ccmix eval was stopped by {signal_name} before it finished"
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):  # no DataLoader worker outlives the command
        os.killpg(process.pid, 0)


STARTUP_LINE = ("interrupted: python -m ccmix train was stopped by {} before it finished; run the same command again "
                "to start or resume the run")



def wait_for_handler(pid: int, number: int, timeout: float = 60.0) -> None:
    """Return once process ``pid`` catches signal ``number`` (its SigCgt mask in /proc says so)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = Path(f"/proc/{pid}/status").read_text()
        caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
        if caught >> (int(number) - 1) & 1:
            return
        time.sleep(0.005)
    raise AssertionError(f"process {pid} did not install a handler for signal {int(number)} in {timeout} s")


@pytest.mark.integration
@POSIX_SIGNALS
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads a process's caught signals in /proc")
@pytest.mark.parametrize("signal_name, status", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_while_torch_loads_is_one_line(tmp_path, signal_name, status):
    """Signals at several moments of start-up, counted from the moment the command line's handlers are in (before
    that the interpreter itself is starting, which no program can word; right after it, torch is loading for about
    two seconds): each ends in one line. A signal that lands inside an import is held until the import ends, so it
    may reach the command line's handler or, once training's are in, training's."""
    lines = []
    for delay in (0.0, 0.2, 0.5, 1.0):
        out = tmp_path / f"run-{delay}"
        process = subprocess.Popen([sys.executable, "-m", "ccmix", *train_argv(out)], env=plain_env(), cwd=REPO_ROOT,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for_handler(process.pid, signal.SIGTERM)
        time.sleep(delay)
        process.send_signal(getattr(signal, signal_name))
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == status, (delay, stderr)
        lines.append(one_line(stderr))
        if (out / "summary.json").exists():  # stopped later than the imports: the folder still tells the truth
            assert read_summary(out)["status"] != "running"
    assert all(line == STARTUP_LINE.format(signal_name) or line.startswith(
        f"interrupted: training was interrupted by {signal_name}") for line in lines), lines


@pytest.fixture
def command_line_handlers():
    """Install the command line's SIGINT/SIGTERM handlers in this process; put back every handler and the
    interval timer (pytest-timeout's) afterwards."""
    numbers = (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)
    handlers = {number: signal.getsignal(number) for number in numbers}
    timer = signal.getitimer(signal.ITIMER_REAL)
    stop_on_signals()
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    for number, handler in handlers.items():
        signal.signal(number, handler)
    if timer[0]:
        signal.setitimer(signal.ITIMER_REAL, *timer)


@POSIX_SIGNALS
def test_a_stop_during_an_import_lets_the_import_finish_then_stops(tmp_path, monkeypatch, command_line_handlers):
    """An exception raised half-way through an import can be swallowed by the importer (the stop is lost) or
    leave a half-made module: the stop waits until no import is in progress, then comes at once."""
    (tmp_path / "signals_itself.py").write_text(
        "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\nREACHED_THE_END = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "signals_itself", raising=False)
    started = time.monotonic()
    with pytest.raises(CommandStopped) as stopped:
        import signals_itself

        assert signals_itself.REACHED_THE_END
        time.sleep(10)  # the stop lands here, right after the import
    assert stopped.value.signal_number == signal.SIGTERM
    assert time.monotonic() - started < 5
    assert sys.modules["signals_itself"].REACHED_THE_END


STOPPED_BEFORE_STEP_1 = ("interrupted: training was interrupted by {} during epoch 1 before step 1; no epoch was "
                         "completed; run the same command again to start over")
STOPPED_TOO_LATE = ("interrupted: training was interrupted by {} after its last step; the run in {!r} completed all "
                    "the same and nothing is lost")

# Where the process signals itself (tests/signal_sitecustomize.py), which call of it, the signal, and the outcomes
# accepted: each line with the status summary.json then holds (None: the folder was not written). The signals
# alternate, so each one is seen at every stage of start-up and training.
SIGNAL_POINTS = {
    # deep inside torch's import, whose C++ start-up imports numpy and clears any error raised there: the stop
    # comes once the imports are done, so before training (or, on a slow machine, as training's first request)
    "numpy import in torch": ("import:numpy.linalg", 1, "SIGINT",
                              {STARTUP_LINE: None, STOPPED_BEFORE_STEP_1: "interrupted"}),
    "folder locked": ("after:ccmix.train.lock:RunFolderLock.acquire", 1, "SIGTERM", {STARTUP_LINE: None}),
    "training handlers in": ("after:ccmix.train.guard:examine", 1, "SIGINT", {STOPPED_BEFORE_STEP_1: "interrupted"}),
    "dataset building": ("before:ccmix.train.fit:build_datasets", 1, "SIGTERM",
                         {STOPPED_BEFORE_STEP_1: "interrupted"}),
    "before the first step": ("before:ccmix.train.fit:train_one_epoch", 1, "SIGINT",
                              {STOPPED_BEFORE_STEP_1: "interrupted"}),
    "after the last step": ("after:ccmix.train.run_folder:RunFolder.save_epoch", 2, "SIGTERM",
                            {STOPPED_TOO_LATE: "completed"}),
    "writing the results": ("before:ccmix.train.run_folder:RunFolder.write_predictions", 1, "SIGINT",
                            {STOPPED_TOO_LATE: "completed"}),
}


@pytest.mark.integration
@POSIX_SIGNALS
@pytest.mark.parametrize("where", list(SIGNAL_POINTS))
def test_a_signal_at_any_point_of_train_is_one_line_and_a_true_status(tmp_path, where):
    """A signal at a named point of start-up or training (sent by the process to itself, so it lands exactly
    there): one line, 128 + the signal number, and summary.json (when written) tells what happened."""
    point, nth, signal_name, outcomes = SIGNAL_POINTS[where]
    out = tmp_path / "run"
    env = helper_env(tmp_path, "signal_sitecustomize.py", SIGNAL_POINT=point, SIGNAL_NTH=str(nth),
                     SIGNAL_SELF=signal_name)
    result = subprocess.run([sys.executable, "-m", "ccmix", *train_argv(out)], env=env, cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 128 + getattr(signal, signal_name), (result.returncode, result.stderr)
    accepted = {line.format(signal_name, str(out)): status for line, status in outcomes.items()}
    said = one_line(result.stderr)
    assert said in accepted, (said, list(accepted))
    if accepted[said] is None:
        assert not (out / "summary.json").exists()
    else:
        assert read_summary(out)["status"] == accepted[said]


# --------------------------------------------------------------------------- devices and paths


def test_bench_on_cuda_without_cuda_is_the_sentence_train_gives(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    status, stdout, stderr = run_main("bench", "--device", "cuda", "--quick")
    assert status == 2 and stdout == ""
    line = one_line(stderr)
    assert line == "error: device='cuda' was asked for but no CUDA device is available; use device=cpu or auto"
    train_status, _, train_stderr = run_main(*train_argv(tmp_path / "run", "device=cuda"))
    assert (train_status, one_line(train_stderr)) == (status, line)  # one check, one sentence
    assert not (tmp_path / "run").exists()


def test_a_run_folder_given_as_checkpoint_is_named_with_its_checkpoints(trained_run):
    folder = trained_run[0]
    status, stdout, stderr = run_main("eval", "--checkpoint", str(folder))
    assert status == 1 and stdout == ""
    assert one_line(stderr) == (f"error: checkpoint {str(folder)!r} is a run folder, not a checkpoint file; give its "
                                f"{str(folder / 'last.pt')!r} or {str(folder / 'best.pt')!r}")


def test_a_folder_given_as_checkpoint_is_called_a_folder(tmp_path):
    status, _, stderr = run_main("eval", "--checkpoint", str(tmp_path))
    assert status == 1
    assert one_line(stderr) == (f"error: checkpoint {str(tmp_path)!r} is a folder, not a checkpoint file; give a .pt "
                                "file, such as a run folder's last.pt or best.pt")


# --------------------------------------------------------------------------- two damaged checkpoints


def damage_both_checkpoints(folder: Path) -> None:
    """Leave ``folder`` as a run killed in epoch 2 whose last.pt and previous.pt were then both damaged."""
    (folder / "last.pt").write_bytes(b"")
    (folder / "previous.pt").write_bytes(b"PK\x03\x04 not really a zip")
    summary = read_summary(folder)
    (folder / "summary.json").write_text(json.dumps(dict(summary, status="running", epochs_completed=1)))


def test_the_advice_for_two_damaged_checkpoints_works_when_followed_literally(run_copy, trained_run):
    damage_both_checkpoints(run_copy)
    argv = train_argv(run_copy)
    status, _, stderr = run_main(*argv)
    assert status == 1
    line = one_line(stderr)
    assert line.startswith(f"error: no readable checkpoint in {str(run_copy)!r}: ")
    advice = re.search(r"rename the folder '([^']+)' \(e\.g\. to '([^']+)'; every file in it is kept\) and run the "
                       r"same command again", line)
    assert advice, line
    kept = folder_state(run_copy)
    os.rename(advice.group(1), advice.group(2))  # what the sentence says, word for word
    status, stdout, stderr = run_main(*argv)
    assert status == 0, stderr
    assert json.loads(stdout.strip().splitlines()[-1])["status"] == "completed"
    assert read_summary(run_copy)["final"] == trained_run[1]["final"]  # trained from scratch: the same run again
    assert folder_state(Path(advice.group(2))) == kept  # nothing the user had was lost


def test_the_advice_names_a_free_folder_when_one_was_set_aside_before(run_copy):
    (run_copy.parent / "run.damaged").mkdir()
    damage_both_checkpoints(run_copy)
    status, _, stderr = run_main(*train_argv(run_copy))
    assert status == 1
    assert f"(e.g. to {str(run_copy.parent / 'run.damaged-2')!r}; every file in it is kept)" in one_line(stderr)
