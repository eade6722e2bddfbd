"""Launch a multi-process training run with torchrun as a subprocess, and follow its progress.

The training notebook uses these to run Contrastive CutMix (Pan et al., "Enhanced
Long-Tailed Recognition with Contrastive CutMix Augmentation", IEEE TIP 2024) on
several GPUs: ``launch_torchrun`` starts ``torchrun ... -m ccmix train`` (PyTorch's
elastic launcher and DistributedDataParallel), and ``follow_run`` yields each epoch's
``metrics.jsonl`` record as rank 0 writes it, with a ``tqdm.auto`` bar over epochs.
Re-launching on the same run folder resumes it, with any number of processes.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from ccmix.config.rules import ConfigError
from ccmix.config.validation import resolve
from ccmix.train.console import show_bars
from ccmix.train.run_folder import RunFolder

LOG_NAME = "launch.log"  # torchrun's and the workers' output, appended, inside the run folder
PACKAGE_PARENT = Path(__file__).resolve().parents[2]


def child_environment() -> dict:
    """Return this process's environment for a training subprocess: this package importable, output unbuffered."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_PARENT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def format_override(value) -> str:
    """Return ``value`` written as ``--set key=VALUE`` text that ``ccmix.config.validation.parse_value`` reads back."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(int(v)) for v in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def torchrun_command(
    preset: str | None,
    overrides: dict | None,
    out_dir: str | os.PathLike,
    nproc_per_node: int,
    nnodes: int = 1,
    rdzv_endpoint: str | None = None,
    rdzv_id: str | None = None,
    python: str | None = None,
) -> list[str]:
    """Return the argument list of ``python -m torch.distributed.run ... -m ccmix train`` for one node.

    One node (the default) rendezvouses on 127.0.0.1 with a port the launcher picks, so
    no traffic leaves the machine. Several nodes need ``rdzv_endpoint`` ("host:port" of
    the first node, reachable from all) and run this same command on every node.
    """
    if isinstance(nproc_per_node, bool) or not isinstance(nproc_per_node, int) or nproc_per_node < 1:
        raise ValueError(f"nproc_per_node={nproc_per_node!r} is not accepted; it must be an integer >= 1")
    if isinstance(nnodes, bool) or not isinstance(nnodes, int) or nnodes < 1:
        raise ValueError(f"nnodes={nnodes!r} is not accepted; it must be an integer >= 1")
    out = Path(out_dir).resolve()
    command = [python or sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes),
               "--nproc-per-node", str(nproc_per_node), "--rdzv-backend", "c10d"]
    if nnodes == 1 and rdzv_endpoint is None:
        command += ["--rdzv-endpoint", "127.0.0.1:0", "--local-addr", "127.0.0.1",
                    "--rdzv-id", rdzv_id or f"ccmix-{uuid.uuid4().hex[:12]}"]
    else:
        if not rdzv_endpoint:
            raise ValueError(f"nnodes={nnodes} needs rdzv_endpoint, the 'host:port' of the first node")
        # every node derives the same id from the shared run folder unless one is given
        default_id = "ccmix-" + hashlib.sha1(str(out).encode()).hexdigest()[:12]
        command += ["--rdzv-endpoint", rdzv_endpoint, "--rdzv-id", rdzv_id or default_id]
    return command + ["-m", "ccmix", *train_arguments(preset, overrides, out)]


def train_arguments(preset: str | None, overrides: dict | None, out_dir: str | os.PathLike) -> list[str]:
    """Return the arguments after ``python -m ccmix``: ``train [--preset P] [--set key=value ...] --out DIR``."""
    arguments = ["train"]
    if preset:
        arguments += ["--preset", preset]
    for key, value in (overrides or {}).items():
        arguments += ["--set", f"{key}={format_override(value)}"]
    return arguments + ["--out", str(Path(out_dir).resolve())]


def launch_torchrun(
    preset: str | None,
    overrides: dict | None,
    out_dir: str | os.PathLike,
    nproc_per_node: int,
    nnodes: int = 1,
    rdzv_endpoint: str | None = None,
    rdzv_id: str | None = None,
    env: dict | None = None,
    python: str | None = None,
) -> subprocess.Popen:
    """Start ``torchrun -m ccmix train`` on this node and return its Popen (output appended to out_dir/launch.log).

    The config (preset plus overrides) is validated here first, so a bad value fails in
    the caller, and the global batch must split evenly over ``nnodes * nproc_per_node``
    processes. The process runs in its own session; ``stop_run`` ends it, and launching
    again on ``out_dir`` resumes from its last checkpoint. The Popen carries ``out_dir``
    and ``log_path`` attributes for ``follow_run``.
    """
    config = resolve(preset, overrides)
    command = torchrun_command(preset, overrides, out_dir, nproc_per_node, nnodes, rdzv_endpoint, rdzv_id, python)
    world_size = nproc_per_node * nnodes
    if config.batch_size % (world_size * config.grad_accum_steps):
        raise ConfigError(
            f"batch_size={config.batch_size} is not accepted with {world_size} processes; batch_size is the global "
            f"batch and must be divisible by {world_size * config.grad_accum_steps}"
        )
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    child_env = child_environment()
    if nnodes == 1 and "GLOO_SOCKET_IFNAME" not in child_env and os.path.exists("/sys/class/net/lo"):
        child_env["GLOO_SOCKET_IFNAME"] = "lo"  # CPU (gloo) runs on one node talk over loopback only
    child_env.update(env or {})
    log_path = out / LOG_NAME
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=child_env,
                                   start_new_session=True)
    process.out_dir = out
    process.log_path = log_path
    return process


def stop_run(process: subprocess.Popen, timeout: float = 30.0) -> int:
    """Stop a launched run (SIGTERM to torchrun, which stops its workers; SIGKILL after ``timeout`` s); return its status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the run's own session: torchrun and its workers
            process.wait()
    return process.returncode


