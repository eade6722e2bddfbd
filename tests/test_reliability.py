"""Reliability: exact resume after SIGKILL, atomic files, checkpoints as data, divergence handling.

Every run here is tiny (synthetic data, batch 32, two or three steps an epoch, no workers)
so the whole file stays around a minute on two CPU cores.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from run_helpers import checkpoint_epoch, metric_records, model_hash

from ccmix.cli import main
from ccmix.config.fields import TrainConfig
from ccmix.method.step import TrainingDiverged, build_optimizer
from ccmix.train import checkpoint as ckpt
from ccmix.train.fit import fit

REPO_ROOT = Path(__file__).resolve().parents[1]
HELPER = Path(__file__).resolve().parent / "slow_save_sitecustomize.py"

# The kill-and-resume run: both sample streams, CutMix, an LR warm-up and a step decay, evaluation every
# second epoch (so best.pt is written at some epochs and not at others).
CLI_SETTINGS = [
    "dataset=synthetic", "synthetic_classes=5", "imb=10", "topk=3", "method=cutmix", "epochs=4", "batch_size=32",
    "max_steps_per_epoch=2", "num_workers=0", "device=cpu", "pipeline=classic", "warmup_epochs=1", "milestones=3",
    "lr=0.05", "eval_interval=2", "seed=3", "progress=false",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(**changes) -> TrainConfig:
    """Return a synthetic config that trains an epoch in about a second on a CPU."""
    base = TrainConfig(dataset="synthetic", synthetic_classes=5, imb=10, epochs=2, batch_size=32, num_workers=0,
                       method="la", topk=3, warmup_epochs=0, milestones=(), lr=0.05, progress=False,
                       max_steps_per_epoch=2, seed=1, device="cpu", eval_interval=100)
    return base.replace(**changes)


def train_command(out: Path) -> list[str]:
    """Return the command line that trains (or resumes) the kill-and-resume run into ``out``."""
    command = [sys.executable, "-m", "ccmix", "train", "--preset", "cifar10_imb100"]
    for setting in CLI_SETTINGS:
        command += ["--set", setting]
    return command + ["--out", str(out)]


def subprocess_env(helper_dir: Path, **extra: str) -> dict:
    """Return the environment of a training subprocess: one thread, the test helper first on PYTHONPATH."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(helper_dir), str(REPO_ROOT), env.get("PYTHONPATH", "")])
    return env


def start(command: list[str], env: dict, log: Path, started: list[subprocess.Popen]) -> subprocess.Popen:
    """Return a started subprocess writing its output to ``log`` (recorded in ``started``)."""
    with open(log, "w") as handle:
        process = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=handle, stderr=subprocess.STDOUT)
    started.append(process)
    return process


