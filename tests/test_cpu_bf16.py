"""bf16 autocast on the CPU: opt-in, refused where the CPU has no native bf16, recorded, fp32 evaluation kept.

Where the CPU lacks native bf16 (this is decided by ``ccmix.train.precision.cpu_bf16_support``), the tests
that train in bf16 pretend it has it: autocast then runs on oneDNN's emulation, slower but with the same
bf16 rounding, so the numbers checked here do not depend on the instruction set.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ccmix.config.fields import TrainConfig
from ccmix.config.rules import ConfigError
from ccmix.data.datasets import build_datasets
from ccmix.data.pipelines.build import build_train_pipeline
from ccmix.experiments.bench import compare_cpu_precision
from ccmix.method.step import COUNT, LOSS, build_optimizer, train_step
from ccmix.train import precision
from ccmix.train.evaluation import build_run_model, build_test_loader, predict
from ccmix.train.fit import fit

NATIVE, EVIDENCE = precision.cpu_bf16_support()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def pretend_native(monkeypatch):
    """Let bf16 runs start on any CPU (see the module's docstring)."""
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: (True, "CPU flags amx_bf16; pretended"))


def tiny_config(**changes) -> TrainConfig:
    base = TrainConfig(dataset="synthetic", synthetic_classes=5, imb=10, epochs=1, batch_size=16, num_workers=0,
                       method="concutmix", l_d_warm=0, topk=3, warmup_epochs=0, milestones=(), lr=0.05,
                       progress=False, max_steps_per_epoch=2, seed=1, device="cpu", arch="tiny", pipeline="classic")
    return base.replace(**changes)


def test_cpu_bf16_is_off_by_default():
    assert TrainConfig().cpu_bf16 is False


@pytest.mark.parametrize(("flags", "native"), [({"avx2", "avx512f"}, False), ({"avx512f", "avx512_bf16"}, True),
                                               ({"amx_tile", "amx_bf16"}, True), ({"asimd", "bf16"}, True),
                                               (set(), False)])
def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch, flags, native):
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    assert precision.cpu_bf16_support()[0] is native


def test_bf16_on_a_cpu_without_it_is_refused_in_one_sentence_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "fma"})
    capability = torch.backends.cpu.get_cpu_capability()
    with pytest.raises(ConfigError) as raised:
        fit(tiny_config(cpu_bf16=True), tmp_path / "run")
    assert str(raised.value) == (
        f"cpu_bf16=True is not accepted on this CPU; it has no native bf16 (no avx512_bf16, amx_bf16 or bf16 CPU "
        f"flag; torch CPU capability {capability}), where bf16 autocast is slower than fp32; cpu_bf16 must be "
        "false here")
    assert not (tmp_path / "run").exists()


def test_cpu_bf16_does_not_apply_on_cuda(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: set())
    precision.check_cpu_bf16(tiny_config(cpu_bf16=True), torch.device("cuda"))  # amp decides there: no refusal


def one_step(config: TrainConfig) -> tuple[float, torch.Tensor, torch.dtype]:
    """Return (the mean loss, the flattened gradients, the encoder's output dtype) of one concutmix step from a
    fixed model and batch."""
    torch.manual_seed(0)
    train, _ = build_datasets(config)
    model = build_run_model(config, len(train.class_counts)).train()
    seen = {}

    def record_dtype(module, inputs, output):
        seen["dtype"] = output.dtype

    model.encoder.register_forward_hook(record_dtype)
    optimizer = build_optimizer(model, config)
    batch = next(iter(build_train_pipeline(train, config, torch.device("cpu")).batches(0)))
    counts = torch.tensor(train.class_counts, dtype=torch.float32)
    sums = train_step(model, optimizer, batch, config, 1, counts, np.random.default_rng(0))
    gradient = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return float(sums[LOSS] / sums[COUNT]), gradient, seen["dtype"]


def test_a_bf16_step_runs_in_bf16_and_stays_close_to_the_fp32_step():
    config = tiny_config(cutmix_prob=1.0)
    fp32_loss, fp32_gradient, fp32_dtype = one_step(config)
    bf16_loss, bf16_gradient, bf16_dtype = one_step(config.replace(cpu_bf16=True))
    assert (fp32_dtype, bf16_dtype) == (torch.float32, torch.bfloat16)
    # the bounds of the CUDA amp check (tests/test_gpu.py): bf16 keeps 8 significant bits, products accumulate
    # in fp32 and the losses are computed from fp32 logits, so the loss moves well under 1%; single gradient
    # entries scatter but the direction stays
    assert bf16_loss == pytest.approx(fp32_loss, rel=1e-2)
    assert torch.nn.functional.cosine_similarity(fp32_gradient, bf16_gradient, dim=0) > 0.97


def test_evaluation_stays_fp32_under_cpu_bf16():
    config = tiny_config()
    train, test = build_datasets(config)
    model = build_run_model(config, len(train.class_counts)).eval()
    loader = build_test_loader(test, config, torch.device("cpu"))
    fp32 = predict(model, loader, torch.device("cpu"), config)
    bf16 = predict(model, loader, torch.device("cpu"), config.replace(cpu_bf16=True))
    assert fp32.keys() == bf16.keys()
    for key in fp32:
        assert np.array_equal(np.asarray(fp32[key]), np.asarray(bf16[key])), key


def test_a_bf16_run_records_its_precision_in_the_header_and_the_run_folder(tmp_path, capsys, pretend_native):
    fit(tiny_config(cpu_bf16=True, progress=True), tmp_path / "run")
    header = capsys.readouterr().out
    assert "bf16 autocast on the CPU" in header
    segment = json.loads((tmp_path / "run" / "segments.jsonl").read_text().splitlines()[0])
    assert segment["cpu_bf16"] is True and segment["amp"] is False
    assert json.loads((tmp_path / "run" / "config.json").read_text())["cpu_bf16"] is True


def test_resuming_in_fp32_a_run_trained_in_bf16_says_so(tmp_path, capsys, pretend_native):
    fit(tiny_config(cpu_bf16=True), tmp_path / "run")
    fit(tiny_config(epochs=2, cpu_bf16=False, progress=True), tmp_path / "run", allow_more_epochs=True)
    assert "resumed with cpu_bf16=False where epoch 1 used cpu_bf16=True" in capsys.readouterr().out


@pytest.mark.skipif(not NATIVE, reason=f"this CPU has no native bf16 ({EVIDENCE})")
def test_bf16_trains_on_this_cpu(tmp_path):
    summary = fit(tiny_config(cpu_bf16=True, epochs=2), tmp_path / "run")
    assert summary["status"] == "completed"


@pytest.mark.parametrize("native", [False, True])
def test_bench_reports_fp32_and_bf16_side_by_side_or_why_not(monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: (native, "evidence"))
    config = tiny_config(pipeline="fast")
    train, _ = build_datasets(config)
    pipeline = build_train_pipeline(train, config, torch.device("cpu"))
    figures = compare_cpu_precision(pipeline, config, train.class_counts, warmup=1, rounds=1, min_seconds=0.0)
    if native:
        assert figures["train_cpu_fp32"] > 0 and figures["train_cpu_bf16"] > 0
        assert figures["cpu_bf16_speedup"] == figures["train_cpu_bf16"] / figures["train_cpu_fp32"]
    else:
        assert figures == {"cpu_bf16": "skipped: this CPU has no native bf16 (evidence)"}
