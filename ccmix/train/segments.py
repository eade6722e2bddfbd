"""Runtime segments of a run: what each start of the trainer ran with, when it may touch the numbers.

A run resumed after a stop may run with other runtime settings than the epochs before
(``ccmix.config.fields`` role ``runtime``). Most change no number: the data loader's workers
(``num_workers``), where the data lies, progress and logging. Some change the
floating-point reduction order or the kernels, so the last bits of every step, and
through training the final metrics a little: the torch intra-op thread count, the
device, the number of processes, the torch version, bf16 autocast, channels-last,
torch.compile, deterministic kernels, TF32 on CUDA, synchronised BatchNorm. The pipeline
(classic or fast) changes the augmentation code itself. CUDA graphs replay the same kernels.

``segments.jsonl`` in the run folder holds one record per stretch of epochs trained by
one start: ``first_epoch`` (1-based) and the facts of ``runtime_facts``. A record of a
start that completed no epoch is replaced by the next start's.
"""

from __future__ import annotations

import platform

import torch

from ccmix.config.fields import TrainConfig
from ccmix.io import read_jsonl, write_jsonl

SEGMENTS = "segments.jsonl"
# Facts whose change can alter the numbers (in the last bits, except the pipeline), in the order they are named.
NUMERIC_FACTS = ("pipeline", "device", "world_size", "torch_threads", "torch", "amp", "cpu_bf16", "channels_last",
                 "compile", "deterministic", "tf32", "sync_bn")
# Recorded for the reader, never a reason for other numbers.
OTHER_FACTS = ("cuda_graphs", "num_workers", "host")


def runtime_facts(config: TrainConfig, device: torch.device, world_size: int, pipeline: str, sync_bn: bool) -> dict:
    """Return this process's runtime facts: every name of ``NUMERIC_FACTS`` and ``OTHER_FACTS``.

    ``pipeline``: the pipeline that builds the batches (``classic`` or ``fast``, after any
    fallback); ``sync_bn``: whether BatchNorm is synchronised over processes. amp and
    channels_last and tf32 are recorded as they apply (on CUDA only), cpu_bf16 too (on the CPU only), cuda_graphs
    as ``ccmix.method.step`` applies it (compile on one CUDA device without gradient accumulation).
    """
    on_cuda = device.type == "cuda"
    name = f"cuda ({torch.cuda.get_device_name(device)})" if on_cuda else device.type
    return {
        "pipeline": pipeline, "device": name, "world_size": int(world_size), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "amp": bool(config.amp and on_cuda),
        "cpu_bf16": bool(config.cpu_bf16 and not on_cuda),
        "channels_last": bool(config.channels_last and on_cuda), "compile": bool(config.compile),
        "deterministic": bool(config.deterministic), "tf32": bool(config.tf32 and on_cuda), "sync_bn": bool(sync_bn),
        "cuda_graphs": bool(config.compile and config.cuda_graphs and on_cuda and world_size == 1
                            and config.grad_accum_steps == 1),
        "num_workers": int(config.num_workers) if pipeline == "classic" else 0, "host": platform.node(),
    }


def record_segment(folder, epochs_done: int, facts: dict) -> str | None:
    """Record in ``folder`` (a ``RunFolder``) the segment that starts after ``epochs_done`` epochs, with ``facts``.

    Returns one line to show when a fact of ``NUMERIC_FACTS`` differs from the segment that
    trained epoch ``epochs_done``, else None. Earlier segments that trained no epoch kept by
    the checkpoint are dropped. Writes only where ``folder.writer`` (process 0).
    """
    path = folder.file(SEGMENTS)
    try:
        kept = [s for s in read_jsonl(path) if int(s.get("first_epoch", 0)) <= epochs_done]
    except (ValueError, TypeError, OSError):  # a damaged record: the history is a note, never a reason to stop
        kept = []
    if folder.writer:
        write_jsonl(path, [*kept, {"first_epoch": epochs_done + 1, **facts}])
    if epochs_done == 0 or not kept:
        return None
    return describe_change(kept[-1], facts, epochs_done)


def describe_change(previous: dict, facts: dict, epochs_done: int) -> str | None:
    """Return the line that says how ``facts`` differ from ``previous`` (the segment ending at ``epochs_done``)."""
    changed = [name for name in NUMERIC_FACTS if name in previous and previous[name] != facts.get(name)]
    if not changed:
        return None
    first = int(previous["first_epoch"])
    epochs = f"epoch {first}" if first == epochs_done else f"epochs {first}-{epochs_done}"
    now = ", ".join(_fact_text(name, facts.get(name)) for name in changed)
    before = ", ".join(_fact_text(name, previous[name]) for name in changed)
    effect = ("the classic and fast pipelines draw different augmentations, so results will differ"
              if "pipeline" in changed else "floating-point results may differ slightly")
    return f"resumed with {now} where {epochs} used {before}; {effect}"


def _fact_text(name: str, value) -> str:
    if name == "torch_threads":
        return f"{value} torch thread{'s' if value != 1 else ''}"
    return f"{name}={value}"


__all__ = ["SEGMENTS", "NUMERIC_FACTS", "OTHER_FACTS", "runtime_facts", "record_segment", "describe_change"]
