"""What a run prints: the header, the time estimate with its CPU advice, one line per epoch; from the text
functions, from a fake clock, and from real runs through the command line and papermill (synthetic, tiny)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from ccmix.train import report

REPO = Path(__file__).resolve().parents[1]
EPOCH_LINE = re.compile(
    r"epoch +(\d+)/(\d+)  lr \S+  loss [\d.]+.*  train top-1 [\d.]+  test top-1 ([\d.]+|-).*  [\d.]+ s  (left ~|done)"
)


# --------------------------------------------------------------------------- text


def test_device_is_named_by_gpu_model_or_cpu_cores():
    assert report.describe_device("cuda", gpu_name="NVIDIA H200") == "NVIDIA H200"
    assert report.describe_device("cpu", cpu_cores=2) == "CPU, 2 cores"
    assert report.describe_device("cpu", cpu_cores=1) == "CPU, 1 core"
    assert report.describe_device("cpu", cpu_cores=8, threads=4) == "CPU, 8 cores (4 torch threads)"
    assert report.cpu_core_count() >= 1


def test_precision_is_bf16_only_on_cuda_with_amp():
    assert report.precision_text("cuda", amp=True, channels_last=True).startswith("bf16 autocast")
    assert report.precision_text("cuda", amp=False, channels_last=False) == "fp32"
    assert report.precision_text("cpu", amp=True, channels_last=True).startswith("fp32")


@pytest.mark.parametrize("seconds, text", [
    (0.4, "0 s"), (42, "42 s"), (59.4, "59 s"), (60, "1 min"), (719, "12 min"), (3600, "1 h 00 min"),
    (3 * 3600 + 5 * 60, "3 h 05 min"), (86_400, "24 h 00 min"), (50 * 3600, "2 d 02 h"),
])
def test_durations_read_as_seconds_minutes_hours_or_days(seconds, text):
    assert report.format_duration(seconds) == text


def test_header_names_device_preset_published_top1_images_steps_and_precision():
    header = report.run_header(
        device="CPU, 2 cores", preset=report.preset_text("cifar100_imb100", 53.16), method="concutmix",
        arch="resnet32", dataset="cifar100", imb=100, epochs=200, start_epoch=0, train_images=10847,
        test_images=10000, steps_per_epoch=43, batch_size=256, precision="fp32", out_dir="runs/a",
    )
    assert "device     CPU, 2 cores" in header
    assert "cifar100_imb100 (published top-1 53.16%)" in header
    assert "10847 training images, 10000 test images" in header
    assert "43 per epoch of batch 256" in header
    assert "precision  fp32" in header
    assert "200 epochs" in header and "run folder runs/a" in header
    assert header.endswith("estimate   follows after the first training steps")
    resumed = report.run_header(
        device="NVIDIA H200", preset=report.preset_text("cifar10_imb100", None, changed=True), method="la",
        arch="resnet32", dataset="imagenet_lt", imb=None, epochs=10, start_epoch=4, train_images=1, test_images=1,
        steps_per_epoch=1, batch_size=1, precision="fp32", world_size=4,
    )
    assert "x 4 processes" in resumed and "epochs 5-10 of 10 (resumed)" in resumed
    assert "changed: its published top-1 does not apply" in resumed
    assert "imb" not in resumed.split("data")[1].splitlines()[0]
    assert report.preset_text(None, None).startswith("none")


def test_epoch_line_gives_losses_top1_groups_seconds_and_time_left():
    record = {"epoch": 3, "lr": 0.09, "loss": 4.51234, "loss_ce": 4.2, "loss_bcl": 5.1, "train_top1": 12.345,
              "top1": 15.4211, "many": 30.12, "medium": 10.0, "few": None, "seconds": 412.34}
    line = report.epoch_line(record, epochs=200, seconds_left=197 * 412.34)
    assert line.startswith("epoch   3/200  lr 0.09  loss 4.5123 (ce 4.2000, bcl 5.1000)")
    assert "train top-1 12.35" in line
    assert "test top-1 15.42 (many/medium/few 30.1 / 10.0 / -)" in line
    assert "412.3 s" in line and line.endswith("left ~22 h 34 min")
    assert EPOCH_LINE.search(line)
    unevaluated = report.epoch_line(dict(record, top1=None, loss_bcl=None, epoch=200), epochs=200, seconds_left=0)
    assert "test top-1 - (not evaluated this epoch)" in unevaluated and "bcl" not in unevaluated
    assert unevaluated.endswith("done")


def test_cpu_estimate_over_an_hour_says_so_and_shows_a_quick_look():
    # 9.4 s per step x 43 steps x 200 epochs: about 22 h, as a 2-core CPU takes for the cifar100 preset
    message = report.estimate_message(seconds_per_step=9.4, seconds_per_epoch=None, steps_per_epoch=43,
                                      epochs_left=200, epochs=200, device_type="cpu", device="CPU, 2 cores")
    assert message.startswith("estimate   about 22 h 27 min for the 200 epochs (9.40 s per step x 43 steps")
    assert "no CUDA device: this run will take about 22 h 27 min" in message
    assert "8 fit in about an hour (papermill -p epochs 8; python -m ccmix train --set epochs=8)" in message
    assert "-p dataset synthetic" in message and "device=cuda" in message
    assert report.epochs_within(3600, seconds_per_epoch=9.4 * 43) == 8


def test_short_or_gpu_estimates_carry_no_advice():
    short = report.estimate_message(seconds_per_step=0.5, seconds_per_epoch=None, steps_per_epoch=10, epochs_left=5,
                                    epochs=10, device_type="cpu", device="CPU, 2 cores")
    assert short == ("estimate   about 25 s for the 5 epochs left of 10 "
                     "(0.50 s per step x 10 steps, evaluation not included) on CPU, 2 cores")
    long_gpu = report.estimate_message(seconds_per_step=None, seconds_per_epoch=600, steps_per_epoch=10,
                                       epochs_left=200, epochs=200, device_type="cuda", device="NVIDIA H200")
    assert "about 33 h 20 min" in long_gpu and "evaluation included" in long_gpu and "note" not in long_gpu
    with pytest.raises(ValueError, match="seconds_per_step or seconds_per_epoch"):
        report.estimate_message(seconds_per_step=None, seconds_per_epoch=None, steps_per_epoch=1, epochs_left=1,
                                epochs=1, device_type="cpu", device="CPU")


# --------------------------------------------------------------------------- the reporter, on a fake clock


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_reporter_estimates_once_from_the_timed_steps_after_warm_up():
    clock, written, syncs = FakeClock(), [], []
    reporter = report.RunReporter(write=written.append, device_type="cpu", device="CPU, 2 cores", epochs=200,
                                  start_epoch=0, steps_per_epoch=43, synchronize=lambda: syncs.append(1), clock=clock)
    step_seconds = [3.0, 0.9, 0.95, 0.95, 0.96, 5.0, 5.0]  # the first is warm-up; the last two come too late
    for seconds in step_seconds:
        clock.now += seconds
        reporter.step_done()
    assert len(written) == 1 and "0.94 s per step x 43 steps" in written[0]
    assert "about 2 h 15 min for the 200 epochs" in written[0] and "no CUDA device" in written[0]
    assert len(syncs) == report.WARMUP_STEPS + report.TIMED_STEPS  # no waiting on the device after timing
    reporter.epoch_done({"epoch": 1, "lr": 0.03, "loss": 5.0, "loss_ce": 4.0, "loss_bcl": 5.5, "train_top1": 1.0,
                         "top1": 2.0, "many": 4.0, "medium": 1.0, "few": 0.0, "seconds": 400.0})
    reporter.epoch_done({"epoch": 2, "lr": 0.06, "loss": 4.0, "loss_ce": 3.0, "loss_bcl": 5.0, "train_top1": 2.0,
                         "top1": None, "many": None, "medium": None, "few": None, "seconds": 200.0})
    assert len(written) == 3
    assert written[1].startswith("epoch   1/200") and written[1].endswith(f"left ~{report.format_duration(199 * 400)}")
    assert written[2].endswith(f"left ~{report.format_duration(198 * 300)}")  # mean of the recent epochs


def test_reporter_estimates_after_fewer_steps_when_they_are_slow():
    clock, written, syncs = FakeClock(), [], []
    reporter = report.RunReporter(write=written.append, device_type="cpu", device="CPU, 2 cores", epochs=200,
                                  start_epoch=0, steps_per_epoch=43, synchronize=lambda: syncs.append(1), clock=clock)
    for seconds in (30.0, 9.0):  # warm-up, then one timed step: not yet
        clock.now += seconds
        reporter.step_done()
    assert written == []
    clock.now += 11.0  # two timed steps, 20 s: enough
    reporter.step_done()
    assert len(written) == 1 and "10.00 s per step x 43 steps" in written[0]
    clock.now += 10.0
    reporter.step_done()
    assert len(written) == 1 and len(syncs) == 3


def test_reporter_estimates_from_the_first_epoch_when_it_has_too_few_steps():
    written = []
    reporter = report.RunReporter(write=written.append, device_type="cpu", device="CPU, 2 cores", epochs=3,
                                  start_epoch=0, steps_per_epoch=2, clock=FakeClock())
    reporter.step_done()
    reporter.step_done()
    record = {"epoch": 1, "lr": 0.1, "loss": 1.0, "loss_ce": 1.0, "loss_bcl": None, "train_top1": 50.0,
              "top1": 40.0, "many": 40.0, "medium": None, "few": None, "seconds": 12.0}
    reporter.epoch_done(record)
    assert written[0] == ("estimate   about 24 s for the 2 epochs left of 3 (12.0 s per epoch, evaluation included) "
                          "on CPU, 2 cores")
    assert written[1].startswith("epoch 1/3") and written[1].endswith("left ~24 s")
    reporter.epoch_done(dict(record, epoch=2))
    assert len(written) == 3  # the estimate is written once


# --------------------------------------------------------------------------- real runs


TINY = ["--set", "dataset=synthetic", "--set", "batch_size=16", "--set", "num_workers=0",
        "--set", "max_steps_per_epoch=2", "--set", "epochs=2"]


def assert_run_lines(text: str, epochs: int, preset: str) -> None:
    assert "device     CPU, " in text, text
    assert f"preset     {preset}" in text, text
    assert re.search(r"data       synthetic imb 100: \d+ training images, \d+ test images", text), text
    assert "steps      2 per epoch of batch 16" in text and "precision  fp32" in text
    assert re.search(r"estimate   about .* for the \d epochs", text), text
    epochs_seen = [int(match.group(1)) for match in EPOCH_LINE.finditer(text)]
    assert epochs_seen == list(range(1, epochs + 1)), text


@pytest.mark.integration
def test_command_line_prints_the_header_estimate_and_one_line_per_epoch(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ccmix", "train", "--preset", "cifar10_imb100", *TINY,
                             "--out", str(tmp_path / "run")], capture_output=True, text=True, check=True, cwd=REPO)
    assert_run_lines(result.stdout, epochs=2, preset="cifar10_imb100, changed: its published top-1 does not apply")
    assert result.stdout.index("device ") < result.stdout.index("estimate ") < result.stdout.index("epoch 1/2")
    assert json.loads(result.stdout.strip().splitlines()[-1])["status"] == "completed"


@pytest.mark.integration
def test_papermill_log_output_and_saved_notebook_show_the_lines(tmp_path):
    saved = tmp_path / "train.ipynb"
    result = subprocess.run(
        [sys.executable, "-m", "papermill", "--kernel", "python3", "--log-output", "--no-progress-bar",
         str(REPO / "notebooks" / "train.ipynb"), str(saved), "-p", "dataset", "synthetic", "-p", "epochs", "2",
         "-p", "out_dir", str(tmp_path / "run"), "-p", "figures_dir", str(tmp_path / "figures"),
         "-y", "overrides: {batch_size: 16, num_workers: 0, max_steps_per_epoch: 2}"],
        capture_output=True, text=True, check=True, cwd=REPO,
    )
    # the notebook starts synthetic from a preset's recipe but names no preset: no published number applies
    assert_run_lines(result.stdout + result.stderr, epochs=2, preset="none (no published top-1 to compare with)")
    nb = nbformat.read(saved, as_version=4)
    streams = "".join(output.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                      for output in cell.get("outputs", []) if output.output_type == "stream")
    assert_run_lines(streams, epochs=2, preset="none (no published top-1 to compare with)")
