"""Engine: every method trains on synthetic data and writes a complete, self-describing run folder."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from ccmix.config.fields import METHODS, TrainConfig
from ccmix.config.presets import preset
from ccmix.data.batch import StepBatch
from ccmix.method.collectives import DistContext
from ccmix.method.step import compute_step_loss, draw_cutmix_boxes, learning_rate
from ccmix.train.fit import fit

RUN_FILES = ("config.json", "metrics.jsonl", "per_class.csv", "summary.json", "predictions.npz", "last.pt", "best.pt")


def tiny_config(**changes) -> TrainConfig:
    """Return a synthetic config small enough for a CPU test (a few seconds an epoch)."""
    base = TrainConfig(dataset="synthetic", synthetic_classes=5, imb=10, epochs=2, batch_size=32, num_workers=0,
                       topk=3, warmup_epochs=1, milestones=(), lr=0.05, l_d_warm=1, progress=False,
                       max_steps_per_epoch=3, seed=1, arch="tiny")
    return base.replace(**changes)


def test_learning_rate_warms_up_then_steps_down():
    config = preset("cifar100_imb100")
    rates = [learning_rate(epoch, config) for epoch in range(200)]
    assert rates[0] == pytest.approx(0.15 / 5) and rates[4] == pytest.approx(0.15)
    assert rates[159] == pytest.approx(0.15) and rates[160] == pytest.approx(0.015)
    assert rates[180] == pytest.approx(0.0015) and rates[199] == pytest.approx(0.0015)
    cosine = preset("imagenet_lt_resnet50_100")
    values = [learning_rate(epoch, cosine) for epoch in range(100)]
    # the published cosine: 0.5 (1 + cos(pi (e + 1) / (E + 1))), so epoch 0 has decayed a little already
    assert values[0] == pytest.approx(0.05 * (1 + math.cos(math.pi / 101))) and all(a >= b for a, b in zip(values, values[1:]))
    assert values[99] == pytest.approx(0.05 * (1 + math.cos(math.pi * 100 / 101))) and values[99] > 0


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_two_epochs_and_writes_a_complete_run_folder(method, tmp_path):
    summary = fit(tiny_config(method=method), tmp_path)
    for name in RUN_FILES:
        assert (tmp_path / name).is_file(), name
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(np.isfinite(r["loss"]) and r["top1"] is not None for r in records)
    assert (records[0]["loss_bcl"] is not None) == (method in ("bcl", "concutmix"))
    assert summary["status"] == "completed" and summary["final"]["epoch"] == 2
    assert summary["best"]["note"].startswith("selected on the test set")
    assert summary["final"]["top1"] == pytest.approx(records[-1]["top1"])
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["method"] == method and config["world_size"] == 1 and len(config["class_names"]) == 5
    with open(tmp_path / "per_class.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["train_count"]) for r in rows] == config["train_class_counts"]
    assert sum(int(r["test_count"]) for r in rows) == summary["test_images"]
    payload = torch.load(tmp_path / "last.pt", weights_only=True)
    assert payload["epoch"] == 2


@pytest.mark.integration
def test_eval_command_reproduces_the_final_top1(tmp_path):
    summary = fit(tiny_config(method="concutmix"), tmp_path)
    result = subprocess.run([sys.executable, "-m", "ccmix", "eval", "--checkpoint", str(tmp_path / "last.pt")],
                            capture_output=True, text=True, check=True)
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    assert printed["top1"] == pytest.approx(summary["final"]["top1"])
    assert printed["many"] == summary["final"]["many"] and printed["few"] == summary["final"]["few"]
    written = json.loads((tmp_path / "last.eval.json").read_text())
    assert written["top1"] == printed["top1"] and written["epoch"] == 2


def test_rerunning_on_a_finished_folder_extends_it_when_asked(tmp_path):
    from ccmix.config.rules import ConfigError

    fit(tiny_config(method="la", epochs=1), tmp_path)
    with pytest.raises(ConfigError, match="the learning-rate schedule depends on the number of epochs"):
        fit(tiny_config(method="la", epochs=3), tmp_path)  # another schedule: only on request
    summary = fit(tiny_config(method="la", epochs=3), tmp_path, allow_more_epochs=True)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert summary["epochs_completed"] == 3


def test_resume_refuses_a_folder_trained_with_other_settings(tmp_path):
    from ccmix.config.rules import ConfigError

    fit(tiny_config(method="la", epochs=1), tmp_path)
    with pytest.raises(ConfigError, match="holds a run with other settings \\(method: 'la' in the folder, 'ce' asked\\)"):
        fit(tiny_config(method="ce", epochs=1), tmp_path)


def test_cpu_training_is_deterministic(tmp_path):
    first = fit(tiny_config(method="concutmix"), tmp_path / "a")
    second = fit(tiny_config(method="concutmix"), tmp_path / "b")
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert first["final"] == second["final"]


def _batch(size=8, classes=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return StepBatch(
        view0=torch.randn(size, 3, 32, 32, generator=generator),
        contrastive=torch.randn(size, 2, 3, 32, 32, generator=generator),
        labels=torch.arange(size) % classes,
        foreground=torch.randn(size, 3, 32, 32, generator=generator),
        foreground_labels=(torch.arange(size) + 1) % classes,
    )


def test_semantic_labels_start_after_epoch_l_d_warm(monkeypatch):
    import ccmix.method.losses as losses
    from ccmix.models.bcl import build_model

    calls = []
    original = losses.semantic_label_parts

    def recording(*args, **kwargs):
        calls.append(kwargs.get("topk"))
        return original(*args, **kwargs)

    monkeypatch.setattr(losses, "semantic_label_parts", recording)
    config = tiny_config(method="concutmix", synthetic_classes=4, l_d_warm=3, cutmix_prob=1.0, topk=2)
    model = build_model("tiny", 4)
    counts = torch.tensor([40.0, 20.0, 10.0, 4.0])
    boxes = draw_cutmix_boxes(config, np.random.default_rng(0), 8, 32, 32, DistContext())
    assert boxes is not None
    compute_step_loss(model, _batch(), config, 3, counts, boxes)  # published: epoch > l_d_warm (0-based)
    assert calls == []
    compute_step_loss(model, _batch(), config, 4, counts, boxes)
    assert calls == [2]
    compute_step_loss(model, _batch(), config, 4, counts, None)  # an unmixed batch keeps its hard labels
    assert calls == [2]


def test_cutmix_probability_controls_how_many_steps_mix():
    config = tiny_config(method="cutmix", cutmix_prob=0.5)
    generator = np.random.default_rng(0)
    mixed = sum(draw_cutmix_boxes(config, generator, 16, 32, 32, DistContext()) is not None for _ in range(2000))
    assert 900 < mixed < 1100  # Binomial(2000, 0.5): mean 1000, sd 22
    assert draw_cutmix_boxes(tiny_config(method="la"), generator, 16, 32, 32, DistContext()) is None


def test_per_sample_cutmix_leaves_unmixed_images_whole():
    from ccmix.method.cutmix import kept_fraction

    config = tiny_config(method="cutmix", cutmix_prob=0.5, cutmix_per_sample=True)
    boxes = draw_cutmix_boxes(config, np.random.default_rng(0), 4000, 32, 32, DistContext())
    lam = kept_fraction(boxes, 32, 32)
    whole = (lam == 1).float().mean().item()
    assert 0.47 < whole < 0.56  # half unmixed, plus the few mixed boxes clipped to nothing


@pytest.mark.integration
def test_two_epoch_concutmix_command_line_run(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "ccmix", "train", "--preset", "cifar10_imb100", "--set", "dataset=synthetic",
               "--set", "epochs=2", "--set", "batch_size=32", "--set", "num_workers=0", "--set", "l_d_warm=1",
               "--set", "max_steps_per_epoch=2", "--set", "progress=false", "--set", "arch=tiny", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["method"] == "concutmix"
    bad = subprocess.run(command[:-2] + ["--set", "topk=11", "--out", str(tmp_path / "bad")], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "topk=11 is not accepted" in bad.stderr
    assert not (tmp_path / "bad").exists()
