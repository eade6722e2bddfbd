"""Every fault reaches the user as one sentence and a status: interruption, disk errors, bad images, crafted files.

Subprocess tests run ``python -m ccmix train`` on tiny synthetic runs; faults that need
the machine to misbehave (a full disk, a slow step) are injected by
tests/fault_sitecustomize.py, which the product code knows nothing of.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from run_helpers import error_lines, helper_env, read_summary, run_cli, start_cli, train_argv, wait_until

from ccmix.config.fields import TrainConfig
from ccmix.data.datasets import build_datasets
from ccmix.data.images import decode_files, read_rgb
from ccmix.errors import failure_sentence
from ccmix.train import checkpoint as ckpt
from ccmix.train.fit import fit


def tiny_config(**changes) -> TrainConfig:
    """Return a synthetic config that trains an epoch in about a second."""
    base = TrainConfig(dataset="synthetic", synthetic_classes=5, imb=10, topk=3, method="la", epochs=2, batch_size=16,
                       max_steps_per_epoch=2, num_workers=0, device="cpu", pipeline="classic", warmup_epochs=0,
                       milestones=(), lr=0.05, seed=1, progress=False)
    return base.replace(**changes)


# --------------------------------------------------------------------------- interruption


@pytest.mark.integration
@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name == "nt", reason="needs POSIX signals")
@pytest.mark.parametrize("signal_name, status", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_stops_at_a_step_boundary_keeps_the_last_epoch_and_the_same_command_resumes(
        tmp_path, signal_name, status):
    out = tmp_path / "run"
    marker = tmp_path / "steps"
    env = helper_env(tmp_path, "fault_sitecustomize.py", FAULT_SLOW_STEP_SECONDS="0.5", FAULT_STEP_MARKER=str(marker))
    argv = train_argv(out, "epochs=3", "max_steps_per_epoch=4")
    log = tmp_path / "train.log"
    process = start_cli(argv, env, log)
    try:
        # four steps an epoch: after step 5 the run is inside epoch 2 and last.pt holds epoch 1
        wait_until(lambda: marker.exists() and marker.read_text() == "5", process, log)
        process.send_signal(getattr(signal, signal_name))
        assert process.wait(timeout=120) == status
    finally:
        if process.poll() is None:
            process.kill()
    output = log.read_text()
    assert "Traceback" not in output
    lines = error_lines(output)
    assert re.fullmatch(f"interrupted: training was interrupted by {signal_name} during epoch 2 before step [23]; "
                        "last.pt keeps epoch 1; run the same command again to resume", lines[-1]), lines
    summary = read_summary(out)
    assert summary["status"] == "interrupted" and summary["epochs_completed"] == 1
    assert signal_name in summary["error"]
    assert int(ckpt.load_checkpoint(out / "last.pt")["epoch"]) == 1
    if signal_name == "SIGTERM":  # what a preempted SLURM job does next: the same command, requeued
        resumed = run_cli(argv)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        summary = read_summary(out)
        assert summary["status"] == "completed" and summary["epochs_completed"] == 3
        epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert epochs == [1, 2, 3]


# --------------------------------------------------------------------------- disks


@pytest.mark.integration
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="the fault helper finds file names in /proc")
@pytest.mark.parametrize("code, sentence", [
    (errno.ENOSPC, "the disk is full: writing {out} failed (No space left on device); free some space or use "
                   "another --out (out_dir)"),
    (errno.EROFS, "the folder {out} is on a read-only filesystem (Read-only file system); use another --out "
                  "(out_dir)"),
])
def test_a_disk_error_while_saving_is_one_sentence_and_a_failed_status(tmp_path, code, sentence):
    out = tmp_path / "run"
    env = helper_env(tmp_path, "fault_sitecustomize.py", FAULT_SAVE_ERRNO=str(code), FAULT_SAVE_MATCH="last.pt")
    result = run_cli(train_argv(out), env=env)
    expected = sentence.format(out=repr(str(out)))
    assert result.returncode == 1, result.stdout + result.stderr
    assert error_lines(result.stderr) == [f"error: {expected}"] and "Traceback" not in result.stderr
    summary = read_summary(out)
    assert summary["status"] == "failed" and summary["error"] == expected and summary["epochs_completed"] == 0


@pytest.mark.integration
@pytest.mark.skipif(os.name == "nt" or os.geteuid() == 0, reason="permissions do not bind root")
def test_an_unwritable_run_folder_is_one_sentence(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    out.chmod(0o555)
    try:
        result = run_cli(train_argv(out))
    finally:
        out.chmod(0o755)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert error_lines(result.stderr)[0].startswith("error: no permission to write ")


# --------------------------------------------------------------------------- data


def write_tree(root: Path, size=(32, 32), classes=("ant", "bee")) -> None:
    """Write train/<class>/ (12 images each) and test/<class>/ (3 each) PNG trees under ``root``."""
    for split, count in (("train", 12), ("test", 3)):
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                Image.new("RGB", size, (100 * label, 10 * index, 50)).save(folder / f"{index:02d}.png")


def folder_argv(root: Path, out: Path, *changes: str) -> list[str]:
    """Return the command line of a tiny run on the folder dataset at ``root``."""
    return train_argv(out, "dataset=folder", f"data_root={root}", "imb=1", "topk=2", "batch_size=8",
                      "epochs=1", *changes)


@pytest.mark.integration
def test_an_image_that_breaks_inside_a_dataloader_worker_is_named(tmp_path):
    data, out = tmp_path / "data", tmp_path / "run"
    write_tree(data)
    broken = data / "train" / "bee" / "05.png"
    whole = broken.read_bytes()
    broken.write_bytes(whole[: len(whole) // 2])  # the header is intact: only decoding the pixels fails
    result = run_cli(folder_argv(data, out, "num_workers=2", "max_steps_per_epoch=3"))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"error: image file {str(broken)!r} could not be read ("), lines
    assert lines[0].endswith("replace or remove it")
    summary = read_summary(out)
    assert summary["status"] == "failed" and summary["error"] == lines[0][len("error: "):]


def tree_with_an_odd_test_image(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Return (data root, run folder, the odd image): a folder tree whose test image ant/02.png is 48x40."""
    data = tmp_path / "data"
    write_tree(data)
    odd = data / "test" / "ant" / "02.png"
    Image.new("RGB", (48, 40)).save(odd)
    return data, tmp_path / "run", odd


