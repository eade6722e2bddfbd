"""What a training run prints as it goes: a header, a time estimate, one line per epoch.

A run of Contrastive CutMix (Pan et al., "Enhanced Long-Tailed Recognition with
Contrastive CutMix Augmentation", IEEE TIP 2024; see docs/method.md) on the published
CIFAR presets is 200 epochs: minutes an epoch on a GPU, far longer on a CPU. These
lines make a headless run (the command line, papermill's ``--log-output``, a saved
notebook) readable without progress bars, and say before a long CPU run commits
how long it will take and how to get a quick look instead.

The text functions are pure (numbers in, a string out); :class:`RunReporter` is the
thin stateful part ``ccmix.fit`` drives: it times the first steps and the epochs and
writes the lines.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

# Steps timed for the estimate, after one untimed warm-up step (first-call allocations, worker start-up):
# TIMED_STEPS, or fewer (at least MIN_TIMED_STEPS) once they have taken ENOUGH_TIMING_S, so a slow CPU
# gets its estimate within a minute or two instead of after several long steps.
WARMUP_STEPS = 1
TIMED_STEPS = 4
MIN_TIMED_STEPS = 2
ENOUGH_TIMING_S = 20.0
# A CPU run estimated longer than this gets the quick-look advice.
LONG_RUN_SECONDS = 3600.0
# Epoch durations averaged for the time left: recent ones, so a slower phase (semantic labels) shows soon.
RECENT_EPOCHS = 5


# --------------------------------------------------------------------------- pure text


def cpu_core_count() -> int:
    """Return the number of CPU cores this process may run on (its affinity set where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def describe_device(device_type: str, *, gpu_name: str | None = None, cpu_cores: int | None = None,
                    threads: int | None = None) -> str:
    """Return the device in words: the GPU model (e.g. "NVIDIA H200") or "CPU, N cores" (with torch's threads)."""
    if device_type == "cuda":
        return gpu_name or "CUDA GPU"
    cores = cpu_cores if cpu_cores is not None else cpu_core_count()
    text = f"CPU, {cores} core{'s' if cores != 1 else ''}"
    if threads is not None and threads != cores:
        text += f" ({threads} torch thread{'s' if threads != 1 else ''})"
    return text


def precision_text(device_type: str, *, amp: bool, channels_last: bool, cpu_bf16: bool = False,
                   tf32: bool | None = None) -> str:
    """Return the numeric precision training uses: bf16 autocast on CUDA when ``amp``, on the CPU when
    ``cpu_bf16``, fp32 otherwise; on CUDA whether TF32 is on when ``tf32`` is given."""
    if device_type != "cuda" and cpu_bf16:
        return "bf16 autocast on the CPU (weights, losses and optimiser in fp32; evaluation in fp32)"
    if device_type != "cuda":
        return "fp32 (bf16 autocast and channels_last apply on CUDA only)" if amp else "fp32"
    text = "bf16 autocast (weights, losses and optimiser in fp32)" if amp else "fp32"
    text += ", channels_last" if channels_last else ""
    return text if tf32 is None else text + (", TF32 convolutions and matmuls" if tf32 else ", no TF32")


def format_duration(seconds: float) -> str:
    """Return ``seconds`` as short text: "40 s", "12 min", "3 h 05 min" or "2 d 04 h"."""
    seconds = max(0.0, float(seconds))
    if seconds < 59.5:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(round(seconds / 3600), 24)
    return f"{days} d {hours:02d} h"


def preset_text(preset: str | None, published_top1: float | None, *, changed: bool = False) -> str:
    """Return the preset and its published top-1 (%), or why no published number applies."""
    if preset is None:
        return "none (no published top-1 to compare with)"
    if published_top1 is not None:
        return f"{preset} (published top-1 {published_top1:.2f}%)"
    if changed:
        return f"{preset}, changed: its published top-1 does not apply"
    return f"{preset} (no published top-1)"


def run_header(*, device: str, preset: str, method: str, arch: str, dataset: str, imb: float | None, epochs: int,
               start_epoch: int, train_images: int, test_images: int, steps_per_epoch: int, batch_size: int,
               precision: str, world_size: int = 1, out_dir: str | None = None, eval_split: str = "test") -> str:
    """Return the run header: device, preset and published top-1, images, steps per epoch, precision.

    ``device`` comes from :func:`describe_device`, ``preset`` from :func:`preset_text`;
    ``imb`` None for datasets whose split is long-tailed already; ``test_images`` are the images
    of ``eval_split`` (``val`` or ``test``), which the header names.
    """
    data = dataset if imb is None else f"{dataset} imb {imb:g}"
    plan = f"{epochs} epochs" if start_epoch == 0 else f"epochs {start_epoch + 1}-{epochs} of {epochs} (resumed)"
    processes = f" x {world_size} processes" if world_size > 1 else ""
    lines = [
        f"device     {device}{processes}",
        f"preset     {preset}",
        f"training   {method}, {arch}, {plan}",
        f"data       {data}: {train_images} training images, {test_images} {_split_word(eval_split)} images"
        + ("" if eval_split == "test" else f" (eval_split {eval_split})"),
        f"steps      {steps_per_epoch} per epoch of batch {batch_size}",
        f"precision  {precision}",
    ]
    if out_dir is not None:
        lines.append(f"run folder {out_dir}")
    lines.append("estimate   follows after the first training steps")
    return "\n".join(lines)


def _split_word(eval_split: str) -> str:
    return {"val": "validation"}.get(eval_split, eval_split)


def _percent(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def epoch_line(record: dict, *, epochs: int, seconds_left: float | None, eval_split: str = "test") -> str:
    """Return one epoch's line: epoch/total, lr, losses, train and evaluation top-1 (%), many/medium/few, time.

    ``record`` is the epoch's metrics.jsonl record (epoch 1-based; top1, many, medium
    and few None when the epoch was not evaluated or a group is empty); ``eval_split`` names the
    evaluation top-1 ("test top-1", "val top-1").
    """
    width = len(str(epochs))
    parts = [f"epoch {record['epoch']:>{width}}/{epochs}", f"lr {record['lr']:.4g}"]
    loss = f"loss {record['loss']:.4f}"
    if record.get("loss_bcl") is not None:
        loss += f" (ce {record['loss_ce']:.4f}, bcl {record['loss_bcl']:.4f})"
    parts += [loss, f"train top-1 {_percent(record.get('train_top1'))}"]
    if record.get("top1") is None:
        parts.append(f"{eval_split} top-1 - (not evaluated this epoch)")
    else:
        groups = " / ".join(_percent(record.get(group), 1) for group in ("many", "medium", "few"))
        parts.append(f"{eval_split} top-1 {record['top1']:.2f} (many/medium/few {groups})")
    parts.append(f"{record['seconds']:.1f} s")
    if seconds_left is not None:
        parts.append(f"left ~{format_duration(seconds_left)}" if seconds_left > 0 else "done")
    return "  ".join(parts)


def epochs_within(seconds: float, *, seconds_per_epoch: float) -> int:
    """Return how many whole epochs fit in ``seconds`` at ``seconds_per_epoch`` (at least 1)."""
    return max(1, int(seconds // max(seconds_per_epoch, 1e-9)))


def estimate_message(*, seconds_per_step: float | None, seconds_per_epoch: float | None, steps_per_epoch: int,
                     epochs_left: int, epochs: int, device_type: str, device: str) -> str:
    """Return the estimated time of the epochs left and, for a CPU run over about an hour, how to get a quick look.

    Give ``seconds_per_step`` (timed steps; evaluation not included) or ``seconds_per_epoch``
    (a whole timed epoch, evaluation included). Information only: nothing is stopped.
    """
    if seconds_per_step is not None:
        per_epoch = seconds_per_step * steps_per_epoch
        basis = f"{seconds_per_step:.2f} s per step x {steps_per_epoch} steps, evaluation not included"
    elif seconds_per_epoch is not None:
        per_epoch = seconds_per_epoch
        basis = f"{seconds_per_epoch:.1f} s per epoch, evaluation included"
    else:
        raise ValueError("estimate_message needs seconds_per_step or seconds_per_epoch")
    total = per_epoch * epochs_left
    span = f"the {epochs} epochs" if epochs_left == epochs else f"the {epochs_left} epochs left of {epochs}"
    lines = [f"estimate   about {format_duration(total)} for {span} ({basis}) on {device}"]
    if device_type != "cuda" and total > LONG_RUN_SECONDS:
        hour_epochs = epochs_within(LONG_RUN_SECONDS, seconds_per_epoch=per_epoch)
        lines += [
            f"note       no CUDA device: this run will take about {format_duration(total)} on this CPU. "
            "It goes on; for a quick look instead:",
            f"             fewer epochs: {hour_epochs} fit in about an hour "
            f"(papermill -p epochs {hour_epochs}; python -m ccmix train --set epochs={hour_epochs})",
            "             fewer steps: max_steps_per_epoch=10 "
            "(papermill -y \"overrides: {max_steps_per_epoch: 10}\"; --set max_steps_per_epoch=10)",
            "             a small dataset, no download: papermill -p dataset synthetic; "
            "python -m ccmix train --preset cifar10_imb100 --set dataset=synthetic",
            "             or a machine with a CUDA GPU (device=cuda)",
        ]
    return "\n".join(lines)


def mean_recent(durations: list[float], recent: int = RECENT_EPOCHS) -> float | None:
    """Return the mean of the last ``recent`` durations (s), or None when there are none."""
    if not durations:
        return None
    return statistics.fmean(durations[-recent:])


# --------------------------------------------------------------------------- the stateful part


class RunReporter:
    """Writes a run's time estimate (once, after the first timed steps) and one line per epoch.

    ``write`` receives each text (the caller prints it, e.g. ``tqdm.write`` so bars are
    not broken); ``synchronize`` waits for queued device work, and is called only while
    the first steps are timed; ``clock`` returns seconds (``time.perf_counter``).
    """

    def __init__(self, *, write: Callable[[str], None], device_type: str, device: str, epochs: int,
                 start_epoch: int, steps_per_epoch: int, synchronize: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.perf_counter, eval_split: str = "test"):
        self.write = write
        self.eval_split = eval_split
        self.device_type, self.device = device_type, device
        self.epochs, self.start_epoch, self.steps_per_epoch = epochs, start_epoch, steps_per_epoch
        self.synchronize = synchronize
        self.clock = clock
        self.steps_done = 0
        self.timing_started: float | None = None
        self.estimated = False
        self.epoch_seconds: list[float] = []

    def step_done(self) -> None:
        """Count one finished training step; after the warm-up and the timed steps, write the estimate once."""
        if self.estimated:
            return
        self.steps_done += 1
        if self.steps_done < WARMUP_STEPS or self.steps_done > WARMUP_STEPS + TIMED_STEPS:
            return
        if self.synchronize is not None:
            self.synchronize()
        now = self.clock()
        if self.steps_done == WARMUP_STEPS:
            self.timing_started = now
            return
        timed, seconds = self.steps_done - WARMUP_STEPS, now - self.timing_started
        if timed == TIMED_STEPS or (timed >= MIN_TIMED_STEPS and seconds >= ENOUGH_TIMING_S):
            self._estimate(seconds_per_step=seconds / timed, seconds_per_epoch=None)

    def epoch_done(self, record: dict) -> None:
        """Write the epoch's line (``record`` as in metrics.jsonl, with its "seconds") and its time left."""
        self.epoch_seconds.append(float(record["seconds"]))
        if not self.estimated:  # an epoch shorter than the timed steps: estimate from the whole epoch
            self.estimated = True
            if record["epoch"] < self.epochs:
                self._estimate(seconds_per_step=None, seconds_per_epoch=self.epoch_seconds[-1], epochs_done=1)
        left = (self.epochs - record["epoch"]) * mean_recent(self.epoch_seconds)
        self.write(epoch_line(record, epochs=self.epochs, seconds_left=left, eval_split=self.eval_split))

    def _estimate(self, *, seconds_per_step: float | None, seconds_per_epoch: float | None,
                  epochs_done: int = 0) -> None:
        self.estimated = True
        self.write(estimate_message(
            seconds_per_step=seconds_per_step, seconds_per_epoch=seconds_per_epoch,
            steps_per_epoch=self.steps_per_epoch, epochs_left=self.epochs - self.start_epoch - epochs_done,
            epochs=self.epochs, device_type=self.device_type, device=self.device,
        ))


def start_run_report(*, config, device, preset: str | None, train_images: int, test_images: int,
                     steps_per_epoch: int, start_epoch: int, world_size: int = 1, out_dir: str | None = None,
                     write: Callable[[str], None]) -> RunReporter:
    """Write the run header for ``config`` (a TrainConfig) on ``device`` (a torch.device) and return the
    :class:`RunReporter` that writes the estimate and the epoch lines; ``preset`` as given to ``ccmix.fit``."""
    import torch

    from ccmix.config.fields import PROFILED_DATASETS
    from ccmix.config.presets import PUBLISHED_TOP1, preset_name_for, published_top1_for

    name = preset_name_for(config, preset)
    published = published_top1_for(config, name)
    if device.type == "cuda":
        words = describe_device("cuda", gpu_name=torch.cuda.get_device_name(device))
    else:
        words = describe_device(device.type, threads=torch.get_num_threads())
    write(run_header(
        device=words, preset=preset_text(name, published, changed=name in PUBLISHED_TOP1), method=config.method,
        arch=config.arch, dataset=config.dataset, imb=config.imb if config.dataset in PROFILED_DATASETS else None,
        epochs=config.epochs, start_epoch=start_epoch, train_images=train_images, test_images=test_images,
        steps_per_epoch=steps_per_epoch, batch_size=config.batch_size,
        precision=precision_text(device.type, amp=config.amp, channels_last=config.channels_last,
                                 cpu_bf16=config.cpu_bf16, tf32=config.tf32),
        world_size=world_size, out_dir=out_dir, eval_split=config.eval_split,
    ))
    return RunReporter(write=write, device_type=device.type, device=words, epochs=config.epochs,
                       start_epoch=start_epoch, steps_per_epoch=steps_per_epoch, eval_split=config.eval_split,
                       synchronize=(lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None)


__all__ = [
    "RunReporter", "start_run_report", "cpu_core_count", "describe_device", "epoch_line", "epochs_within", "estimate_message",
    "format_duration", "mean_recent", "precision_text", "preset_text", "run_header",
]
