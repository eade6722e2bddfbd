"""A run folder belongs to one training, and finished results are never overwritten or relabelled.

Most tests run real ``python -m ccmix train`` subprocesses on tiny synthetic runs; the
save-window race is made deterministic by a helper that stalls a checkpoint write
half-way (tests/slow_save_sitecustomize.py), as the kill-and-resume test does.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from run_helpers import (
    REPO_ROOT,
    error_lines,
    folder_state,
    helper_env,
    plain_env,
    read_summary,
    run_cli,
    settings,
    start_cli,
    train_argv,
    wait_until,
)

from ccmix.config.fields import TrainConfig
from ccmix.config.validation import parse_set_arguments, resolve
from ccmix.io import remove_stale_temporaries, temporary_name, write_text
from ccmix.train import checkpoint as ckpt
from ccmix.train.conflict import RunFolderConflict
from ccmix.train.fit import fit
from ccmix.train.lock import RunFolderBusy, RunFolderLock

# real training subprocesses and whole tiny runs: in `make test`, not in `make test-fast`
pytestmark = pytest.mark.integration

needs_proc = pytest.mark.skipif(not hasattr(signal, "SIGKILL") or not Path("/proc/self/fd").is_dir(),
                                reason="needs SIGKILL and /proc (the slow-save helper finds file names there)")


def checkpoint_epoch(path: Path) -> int:
    """Return the epoch stored in a checkpoint."""
    return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])


# --------------------------------------------------------------------------- one process owns a folder


@needs_proc
def test_a_second_trainer_during_a_checkpoint_write_is_refused_and_deletes_nothing(tmp_path, started):
    """The save-window race, made deterministic: trainer A stalls half-way through writing epoch 2's last.pt;
    trainers B (other settings) and C (same settings) are refused, naming A, and A's temporary file, last.pt and
    another program's .tmp file all survive. After A is killed with -9, the same command resumes without any
    manual cleanup."""
    out = tmp_path / "run"
    marker = tmp_path / "saving"
    slow = helper_env(tmp_path, "slow_save_sitecustomize.py", SLOW_SAVE_MATCH="last.pt", SLOW_SAVE_NTH="2",
                      SLOW_SAVE_MARKER=str(marker))
    writer = start_cli(train_argv(out, "epochs=3"), slow, tmp_path / "a.log")
    started.append(writer)
    wait_until(marker.exists, writer, tmp_path / "a.log")
    foreign = out / ".notes.tmp"
    foreign.write_text("another program's temporary file")
    before = sorted(p.name for p in out.iterdir())
    a_temporary = [name for name in before if name.startswith(".last.pt.") and name.endswith(".tmp")]
    assert len(a_temporary) == 1

    for changes in (("method=ce", "epochs=3"), ("epochs=3",)):
        refused = run_cli(train_argv(out, *changes))
        assert refused.returncode == 2, refused.stdout + refused.stderr
        lines = error_lines(refused.stderr)
        assert lines == [f"error: run folder {str(out)!r} is in use by process {writer.pid} on host "
                         f"{socket.gethostname()} " + lines[0].split(f"{socket.gethostname()} ", 1)[1]]
        assert "Traceback" not in refused.stderr and "use another --out" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == before  # nothing deleted, nothing added
    assert checkpoint_epoch(out / "last.pt") == 1 and writer.poll() is None

    writer.kill()  # kill -9: the kernel releases the lock; the lock file stays behind
    writer.wait(timeout=30)
    resumed = run_cli(train_argv(out, "epochs=3"))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    summary = read_summary(out)
    assert summary["status"] == "completed" and summary["epochs_completed"] == 3
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert not (out / a_temporary[0]).exists()  # the dead writer's file, cleared by the new lock holder
    assert foreign.read_text() == "another program's temporary file"  # not ours: never deleted


def test_the_lock_names_its_holder_and_is_taken_over_after_the_holder_is_killed(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from ccmix.train.lock import RunFolderLock; "
         f"RunFolderLock({str(folder)!r}).acquire(); print('held', flush=True); time.sleep(600)"],
        env=plain_env(), cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderBusy, match=rf"is in use by process {holder.pid} on host "):
            RunFolderLock(folder).acquire()
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert (folder / ".ccmix.lock").exists()  # left behind by the killed holder ...
    with RunFolderLock(folder) as lock:  # ... and taken over without any cleanup
        assert lock.held and json.loads((folder / ".ccmix.lock").read_text())["pid"] == os.getpid()
    assert not lock.held


def test_temporary_files_are_unique_per_writer_and_only_dead_writers_files_are_removed(tmp_path):
    assert temporary_name("last.pt") != temporary_name("last.pt")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # a process that has exited
    live = tmp_path / temporary_name("last.pt", pid=os.getppid())  # a live writer (the test runner's parent)
    stale = tmp_path / temporary_name("last.pt", pid=dead_pid)
    foreign = [tmp_path / ".last.pt.abc123.tmp", tmp_path / ".cache.tmp", tmp_path / "notes.tmp"]
    for path in [live, stale, *foreign]:
        path.write_text("x")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert live.exists() and all(path.exists() for path in foreign) and not stale.exists()
    write_text(tmp_path / "summary.json", "{}")  # a completed write leaves no temporary behind
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".summary")) == []


# --------------------------------------------------------------------------- finished results


@pytest.fixture(scope="module")
def completed_run(tmp_path_factory) -> Path:
    """Return a run folder holding a completed 2-epoch run (trained by the command line)."""
    out = tmp_path_factory.mktemp("completed") / "run"
    result = run_cli(train_argv(out))
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.fixture
def finished(completed_run, tmp_path) -> Path:
    """Return a private copy of the completed run folder."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(completed_run, copy)
    return copy


