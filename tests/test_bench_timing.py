"""The bench's measuring: rounds of at least a minimum time, best of them; the machine's load; the fast pipeline's
operators and host-to-device copies per step, as ``count_step_launches`` counts them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ccmix.config.fields import TrainConfig
from ccmix.data.datasets import ArrayImages
from ccmix.data.pipelines.build import build_train_pipeline
from ccmix.data.pipelines.launch_count import count_step_launches
from ccmix.experiments.bench import best_rate, machine_load, step_launches

CPU = torch.device("cpu")


class FakeClock:
    """``time.perf_counter`` that moves only when a step says how long it took."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    import ccmix.experiments.bench as bench

    fake = FakeClock()
    monkeypatch.setattr(bench, "time", fake)
    return fake


def test_best_rate_times_each_round_for_the_minimum_and_keeps_the_best(clock):
    durations = iter([0.3] * 4 + [0.5] * 2 + [0.25] * 4)  # seconds per step: rounds of 4, 2 and 4 steps

    def step() -> int:
        clock.now += next(durations)
        return 10

    result = best_rate(step, CPU, rounds=3, min_seconds=1.0)
    assert result["steps"] == [4, 2, 4]
    assert result["rounds"] == pytest.approx([40 / 1.2, 20 / 1.0, 40 / 1.0])
    assert result["samples_per_second"] == pytest.approx(40.0)


def test_a_round_disturbed_by_a_busy_moment_does_not_lower_the_figure(clock):
    durations = iter([3.0] + [0.125] * 16)  # the first step waited 3 s for a CPU (1/8 s: exact in binary)

    def step() -> int:
        clock.now += next(durations)
        return 1

    result = best_rate(step, CPU, rounds=3, min_seconds=1.0)
    assert result["steps"] == [1, 8, 8]
    assert result["samples_per_second"] == pytest.approx(8.0) and result["rounds"][0] == pytest.approx(1 / 3)


def test_machine_load_names_the_cpus_and_three_load_averages():
    load = machine_load()
    assert load["cpus"] >= 1
    if hasattr(__import__("os"), "getloadavg"):
        assert len(load["load"]) == 3 and all(value >= 0 for value in load["load"])


@pytest.fixture(scope="module")
def train_set():
    images = np.random.default_rng(0).integers(0, 256, size=(40, 32, 32, 3), dtype=np.uint8)
    return ArrayImages(images, [i % 4 for i in range(40)], [f"c{c}" for c in range(4)])


@pytest.mark.parametrize("device", ["cpu", "meta"])  # meta: a device other than the host, so copies are counted
def test_step_launches_are_the_same_on_two_calls_and_those_of_count_step_launches(train_set, device):
    config = TrainConfig(dataset="synthetic", synthetic_classes=4, method="concutmix", batch_size=8, pipeline="fast",
                         progress=False, seed=0)
    first = step_launches(build_train_pipeline(train_set, config, device), 3)
    second = step_launches(build_train_pipeline(train_set, config, device), 3)
    direct = count_step_launches(build_train_pipeline(train_set, config, device), 3)
    for key in ("ops_per_step", "copies_per_step"):
        assert first[key] == second[key] == direct[key], key
        assert len(first[key]) == 3
    assert min(first["ops_per_step"]) > 0
    if device == "cpu":  # nothing is copied from the host to itself
        assert first["copies_per_step"] == [0, 0, 0]
    else:
        assert min(first["copies_per_step"]) > 0
