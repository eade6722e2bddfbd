"""On the CPU the fast pipeline builds each batch with one torch intra-op thread, and hands it over with the
caller's thread count restored (the model step keeps its threads)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ccmix.config.fields import TrainConfig
from ccmix.data.datasets import ArrayImages
from ccmix.data.pipelines.build import build_train_pipeline
from ccmix.data.pipelines.fast import FastTrainPipeline
from ccmix.data.pipelines.threads import BATCH_THREADS, CpuFastTrainPipeline, built_with_threads, intra_op_threads


@pytest.fixture
def caller_threads():
    """Run the test with 2 intra-op threads in the caller (so one thread is a change), restoring the count after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield 2
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def train_set():
    generator = np.random.default_rng(0)
    images = generator.integers(0, 256, size=(40, 32, 32, 3), dtype=np.uint8)
    return ArrayImages(images, [i % 4 for i in range(40)], [f"c{c}" for c in range(4)])


def fast_config(**changes) -> TrainConfig:
    base = TrainConfig(dataset="synthetic", synthetic_classes=4, method="concutmix", batch_size=8, pipeline="fast",
                       max_steps_per_epoch=3, progress=False, seed=0)
    return base.replace(**changes)


def test_intra_op_threads_sets_the_count_and_restores_it_even_on_error(caller_threads):
    with intra_op_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == caller_threads
    with pytest.raises(RuntimeError, match="inside"), intra_op_threads(1):
        raise RuntimeError("inside")
    assert torch.get_num_threads() == caller_threads


def test_built_with_threads_holds_one_thread_only_while_an_item_is_made_and_closes_its_source(caller_threads):
    seen, closed = [], []

    def source():
        try:
            for item in range(3):
                seen.append(torch.get_num_threads())
                yield item
        finally:
            closed.append(True)

    items = built_with_threads(source(), 1)
    assert next(items) == 0 and torch.get_num_threads() == caller_threads
    assert next(items) == 1 and torch.get_num_threads() == caller_threads
    items.close()
    assert seen == [1, 1] and closed == [True]
    assert list(built_with_threads(iter([5, 6]), 1)) == [5, 6] and torch.get_num_threads() == caller_threads


def test_cpu_fast_pipeline_builds_batches_on_one_thread_and_yields_them_on_the_callers(
        train_set, caller_threads, monkeypatch):
    pipeline = build_train_pipeline(train_set, fast_config(), "cpu")
    assert isinstance(pipeline, CpuFastTrainPipeline) and BATCH_THREADS == 1
    while_built = []
    make_batch = FastTrainPipeline.make_batch

    def recording_make_batch(self, *args, **kwargs):
        while_built.append(torch.get_num_threads())
        return make_batch(self, *args, **kwargs)

    monkeypatch.setattr(FastTrainPipeline, "make_batch", recording_make_batch)
    while_held = [torch.get_num_threads() for _ in pipeline.batches(0)]
    assert while_built == [1] * pipeline.steps_per_epoch
    assert while_held == [caller_threads] * pipeline.steps_per_epoch


def test_one_thread_gives_the_same_batches(train_set, caller_threads):
    config = fast_config()
    one_thread = list(CpuFastTrainPipeline(train_set, config, "cpu").batches(1, rank=1, world_size=2))
    callers = list(FastTrainPipeline(train_set, config, "cpu").batches(1, rank=1, world_size=2))
    assert len(one_thread) == len(callers) == 3
    for ours, theirs in zip(one_thread, callers):
        for name in ("view0", "contrastive", "labels", "foreground", "foreground_labels"):
            torch.testing.assert_close(getattr(ours, name), getattr(theirs, name), rtol=0, atol=0, msg=name)


def test_a_fallback_to_the_classic_pipeline_keeps_the_callers_threads(caller_threads, monkeypatch):
    images = np.zeros((16, 40, 40, 3), dtype=np.uint8)  # not 32x32: the fast pipeline falls back
    train = ArrayImages(images, [i % 2 for i in range(16)], ["a", "b"])
    with pytest.warns(UserWarning, match="using the classic pipeline instead"):
        pipeline = build_train_pipeline(train, fast_config(synthetic_classes=2, num_workers=0), "cpu")
    assert pipeline.fallback is not None
    classic_batches = type(pipeline.fallback).batches

    def recording(self, *args, **kwargs):
        for batch in classic_batches(self, *args, **kwargs):
            threads.append(torch.get_num_threads())
            yield batch

    threads = []
    monkeypatch.setattr(type(pipeline.fallback), "batches", recording)
    assert len(list(pipeline.batches(0))) == pipeline.steps_per_epoch == len(threads)
    assert set(threads) == {caller_threads}
