"""Shared by the run-folder ownership and fault tests: tiny training commands run as real subprocesses."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

# A run of a few seconds: synthetic data, two steps an epoch, no workers, one thread.
TINY = ["dataset=synthetic", "synthetic_classes=5", "imb=10", "topk=3", "method=la", "epochs=2", "batch_size=16",
        "max_steps_per_epoch=2", "num_workers=0", "device=cpu", "pipeline=classic", "warmup_epochs=0",
        "milestones=", "lr=0.05", "eval_interval=1", "seed=1", "progress=false"]


def settings(*changes: str) -> list[str]:
    """Return TINY with ``changes`` (``key=value``) replacing or adding fields."""
    keys = {change.split("=", 1)[0] for change in changes}
    return [s for s in TINY if s.split("=", 1)[0] not in keys] + list(changes)


def train_argv(out: Path, *changes: str, extra: tuple[str, ...] = ()) -> list[str]:
    """Return the ``python -m ccmix train`` arguments of the tiny run with ``changes``, into ``out``."""
    argv = ["train", "--preset", "cifar10_imb100"]
    for setting in settings(*changes):
        argv += ["--set", setting]
    return argv + list(extra) + ["--out", str(out)]


def helper_env(tmp_path: Path, helper: str, **extra: str) -> dict:
    """Return a subprocess environment with tests/``helper`` installed as its sitecustomize (one thread)."""
    helper_dir = tmp_path / f"site-{Path(helper).stem}"
    helper_dir.mkdir(exist_ok=True)
    shutil.copy(TESTS / helper, helper_dir / "sitecustomize.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(helper_dir), str(REPO_ROOT), env.get("PYTHONPATH", "")])
    return env


def plain_env() -> dict:
    """Return a subprocess environment without helpers (one thread)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    return env


def run_cli(argv: list[str], env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m ccmix *argv`` to the end and return the completed process (text output)."""
    return subprocess.run([sys.executable, "-m", "ccmix", *argv], env=env or plain_env(), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)


def start_cli(argv: list[str], env: dict, log: Path) -> subprocess.Popen:
    """Start ``python -m ccmix *argv`` in the background, its output going to ``log``."""
    handle = open(log, "w")
    return subprocess.Popen([sys.executable, "-m", "ccmix", *argv], env=env, cwd=REPO_ROOT, stdout=handle,
                            stderr=subprocess.STDOUT)


def wait_until(condition, process: subprocess.Popen, log: Path, timeout: float = 240.0) -> None:
    """Wait until ``condition()`` holds; fail with the log when the process ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the process ended with status {process.returncode}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting:\n{log.read_text()}")
        time.sleep(0.05)


def folder_state(folder: Path) -> dict[str, str]:
    """Return {file name: SHA-256 of its bytes} of every file in ``folder`` (the lock file excepted)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.is_file() and p.name != ".ccmix.lock"}


TIMING_KEYS = ("seconds", "samples_per_second")  # wall-clock values: the only ones allowed to differ between runs


def metric_records(run_dir: Path) -> list[dict]:
    """Return metrics.jsonl's records without their wall-clock fields."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]


def checkpoint_epoch(path: Path) -> int:
    """Return the epoch recorded in a checkpoint file."""
    import torch  # here: the subprocess helpers above need no torch

    return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])


def model_hash(path: Path) -> str:
    """Return a SHA-256 over the names and exact bytes of a checkpoint's model tensors."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)["model"]
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].contiguous().numpy().tobytes())
    return digest.hexdigest()


def read_summary(folder: Path) -> dict:
    """Return summary.json of ``folder``."""
    return json.loads((folder / "summary.json").read_text())


def error_lines(stderr: str) -> list[str]:
    """Return the non-empty lines of ``stderr`` (warnings of libraries aside)."""
    return [line for line in stderr.splitlines() if line.strip() and "Warning" not in line
            and not line.startswith("  warnings.warn")]
