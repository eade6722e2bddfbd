"""Throughput measurements: the classic and the fast training-data pipelines, and fp32 against bf16 on the CPU.

The training views are those of Contrastive CutMix (Pan et al., "Enhanced Long-Tailed
Recognition with Contrastive CutMix Augmentation", IEEE TIP 2024): view 0 of the
background (with the AutoAugment CIFAR-10 policy of Cubuk et al., CVPR 2019), two
contrastive views (Zhu et al., CVPR 2022) and view 0 of the foreground for CutMix (Yun
et al., ICCV 2019). A "sample" is one training pair with every view its method needs.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager

import numpy as np
import torch

from ccmix.config.fields import TrainConfig
from ccmix.method.collectives import DistContext
from ccmix.method.step import build_optimizer, train_step
from ccmix.train import precision
from ccmix.train.evaluation import build_run_model, single_device


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def endless_batches(pipeline):
    """Yield the pipeline's batches epoch after epoch, without end (benchmarks cross epoch boundaries)."""
    epoch = 0
    while True:
        yield from pipeline.batches(epoch)
        epoch += 1


MIN_SECONDS = 1.0  # each round of a figure times at least this much work, so a busy moment cannot dominate it
ROUNDS = 3  # a figure is the best of this many rounds: the rate the machine gives when nothing else interferes


def best_rate(step, device: torch.device, rounds: int = ROUNDS, min_seconds: float = MIN_SECONDS) -> dict:
    """Return {"samples_per_second": the best round's rate, "rounds": every round's samples/s, "steps": steps per
    round} of calling ``step()`` (which returns the samples it covered) until ``min_seconds`` passed, ``rounds``
    times. The device is synchronised before each round's clock starts and before it stops."""
    rates, steps = [], []
    for _ in range(rounds):
        _synchronize(device)
        samples, count, start = 0, 0, time.perf_counter()
        while True:
            samples += step()
            count += 1
            if time.perf_counter() - start >= min_seconds:
                _synchronize(device)  # work queued on the device counts too
                break
        rates.append(samples / (time.perf_counter() - start))
        steps.append(count)
    return {"samples_per_second": max(rates), "rounds": rates, "steps": steps}


def _time_pipeline(pipeline, device: torch.device, warmup: int, rounds: int = ROUNDS,
                   min_seconds: float = MIN_SECONDS) -> dict:
    """Return ``best_rate`` of drawing the pipeline's batches, after ``warmup`` untimed ones."""
    iterator = endless_batches(pipeline)
    try:
        for _ in range(warmup):
            next(iterator)
        return best_rate(lambda: next(iterator).size, device, rounds, min_seconds)
    finally:
        iterator.close()