def test_the_same_command_on_a_completed_folder_says_already_completed_and_rewrites_nothing(finished):
    before = folder_state(finished)
    result = run_cli(train_argv(finished))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{str(finished)!r} already holds this run, completed (2 of 2 epochs" in result.stderr
    assert "nothing was rewritten" in result.stderr
    assert json.loads(result.stdout)["status"] == "completed"
    assert folder_state(finished) == before


@pytest.mark.parametrize("changes, expected", [
    (("method=ce",), "holds a run with other settings (method: 'la' in the folder, 'ce' asked)"),
    (("method=ce", "lr=0.1", "seed=2"),
     "(method: 'la' in the folder, 'ce' asked; lr: 0.05 in the folder, 0.1 asked; seed: 1 in the folder, 2 asked)"),
    (("epochs=1",), "holds a run of epochs=2 (2 completed) and epochs=1 was asked; a shorter schedule would relabel"),
    (("epochs=3",), "the learning-rate schedule depends on the number of epochs, so this is another recipe"),
])
def test_other_settings_on_a_completed_folder_are_refused_naming_the_fields(finished, changes, expected):
    before = folder_state(finished)
    result = run_cli(train_argv(finished, *changes))
    assert result.returncode == 2, result.stdout + result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert "choose a new out_dir (--out)" in lines[0] and "Traceback" not in result.stderr
    assert folder_state(finished) == before


def test_extending_epochs_needs_the_explicit_option_and_then_continues_the_run(finished):
    result = run_cli(train_argv(finished, "epochs=3", extra=("--extend-epochs",)))
    assert result.returncode == 0, result.stdout + result.stderr
    summary = read_summary(finished)
    assert summary["status"] == "completed" and summary["epochs_completed"] == 3 and summary["epochs"] == 3
    assert [json.loads(line)["epoch"] for line in (finished / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert checkpoint_epoch(finished / "last.pt") == 3 and checkpoint_epoch(finished / "previous.pt") == 2


@pytest.mark.parametrize("changes", [(), ("method=ce",)])
def test_a_folder_with_results_but_no_checkpoint_is_refused(finished, changes):
    (finished / "last.pt").unlink()
    (finished / "previous.pt").unlink(missing_ok=True)
    before = folder_state(finished)
    config = resolve("cifar10_imb100", parse_set_arguments(settings(*changes)))  # what the command line trains
    if changes:
        with pytest.raises(RunFolderConflict, match="holds a run with other settings"):
            fit(config, finished)
    else:  # the same settings: the finished summary is reported, nothing retrained
        assert fit(config, finished)["status"] == "completed"
    assert folder_state(finished) == before
    (finished / "summary.json").write_text(json.dumps(dict(read_summary(finished), status="running")))
    with pytest.raises(RunFolderConflict, match=r"holds results \(best.pt, per_class.csv, predictions.npz\) but no "
                                                r"last.pt or previous.pt to resume from"):
        fit(config.replace(method="la"), finished)


def left_in_epoch_2(finished: Path, status: str, error: str | None) -> None:
    """Turn the finished 2-epoch run into one whose trainer ended during epoch 2 with ``status`` in summary.json."""
    (finished / "previous.pt").replace(finished / "last.pt")  # epoch 1's checkpoint, as a kill in epoch 2 leaves
    summary = dict(read_summary(finished), status=status, epochs_completed=1, error=error)
    (finished / "summary.json").write_text(json.dumps(summary))


@pytest.mark.parametrize("status, error, note", [
    ("running", None, "stopped without recording why (killed, or its machine, memory or disk failed; its "
                      "summary.json still said running, with 1 of 2 epochs completed)"),
    ("running", "OSError: [Errno 28] No space left on device",
     "with 1 of 2 epochs completed); it had recorded: OSError: [Errno 28] No space left on device"),
    ("interrupted", "training was interrupted by SIGTERM during epoch 2", None),
])
def test_resuming_after_a_trainer_that_died_says_so_first(finished, capsys, status, error, note):
    """A summary still saying "running" when the next trainer takes the folder was left by a trainer that died:
    the resume says so in one line before going on; a recorded stop needs no such line."""
    left_in_epoch_2(finished, status, error)
    config = resolve("cifar10_imb100", parse_set_arguments(settings()))  # what the command line trains
    assert fit(config, finished)["status"] == "completed"
    printed = capsys.readouterr().out.splitlines()
    said = [line for line in printed if line.startswith("note: the previous training of")]
    if note is None:
        assert said == []
    else:
        assert len(said) == 1 and said[0].startswith(f"note: the previous training of {str(finished)!r} ")
        assert said[0].endswith(note), said
    assert read_summary(finished)["epochs_completed"] == 2


# --------------------------------------------------------------------------- data identity


def write_tree(root: Path, counts: dict[str, int]) -> None:
    """Write train/<class>/ (``counts`` images each) and test/<class>/ (2 each) of 32x32 PNGs under ``root``."""
    from PIL import Image

    for split in ("train", "test"):
        for label, (name, count) in enumerate(counts.items()):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count if split == "train" else 2):
                Image.new("RGB", (32, 32), (60 * label, 4 * index, 90)).save(folder / f"{index:03d}.png")


def folder_config(root: Path, **changes) -> TrainConfig:
    """Return a tiny config training on the image tree at ``root``."""
    base = TrainConfig(dataset="folder", data_root=str(root), imb=1.0, topk=2, method="la", epochs=1, batch_size=8,
                       max_steps_per_epoch=1, num_workers=0, device="cpu", pipeline="classic", warmup_epochs=0,
                       milestones=(), lr=0.05, seed=0, progress=False)
    return base.replace(**changes)


@pytest.mark.parametrize("change, expected", [
    ("rename", "class 1 is now named 'bird' and was 'bee'"),
    ("remove", "class 'cat' now has 8 training images and had 10"),
    ("swap", "the training images differ (other files or another subset)"),
])
def test_resume_and_eval_refuse_data_that_changed(tmp_path, change, expected, capsys):
    from ccmix.cli import main

    data = tmp_path / "data"
    write_tree(data, {"ant": 10, "bee": 10, "cat": 10})
    out = tmp_path / "run"
    fit(folder_config(data), out)
    saved = json.loads((out / "config.json").read_text())
    assert saved["class_names"] == ["ant", "bee", "cat"] and saved["train_class_counts"] == [10, 10, 10]
    assert len(saved["train_fingerprint"]) == 64
    payload = ckpt.load_checkpoint(out / "last.pt")
    assert payload["data"]["class_names"] == ["ant", "bee", "cat"]
    if change == "rename":
        for split in ("train", "test"):
            (data / split / "bee").rename(data / split / "bird")
    elif change == "remove":
        for index in (0, 1):
            (data / "train" / "cat" / f"{index:03d}.png").unlink()
    else:
        (data / "train" / "cat" / "000.png").rename(data / "train" / "cat" / "999.png")
    before = folder_state(out)
    with pytest.raises(RunFolderConflict, match=re.escape(expected)):
        fit(folder_config(data, epochs=2), out, allow_more_epochs=True)
    assert main(["eval", "--checkpoint", str(out / "last.pt")]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: checkpoint {str(out / 'last.pt')!r} was trained on other data than found now: ")
    assert expected in error and error.count("\n") == 1
    assert folder_state(out) == before