def log_tail(process: subprocess.Popen, lines: int = 30) -> str:
    """Return the last ``lines`` lines of a launched run's log ('' when there is none)."""
    path = getattr(process, "log_path", None)
    if path is None or not Path(path).exists():
        return ""
    return "\n".join(Path(path).read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def _planned_epochs(out: Path) -> int | None:
    try:
        return int(RunFolder(out).read_config()["epochs"])
    except (ValueError, KeyError, TypeError):  # no config.json yet, or one without a usable epochs
        return None


def follow_run(
    out_dir: str | os.PathLike,
    process: subprocess.Popen,
    poll_seconds: float = 2.0,
    progress: bool = True,
    stop_on_interrupt: bool = True,
) -> Iterator[dict]:
    """Yield each new ``metrics.jsonl`` record (one per epoch, in order) of a launched run until it exits.

    Shows a ``tqdm.auto`` bar over epochs with the latest loss and top-1. Raises
    RuntimeError with the end of the log when the run exits with a non-zero status; an
    interrupt (KeyboardInterrupt) stops the run first when ``stop_on_interrupt``.
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    bar = tqdm(total=_planned_epochs(out), desc="training", unit="epoch", disable=not show_bars(progress))
    last_epoch = 0
    try:
        while True:
            finished = process.poll() is not None
            total = _planned_epochs(out)
            if total is not None and bar.total != total:
                bar.total = total
            for record in RunFolder(out).read_metrics():
                if record.get("epoch", 0) <= last_epoch:
                    continue
                last_epoch = record["epoch"]
                bar.n = last_epoch
                postfix = {"loss": f"{record['loss']:.3f}"} if record.get("loss") is not None else {}
                if record.get("top1") is not None:
                    postfix["top1"] = f"{record['top1']:.2f}"
                bar.set_postfix(postfix, refresh=False)
                bar.refresh()
                yield record
            if finished:
                break
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        if stop_on_interrupt:
            stop_run(process)
        raise
    finally:
        bar.close()
    if process.returncode != 0:
        raise RuntimeError(
            f"the training run in {str(out)!r} exited with status {process.returncode}; "
            f"the end of its log ({getattr(process, 'log_path', 'no log')}):\n{log_tail(process)}"
        )


__all__ = ["child_environment", "launch_torchrun", "follow_run", "stop_run", "log_tail", "torchrun_command", "format_override",
           "train_arguments"]