def machine_load() -> dict:
    """Return {"load": the 1, 5 and 15-minute load averages (runnable processes), "cpus": CPUs this process may use}.

    A load above the CPU count means processes waited for a CPU: figures measured then are low.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    load = [round(value, 2) for value in os.getloadavg()] if hasattr(os, "getloadavg") else None
    return {"load": load, "cpus": cpus}


def _random_training_set(num_images: int, num_classes: int = 10, seed: int = 0):
    """Return an ArrayImages of smooth random 32x32 RGB images with balanced labels."""
    from ccmix.data.datasets import ArrayImages

    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_images, 3, 8, 8, generator=generator)
    images = torch.nn.functional.interpolate(coarse, size=32, mode="bilinear", align_corners=False)
    images = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    targets = (np.arange(num_images) % num_classes).tolist()
    return ArrayImages(images, targets, [f"class_{c}" for c in range(num_classes)])


@contextmanager
def _quiet_profiler_log():
    """Keep the profiler's C++ library (Kineto) from logging its start, stop and device probes on stderr.

    Kineto reads KINETO_LOG_LEVEL once, when the profiler is first used in the process; 6 is above its
    highest level. A value the user set is kept, and the variable is restored afterwards.
    """
    previous = os.environ.get("KINETO_LOG_LEVEL")
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("KINETO_LOG_LEVEL", None)


def count_operator_calls(function, *args, **kwargs) -> int:
    """Return the number of top-level torch operator (``aten::``) calls ``function(*args, **kwargs)`` makes.

    Counted with ``torch.profiler``; calls made inside another operator are not counted.
    """
    from torch.profiler import ProfilerActivity, profile

    with _quiet_profiler_log(), profile(activities=[ProfilerActivity.CPU]) as prof:
        function(*args, **kwargs)
    count = 0
    for event in prof.events():
        if not event.name.startswith("aten::"):
            continue
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        count += parent is None
    return count


def count_augment_ops(batch_size: int, device: torch.device | str = "cpu") -> int:
    """Return the torch operator calls that the fast pipeline makes to build one concutmix batch of ``batch_size``.

    Covers drawing the parameters and applying them: view 0 of background and
    foreground, two contrastive views, labels. A per-sample loop would grow with
    ``batch_size``; the grouped dispatch only varies by skipped empty groups.
    """
    from ccmix.data.pipelines.fast import FastTrainPipeline

    device = torch.device(device)
    train = _random_training_set(max(2 * batch_size, 64))
    config = TrainConfig(dataset="synthetic", method="concutmix", batch_size=batch_size, pipeline="fast")
    pipeline = FastTrainPipeline(train, config, device)
    generator = torch.Generator().manual_seed(0)
    background = torch.arange(batch_size, device=device)
    foreground = torch.arange(batch_size, 2 * batch_size, device=device) % len(train)
    pipeline.make_batch(background, foreground, pipeline.sample_step(batch_size, generator))  # warm caches

    def one_batch():
        pipeline.make_batch(background, foreground, pipeline.sample_step(batch_size, generator))
        _synchronize(device)

    return count_operator_calls(one_batch)


def _longtail_training_set(config: TrainConfig, n_max: int, seed: int = 0):
    """Return random smooth 32x32 images with ``config``'s class count and long-tail profile scaled to ``n_max``.

    Throughput does not depend on what the pixels show, so the bench needs no download.
    """
    from ccmix.data.datasets import ArrayImages
    from ccmix.data.longtail import longtail_counts

    num_classes = config.num_classes
    counts = longtail_counts(n_max, num_classes, config.imb, config.imb_profile)
    generator = torch.Generator().manual_seed(seed)
    total = sum(counts)
    coarse = torch.rand(total, 3, 8, 8, generator=generator)
    images = torch.nn.functional.interpolate(coarse, size=32, mode="bilinear", align_corners=False)
    images = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    targets = [c for c, count in enumerate(counts) for _ in range(count)]
    return ArrayImages(images, targets, [f"class_{c}" for c in range(num_classes)])


def _time_training(pipeline, config: TrainConfig, device: torch.device, class_counts: list[int], warmup: int,
                   rounds: int = ROUNDS, min_seconds: float = MIN_SECONDS) -> float:
    """Return the best round's samples/s (``best_rate``) of full training steps (data, forward, losses, backward,
    SGD step) after ``warmup`` untimed steps."""
    model = build_run_model(config, len(class_counts)).to(device).train()
    if device.type == "cuda" and config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config)
    counts = torch.tensor(class_counts, dtype=torch.float32, device=device)
    cutmix_rng = np.random.default_rng(0)
    context = DistContext(device=device)
    iterator = endless_batches(pipeline)

    def step() -> int:
        batch = next(iterator)
        train_step(model, optimizer, batch, config, config.l_d_warm + 1, counts, cutmix_rng, context)
        return batch.size

    try:
        for _ in range(warmup):
            step()
        return best_rate(step, device, rounds, min_seconds)["samples_per_second"]
    finally:
        iterator.close()


def compare_cpu_precision(pipeline, config: TrainConfig, class_counts: list[int], warmup: int, rounds: int = ROUNDS,
                          min_seconds: float = MIN_SECONDS) -> dict:
    """Return samples/s of full CPU training steps in fp32 and under bf16 autocast (``cpu_bf16``), side by side.

    Both time the same pipeline and model (``best_rate``: ``rounds`` rounds of at least ``min_seconds``):
    {"cpu_bf16": what the CPU offers, "train_cpu_fp32", "train_cpu_bf16", "cpu_bf16_speedup"}. Where the CPU has no native bf16 only {"cpu_bf16": "skipped: ..."}:
    emulated bf16 is slower than fp32, and training refuses it there.
    """
    native, evidence = precision.cpu_bf16_support()
    if not native:
        return {"cpu_bf16": f"skipped: this CPU has no native bf16 ({evidence})"}
    cpu = torch.device("cpu")
    fp32 = _time_training(pipeline, config.replace(cpu_bf16=False), cpu, class_counts, warmup, rounds, min_seconds)
    bf16 = _time_training(pipeline, config.replace(cpu_bf16=True), cpu, class_counts, warmup, rounds, min_seconds)
    return {"cpu_bf16": evidence, "train_cpu_fp32": fp32, "train_cpu_bf16": bf16, "cpu_bf16_speedup": bf16 / fp32}


def step_launches(pipeline, steps: int = 3) -> dict:
    """Return {"ops_per_step": [...], "copies_per_step": [...]}: torch operators (kernels on a GPU) and host-to-device
    copies of each of the pipeline's first ``steps`` batches (``count_step_launches``)."""
    from ccmix.data.pipelines.launch_count import count_step_launches

    return count_step_launches(pipeline, steps)