def wait_until(condition, process: subprocess.Popen, log: Path, timeout: float = 240.0) -> None:
    """Poll ``condition()`` until it holds; fail with the process's log when it exits or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the training process ended (rc {process.returncode}) too early:\n{log.read_text()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"timed out waiting for the training process:\n{log.read_text()}")
        time.sleep(0.02)


def kill(process: subprocess.Popen) -> None:
    """SIGKILL ``process`` and reap it."""
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL


def stale_temporaries(run_dir: Path) -> list[str]:
    """Return the names of half-written temporary files in ``run_dir``."""
    return sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


# --------------------------------------------------------------------------- exact resume after SIGKILL


@pytest.mark.integration
@pytest.mark.skipif(not hasattr(signal, "SIGKILL") or not Path("/proc/self/fd").is_dir(),
                    reason="needs SIGKILL and /proc (the slow-save helper finds file names there)")
def test_sigkill_mid_epoch_and_mid_checkpoint_write_then_resume_matches_an_uninterrupted_run(tmp_path, started):
    helper_dir = tmp_path / "helper"
    helper_dir.mkdir()
    shutil.copy(HELPER, helper_dir / "sitecustomize.py")
    env = subprocess_env(helper_dir)
    baseline_dir, resumed_dir = tmp_path / "baseline", tmp_path / "resumed"
    # the uninterrupted run trains alongside the interrupted one (one thread each)
    baseline = start(train_command(baseline_dir), env, tmp_path / "baseline.log", started)

    # 1. killed right after the first checkpoint is complete: the helper holds the process there (it renamed
    # epoch 1's last.pt into place and has not gone on), so the kill cannot land anywhere else
    log = tmp_path / "run1.log"
    paused = tmp_path / "paused"
    pause_env = subprocess_env(helper_dir, PAUSE_AFTER_REPLACE="last.pt", PAUSE_AFTER_NTH="1", PAUSE_MARKER=str(paused))
    run = start(train_command(resumed_dir), pause_env, log, started)
    wait_until(paused.exists, run, log)
    kill(run)
    assert checkpoint_epoch(resumed_dir / "last.pt") == 1
    assert [r["epoch"] for r in metric_records(resumed_dir)] == [1]

    # 2. resumed, then killed while the epoch-3 last.pt is half written (the helper stalls that save)
    marker = tmp_path / "saving"
    log = tmp_path / "run2.log"
    slow_env = subprocess_env(helper_dir, SLOW_SAVE_MATCH="last.pt", SLOW_SAVE_NTH="2", SLOW_SAVE_MARKER=str(marker))
    run = start(train_command(resumed_dir), slow_env, log, started)
    wait_until(marker.exists, run, log)
    kill(run)
    half_written = stale_temporaries(resumed_dir)
    assert half_written and half_written[0].startswith(".last.pt.")
    assert checkpoint_epoch(resumed_dir / "last.pt") == 2  # the interrupted save left the complete files alone
    assert checkpoint_epoch(resumed_dir / "previous.pt") == 1
    assert json.loads((resumed_dir / "summary.json").read_text())["status"] == "running"

    # 3. resumed again: runs to the end
    result = subprocess.run(train_command(resumed_dir), env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (f"note: the previous training of {str(resumed_dir)!r} stopped without recording why (killed, or its "
            "machine, memory or disk failed; its summary.json still said running, with 2 of 4 epochs completed)"
            in result.stdout)  # the resume said first that the trainer before it died
    assert baseline.wait(timeout=300) == 0, (tmp_path / "baseline.log").read_text()

    expected, got = (json.loads((d / "summary.json").read_text()) for d in (baseline_dir, resumed_dir))
    assert got["status"] == "completed" and got["epochs_completed"] == 4
    assert got["final"] == expected["final"] and got["best"] == expected["best"]
    assert metric_records(resumed_dir) == metric_records(baseline_dir)  # epochs 1..4 once each, same losses
    assert [r["epoch"] for r in metric_records(resumed_dir)] == [1, 2, 3, 4]
    assert model_hash(resumed_dir / "last.pt") == model_hash(baseline_dir / "last.pt")
    for name in ("best.pt", "previous.pt"):
        assert model_hash(resumed_dir / name) == model_hash(baseline_dir / name), name
    assert (resumed_dir / "per_class.csv").read_text() == (baseline_dir / "per_class.csv").read_text()
    with np.load(resumed_dir / "predictions.npz") as a, np.load(baseline_dir / "predictions.npz") as b:
        assert np.array_equal(a["preds"], b["preds"])
    optimizer_a = torch.load(resumed_dir / "last.pt", weights_only=True)["optimizer"]["state"]
    optimizer_b = torch.load(baseline_dir / "last.pt", weights_only=True)["optimizer"]["state"]
    assert all(torch.equal(optimizer_a[k]["momentum_buffer"], optimizer_b[k]["momentum_buffer"]) for k in optimizer_b)
    assert stale_temporaries(resumed_dir) == []  # the resumed run cleared the half-written file


@pytest.mark.parametrize("pipeline", ["classic", "fast"])
def test_an_epoch_depends_only_on_seed_and_epoch_not_on_global_random_state(pipeline):
    """Both pipelines and the CutMix boxes draw from generators seeded by (seed, epoch): scrambling every
    global generator between two runs of the same epoch changes nothing."""
    import random

    from ccmix.data.datasets import build_datasets
    from ccmix.data.pipelines.build import build_train_pipeline
    from ccmix.method.step import build_optimizer
    from ccmix.train.evaluation import build_run_model
    from ccmix.train.fit import train_one_epoch

    config = tiny_config(method="concutmix", pipeline=pipeline, batch_size=8, max_steps_per_epoch=1, l_d_warm=0,
                         cutmix_prob=1.0)
    train, _ = build_datasets(config)
    counts = torch.tensor(train.class_counts, dtype=torch.float32)
    finals = []
    for scramble in (11, 12):
        torch.manual_seed(scramble)
        np.random.seed(scramble)
        random.seed(scramble)
        model = build_run_model(config, train.num_classes)
        optimizer = build_optimizer(model, config)
        torch.manual_seed(scramble * 7)  # the global generators differ between the two passes
        record = train_one_epoch(model, build_train_pipeline(train, config, "cpu"), optimizer, config, 1, counts,
                                 torch.device("cpu"), progress=False)
        finals.append((record["loss"], {k: v.clone() for k, v in model.state_dict().items()}))
    (loss_a, state_a), (loss_b, state_b) = finals
    assert loss_a == loss_b
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


# --------------------------------------------------------------------------- atomic files, damaged checkpoints


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_damaged_or_missing_last_checkpoint_falls_back_to_previous_and_retrains_the_lost_epoch_identically(
        tmp_path, damage):
    first = fit(tiny_config(), tmp_path)
    first_records, first_hash = metric_records(tmp_path), model_hash(tmp_path / "last.pt")
    last = tmp_path / "last.pt"
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
        problem = f"checkpoint {str(last)!r} is truncated or corrupt and cannot be read"
    else:  # killed between moving last.pt to previous.pt and moving the new file into place
        last.unlink()
        problem = f"checkpoint {str(last)!r} is missing (a save was interrupted)"
    # as the run was left by damage during its last save: summary.json still says epoch 1, running
    summary = json.loads((tmp_path / "summary.json").read_text())
    (tmp_path / "summary.json").write_text(json.dumps(dict(summary, status="running", epochs_completed=1)))
    with pytest.warns(ckpt.CheckpointWarning) as caught:
        again = fit(tiny_config(), tmp_path)
    message = str(caught[0].message)
    assert message.startswith(problem)
    assert f"resuming from the previous good checkpoint {str(tmp_path / 'previous.pt')!r} (epoch 1)" in message
    # a damaged last.pt is set aside, never rotated into previous.pt
    assert (tmp_path / "last.pt.damaged").is_file() == (damage == "truncated")
    assert checkpoint_epoch(tmp_path / "previous.pt") == 1 and checkpoint_epoch(last) == 2
    # epoch 2 retrained from epoch 1's checkpoint: the same numbers and weights, no duplicated line
    assert metric_records(tmp_path) == first_records and [r["epoch"] for r in first_records] == [1, 2]
    assert model_hash(last) == first_hash
    assert again["final"] == first["final"] and again["status"] == "completed"


def test_a_run_folder_without_any_readable_checkpoint_is_refused_naming_each_file(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"")
    (tmp_path / "previous.pt").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ckpt.CheckpointError) as caught:
        fit(tiny_config(), tmp_path)
    text = str(caught.value)
    assert f"checkpoint {str(tmp_path / 'last.pt')!r} is truncated or corrupt and cannot be read (0 bytes" in text
    assert f"checkpoint {str(tmp_path / 'previous.pt')!r} is truncated or corrupt" in text
    assert "move the damaged files away" in text


def test_flipped_bytes_inside_a_tensor_are_caught_by_the_checksum(tmp_path):
    path = tmp_path / "last.pt"
    pattern = torch.full((4096,), 1.2345, dtype=torch.float32)
    ckpt.save_checkpoint(path, {"config": {}, "epoch": 1, "num_classes": 2, "model": {"w": pattern}})
    assert torch.equal(ckpt.load_checkpoint(path)["model"]["w"], pattern)
    data = bytearray(path.read_bytes())
    offset = bytes(data).find(pattern[:4].numpy().tobytes())
    assert offset > 0
    data[offset + 100] ^= 0xFF  # still a valid zip and pickle: only the digest can tell
    path.write_bytes(bytes(data))
    assert not torch.equal(torch.load(path, weights_only=True)["model"]["w"], pattern)
    with pytest.raises(ckpt.CheckpointError, match="is corrupt: its content does not match the checksum"):
        ckpt.load_checkpoint(path)


def test_run_folder_files_are_replaced_atomically(tmp_path):
    """A writer that dies mid-write leaves the old file intact, no partial file behind, and the usual permissions."""
    from ccmix import io as ccmix_io

    target = tmp_path / "summary.json"
    ccmix_io.write_json(target, {"status": "running"})

    def dying_write(handle):
        handle.write('{"status": "compl')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ccmix_io.atomic_write(target, dying_write, mode="w")
    assert json.loads(target.read_text()) == {"status": "running"}
    assert stale_temporaries(tmp_path) == []
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not the private 0o600 of a bare temporary file


WRITING_CALLS = ("torch.save", "np.save", "np.savez", "np.savez_compressed", "json.dump", "pickle.dump")


def _writes_a_file(node: ast.Call) -> bool:
    """True when ``node`` replaces a file's content directly (open "w", save/dump, write_text, savefig, to_csv(path))."""
    name = ast.unparse(node.func)
    if name in WRITING_CALLS or name.endswith((".write_text", ".write_bytes", ".savefig")):
        return True
    if name.endswith(".to_csv"):
        return bool(node.args) or any(kw.arg == "path_or_buf" for kw in node.keywords)
    if name in ("open", "io.open"):
        modes = [node.args[1]] if len(node.args) > 1 else [kw.value for kw in node.keywords if kw.arg == "mode"]
        # appending (a launched run's log) never destroys what is there; replacing a file must be atomic
        return any(not isinstance(m, ast.Constant) or set(str(m.value)) & set("wx+") for m in modes)
    return False


