"""Training behaviour a result depends on: which epoch is best, how and when the model is evaluated, the weight
decay it is trained with, and what a resumed run carries over.

Every run here trains in this process on synthetic data with the tiny encoder (16-image batches, two steps an
epoch, no workers), so a run of three epochs takes well under a second. Where a test must control the test-set
top-1 of each epoch, ``scripted`` replaces only that number and keeps the real evaluation otherwise.
"""

from __future__ import annotations

import inspect
import json
import random
import signal
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from run_helpers import checkpoint_epoch, metric_records, model_hash

from ccmix.config.fields import TrainConfig
from ccmix.data.datasets import build_datasets
from ccmix.method.step import build_optimizer
from ccmix.train import evaluation, interrupt
from ccmix.train import fit as engine
from ccmix.train.evaluation import (
    build_run_model,
    build_test_loader,
    evaluate,
    evaluate_checkpoint,
    load_model,
    predict,
)
from ccmix.train.fit import fit
from ccmix.train.interrupt import TrainingInterrupted

CPU = torch.device("cpu")
REAL_TRAIN_ONE_EPOCH = engine.train_one_epoch
REAL_EVALUATE_DISTRIBUTED = evaluation.evaluate_distributed


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(**changes) -> TrainConfig:
    """Return a synthetic config of three epochs that trains in a fraction of a second on a CPU.

    Its five classes have 100, 56, 31, 17 and 10 training images.
    """
    base = TrainConfig(dataset="synthetic", synthetic_classes=5, imb=10, epochs=3, batch_size=16, num_workers=0,
                       method="la", topk=3, warmup_epochs=0, milestones=(), lr=0.05, progress=False,
                       max_steps_per_epoch=2, seed=1, device="cpu", arch="tiny")
    return base.replace(**changes)


# --------------------------------------------------------------------------- scripted runs


@dataclass
class Script:
    """What the patched engine does: ``top1`` maps a 1-based epoch to the test top-1 its evaluation reports;
    ``stop_before`` (1-based epoch) requests a stop (as SIGTERM would) when that epoch starts; ``draws`` records,
    per epoch, a draw of each global generator taken as the epoch starts (as code drawing from them would)."""

    top1: dict[int, float] = field(default_factory=dict)
    stop_before: int | None = None
    epoch: int = 0
    draws: dict[int, tuple] = field(default_factory=dict)


@pytest.fixture
def scripted(monkeypatch) -> Script:
    """Return the Script that the engine follows for the rest of the test."""
    script = Script()
    signature = inspect.signature(REAL_TRAIN_ONE_EPOCH)

    def train_one_epoch(*args, **kwargs):
        script.epoch = signature.bind(*args, **kwargs).arguments["epoch"] + 1
        script.draws[script.epoch] = (torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random())
        if script.stop_before == script.epoch:
            interrupt.active().request(signal.SIGTERM)  # the epoch stops before its first step
        return REAL_TRAIN_ONE_EPOCH(*args, **kwargs)

    def evaluate_distributed(*args, **kwargs):
        metrics = REAL_EVALUATE_DISTRIBUTED(*args, **kwargs)
        if script.epoch in script.top1:
            metrics["top1"] = script.top1[script.epoch]
        return metrics

    monkeypatch.setattr(engine, "train_one_epoch", train_one_epoch)
    monkeypatch.setattr(engine, "evaluate_distributed", evaluate_distributed)
    return script


def stopped_then_resumed(config: TrainConfig, run_dir: Path, script: Script, stop_before: int) -> dict:
    """Train ``config`` into ``run_dir``, stopped as epoch ``stop_before`` starts, then resume it to the end;
    return the resumed run's summary."""
    script.stop_before = stop_before
    with pytest.raises(TrainingInterrupted):
        fit(config, run_dir)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
    assert checkpoint_epoch(run_dir / "last.pt") == stop_before - 1
    script.stop_before = None
    return fit(config, run_dir)


# --------------------------------------------------------------------------- the best epoch