def _pipelines(train, config: TrainConfig, device: torch.device) -> dict:
    """Return {"classic", "fast"}: both training pipelines for ``config``, as training builds them."""
    from ccmix.data.pipelines.build import build_train_pipeline

    return {name: build_train_pipeline(train, config.replace(pipeline=name), device) for name in ("classic", "fast")}


def run_bench(quick: bool = False, device: str | None = "auto", preset: str = "cifar100_imb100") -> dict:
    """Return the bench's JSON-ready result: data and training samples/s of both pipelines, ratios, op counts,
    the fast pipeline's operators and host-to-device copies per step, on the CPU fp32 against bf16 training
    steps (``compare_cpu_precision``), and the machine's load before and after.

    Both pipelines run on the same in-memory long-tailed training set (random images with
    the preset's class counts), in this process, after warm-up; training steps use the
    preset's method at semantic-label time (every part of the loss active). Each figure is
    the best of ``ROUNDS`` rounds of at least ``MIN_SECONDS`` of work. ``quick`` uses a smaller
    set and batch so it finishes in under a minute on 2 idle CPU cores. ``device`` is
    auto (None too: CUDA when present), cpu or cuda; ConfigError when cuda is asked for and absent.
    """
    from ccmix.config.presets import preset as load_preset
    from ccmix.data.pipelines.threads import BATCH_THREADS

    started = machine_load()
    config = load_preset(preset)
    # the check train's device= gets: one sentence (ConfigError) when CUDA is asked for and absent
    device = single_device(config.replace(device=device or "auto"))
    if config.resolved_view_recipe != "cifar":
        raise ValueError(f"preset={preset!r} is not accepted by bench; the fast pipeline covers CIFAR-scale presets")
    batch_size = 64 if quick else config.batch_size
    config = config.replace(batch_size=batch_size, device=device.type, progress=False,
                            num_workers=min(2, os.cpu_count() or 1))
    train = _longtail_training_set(config, n_max=100 if quick else 5000 if config.num_classes <= 10 else 500)
    train.as_uint8_tensor()
    pipelines = _pipelines(train, config, device)
    warmup = 1 if quick else 3
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
              "preset": preset, "method": config.method, "batch_size": batch_size, "quick": quick,
              "torch_threads": torch.get_num_threads(), "num_workers": config.num_workers, "train_images": len(train),
              "fast_batch_threads": BATCH_THREADS if device.type == "cpu" else torch.get_num_threads(),
              "rounds": ROUNDS, "min_seconds": MIN_SECONDS, "cpus": started["cpus"], "load_before": started["load"]}
    for name, pipeline in pipelines.items():
        timed = _time_pipeline(pipeline, device, warmup)
        result[f"data_{name}"], result[f"data_{name}_rounds"] = timed["samples_per_second"], timed["rounds"]
    launches = step_launches(pipelines["fast"])
    result["fast_ops_per_step"], result["fast_copies_per_step"] = launches["ops_per_step"], launches["copies_per_step"]
    train_config = config
    if quick:  # full training steps dominate a CPU's minute: time them on half-size batches
        train_config = config.replace(batch_size=batch_size // 2)
        pipelines = _pipelines(train, train_config, device)
        result["train_batch_size"] = train_config.batch_size
    for name, pipeline in pipelines.items():
        result[f"train_{name}"] = _time_training(pipeline, train_config, device, train.class_counts, warmup)
    result["data_ratio"] = result["data_fast"] / result["data_classic"]
    result["train_ratio"] = result["train_fast"] / result["train_classic"]
    if device.type == "cpu":  # fp32 against bf16 autocast, on the fast pipeline's batches
        result.update(compare_cpu_precision(pipelines["fast"], train_config, train.class_counts, warmup))
    result["ops_per_batch_64"] = count_augment_ops(64, device)
    result["ops_per_batch_512"] = count_augment_ops(512, device)
    result["load_after"] = machine_load()["load"]
    return {key: _rounded(value) for key, value in result.items()}


def _rounded(value):
    """Return ``value`` with floats, also in lists, rounded to 2 decimals."""
    if isinstance(value, list):
        return [_rounded(item) for item in value]
    return round(value, 2) if isinstance(value, float) else value


__all__ = ["MIN_SECONDS", "ROUNDS", "best_rate", "compare_cpu_precision", "count_augment_ops", "count_operator_calls",
           "machine_load", "run_bench", "step_launches"]
