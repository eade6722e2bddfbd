"""The bench command: one JSON line with both pipelines' throughput, their ratios and augmentation op counts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration  # runs the bench in a subprocess


def test_quick_bench_prints_one_json_line_with_every_figure():
    result = subprocess.run([sys.executable, "-m", "ccmix", "bench", "--quick", "--device", "cpu"],
                            capture_output=True, text=True, check=True)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    assert result.stderr == ""  # no profiler log lines around the JSON
    figures = json.loads(lines[0])
    for key in ("data_classic", "data_fast", "train_classic", "train_fast"):
        assert figures[key] > 0, key
    assert abs(figures["data_ratio"] - figures["data_fast"] / figures["data_classic"]) < 0.02
    assert abs(figures["train_ratio"] - figures["train_fast"] / figures["train_classic"]) < 0.02
    assert figures["device"].startswith("cpu")
    # no per-sample Python loop: the op count does not grow with the batch (at most 25 sub-policy groups)
    assert figures["ops_per_batch_64"] == figures["ops_per_batch_512"]
    # fp32 and bf16 CPU steps side by side, or the reason they were skipped (no native bf16)
    if figures["cpu_bf16"].startswith("skipped: this CPU has no native bf16"):
        assert "train_cpu_bf16" not in figures
    else:
        assert figures["train_cpu_fp32"] > 0 and figures["train_cpu_bf16"] > 0
