"""Where a run's scalars go besides metrics.jsonl: TensorBoard event files, W&B, or nowhere (``config.logger``).

Only process 0 logs. Every scalar is placed at the global optimizer step (``epoch * steps_per_epoch
+ step``, 1-based), the x-axis TensorBoard and W&B users expect:

- ``step/loss`` and ``step/lr`` at each read of the device the step loop makes anyway (every
  ``log_every`` steps and at each epoch's end): the mean training loss of process 0's pairs since
  the previous read, and the epoch's learning rate. No read of the device is added.
- ``epoch/<name>`` for every number of the epoch's metrics.jsonl record (train loss and top-1,
  test top-1 and many/medium/few when evaluated, samples/s, seconds, and whatever the record holds
  later), plus ``epoch/best_top1``, at the epoch's last step.
- the run's config, as text and as hparams, at the step the run (re)starts.

TensorBoard: event files go into the run folder itself, so ``tensorboard --logdir runs/`` names each
curve after its run folder. A run that restarts from a checkpoint writes with ``purge_step`` at the
first step after the checkpoint's, so TensorBoard drops what an earlier start logged from there on and every step
and epoch keeps exactly one value. Each epoch's events are flushed before its checkpoint is saved,
so a kill never loses the values of an epoch the checkpoint holds.
"""

from __future__ import annotations

import glob
import importlib
import json
import math
import os
import time
import uuid
from pathlib import Path
from typing import Protocol

from ccmix.config.fields import TrainConfig
from ccmix.config.rules import ConfigError
from ccmix.io import write_text
from ccmix.method.step import learning_rate

EVENT_FILES = "events.out.tfevents.*"
WANDB_ID = "wandb-id.txt"  # the W&B run id of a run folder, so a resumed run continues the same W&B run
# Numbers of the hparams a TensorBoard run records, linked to these metric tags in its HPARAMS tab.
HPARAM_METRICS = ("epoch/top1", "epoch/best_top1", "epoch/many", "epoch/medium", "epoch/few")


class RunLogger(Protocol):
    """Where scalars go: ``log_step`` and ``log_epoch`` take {tag: number} at a global step; ``close`` ends."""

    def log_step(self, step: int, scalars: dict[str, float]) -> None: ...

    def log_epoch(self, step: int, scalars: dict[str, float]) -> None: ...

    def close(self) -> None: ...


class NoLogger:
    """``logger=none``, and every process but 0: nothing is logged."""

    def log_step(self, step: int, scalars: dict[str, float]) -> None:
        """Log nothing."""

    def log_epoch(self, step: int, scalars: dict[str, float]) -> None:
        """Log nothing."""

    def close(self) -> None:
        """Nothing to close."""


class TensorBoardLogger:
    """Event files in ``folder``; the first event purges what earlier starts logged at or after ``first_step``,
    the first step this start trains (the checkpoint's epochs keep their values, logged at earlier steps)."""

    def __init__(self, folder: Path, config: TrainConfig, first_step: int):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        _after_earlier_event_files(folder)
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=first_step)
        self.writer.add_text("config", "```\n" + config.to_json() + "\n```", global_step=first_step)
        for summary in hparams(_hparam_values(config), dict.fromkeys(HPARAM_METRICS, 0.0)):
            self.writer.file_writer.add_summary(summary, first_step)
        self.writer.flush()

    def log_step(self, step: int, scalars: dict[str, float]) -> None:
        """Write ``scalars`` at global ``step``."""
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)

    def log_epoch(self, step: int, scalars: dict[str, float]) -> None:
        """Write ``scalars`` at global ``step`` and flush, so they are on disk before the epoch's checkpoint."""
        self.log_step(step, scalars)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()


class WandbLogger:
    """A W&B run in ``folder`` (offline unless WANDB_MODE says otherwise), continued by a resumed run."""

    def __init__(self, folder: Path, config: TrainConfig, wandb):
        id_file = folder / WANDB_ID
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
        write_text(id_file, run_id)
        self.run = wandb.init(dir=str(folder), name=folder.name, id=run_id, resume="allow",
                              mode=os.environ.get("WANDB_MODE", "offline"), config=config.to_dict())
        # steps of a resumed run go back to the checkpoint's; plotting against this metric keeps them
        self.run.define_metric("global_step")
        self.run.define_metric("*", step_metric="global_step")

    def log_step(self, step: int, scalars: dict[str, float]) -> None:
        """Log ``scalars`` at global ``step``."""
        self.run.log({**scalars, "global_step": step})

    def log_epoch(self, step: int, scalars: dict[str, float]) -> None:
        """Log ``scalars`` at global ``step``."""
        self.log_step(step, scalars)

    def close(self) -> None:
        """Finish the W&B run."""
        self.run.finish()


