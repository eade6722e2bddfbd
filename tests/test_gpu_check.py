"""The GPU check (benchmarks/gpu_check.py): it refuses bad input at once, before torch is imported; a failing stage
makes it exit non-zero and its JSON names the stage and why; TINY=1 passes end to end on the CPU.

The repository root the check looks at is set with GPU_CHECK_ROOT, so these tests do not depend on whether the
working tree holds data/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ccmix.config.presets import PUBLISHED_TOP1

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

import gpu_check  # noqa: E402
import gpu_check_stages  # noqa: E402
from gpu_check_figures import packed_figures, pytest_counts, run_figures  # noqa: E402

STAGES = list(gpu_check.BUDGETS)


def check_environment(tmp_path: Path, **extra: str) -> dict:
    """Return an environment for the check with the repository root at an empty ``tmp_path/repo``."""
    root = tmp_path / "repo"
    root.mkdir(exist_ok=True)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_") and k not in ("TINY", "OUT")}
    return environ | {"GPU_CHECK_ROOT": str(root), "OUT": str(tmp_path / "out")} | extra


def test_refuses_without_the_archive_in_one_sentence_before_importing_torch(tmp_path, monkeypatch, capsys):
    for name, value in check_environment(tmp_path).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("TINY", raising=False)
    monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` now raises ImportError
    status = gpu_check.main(["gpu_check.py"])
    error = capsys.readouterr().err
    assert status == 2
    assert error.count("\n") == 1 and error.rstrip().endswith(".")
    assert "cifar10-jpg.tar.gz" in error and "data/" in error
    assert not (tmp_path / "out").exists()  # nothing written


def test_data_in_the_repository_is_accepted_and_an_incomplete_tree_is_refused(tmp_path):
    environ = check_environment(tmp_path)
    root = Path(environ["GPU_CHECK_ROOT"])
    (root / "data").mkdir()
    (root / "data" / "cifar10-jpg.tar.gz").write_bytes(b"")  # the archive: extracted later, by the first stage
    assert gpu_check.read_settings(environ).root == root
    (root / "data" / "cifar10-jpg" / "train").mkdir(parents=True)  # a tree without test/
    with pytest.raises(gpu_check.Refused, match="has no train/ and test/"):
        gpu_check.read_settings(environ)
    (root / "data" / "cifar10-jpg" / "test").mkdir()
    (root / "data" / "cifar10-jpg.tar.gz").unlink()  # an extracted tree alone is enough
    assert gpu_check.read_settings(environ).root == root


def test_tiny_needs_no_data_and_the_plan_stays_within_its_total(tmp_path):
    tiny = gpu_check.read_settings(check_environment(tmp_path, TINY="1"))
    assert tiny.tiny and tiny.stages == tuple(STAGES)
    assert sum(gpu_check.BUDGETS.values()) <= gpu_check.PLAN_SECONDS
    over = sum(gpu_check.BUDGETS.values()) - gpu_check.BUDGETS["full-run"] + 190
    with pytest.raises(gpu_check.Refused, match=f"adds up to {over} s"):
        gpu_check.read_settings(check_environment(tmp_path, TINY="1", GPU_CHECK_BUDGETS="full-run=190"))
    with pytest.raises(gpu_check.Refused, match="'full_run' is not a stage"):
        gpu_check.read_settings(check_environment(tmp_path, TINY="1", GPU_CHECK_FAIL_STAGE="full_run"))


def test_pytest_counts_read_the_closing_summary():
    lines = ["tests/test_gpu.py ss", "SKIPPED [1] tests/test_gpu.py:9: needs a CUDA device",
             "3 passed, 2 skipped, 1 error, 34 deselected in 9.51s"]
    assert pytest_counts(lines) == {"passed": 3, "skipped": 2, "error": 1, "deselected": 34}
    assert pytest_counts(["no summary here"]) == {}


def write_run(folder: Path, epoch_seconds: list[float], rates: list[float], top1: list[float],
              status: str = "completed") -> Path:
    """Write the files of a run folder that the figures read: 2 steps of 32 pairs an epoch."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"batch_size": 32, "max_steps_per_epoch": 2}))
    (folder / "summary.json").write_text(json.dumps({"status": status, "train_images": 145}))
    lines = [json.dumps({"epoch": i + 1, "seconds": s, "samples_per_second": r, "top1": t})
             for i, (s, r, t) in enumerate(zip(epoch_seconds, rates, top1))]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_run_figures_extrapolate_from_the_epochs_after_the_first(tmp_path):
    run = write_run(tmp_path / "run", [10.0, 2.0, 2.0, 4.0], [16.0, 64.0, 64.0, 32.0], [20.0, 40.0, 35.0, 30.0])
    figures = run_figures(run, full_epochs=200, published_top1=86.07, wall_seconds=30.0)
    assert figures["epochs_completed"] == 4 and figures["samples_per_epoch"] == 64
    assert (figures["final_top1"], figures["best_top1"], figures["best_epoch"]) == (30.0, 40.0, 2)
    assert figures["train_samples_per_second"] == 64.0  # median of epochs 2-4: epoch 1 compiles
    # training takes 64 / rate seconds: evaluation is the rest, (6 + 1 + 1 + 2) / 4 on average
    assert figures["mean_eval_seconds_per_epoch"] == pytest.approx(2.5)
    # start-up 30 - 18 s outside the epochs, then 200 epochs of the median 2 s
    assert figures["projected_full_run_minutes"] == pytest.approx((12 + 200 * 2.0) / 60, abs=0.01)
    assert figures["final_minus_published"] == pytest.approx(30.0 - 86.07)