@pytest.mark.integration
def test_a_test_image_of_another_size_is_found_when_the_dataset_opens(tmp_path):
    data, out, odd = tree_with_an_odd_test_image(tmp_path)
    result = run_cli(folder_argv(data, out))
    assert result.returncode == 2, result.stderr
    assert error_lines(result.stderr) == [
        f"error: image file {str(odd)!r} is 48x40 pixels and view_recipe 'cifar' takes 32x32 images; resize them, "
        "or use view_recipe=imagenet, which resizes any size"]
    assert read_summary(out)["epochs_completed"] == 0 and not (out / "last.pt").exists()  # before any epoch


@pytest.mark.skipif(os.name == "nt", reason="symbolic links")
def test_a_class_folder_that_is_a_symlink_loop_is_a_sentence(tmp_path):
    data = tmp_path / "data"
    write_tree(data)
    loop = data / "train" / "cat"
    loop.symlink_to(loop)
    with pytest.raises(ValueError, match=r"'.*train/cat' cannot be read \(a symbolic link that leads back to "
                                         r"itself\); fix or remove it"):
        build_datasets(TrainConfig(dataset="folder", data_root=str(data), imb=1.0, topk=2))


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def test_image_modes_become_rgb_by_one_rule(tmp_path):
    ramp = (np.arange(64, dtype=np.uint32).reshape(8, 8) * 1000).astype(np.uint16)  # 0..63000 of 65535
    sixteen = _png(tmp_path / "grey16.png", ramp)
    assert Image.open(sixteen).mode.startswith("I")
    pixels = np.asarray(read_rgb(str(sixteen)))
    assert pixels.shape == (8, 8, 3) and pixels[..., 0].tolist() == np.rint(ramp / 257).astype(int).tolist()
    assert pixels.max() == 245  # scaled, not clipped to white

    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[0, 0, 3] = 255  # one opaque red pixel, the rest fully transparent
    rgba[0, 1, 3] = 128
    pixels = np.asarray(read_rgb(str(_png(tmp_path / "alpha.png", rgba))))
    assert pixels[0, 0].tolist() == [200, 0, 0] and pixels[1, 1].tolist() == [255, 255, 255]
    assert pixels[0, 1].tolist() == [227, 127, 127]  # alpha 128: (200 * 128 + 255 * 127) / 255 = 227.4

    grey_alpha = Image.fromarray(np.stack([np.full((4, 4), 30, np.uint8), np.zeros((4, 4), np.uint8)], -1), "LA")
    grey_alpha.save(tmp_path / "la.png")
    assert np.asarray(read_rgb(str(tmp_path / "la.png")))[0, 0].tolist() == [255, 255, 255]

    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    palette.save(tmp_path / "palette.png")
    palette.info["transparency"] = 0
    palette.save(tmp_path / "palette_transparent.png", transparency=1)
    assert np.asarray(read_rgb(str(tmp_path / "palette.png")))[0, 0].tolist() == [10, 20, 30]
    assert np.asarray(read_rgb(str(tmp_path / "palette_transparent.png")))[0, 0].tolist() == [255, 255, 255]

    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    cmyk = np.asarray(read_rgb(str(tmp_path / "cmyk.jpg")))[4, 4]
    assert cmyk[0] > 240 and cmyk[1] < 15 and cmyk[2] < 15  # red
    Image.new("L", (8, 8), 77).save(tmp_path / "grey.jpg", quality=100)
    paths = [str(tmp_path / "cmyk.jpg"), str(tmp_path / "grey.jpg")]
    by_pil = torch.stack([torch.from_numpy(np.asarray(read_rgb(p)).copy()).permute(2, 0, 1) for p in paths])
    assert torch.equal(decode_files(paths), by_pil)  # the batched JPEG decoder agrees with the rule