def _in_memory_buffers(tree: ast.AST) -> set[str]:
    """Names assigned an ``io.BytesIO()`` / ``io.StringIO()``: writing into them touches no file."""
    return {target.id for node in ast.walk(tree) if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Call)
            and ast.unparse(node.value.func).split(".")[-1] in ("BytesIO", "StringIO")
            for target in node.targets if isinstance(target, ast.Name)}


def test_every_file_the_package_writes_goes_through_the_atomic_writer():
    """Outside ccmix/io.py, files are written only inside callbacks handed to ccmix.io.atomic_write."""
    checked = []
    for path in sorted((REPO_ROOT / "ccmix").rglob("*.py")):
        if path.name == "io.py" and path.parent.name == "ccmix":
            continue
        tree = ast.parse(path.read_text())
        inside_atomic = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("atomic_write"):
                inside_atomic |= {id(inner) for arg in node.args for inner in ast.walk(arg)}
        buffers = _in_memory_buffers(tree)
        writes = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and _writes_a_file(node)
                  and not (node.args and isinstance(node.args[0], ast.Name) and node.args[0].id in buffers)]
        checked += writes
        bare = [ast.unparse(node) for node in writes if id(node) not in inside_atomic]
        assert bare == [], f"{path.name} writes outside atomic_write: {bare}"
    assert len(checked) >= 2  # torch.save of checkpoints and np.savez of predictions at least


