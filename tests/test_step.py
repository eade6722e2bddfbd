"""The training step, its batch, host-side CutMix draws and the run folder's readers."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from ccmix.config.fields import TrainConfig
from ccmix.data.batch import StepBatch
from ccmix.method.cutmix import cutmix, sample_boxes
from ccmix.method.step import CORRECT, COUNT, LOSS, LOSS_BCL, LOSS_CE, build_optimizer, compute_step_loss, train_step
from ccmix.train.evaluation import build_run_model
from ccmix.train.run_folder import BEST_NOTE, RunFolder


def step_config(**changes) -> TrainConfig:
    base = TrainConfig(dataset="synthetic", synthetic_classes=4, imb=10, batch_size=8, num_workers=0, topk=2,
                       method="la", lr=0.05, progress=False, seed=0)
    return base.replace(**changes)


def random_batch(size: int = 8, classes: int = 4, side: int = 16) -> StepBatch:
    generator = torch.Generator().manual_seed(0)
    return StepBatch(
        view0=torch.randn(size, 3, side, side, generator=generator),
        contrastive=torch.randn(size, 2, 3, side, side, generator=generator),
        labels=torch.arange(size) % classes,
        foreground=torch.randn(size, 3, side, side, generator=generator),
        foreground_labels=(torch.arange(size) + 1) % classes,
    )


def test_step_batch_slices_moves_and_keeps_absent_parts_absent():
    batch = random_batch()
    batch.contrastive = None
    part = batch[2:5]
    assert part.size == 3 and part.contrastive is None
    assert torch.equal(part.view0, batch.view0[2:5]) and torch.equal(part.foreground_labels, batch.foreground_labels[2:5])
    moved = batch.to("cpu")
    assert moved.contrastive is None and torch.equal(moved.labels, batch.labels)


@pytest.mark.parametrize("method", ["la", "bcl"])
def test_train_step_returns_the_loss_sums_of_its_batch_and_updates_the_model(method):
    config = step_config(method=method)
    counts = torch.tensor([40.0, 20.0, 10.0, 4.0])
    model = build_run_model(config, 4)
    reference = copy.deepcopy(model)
    batch = random_batch()
    sums = train_step(model, build_optimizer(model, config), batch, config, 0, counts, np.random.default_rng(0))
    assert sums.shape == (5,) and sums.dtype == torch.float64 and not sums.requires_grad
    assert sums[COUNT] == batch.size and 0 <= sums[CORRECT] <= batch.size
    expected = compute_step_loss(reference.train(), batch, config, 0, counts, None)  # la and bcl do not mix
    assert float(sums[LOSS]) / batch.size == pytest.approx(float(expected.loss.detach()), rel=1e-5)
    assert float(sums[LOSS_CE]) / batch.size == pytest.approx(float(expected.loss_ce), rel=1e-5)
    assert (float(sums[LOSS_BCL]) > 0) == (method == "bcl")
    before = dict(reference.named_parameters())
    assert any(not torch.equal(p, before[name]) for name, p in model.named_parameters())


def test_gradient_accumulation_counts_every_pair_once():
    config = step_config(grad_accum_steps=2)
    model = build_run_model(config, 4)
    sums = train_step(model, build_optimizer(model, config), random_batch(), config, 0, torch.tensor([4.0] * 4),
                      np.random.default_rng(0))
    assert sums[COUNT] == 8


def test_cutmix_draws_repeat_from_a_seed_or_a_numpy_generator():
    a = torch.rand(6, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    b, y_a, y_b = a + 1.0, torch.zeros(6, dtype=torch.int64), torch.ones(6, dtype=torch.int64)
    first = cutmix(a, b, y_a, y_b, num_classes=2, generator=7, per_sample=True)
    again = cutmix(a, b, y_a, y_b, num_classes=2, generator=np.random.default_rng(7), per_sample=True)
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    boxes = sample_boxes(6, 12, 12, per_sample=True, generator=7)
    assert boxes.top.dtype == torch.int64 and boxes.top.device.type == "cpu"


def test_run_folder_reads_absent_files_as_empty_and_stops_at_a_damaged_metric_line(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.read_config() is None and folder.read_summary() is None and folder.read_metrics() == []
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"epoch": 1}) + "\n" + '{"epoch": 2, "lo')
    (tmp_path / "summary.json").write_text("{not json")
    assert folder.read_metrics() == [{"epoch": 1}]
    assert folder.read_summary() is None


def test_every_summary_comes_from_one_builder(tmp_path):
    folder = RunFolder(tmp_path)
    folder.start_summary(step_config(), None, world_size=1, num_classes=4, train_images=10, test_images=8)
    running = folder.summary("running", 1, None, 2.5)
    assert running["final"] == {"epoch": None, "top1": None, "many": None, "medium": None, "few": None}
    assert running["best"]["note"] == BEST_NOTE and running["status"] == "running" and running["method"] == "la"
    metrics = {"top1": 50.0, "many": 60.0, "medium": 40.0, "few": 10.0}
    done = folder.summary("completed", 3, None, 9.0, final_metrics=metrics)
    assert done["final"] == {"epoch": 3, **metrics} and done["best"] == dict(done["final"], note=BEST_NOTE)
    folder.write_summary(done)
    assert folder.read_summary() == done
    RunFolder(tmp_path / "other", writer=False).write_summary(done)  # other ranks write nothing
    assert not (tmp_path / "other").exists()
