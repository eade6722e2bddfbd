"""TensorBoard and W&B: a run's event files read back to metrics.jsonl's numbers, once per step and epoch.

Runs train in this process on synthetic data with the tiny encoder (two steps an epoch); the events are
read back with TensorBoard's own reader (``EventAccumulator``), which applies ``purge_step`` the way
the TensorBoard UI does.
"""

from __future__ import annotations

import json
import signal
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from run_helpers import helper_env, run_cli, start_cli, train_argv, wait_until
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from ccmix.config.fields import TrainConfig
from ccmix.config.rules import ConfigError
from ccmix.method.step import learning_rate
from ccmix.train import fit as engine
from ccmix.train import interrupt, loggers
from ccmix.train.fit import fit
from ccmix.train.interrupt import TrainingInterrupted

STEPS = 2  # steps an epoch of the tiny runs


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(**changes) -> TrainConfig:
    """Return a synthetic run of three epochs of two steps, logging every step, with a warm-up (the lr moves);
    its classes of 100, 56, 31, 17 and 10 images are many-, medium- and few-shot."""
    base = TrainConfig(dataset="synthetic", synthetic_classes=5, imb=10, epochs=3, batch_size=16, num_workers=0,
                       method="la", topk=3, warmup_epochs=2, milestones=(), lr=0.05, progress=False,
                       max_steps_per_epoch=STEPS, seed=1, device="cpu", arch="tiny", log_every=1, many_threshold=50)
    return base.replace(**changes)


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Return {tag: [(step, value), ...]} of every scalar in ``run_dir``'s event files, as TensorBoard reads them."""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_events_match_metrics(run_dir: Path, config: TrainConfig) -> dict:
    """Check every number of metrics.jsonl against its event, one value per epoch and step; return the scalars."""
    scalars = read_scalars(run_dir)
    records = metrics(run_dir)
    assert [r["epoch"] for r in records] == list(range(1, config.epochs + 1))
    numeric = {name for record in records for name, value in record.items()
               if name != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool)}
    assert {"loss", "lr", "train_top1", "top1", "many", "medium", "few", "samples_per_second"} <= numeric
    for name in numeric:
        expected = [(r["epoch"] * STEPS, np.float32(r[name])) for r in records if r.get(name) is not None]
        assert scalars[f"epoch/{name}"] == expected, name  # events hold float32: equal after that rounding
    best = [np.float32(max(r["top1"] for r in records[:epoch])) for epoch in range(1, config.epochs + 1)]
    assert scalars["epoch/best_top1"] == list(zip(range(STEPS, (config.epochs + 1) * STEPS, STEPS), best))
    every_step = list(range(1, config.epochs * STEPS + 1))
    assert [step for step, _ in scalars["step/loss"]] == every_step
    assert scalars["step/lr"] == [(s, np.float32(learning_rate((s - 1) // STEPS, config))) for s in every_step]
    # log_every=1: the step losses of an epoch average to its loss (equal batches)
    for record in records:
        steps = scalars["step/loss"][(record["epoch"] - 1) * STEPS:record["epoch"] * STEPS]
        assert np.mean([value for _, value in steps]) == pytest.approx(record["loss"], rel=1e-5)
    return scalars


def test_a_run_writes_events_that_read_back_as_its_metrics(tmp_path):
    config = tiny_config()
    fit(config, tmp_path / "run")
    assert_events_match_metrics(tmp_path / "run", config)
    events = EventAccumulator(str(tmp_path / "run"))
    events.Reload()
    config_text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert json.loads(config_text.strip("`\n")) == config.to_dict()
    started = HParamsPluginData.FromString(events.PluginTagToContent("hparams")["_hparams_/session_start_info"])
    hparams = started.session_start_info.hparams
    assert (hparams["lr"].number_value, hparams["method"].string_value) == (config.lr, config.method)
    assert json.loads(hparams["milestones"].string_value) == list(config.milestones)


def test_logging_less_often_logs_at_the_interval_and_at_each_epochs_end(tmp_path):
    config = tiny_config(epochs=2, max_steps_per_epoch=3, log_every=2)
    fit(config, tmp_path / "run")
    scalars = read_scalars(tmp_path / "run")
    assert [step for step, _ in scalars["step/loss"]] == [2, 3, 5, 6]  # steps 2 and 3 of each 3-step epoch
    assert [step for step, _ in scalars["epoch/loss"]] == [3, 6]


def test_a_run_stopped_mid_epoch_and_resumed_has_one_value_per_step_and_epoch(tmp_path, monkeypatch):
    """The stopped start logged step 3 (epoch 2) after the checkpoint of epoch 1; the resumed start trains it
    again, and TensorBoard shows only the resumed start's value there."""
    real_train_one_epoch = engine.train_one_epoch
    stop_after = {"step": 3}
    done = {"steps": 0}

    def train_one_epoch(*args, **kwargs):
        def on_step():
            done["steps"] += 1
            if done["steps"] == stop_after["step"]:
                interrupt.active().request(signal.SIGTERM)  # stops at the next step boundary, as SIGTERM does

        return real_train_one_epoch(*args, **{**kwargs, "on_step": on_step})

    monkeypatch.setattr(engine, "train_one_epoch", train_one_epoch)
    config, run_dir = tiny_config(), tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        fit(config, run_dir)
    assert [step for step, _ in read_scalars(run_dir)["step/loss"]] == [1, 2, 3]  # step 3: after the checkpoint
    stop_after["step"] = None
    fit(config, run_dir)
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 2
    assert_events_match_metrics(run_dir, config)


def test_only_process_zero_writes(tmp_path):
    config = tiny_config()
    other = loggers.open_run_log(config, tmp_path, is_main=False, steps_per_epoch=STEPS, epochs_done=0)
    other.step_read(0, 1, {"loss": 1.0, "top1": 0.0, "count": 8.0})
    other.epoch_done({"epoch": 1, "loss": 1.0, "top1": 10.0}, {"top1": 10.0})
    other.close()
    assert list(tmp_path.iterdir()) == []
    main = loggers.open_run_log(config, tmp_path, is_main=True, steps_per_epoch=STEPS, epochs_done=0)
    main.close()
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1


def test_logger_none_writes_no_event_file(tmp_path):
    fit(tiny_config(epochs=1, logger="none"), tmp_path / "run")
    assert (tmp_path / "run" / "metrics.jsonl").is_file()
    assert list((tmp_path / "run").glob("events.out.tfevents.*")) == []


def test_step_loss_is_the_mean_since_the_previous_read():
    logged = []

    class Recorder(loggers.NoLogger):
        def log_step(self, step, scalars):
            logged.append((step, scalars["step/loss"]))

    log = loggers.RunLog(Recorder(), tiny_config(), steps_per_epoch=10)
    log.step_read(0, 2, {"loss": 3.0, "count": 16.0})  # two batches of 8, losses summing to 48
    log.step_read(0, 4, {"loss": 2.0, "count": 32.0})  # 64 in all: the last two batches sum to 16
    log.step_read(1, 2, {"loss": 5.0, "count": 16.0})  # a new epoch starts its own running mean
    assert logged == [(2, 3.0), (4, 1.0), (12, 5.0)]


# --------------------------------------------------------------------------- W&B


def test_wandb_without_the_package_is_one_sentence_before_data_loads(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # a missing package: importing it raises ImportError

    def no_data(*args, **kwargs):
        raise AssertionError("data was read before the logger was checked")

    monkeypatch.setattr(engine, "build_datasets", no_data)
    with pytest.raises(ConfigError) as raised:
        fit(tiny_config(logger="wandb"), tmp_path / "run")
    message = str(raised.value)
    assert message == ("logger='wandb' needs the wandb package, which is not installed; install it with "
                       "`pip install ccmix[wandb]`, or use logger=tensorboard or none")
    assert not (tmp_path / "run").exists()


def test_wandb_gets_the_same_scalars_offline(tmp_path, monkeypatch):
    """A stand-in wandb module records what the run gives W&B: offline mode, the config, the scalars."""
    calls = {"log": []}

    class Run:
        def define_metric(self, *args, **kwargs):
            pass

        def log(self, values):
            calls["log"].append(values)

        def finish(self):
            calls["finished"] = True

    def init(**kwargs):
        calls["init"] = kwargs
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    config = tiny_config(epochs=2, logger="wandb")
    fit(config, tmp_path / "run")
    assert calls["init"]["mode"] == "offline" and calls["init"]["config"] == config.to_dict()
    assert calls["finished"]
    epochs = [values for values in calls["log"] if "epoch/top1" in values]
    assert [values["epoch/top1"] for values in epochs] == [r["top1"] for r in metrics(tmp_path / "run")]
    assert [values["global_step"] for values in calls["log"] if "step/loss" in values] == [1, 2, 3, 4]
    assert list((tmp_path / "run").glob("events.out.tfevents.*")) == []


# --------------------------------------------------------------------------- kill -9 and resume


@pytest.mark.integration
@pytest.mark.skipif(not hasattr(signal, "SIGKILL") or not Path("/proc/self/fd").is_dir(),
                    reason="needs SIGKILL and /proc (slow_save_sitecustomize.py finds file names there)")
def test_sigkill_while_saving_epoch_three_then_resume_leaves_one_value_per_step_and_epoch(tmp_path, started):
    """Epoch 3's events are on disk before its checkpoint; killed while that checkpoint is half written, the
    run resumes from epoch 2 and trains epoch 3 again: TensorBoard shows each step and epoch once."""
    run_dir, marker, log = tmp_path / "run", tmp_path / "saving", tmp_path / "run1.log"
    argv = train_argv(run_dir, "epochs=4", "log_every=1", "warmup_epochs=2", "many_threshold=50")
    env = helper_env(tmp_path, "slow_save_sitecustomize.py", SLOW_SAVE_MATCH="last.pt", SLOW_SAVE_NTH="3",
                     SLOW_SAVE_MARKER=str(marker))
    run = start_cli(argv, env, log)
    started.append(run)
    wait_until(marker.exists, run, log)
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=60)
    assert [step for step, _ in read_scalars(run_dir)["epoch/loss"]] == [2, 4, 6]  # epoch 3 logged, not saved
    result = run_cli(argv)
    assert result.returncode == 0, result.stdout + result.stderr
    config = TrainConfig.from_dict({k: v for k, v in json.loads((run_dir / "config.json").read_text()).items()
                                    if k in TrainConfig.__dataclass_fields__})
    assert_events_match_metrics(run_dir, config)