# --------------------------------------------------------------------------- checkpoints are data


def test_every_torch_load_in_the_package_is_weights_only():
    loads = []
    for path in sorted((REPO_ROOT / "ccmix").rglob("*.py")):
        source = path.read_text()
        for unsafe in ("pickle.load", "weights_only=False", "allow_pickle=True"):
            assert unsafe not in source, f"{path.name} uses {unsafe}"
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("torch.load", "torch.serialization.load"):
                flags = [ast.unparse(kw.value) for kw in node.keywords if kw.arg == "weights_only"]
                loads.append((path.name, flags))
    assert loads, "no torch.load found: the scan is looking in the wrong place"
    assert all(flags == ["True"] for _, flags in loads), loads


class _CreatesFileWhenUnpickled:
    """A payload that, unpickled by plain pickle, opens (and so creates) a file: stands in for any code."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _malicious_checkpoint(path: Path, marker: Path) -> None:
    torch.save({"format": ckpt.FORMAT, "config": {}, "epoch": 1, "num_classes": 5,
                "model": {"weight": torch.zeros(2)}, "hook": _CreatesFileWhenUnpickled(marker)}, path)


def test_a_checkpoint_carrying_code_is_refused_and_nothing_runs(tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.pt"
    _malicious_checkpoint(evil, marker)
    # the payload is live: a plain unpickler would run it
    control = tmp_path / "control-ran"
    _malicious_checkpoint(tmp_path / "control.pt", control)
    torch.load(tmp_path / "control.pt", weights_only=False)
    assert control.exists()

    with pytest.raises(ckpt.CheckpointError) as caught:
        ckpt.load_checkpoint(evil)
    assert f"checkpoint {str(evil)!r} was refused" in str(caught.value) and "(io.open)" in str(caught.value)
    assert main(["eval", "--checkpoint", str(evil)]) == 1
    assert "was refused: it holds a pickled object that is not plain data" in capsys.readouterr().err
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(evil, run_dir / "last.pt")
    with pytest.raises(ckpt.CheckpointError, match="was refused"):
        fit(tiny_config(), run_dir)
    assert not marker.exists()
    assert not (run_dir / "metrics.jsonl").exists()  # refused before anything was trained or written


@pytest.fixture
def five_class_checkpoint(tmp_path) -> Path:
    """Return a real (untrained) resnet32 checkpoint of the 5-class synthetic config."""
    from ccmix.train.evaluation import build_run_model, model_description

    config = tiny_config()
    model = build_run_model(config, 5)
    path = tmp_path / "five.pt"
    ckpt.save_checkpoint(path, {"config": config.to_dict(), "epoch": 1, "num_classes": 5,
                                "model_description": model_description(config, 5), "model": model.state_dict()})
    return path


def test_a_checkpoint_of_another_architecture_is_refused_naming_the_mismatch(five_class_checkpoint, capsys):
    assert main(["eval", "--checkpoint", str(five_class_checkpoint), "--set", "arch=resnet50"]) == 1
    err = capsys.readouterr().err
    assert f"checkpoint {str(five_class_checkpoint)!r} holds resnet32 with 5 classes" in err
    assert "does not fit resnet50 with 5 classes" in err
    assert "the architecture differs (resnet32 in the checkpoint, resnet50 here)" in err


def test_a_checkpoint_of_another_class_count_is_refused_naming_the_mismatch(five_class_checkpoint, capsys):
    from ccmix.train.evaluation import build_run_model, model_description

    seven = build_run_model(tiny_config(synthetic_classes=7), 7)
    payload = ckpt.load_checkpoint(five_class_checkpoint)
    with pytest.raises(ckpt.CheckpointError) as caught:
        ckpt.load_model_state(seven, payload, five_class_checkpoint, model_description(tiny_config(), 7),
                              num_classes=7, arch="resnet32")
    assert "the number of classes differs (5 in the checkpoint, 7 here)" in str(caught.value)
    assert "classifier.weight has shape (5, 64) in the checkpoint and (7, 64) in the model" in str(caught.value)
    assert main(["eval", "--checkpoint", str(five_class_checkpoint), "--set", "synthetic_classes=7"]) == 1
    assert "holds a model of 5 classes and the dataset it is evaluated on has 7" in capsys.readouterr().err


# --------------------------------------------------------------------------- non-finite loss


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    import ccmix.method.step as step

    original = step.compute_step_loss
    calls: dict[int, int] = {}
    snapshot = {}

    def poisoned(model, batch, config, epoch, *args, **kwargs):
        calls[epoch] = calls.get(epoch, 0) + 1
        if epoch == 2 and calls[epoch] == 1:  # the weights as epoch 2 left them
            snapshot.update({k: v.clone() for k, v in model.state_dict().items()})
        result = original(model, batch, config, epoch, *args, **kwargs)
        if epoch == 2 and calls[epoch] == 2:
            result.loss = result.loss * float("nan")
        return result

    monkeypatch.setattr(step, "compute_step_loss", poisoned)
    out = tmp_path / "run"
    settings = ["dataset=synthetic", "synthetic_classes=5", "imb=10", "topk=3", "method=la", "epochs=4",
                "batch_size=32", "max_steps_per_epoch=2", "num_workers=0", "device=cpu", "eval_interval=100",
                "progress=false"]
    argv = ["train", "--preset", "cifar10_imb100"] + [a for s in settings for a in ("--set", s)] + ["--out", str(out)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "error: the training loss became nan at epoch 3, step 2" in err and "last.pt holds epoch 2" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["epochs_completed"] == 2
    assert "the training loss became nan at epoch 3, step 2" in summary["error"]
    assert summary["final"]["top1"] is None
    assert [r["epoch"] for r in metric_records(out)] == [1, 2]
    payload = torch.load(out / "last.pt", weights_only=True)
    assert payload["epoch"] == 2 and checkpoint_epoch(out / "previous.pt") == 1
    assert all(torch.equal(payload["model"][k], snapshot[k]) for k in snapshot)


def test_weights_that_turn_non_finite_are_never_checkpointed(tmp_path, monkeypatch):
    import ccmix.train.fit as engine

    original = build_optimizer

    def optimizer_that_breaks_a_weight(model, config):
        optimizer = original(model, config)
        step, calls = optimizer.step, []

        def breaking_step(*args, **kwargs):
            result = step(*args, **kwargs)
            calls.append(1)
            if len(calls) == 4:  # the last step of epoch 2: the loss was finite, the update is not
                with torch.no_grad():
                    model.encoder.conv1.weight[0, 0, 0, 0] = float("inf")
            return result

        optimizer.step = breaking_step
        return optimizer

    monkeypatch.setattr(engine, "build_optimizer", optimizer_that_breaks_a_weight)
    with pytest.raises(TrainingDiverged, match=r"the model's encoder.conv1.weight became non-finite at epoch 2, step 2"):
        fit(tiny_config(epochs=3), tmp_path)
    assert checkpoint_epoch(tmp_path / "last.pt") == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "last.pt holds epoch 1" in summary["error"]