# --------------------------------------------------------------------------- crafted checkpoints


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """Return a run folder of a finished tiny synthetic run (trained in this process)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    fit(tiny_config(), out)
    return out


def _crafted(trained: Path, tmp_path: Path, change) -> Path:
    """Return a copy of ``trained``'s last.pt changed by ``change(payload)`` and saved with a valid checksum."""
    payload = ckpt.load_checkpoint(trained / "last.pt")
    change(payload)
    return ckpt.save_checkpoint(tmp_path / "crafted.pt", payload)


@pytest.mark.parametrize("change, expected", [
    (lambda p: p.pop("epoch"), "is incomplete: it lacks epoch"),
    (lambda p: p.update(epoch=-3), "is inconsistent: its epoch is -3, and a saved epoch count is an integer >= 1"),
    (lambda p: p.update(epoch=7), "is inconsistent: its epoch is 7 but its config plans only epochs=2"),
    (lambda p: p.update(num_classes="5"), "its num_classes is '5', and it must be an integer >= 1"),
    (lambda p: p.update(model={}), "its model entry is not a non-empty dict of named tensors"),
    (lambda p: p.update(class_counts=[1, 2]), "its class_counts is not a list of 5 counts >= 0"),
    (lambda p: p["history"].pop(), "its metric history does not hold one record for each of epochs 1..2"),
    (lambda p: p.update(optimizer=[1]), "its optimizer entry is not an optimizer state"),
    (lambda p: p["rng"].pop("numpy"), "its random states (rng) lack the python, numpy or torch entry"),
    (lambda p: p["rng"].update(torch=torch.zeros(3)), "its torch random state is not a uint8 tensor"),
])
def test_a_crafted_checkpoint_is_refused_naming_what_is_wrong(trained, tmp_path, change, expected):
    path = _crafted(trained, tmp_path, change)
    with pytest.raises(ckpt.CheckpointError) as caught:
        ckpt.load_checkpoint(path)
    assert str(caught.value).startswith(f"checkpoint {str(path)!r} is ") and expected in str(caught.value)


def test_a_checkpoint_with_a_wrong_momentum_shape_is_refused_on_resume(trained, tmp_path):
    def wrong_shape(payload):
        state = payload["optimizer"]["state"]
        key = next(iter(state))
        state[key]["momentum_buffer"] = torch.zeros(3, 2)
        payload.update(epoch=1, history=payload["history"][:1])

    out = tmp_path / "run"
    out.mkdir()
    for name in ("config.json", "metrics.jsonl"):
        (out / name).write_bytes((trained / name).read_bytes())
    _crafted(trained, tmp_path, wrong_shape).rename(out / "last.pt")
    with pytest.raises(ckpt.CheckpointError, match=r"is inconsistent: the momentum buffer of optimizer parameter 0 "
                                                   r"has shape \(3, 2\) and the parameter \("):
        fit(tiny_config(), out)


# --------------------------------------------------------------------------- the sentences themselves