def import_wandb():
    """Return the wandb module; ConfigError in one sentence when it is not installed."""
    try:
        return importlib.import_module("wandb")
    except ImportError:
        raise ConfigError(field="logger", value="wandb", problem="needs the wandb package, which is not installed",
                          detail="install it with `pip install ccmix[wandb]`, or use logger=tensorboard or none") \
            from None


def check_logger(config: TrainConfig) -> None:
    """Raise ConfigError before any data is read when ``config.logger`` needs a package that is missing."""
    if config.logger == "wandb":
        import_wandb()


class RunLog:
    """What ``ccmix.train.fit`` calls: turns the step loop's running figures and the epoch records into scalars."""

    def __init__(self, logger: RunLogger, config: TrainConfig, steps_per_epoch: int):
        self.logger = logger
        self.config = config
        self.steps_per_epoch = steps_per_epoch
        self._last_read = (-1, 0.0, 0.0)  # (epoch, count, loss sum) at the previous read of the device

    def step_read(self, epoch: int, step: int, running: dict) -> None:
        """Log 0-based ``epoch``'s step ``step`` (1-based in the epoch); ``running``: ``EpochTotals.check``'s
        {"loss", "count"}, the epoch's mean loss and pairs so far on this process."""
        last_epoch, last_count, last_sum = self._last_read
        if last_epoch != epoch:
            last_count, last_sum = 0.0, 0.0
        count, loss_sum = running["count"], running["loss"] * running["count"]
        self._last_read = (epoch, count, loss_sum)
        if count > last_count:
            self.logger.log_step(epoch * self.steps_per_epoch + step, {
                "step/loss": (loss_sum - last_sum) / (count - last_count),
                "step/lr": learning_rate(epoch, self.config)})

    def epoch_done(self, record: dict, best: dict | None) -> None:
        """Log every number of ``record`` (a metrics.jsonl line, 1-based ``record["epoch"]``) and the best top-1."""
        scalars = {f"epoch/{name}": float(value) for name, value in record.items()
                   if name != "epoch" and _is_number(value)}
        if best is not None and _is_number(best.get("top1")):
            scalars["epoch/best_top1"] = float(best["top1"])
        self.logger.log_epoch(int(record["epoch"]) * self.steps_per_epoch, scalars)

    def close(self) -> None:
        """Close the logger."""
        self.logger.close()


def open_run_log(config: TrainConfig, folder: Path, is_main: bool, steps_per_epoch: int, epochs_done: int) -> RunLog:
    """Return the RunLog of a run in ``folder`` that starts after ``epochs_done`` epochs of ``steps_per_epoch``.

    Only ``is_main`` (process 0) gets a logger that writes; the others log nothing.
    """
    if not is_main or config.logger == "none":
        logger: RunLogger = NoLogger()
    elif config.logger == "wandb":
        logger = WandbLogger(folder, config, import_wandb())
    else:
        logger = TensorBoardLogger(folder, config, first_step=epochs_done * steps_per_epoch + 1)
    return RunLog(logger, config, steps_per_epoch)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _hparam_values(config: TrainConfig) -> dict:
    """Return the config as the hparams plugin takes it: numbers, text and booleans; lists and None as text."""
    return {name: value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
            for name, value in config.to_dict().items()}


def _after_earlier_event_files(folder: Path) -> None:
    """Wait, at most a second, until a new event file's name sorts after the folder's earlier ones.

    TensorBoard reads a folder's event files in name order, and a name starts with the whole second it
    was made; a restart within the same second would otherwise be read before the start it replaces.
    """
    stamps = [int(name.split(".")[3]) for name in map(os.path.basename, glob.glob(str(folder / EVENT_FILES)))
              if name.split(".")[3].isdigit()]
    deadline = time.monotonic() + 1.1  # a stamp in the future (a clock set back) is not waited for
    while stamps and int(time.time()) <= max(stamps) and time.monotonic() < deadline:
        time.sleep(0.05)


__all__ = ["HPARAM_METRICS", "NoLogger", "RunLog", "RunLogger", "TensorBoardLogger", "WandbLogger", "check_logger",
           "import_wandb", "open_run_log"]