def test_packed_throughput_is_total_samples_over_one_shared_window(tmp_path):
    runs = {name: write_run(tmp_path / name, [4.0, 4.0], [32.0, 32.0], [10.0, 10.0]) for name in ("a", "b")}
    # run a trains from t=100 to t=108, run b from t=103 to t=111: one window of 11 s, not 8 + 8
    figures = packed_figures({"a": [104.0, 108.0], "b": [107.0, 111.0]}, runs)
    assert figures["samples"] == 2 * 2 * 64
    assert figures["window_seconds"] == pytest.approx(11.0)
    assert figures["samples_per_second"] == pytest.approx(256 / 11, abs=0.1)  # a sum of rates would say 32


def cuda_check(tmp_path: Path, outputs: list[gpu_check.Completed]) -> gpu_check.Check:
    """Return a full (not TINY) check on a CUDA machine whose commands return ``outputs`` in turn, run nothing."""
    settings = gpu_check.Settings(
        root=REPO_ROOT, out=tmp_path / "out", tiny=False, budgets=dict(gpu_check.BUDGETS), stages=tuple(STAGES),
        fail_stage=None, python=sys.executable, jobs=4)
    check = gpu_check.Check(settings)
    check.facts = {"cuda_available": True, "device_count": 1}
    answers = iter(outputs)
    check.command = lambda argv, seconds, watch=None, environ=None: next(answers)
    return check


def step_line(eager: float, compiled: float) -> str:
    """Return step_seconds.py's JSON line with these concutmix samples/s."""
    return json.dumps({"device": "a card", "batch_size": 256, "samples_per_second": {"concutmix": eager},
                       "compiled": {"samples_per_second": {"concutmix": compiled}}})


@pytest.mark.parametrize(("compiled", "status"), [(1200.0, "passed"), (1000.0, "failed"), (900.0, "failed")])
def test_on_cuda_the_compiled_step_must_be_faster_than_the_eager_one(tmp_path, compiled, status):
    check = cuda_check(tmp_path, [gpu_check.Completed(0, ["compiling", step_line(1000.0, compiled)], 30.0)])
    outcome = gpu_check_stages.step_throughput(check, 60.0)
    assert outcome.status == status
    assert outcome.figures["compiled_over_eager"] == pytest.approx(compiled / 1000.0)
    assert f"compiled/eager = {compiled / 1000.0:g}" in outcome.reason