def test_failures_are_recognised_and_told_as_one_sentence():
    import torch.utils.data

    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            raise ValueError("image file 'x/07.png' could not be read (OSError: truncated); replace or remove it")

    loader = torch.utils.data.DataLoader(Broken(), num_workers=1)
    with pytest.raises(ValueError) as caught:
        next(iter(loader))
    assert "DataLoader worker" in str(caught.value)  # torch folds the worker's traceback into the message
    assert failure_sentence(caught.value) == ("image file 'x/07.png' could not be read (OSError: truncated); "
                                              "replace or remove it")
    assert failure_sentence(MemoryError()).startswith("the machine ran out of memory (RAM)")
    assert failure_sentence(torch.cuda.OutOfMemoryError("CUDA out of memory.")).startswith(
        "the GPU ran out of memory; lower batch_size")
    full = OSError(errno.ENOSPC, "No space left on device", "runs/a/last.pt")
    assert failure_sentence(full) == ("the disk is full: writing 'runs/a/last.pt' failed (No space left on device); "
                                      "free some space or use another folder")
    assert failure_sentence(KeyError("a programming error")) is None  # keeps its traceback


@pytest.mark.integration
def test_a_failure_in_training_is_recorded_in_the_summary(tmp_path, monkeypatch):
    import ccmix.train.fit

    calls = {"n": 0}
    real = ccmix.train.fit.train_one_epoch

    def out_of_memory_in_epoch_two(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise MemoryError
        return real(*args, **kwargs)

    monkeypatch.setattr(ccmix.train.fit, "train_one_epoch", out_of_memory_in_epoch_two)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match=r"^the machine ran out of memory \(RAM\)"):
        fit(tiny_config(), out)
    summary = read_summary(out)
    assert summary["status"] == "failed" and summary["error"].startswith("the machine ran out of memory")
    assert summary["epochs_completed"] == 1 and int(ckpt.load_checkpoint(out / "last.pt")["epoch"]) == 1


@pytest.mark.integration
@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name == "nt", reason="needs POSIX signals")
def test_sigterm_under_torchrun_stops_every_process_at_the_same_step(tmp_path):
    """What SLURM does to a preempted job: SIGTERM to torchrun, which passes it to both workers; they agree on
    the step to stop at, so neither waits for the other, and the folder says interrupted."""
    from ccmix.train.launch import launch_torchrun, stop_run

    out = tmp_path / "run"
    overrides = {"dataset": "synthetic", "synthetic_classes": 5, "imb": 10, "method": "la", "batch_size": 32,
                 "num_workers": 0, "topk": 3, "warmup_epochs": 0, "milestones": (), "lr": 0.05, "epochs": 40,
                 "max_steps_per_epoch": 4, "seed": 1, "progress": False}
    process = launch_torchrun(None, overrides, out, nproc_per_node=2)
    try:
        wait_until(lambda: (out / "last.pt").exists(), process, out / "launch.log")
    finally:
        stop_run(process, timeout=60)
    summary = read_summary(out)
    assert summary["status"] == "interrupted" and "SIGTERM" in summary["error"]
    assert summary["epochs_completed"] == int(ckpt.load_checkpoint(out / "last.pt")["epoch"]) >= 1
    stopped = [line for line in (out / "launch.log").read_text().splitlines() if line.startswith("interrupted: ")]
    assert len(stopped) == 2 and stopped[0] == stopped[1]  # the same epoch and step on both processes


@pytest.mark.integration
def test_in_a_notebook_a_fault_is_one_sentence_not_a_traceback(tmp_path):
    """IPython (and so Jupyter and papermill) shows ccmix's faults as ``error: <sentence>`` alone."""
    import subprocess
    import sys

    data, out, odd = tree_with_an_odd_test_image(tmp_path)
    cell = ("import ccmix\nfrom ccmix.config.fields import TrainConfig\n"
            f"ccmix.fit(TrainConfig(dataset='folder', data_root={str(data)!r}, imb=1.0, topk=2, epochs=1, "
            f"batch_size=8, num_workers=0, device='cpu', progress=False), {str(out)!r})")
    script = ("from IPython.core.interactiveshell import InteractiveShell\n"
              f"InteractiveShell.instance().run_cell({cell!r})\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    shown = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert shown == [f"error: image file {str(odd)!r} is 48x40 pixels and view_recipe 'cifar' takes 32x32 images; "
                     "resize them, or use view_recipe=imagenet, which resizes any size"], shown
    assert read_summary(out)["status"] == "failed"