def test_the_best_epoch_is_the_one_with_the_highest_test_top1(tmp_path, scripted):
    scripted.top1 = {1: 40.0, 2: 70.0, 3: 55.0}
    summary = fit(tiny_config(), tmp_path)
    assert [r["top1"] for r in metric_records(tmp_path)] == [40.0, 70.0, 55.0]
    assert (summary["best"]["epoch"], summary["best"]["top1"]) == (2, 70.0), (
        f"the best record is {summary['best']}, not epoch 2 of the history's highest top-1 70.0")
    assert checkpoint_epoch(tmp_path / "best.pt") == 2
    assert summary["final"]["epoch"] == 3 and summary["final"]["top1"] == 55.0


def test_best_checkpoint_holds_the_model_of_the_highest_top1_in_the_history(tmp_path):
    config = tiny_config()
    summary = fit(config, tmp_path)
    records = [r for r in metric_records(tmp_path) if r["top1"] is not None]
    highest = max(r["top1"] for r in records)
    assert (summary["best"]["top1"], summary["best"]["epoch"]) == (
        highest, min(r["epoch"] for r in records if r["top1"] == highest)), "best.pt is not the highest top-1's"
    model, _ = load_model(tmp_path / "best.pt")
    train, test = build_datasets(config)
    again = evaluate(model, build_test_loader(test, config, CPU), CPU, train.class_counts, config)
    assert again["top1"] == highest


def test_a_resumed_run_keeps_the_best_epoch_found_before_the_stop(tmp_path, scripted):
    scripted.top1 = {1: 40.0, 2: 70.0, 3: 55.0}
    config = tiny_config()
    whole = fit(config, tmp_path / "whole")
    resumed = stopped_then_resumed(config, tmp_path / "resumed", scripted, stop_before=3)
    assert resumed["best"] == whole["best"], (
        f"the resumed run's best record {resumed['best']} differs from the uninterrupted run's {whole['best']}")
    assert checkpoint_epoch(tmp_path / "resumed" / "best.pt") == 2
    assert model_hash(tmp_path / "resumed" / "best.pt") == model_hash(tmp_path / "whole" / "best.pt")
    assert metric_records(tmp_path / "resumed") == metric_records(tmp_path / "whole")
    assert resumed["final"] == whole["final"]


# --------------------------------------------------------------------------- what a resumed run draws


def test_a_resumed_run_draws_from_the_global_generators_what_the_uninterrupted_run_draws(tmp_path, scripted):
    """Samplers, views and CutMix have their own (seed, epoch) generators; code drawing from the global Python,
    NumPy and torch generators during training (a model's dropout, a custom view) must draw alike after a resume."""
    config = tiny_config(method="concutmix", l_d_warm=0)
    fit(config, tmp_path / "whole")
    whole = dict(scripted.draws)
    scripted.draws.clear()
    stopped_then_resumed(config, tmp_path / "resumed", scripted, stop_before=3)
    assert scripted.draws[3] == whole[3], (
        f"as epoch 3 starts the resumed run drew {scripted.draws[3]} from the global generators, the uninterrupted "
        f"run {whole[3]}")
    assert metric_records(tmp_path / "resumed") == metric_records(tmp_path / "whole")


# --------------------------------------------------------------------------- how and when evaluation runs


def test_the_run_reports_many_medium_few_with_the_configured_thresholds(tmp_path):
    # with many > 50 and few < 30 the classes (100, 56, 31, 17, 10 images) fall in all three groups; the
    # default thresholds (> 100, < 20) would leave "many" empty
    config = tiny_config(epochs=1, many_threshold=50, few_threshold=30)
    summary = fit(config, tmp_path)
    counts = json.loads((tmp_path / "config.json").read_text())["train_class_counts"]
    assert counts == [100, 56, 31, 17, 10]
    saved = np.load(tmp_path / "predictions.npz")
    per_class = [100.0 * float(np.mean(saved["preds"][saved["labels"] == c] == c)) for c in range(len(counts))]
    expected = {"many": np.mean(per_class[:2]), "medium": per_class[2], "few": np.mean(per_class[3:])}
    reported = {group: summary["final"][group] for group in expected}
    assert reported == pytest.approx(expected), (
        f"the summary reports {reported}; many > 50 and few < 30 images give {expected}")
    groups = [line.split(",")[3] for line in (tmp_path / "per_class.csv").read_text().splitlines()[1:]]
    assert groups == ["many", "many", "medium", "few", "few"]
    checked = evaluate_checkpoint(tmp_path / "last.pt")  # the eval command evaluates with the run's thresholds
    assert {group: checked[group] for group in expected} == pytest.approx(expected)


