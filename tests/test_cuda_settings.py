"""CUDA numerics and CUDA graphs from the config, checked on the CPU: the torch.backends flags ``apply_numerics``
sets for a device of type cuda, the compile mode the step asks for, and where both are recorded."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ccmix.config.fields import TrainConfig, field_role
from ccmix.method.collectives import DistContext
from ccmix.method.step import loss_parts, step_loss_function
from ccmix.train.numerics import CUBLAS_WORKSPACE, apply_numerics, request_deterministic_cublas
from ccmix.train.report import precision_text
from ccmix.train.segments import NUMERIC_FACTS, OTHER_FACTS, runtime_facts

FAKE_CUDA = SimpleNamespace(type="cuda")  # only its type is read: nothing runs on it
CPU = torch.device("cpu")


@pytest.fixture
def saved_numerics(monkeypatch):
    """Restore every switch ``apply_numerics`` may touch, and start without CUBLAS_WORKSPACE_CONFIG."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    yield
    cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = saved[:4]
    torch.use_deterministic_algorithms(saved[4], warn_only=saved[5])


def flags() -> dict:
    return {"cudnn.deterministic": torch.backends.cudnn.deterministic, "cudnn.benchmark": torch.backends.cudnn.benchmark,
            "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "warn_only": torch.is_deterministic_algorithms_warn_only_enabled()}


def test_deterministic_on_cuda_sets_cudnn_cublas_and_deterministic_algorithms(saved_numerics):
    import os

    torch.backends.cudnn.benchmark = True
    apply_numerics(TrainConfig(deterministic=True, tf32=False), FAKE_CUDA)
    assert flags() == {"cudnn.deterministic": True, "cudnn.benchmark": False, "cudnn.allow_tf32": False,
                       "matmul.allow_tf32": False, "deterministic_algorithms": True, "warn_only": True}
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE == ":4096:8"


def test_not_deterministic_on_cuda_lets_cudnn_benchmark_and_tf32_is_set_explicitly(saved_numerics):
    import os

    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    apply_numerics(TrainConfig(deterministic=False, tf32=True), FAKE_CUDA)
    assert flags() == {"cudnn.deterministic": False, "cudnn.benchmark": True, "cudnn.allow_tf32": True,
                       "matmul.allow_tf32": True, "deterministic_algorithms": False, "warn_only": True}
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ


def test_on_the_cpu_only_deterministic_algorithms_change(saved_numerics):
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = True, False
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = False, True
    before = flags()
    apply_numerics(TrainConfig(deterministic=True, tf32=True), CPU)
    assert flags() == {**before, "deterministic_algorithms": True, "warn_only": True}


def test_a_cublas_workspace_already_set_is_kept_and_a_late_one_warns(saved_numerics, monkeypatch):
    import os

    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    request_deterministic_cublas(True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.warns(UserWarning, match="CUBLAS_WORKSPACE_CONFIG was not set before CUDA started"):
        request_deterministic_cublas(True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE


def test_tf32_and_cuda_graphs_are_runtime_fields_on_by_default():
    config = TrainConfig()
    assert config.tf32 is True and config.cuda_graphs is True
    assert field_role("tf32") == field_role("cuda_graphs") == "runtime"


def compile_modes(monkeypatch, configs, device, context=None) -> list:
    """Return the ``mode`` that ``step_loss_function`` passes to torch.compile for each config."""
    modes = []

    def recording_compile(function, **kwargs):
        assert function is loss_parts
        modes.append(kwargs.get("mode"))
        return function

    monkeypatch.setattr(torch, "compile", recording_compile)
    for config in configs:
        step_loss_function(config, device, context)
    return modes


def test_cuda_graphs_chooses_the_compile_mode_on_one_cuda_device(monkeypatch):
    cuda = torch.device("cuda")  # only named: nothing runs on it
    configs = [TrainConfig(compile=True, cuda_graphs=True), TrainConfig(compile=True, cuda_graphs=False),
               TrainConfig(compile=True, cuda_graphs=True, grad_accum_steps=2)]
    assert compile_modes(monkeypatch, configs, cuda) == ["reduce-overhead", None, None]
    # the CPU and several processes: the default mode, whatever cuda_graphs says
    assert compile_modes(monkeypatch, configs[:1], CPU) == [None]
    assert compile_modes(monkeypatch, configs[:1], cuda, DistContext(world_size=2, device=cuda)) == [None]
    assert step_loss_function(TrainConfig(compile=False, cuda_graphs=True), cuda) is loss_parts


def test_runtime_facts_record_tf32_and_cuda_graphs_as_they_apply(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    assert "tf32" in NUMERIC_FACTS and "cuda_graphs" in OTHER_FACTS
    cuda = torch.device("cuda")
    on = runtime_facts(TrainConfig(compile=True), cuda, 1, "fast", False)
    assert on["tf32"] is True and on["cuda_graphs"] is True
    off = runtime_facts(TrainConfig(compile=True, tf32=False, cuda_graphs=False), cuda, 1, "fast", False)
    assert off["tf32"] is False and off["cuda_graphs"] is False
    assert runtime_facts(TrainConfig(compile=False), cuda, 1, "fast", False)["cuda_graphs"] is False
    assert runtime_facts(TrainConfig(compile=True), cuda, 2, "fast", False)["cuda_graphs"] is False
    cpu = runtime_facts(TrainConfig(compile=True), CPU, 1, "fast", False)
    assert cpu["tf32"] is False and cpu["cuda_graphs"] is False


def test_the_run_header_says_whether_tf32_is_on_for_cuda():
    assert precision_text("cuda", amp=True, channels_last=False, tf32=True).endswith(", TF32 convolutions and matmuls")
    assert precision_text("cuda", amp=False, channels_last=False, tf32=False) == "fp32, no TF32"
    assert precision_text("cpu", amp=False, channels_last=False, tf32=True) == "fp32"