def test_a_full_run_stopped_at_its_budget_is_marked_extrapolated(tmp_path):
    check = cuda_check(tmp_path, [gpu_check.Completed(None, ["stopping"], 100.0)])
    write_run(check.runs / "full-run", [10.0, 2.0, 2.0], [16.0, 64.0, 64.0], [20.0, 40.0, 35.0], "interrupted")
    outcome = gpu_check_stages.full_run(check, 100.0)
    assert outcome.status == "passed" and outcome.figures["extrapolated"] is True
    assert outcome.reason.startswith("extrapolated: 3 of 200 epochs")
    assert outcome.figures["projected_full_run_minutes"] == pytest.approx((86 + 200 * 2.0) / 60, abs=0.01)
    assert outcome.figures["published_top1"] == PUBLISHED_TOP1["cifar10_imb100"]


def test_a_full_run_stopped_before_its_first_epoch_is_out_of_budget(tmp_path):
    check = cuda_check(tmp_path, [gpu_check.Completed(None, ["compiling"], 100.0)])
    outcome = gpu_check_stages.full_run(check, 100.0)
    assert outcome.status == "skipped" and "out of budget" in outcome.reason


def run_check(tmp_path: Path, timeout: float, **extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    """Run benchmarks/gpu_check.py on the repository; return the process and its gpu_check.json."""
    environ = check_environment(tmp_path, GPU_CHECK_ROOT=str(REPO_ROOT), PYTHON=sys.executable, **extra)
    process = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "gpu_check.py")], env=environ,
                             capture_output=True, text=True, timeout=timeout)
    return process, json.loads((tmp_path / "out" / "gpu_check.json").read_text())


@pytest.mark.integration
def test_a_forced_stage_failure_exits_non_zero_and_the_json_names_the_stage(tmp_path):
    process, report = run_check(tmp_path, 120, TINY="1", GPU_CHECK_STAGES="environment,ddp",
                                GPU_CHECK_FAIL_STAGE="ddp")
    assert process.returncode == 1, process.stdout + process.stderr
    assert report["status"] == "failed" and "ddp" in report["failed_or_skipped"]
    stages = report["stages"]
    assert list(stages) == STAGES  # every stage is reported, in order
    assert stages["environment"]["status"] == "passed"
    assert stages["ddp"]["status"] == "failed"  # without the forcing it does not apply under TINY=1
    assert "GPU_CHECK_FAIL_STAGE" in stages["ddp"]["reason"] and "status 1" in stages["ddp"]["reason"]
    assert stages["full-run"]["status"] == "skipped" and "not selected" in stages["full-run"]["reason"]
    assert "gpu_check: ddp failed" in (tmp_path / "out" / "gpu_check.log").read_text()


@pytest.mark.integration
def test_tiny_check_passes_on_the_cpu_and_writes_one_json_and_one_log(tmp_path):
    process, report = run_check(tmp_path, 600, TINY="1")
    assert process.returncode == 0, process.stdout + process.stderr
    assert report["status"] == "passed" and report["stages_left"] == []
    assert list(report["stages"]) == STAGES
    for name, stage in report["stages"].items():
        assert stage["status"] in ("passed", "not-applicable"), (name, stage)
        assert stage["reason"] and 0 <= stage["seconds"] <= stage["budget_seconds"], (name, stage)
    stages = report["stages"]
    assert stages["environment"]["figures"]["torch"]
    assert stages["step-throughput"]["figures"]["compiled_samples_per_second"] > 0
    assert stages["step-throughput-deterministic"]["figures"]["deterministic"] is True
    assert stages["full-run"]["figures"]["epochs_completed"] == 1 and stages["full-run"]["status"] == "passed"
    assert stages["packed-runs"]["figures"]["runs_with_epochs"] == 4
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gpu_check.json", "gpu_check.log", "runs"]
