"""The classic (PIL worker) training pipeline and the pipeline choice."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from ccmix.config.fields import TrainConfig
from ccmix.config.rules import ConfigError
from ccmix.data.datasets import build_datasets
from ccmix.data.pipelines.build import build_train_pipeline
from ccmix.data.pipelines.classic import ClassicTrainPipeline
from ccmix.data.streams import epoch_generator, sample_epoch_indices


def synthetic_config(**changes):
    base = dict(dataset="synthetic", synthetic_classes=10, imb=10, batch_size=8, num_workers=0,
                max_steps_per_epoch=2, pipeline="classic", seed=3)
    return TrainConfig(**(base | changes))


@pytest.fixture(scope="module")
def train_set():
    train, _ = build_datasets(synthetic_config())
    return train


def collect(pipeline, epoch, **kwargs):
    return list(pipeline.batches(epoch, **kwargs))


def test_la_batches_have_only_view0_and_labels(train_set):
    config = synthetic_config(method="la")
    pipeline = build_train_pipeline(train_set, config, "cpu")
    assert isinstance(pipeline, ClassicTrainPipeline) and pipeline.steps_per_epoch == 2
    batches = collect(pipeline, 0)
    assert len(batches) == 2
    for batch in batches:
        assert batch.view0.shape == (8, 3, 32, 32) and batch.view0.dtype == torch.float32
        assert batch.labels.shape == (8,) and batch.labels.dtype == torch.int64
        assert batch.contrastive is None and batch.foreground is None and batch.foreground_labels is None
    # The labels are those of the epoch's background rows.
    background, _ = sample_epoch_indices(train_set.targets, 10, 8, "balanced", epoch_generator(3, 0),
                                         need_foreground=False)
    targets = torch.tensor(train_set.targets)
    assert torch.equal(batches[1].labels, targets[background[1]])


def test_concutmix_batches_have_every_part(train_set):
    config = synthetic_config(method="concutmix")
    batch = collect(ClassicTrainPipeline(train_set, config, "cpu"), 1)[0]
    assert batch.view0.shape == (8, 3, 32, 32)
    assert batch.contrastive.shape == (8, 2, 3, 32, 32) and batch.contrastive.dtype == torch.float32
    assert batch.foreground.shape == (8, 3, 32, 32)
    assert batch.foreground_labels.shape == (8,) and batch.foreground_labels.dtype == torch.int64
    # Two independent contrastive views of the same image, and different from view 0.
    assert not torch.equal(batch.contrastive[:, 0], batch.contrastive[:, 1])
    background, foreground = sample_epoch_indices(train_set.targets, 10, 8, "balanced", epoch_generator(3, 1))
    targets = torch.tensor(train_set.targets)
    assert torch.equal(batch.labels, targets[background[0]])
    assert torch.equal(batch.foreground_labels, targets[foreground[0]])


def test_unused_images_are_never_decoded(train_set, monkeypatch):
    loads = []
    original = type(train_set).load_image
    monkeypatch.setattr(type(train_set), "load_image", lambda self, i: loads.append(i) or original(self, i))
    collect(ClassicTrainPipeline(train_set, synthetic_config(method="bcl"), "cpu"), 0)
    assert len(loads) == 2 * 8  # backgrounds only, once each: no foreground for bcl
    loads.clear()
    collect(ClassicTrainPipeline(train_set, synthetic_config(method="cutmix"), "cpu"), 0)
    assert len(loads) == 2 * 8 * 2  # background and foreground


def test_same_seed_and_epoch_give_identical_batches(train_set):
    pipeline = ClassicTrainPipeline(train_set, synthetic_config(method="concutmix"), "cpu")
    first, second, other = collect(pipeline, 4), collect(pipeline, 4), collect(pipeline, 5)
    for a, b in zip(first, second):
        for key, value in vars(a).items():
            assert torch.equal(value, getattr(b, key)), key
    assert not torch.equal(first[0].view0, other[0].view0)


def test_workers_give_the_same_indices_and_are_deterministic(train_set):
    config = synthetic_config(method="cutmix", num_workers=1)
    pipeline = ClassicTrainPipeline(train_set, config, "cpu")
    first, second = collect(pipeline, 2), collect(pipeline, 2)
    serial = collect(ClassicTrainPipeline(train_set, synthetic_config(method="cutmix"), "cpu"), 2)
    for a, b, c in zip(first, second, serial):
        assert torch.equal(a.view0, b.view0) and torch.equal(a.foreground, b.foreground)
        assert torch.equal(a.labels, c.labels) and torch.equal(a.foreground_labels, c.foreground_labels)


def test_ranks_take_interleaved_columns_of_the_global_batch(train_set):
    pipeline = ClassicTrainPipeline(train_set, synthetic_config(method="cutmix"), "cpu")
    whole = collect(pipeline, 0)
    ranks = [collect(pipeline, 0, rank=r, world_size=2) for r in range(2)]
    for step, batch in enumerate(whole):
        assert ranks[0][step].labels.shape == (4,)
        assert torch.equal(ranks[0][step].labels, batch.labels[0::2])
        assert torch.equal(ranks[1][step].foreground_labels, batch.foreground_labels[1::2])
    with pytest.raises(ValueError, match="rank"):
        collect(pipeline, 0, rank=2, world_size=2)


def test_steps_per_epoch_full_batches_and_cap(train_set):
    full = ClassicTrainPipeline(train_set, synthetic_config(max_steps_per_epoch=None, batch_size=64), "cpu")
    assert full.steps_per_epoch == len(train_set) // 64
    tiny = ClassicTrainPipeline(train_set, synthetic_config(max_steps_per_epoch=None, batch_size=4096), "cpu")
    assert tiny.steps_per_epoch == 1


def test_pipeline_choice(train_set, monkeypatch):
    fake = types.ModuleType("ccmix.data.pipelines.fast")

    class FastTrainPipeline:
        def __init__(self, train, config, device):
            self.device = device

    fake.FastTrainPipeline = FastTrainPipeline
    monkeypatch.setitem(sys.modules, "ccmix.data.pipelines.fast", fake)
    monkeypatch.delitem(sys.modules, "ccmix.data.pipelines.threads", raising=False)  # its subclass: of the fake
    assert isinstance(build_train_pipeline(train_set, synthetic_config(pipeline="fast"), "cpu"), FastTrainPipeline)
    assert isinstance(build_train_pipeline(train_set, synthetic_config(pipeline="auto"), "cpu"), ClassicTrainPipeline)
    chosen = build_train_pipeline(train_set, synthetic_config(pipeline="auto"), torch.device("cuda"))
    assert isinstance(chosen, FastTrainPipeline)
    with pytest.raises(ConfigError, match="pipeline"):
        build_train_pipeline(train_set, synthetic_config(pipeline="turbo"), "cpu")
