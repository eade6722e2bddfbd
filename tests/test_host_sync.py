"""Between logging steps, training reads nothing back from the device.

On CUDA every read of a tensor's value on the host (``.item()``, ``float()``, ``int()``,
``bool()``: the operator ``aten::_local_scalar_dense``) waits for every queued kernel, and
so do operators whose output size depends on the data (``nonzero``, ``masked_select``,
boolean-mask indexing). The tests count those operators with a ``TorchDispatchMode`` over
``ccmix.fit`` on the CPU, with N and with 3N steps an epoch: whatever happens once per
run or per epoch cancels, and the difference divided by the 2N extra steps is what one
step costs. Classic runs use one DataLoader worker, as the classic pipeline is meant to
run: its augmentation happens in worker processes on the CPU, never on the device.
"""

from __future__ import annotations

import collections
import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import ccmix.method.step as step
import ccmix.train.fit as engine
from ccmix.config.fields import METHODS, TrainConfig
from ccmix.method.step import TrainingDiverged
from ccmix.train.fit import fit

aten = torch.ops.aten
SCALAR_READS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default}
INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
STEPS = 1  # N; the long run has 3N steps an epoch


class HostReads(TorchDispatchMode):
    """Count the operators that make the host wait for the device, and where ``ccmix`` called them."""

    def __init__(self):
        super().__init__()
        self.count = 0
        self.sites: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in SCALAR_READS or (func in INDEXING and _has_boolean_index(args)):
            self.count += 1
            frames = [f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}" for frame in traceback.extract_stack()
                      if "/ccmix/" in frame.filename]
            self.sites[f"{func} at {' < '.join(reversed(frames[-3:]))}"] += 1
        return func(*args, **(kwargs or {}))


def _has_boolean_index(args) -> bool:
    indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
    return any(isinstance(index, torch.Tensor) and index.dtype == torch.bool for index in indices)


def run_config(method: str, pipeline: str, steps: int, **changes) -> TrainConfig:
    """Return a tiny synthetic run; concutmix trains two epochs so that both label kinds occur."""
    base = TrainConfig(
        dataset="synthetic", synthetic_classes=5, imb=10, topk=3, arch="tiny", method=method, pipeline=pipeline,
        epochs=2 if method == "concutmix" else 1, l_d_warm=0, batch_size=8, max_steps_per_epoch=steps,
        num_workers=1 if pipeline == "classic" else 0, device="cpu", warmup_epochs=0, milestones=(), lr=0.05,
        seed=3, progress=False, log_every=100,
    )
    return base.replace(**changes)


def count_reads(config: TrainConfig, out) -> HostReads:
    """Return the host reads counted over ``fit(config, out)``."""
    with HostReads() as reads:
        fit(config, out)
    return reads


@pytest.fixture(scope="module")
def warmed(tmp_path_factory):
    """Train once with each pipeline, so values cached once per process are not counted against a run."""
    for pipeline in ("classic", "fast"):
        fit(run_config("concutmix", pipeline, 1), tmp_path_factory.mktemp(f"warm-{pipeline}"))


def test_the_counter_sees_reads_and_data_dependent_shapes():
    values = torch.tensor([0.5, -1.0, 2.0])
    with HostReads() as reads:
        float(values.sum())
        bool(values.isfinite().all())
        values[values > 0]
        values.nonzero()
        torch.masked_select(values, values > 0)
        values.clone()[values < 0] = 0.0
        values * 2 + values.abs()  # device work alone: not counted
    assert reads.count == 6


@pytest.mark.integration
@pytest.mark.parametrize("pipeline", ["classic", "fast"])
@pytest.mark.parametrize("method", METHODS)
def test_steps_between_logging_steps_read_nothing_back(method, pipeline, warmed, tmp_path):
    short = count_reads(run_config(method, pipeline, STEPS), tmp_path / "short")
    long = count_reads(run_config(method, pipeline, 3 * STEPS), tmp_path / "long")
    epochs = run_config(method, pipeline, STEPS).epochs
    per_step = (long.count - short.count) / (2 * STEPS * epochs)
    extra = long.sites - short.sites
    assert per_step == 0, f"{per_step} host reads per step; added by the longer run: {dict(extra)}"


def test_a_non_finite_loss_stops_training_at_the_next_logging_step(tmp_path, monkeypatch):
    original = step.compute_step_loss
    calls = []

    def poisoned(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            result.loss = result.loss * float("nan")
        return result

    monkeypatch.setattr(step, "compute_step_loss", poisoned)
    config = run_config("la", "fast", 8, log_every=2)
    with pytest.raises(TrainingDiverged, match=r"the training loss became nan at epoch 1, step 3; training stopped"):
        fit(config, tmp_path)
    assert len(calls) == 4  # the check after step 4 found it; steps 5 to 8 never ran


def test_the_progress_bar_shows_the_running_loss_every_log_every_steps(tmp_path, monkeypatch):
    postfixes = []

    class RecordingBar(engine.tqdm):
        def set_postfix(self, *args, **kwargs):
            if str(self.desc).startswith("epoch"):
                postfixes.append(kwargs)
            return super().set_postfix(*args, **kwargs)

    monkeypatch.setattr(engine, "tqdm", RecordingBar)
    fit(run_config("bcl", "fast", 6, log_every=2, progress=True), tmp_path)
    assert len(postfixes) == 3
    assert all(float(p["loss"]) > 0 and 0 <= float(p["acc"]) <= 100 for p in postfixes)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch sees none)")
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("method", ["la", "concutmix"])
def test_cuda_steps_between_logging_steps_never_wait_for_the_device(method, compiled, monkeypatch):
    from ccmix.data.datasets import build_datasets
    from ccmix.data.pipelines.build import build_train_pipeline
    from ccmix.data.pipelines.fast import FastTrainPipeline
    from ccmix.method.collectives import DistContext
    from ccmix.train.evaluation import build_run_model

    device = torch.device("cuda")
    # every batch mixed: one step variant, compiled and recorded as a CUDA graph in the first epoch
    config = run_config(method, "fast", 6, device="cuda", compile=compiled, cutmix_prob=1.0)
    train, _ = build_datasets(config)
    model = build_run_model(config, train.num_classes).to(device)
    optimizer = step.build_optimizer(model, config)
    counts = torch.tensor(train.class_counts, dtype=torch.float32, device=device)
    pipeline = build_train_pipeline(train, config, device)
    loss_function = step.step_loss_function(config, device)
    context = DistContext(device=device)

    def epoch(number: int) -> dict:
        return engine.train_one_epoch(model, pipeline, optimizer, config, number, counts, device, context,
                                      progress=False, loss_function=loss_function)

    epoch(1)  # first use: cached constants, compilation, CUDA-graph recording

    def strict(function):
        def wrapper(*args, **kwargs):
            torch.cuda.set_sync_debug_mode("error")  # any synchronising CUDA call raises
            try:
                return function(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return wrapper

    monkeypatch.setattr(engine, "train_step", strict(step.train_step))
    monkeypatch.setattr(step.EpochTotals, "add", strict(step.EpochTotals.add))
    monkeypatch.setattr(FastTrainPipeline, "sample_step", strict(FastTrainPipeline.sample_step))
    monkeypatch.setattr(FastTrainPipeline, "make_batch", strict(FastTrainPipeline.make_batch))
    record = epoch(2)
    assert record["loss"] == record["loss"] and record["samples_per_second"] > 0
