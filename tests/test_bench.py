"""The bench command: one JSON line with both pipelines' throughput, their ratios, augmentation op counts, the fast
pipeline's operators and copies per step and the machine's load; the fast pipeline stays ahead under a busy CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration  # runs the bench in a subprocess


QUICK_CPU_BENCH = [sys.executable, "-m", "ccmix", "bench", "--quick", "--device", "cpu"]


def quick_cpu_bench(env: dict | None = None) -> dict:
    """Return the figures of ``bench --quick --device cpu``, checking that it prints one JSON line and nothing else."""
    result = subprocess.run(QUICK_CPU_BENCH, capture_output=True, text=True, check=True, env=env)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    assert result.stderr == ""  # no profiler log lines around the JSON
    return json.loads(lines[0])


def test_quick_bench_prints_one_json_line_with_every_figure():
    figures = quick_cpu_bench()
    for key in ("data_classic", "data_fast", "train_classic", "train_fast"):
        assert figures[key] > 0, key
    assert abs(figures["data_ratio"] - figures["data_fast"] / figures["data_classic"]) < 0.02
    assert abs(figures["train_ratio"] - figures["train_fast"] / figures["train_classic"]) < 0.02
    assert figures["device"].startswith("cpu")
    # best of 3 rounds of at least 1 s each, and the load the machine had around them
    assert figures["rounds"] == 3 and figures["min_seconds"] >= 1.0 and len(figures["data_fast_rounds"]) == 3
    assert figures["data_fast"] == max(figures["data_fast_rounds"])
    assert figures["cpus"] >= 1 and len(figures["load_before"]) == len(figures["load_after"]) == 3
    assert figures["fast_batch_threads"] == 1
    # the fast pipeline's operators and host-to-device copies per step (none on the CPU)
    assert len(figures["fast_ops_per_step"]) == len(figures["fast_copies_per_step"]) == 3
    assert min(figures["fast_ops_per_step"]) > 0 and figures["fast_copies_per_step"] == [0, 0, 0]
    # no per-sample Python loop: the op count does not grow with the batch (at most 25 sub-policy groups)
    assert figures["ops_per_batch_64"] == figures["ops_per_batch_512"]
    # fp32 and bf16 CPU steps side by side, or the reason they were skipped (no native bf16)
    if figures["cpu_bf16"].startswith("skipped: this CPU has no native bf16"):
        assert "train_cpu_bf16" not in figures
    else:
        assert figures["train_cpu_fp32"] > 0 and figures["train_cpu_bf16"] > 0


def test_quick_bench_keeps_the_fast_pipeline_ahead_while_another_process_keeps_a_cpu_busy():
    """One CPU-bound competitor must not bring the fast pipeline (one intra-op thread a batch) near the classic.

    The bench gets torch's own thread count (every core), not a test runner's OMP_NUM_THREADS=1.
    """
    env = {name: value for name, value in os.environ.items() if name != "OMP_NUM_THREADS"}
    competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        figures = quick_cpu_bench(env)
        competing_throughout = competitor.poll() is None
    finally:
        competitor.kill()
        competitor.wait()
    assert competing_throughout
    assert figures["data_ratio"] >= 1.5, (figures, os.getloadavg())


@pytest.mark.parametrize("num_images", [24, 12])  # 12 at batch 8: one step an epoch, the counts cross epochs
def test_imagenet_bench_reports_both_paths_and_the_fast_one_over_the_classic(num_images):
    from ccmix.experiments.bench_imagenet import run_imagenet_bench

    figures = run_imagenet_bench(num_images=num_images, batch_size=8, device="cpu", num_workers=1)
    assert figures["recipe"] == "imagenet" and figures["train_images"] == num_images and figures["batch_size"] == 8
    forms = ("classic", "fast", "fast_worker_built")
    for form in forms:
        assert figures[f"pairs_per_second_{form}"] > 0, form
        assert figures[f"views_per_second_{form}"] == pytest.approx(4 * figures[f"pairs_per_second_{form}"], abs=0.05)
    assert figures["fastest"] in forms[1:]
    ratio = figures[f"pairs_per_second_{figures['fastest']}"] / figures["pairs_per_second_classic"]
    assert figures["fast_ratio"] == pytest.approx(ratio, abs=0.01)
    assert figures["fast_copies_per_step"] == [0, 0] and min(figures["fast_ops_per_step"]) > 0