def _with_misleading_batchnorm_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """Set every BatchNorm's running statistics far from any batch's, so train and eval mode disagree."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.fill_(3.0)
            module.running_var.fill_(0.25)
    return model


def test_prediction_uses_the_running_statistics_and_leaves_the_model_unchanged(tmp_path):
    config = tiny_config()
    train, test = build_datasets(config)
    model = _with_misleading_batchnorm_statistics(build_run_model(config, train.num_classes))
    loader = build_test_loader(test, config, CPU)
    model.eval()
    with torch.no_grad():
        expected = torch.cat([model.classify(images).argmax(dim=1) for images, _ in loader]).numpy()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    model.train()  # as training leaves it
    predicted = predict(model, loader, CPU, config)["preds"]
    changed = [name for name, value in model.state_dict().items() if not torch.equal(value, before[name])]
    assert changed == [], f"predicting changed the model's {changed}"
    assert np.array_equal(predicted, expected), "predictions differ from the model's in evaluation mode"


def test_the_run_predictions_are_those_of_its_last_checkpoint(tmp_path):
    config = tiny_config(epochs=1)
    summary = fit(config, tmp_path)
    model, _ = load_model(tmp_path / "last.pt")
    _, test = build_datasets(config)
    again = predict(model, build_test_loader(test, config, CPU), CPU, config)["preds"]
    saved = np.load(tmp_path / "predictions.npz")["preds"]
    assert np.array_equal(saved, again), "the run's final predictions are not what its last checkpoint predicts"
    assert summary["final"]["top1"] == pytest.approx(100.0 * float(np.mean(again == np.asarray(test.targets))))


@pytest.mark.parametrize(("epochs", "eval_interval", "evaluated"), [(3, 2, [2, 3]), (4, 3, [3, 4])])
def test_evaluation_runs_every_eval_interval_epochs_and_at_the_last(tmp_path, epochs, eval_interval, evaluated):
    summary = fit(tiny_config(epochs=epochs, eval_interval=eval_interval), tmp_path)
    records = metric_records(tmp_path)
    assert [r["epoch"] for r in records] == list(range(1, epochs + 1))
    assert [r["epoch"] for r in records if r["top1"] is not None] == evaluated, (
        f"with eval_interval={eval_interval} and epochs={epochs} the evaluated epochs must be {evaluated}")
    assert summary["final"]["epoch"] == epochs and summary["best"]["epoch"] in evaluated


# --------------------------------------------------------------------------- weight decay


def test_the_optimizer_decays_every_weight_by_the_configured_weight_decay():
    config = tiny_config(weight_decay=0.01, lr=0.2, momentum=0.9)
    model = build_run_model(config, 5)
    optimizer = build_optimizer(model, config)
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.01] * len(optimizer.param_groups)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # no loss gradient: only the decay moves the weights
    optimizer.step()
    # SGD with weight decay: the first step moves w by -lr * (grad + wd * w), the momentum buffer starting there
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), before[name] * (1 - 0.2 * 0.01), msg=lambda m, n=name: f"{n}: {m}")


def test_the_configured_weight_decay_changes_what_a_run_learns(tmp_path):
    fit(tiny_config(epochs=1, weight_decay=0.0), tmp_path / "none")
    fit(tiny_config(epochs=1, weight_decay=0.05), tmp_path / "decayed")
    assert model_hash(tmp_path / "none" / "last.pt") != model_hash(tmp_path / "decayed" / "last.pt"), (
        "weight_decay=0.05 trained the same weights as weight_decay=0")
