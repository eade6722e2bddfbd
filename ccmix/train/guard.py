"""Finished results are never overwritten: what a training may do with an existing run folder.

A run folder of Contrastive CutMix (Pan et al., "Enhanced Long-Tailed Recognition with
Contrastive CutMix Augmentation", IEEE TIP 2024; see ``docs/method.md``) holds one
run. Before any data loads, :func:`examine` compares what is asked with what the folder
holds and decides:

* ``fresh``: no run files; train from scratch;
* ``resume``: a checkpoint of the same recipe, or a start that never completed an epoch;
* ``completed``: the same run is already finished; nothing is rewritten.

and refuses, with a sentence naming the differing fields and suggesting a new
``out_dir``, a different recipe or seed, fewer epochs than were trained, another number
of epochs without ``allow_more_epochs`` (the learning-rate schedule depends on it; the
option lets a run continue with a new ``epochs`` no smaller than the epochs trained),
and a folder holding results whose checkpoint is missing. After the data loads,
:func:`check_data_identity` refuses data that differs from the data the run was trained
on (see ``ccmix.data.identity``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ccmix.config.fields import TrainConfig, resume_differences
from ccmix.config.rules import ConfigError
from ccmix.errors import RunFailed, as_user_error, original_message
from ccmix.io import read_json
from ccmix.method.step import TrainingDiverged
from ccmix.train.checkpoint import BEST, DAMAGED_SUFFIX, LAST, PREVIOUS, CheckpointError
from ccmix.train.conflict import RunFolderConflict, check_data_identity
from ccmix.train.interrupt import TrainingInterrupted, stop_requests
from ccmix.train.lock import RunFolderBusy, RunFolderLock
from ccmix.train.run_folder import CONFIG, METRICS, PER_CLASS, PREDICTIONS, SUMMARY, RunFolder

CHECKPOINTS = (LAST, PREVIOUS)
RESULT_FILES = (BEST, PER_CLASS, PREDICTIONS)  # what a run that got somewhere leaves
RUN_FILES = (CONFIG, SUMMARY, METRICS, *CHECKPOINTS, *RESULT_FILES, LAST + DAMAGED_SUFFIX)


@dataclass(frozen=True)
class Verdict:
    """What a training does with its run folder: ``action`` is fresh, resume or completed."""

    action: str
    summary: dict | None = None  # summary.json as found (completed: the finished run's), None when absent
    extends: bool = False  # True when allow_more_epochs lets a finished schedule run longer


def _read(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except (OSError, ValueError) as error:
        raise RunFolderConflict(
            f"{str(path)!r} cannot be read ({type(error).__name__}: {error}); the run folder is damaged, so "
            "nothing was changed in it: use a new out_dir, or move the damaged file away"
        ) from None
    return data if isinstance(data, dict) else None


def _value(config: dict, key: str) -> str:
    value = config.get(key)
    return repr(list(value) if isinstance(value, tuple) else value)


def describe_differences(saved: dict, requested: TrainConfig, names: list[str]) -> str:
    """Return ``method: 'la' in the folder, 'ce' asked`` phrases for the differing fields ``names``."""
    wanted = requested.to_dict()
    return "; ".join(f"{name}: {_value(saved, name)} in the folder, {_value(wanted, name)} asked" for name in names)


def _new_out(folder: Path) -> str:
    return f"choose a new out_dir (--out) such as {str(folder.with_name(folder.name + '-2'))!r}"


def examine(folder: str | os.PathLike, config: TrainConfig, allow_more_epochs: bool = False) -> Verdict:
    """Return what training ``config`` into ``folder`` may do; RunFolderConflict (a sentence) when it may not.

    Reads config.json, summary.json and the names of the other files only: no checkpoint
    is loaded and no data is read.
    """
    folder = Path(folder)
    present = [name for name in RUN_FILES if (folder / name).exists()]
    if not present:
        return Verdict("fresh")
    saved = _read(folder / CONFIG)
    summary = _read(folder / SUMMARY)
    has_checkpoint = any((folder / name).exists() for name in CHECKPOINTS)
    done = int((summary or {}).get("epochs_completed") or 0)
    results = [name for name in RESULT_FILES if (folder / name).exists()]
    # a run that failed or was stopped before its first checkpoint has nothing to lose: it starts over
    never_saved = summary is not None and summary.get("status") in ("failed", "interrupted") and done == 0
    if saved is None:
        if has_checkpoint:  # a run folder from before config.json existed: the checkpoint is compared on resume
            return Verdict("resume")
        if never_saved and not results:  # failed before its data loaded
            return Verdict("fresh")
        raise RunFolderConflict(
            f"{str(folder)!r} holds run files ({', '.join(present)}) but no config.json saying how they were made, "
            f"so training into it could mix two runs; {_new_out(folder)}"
        )
    differences = resume_differences(saved, config)
    if differences:
        raise RunFolderConflict(
            f"{str(folder)!r} holds a run with other settings ({describe_differences(saved, config, differences)}); "
            f"resuming would mix two recipes, so nothing was changed: {_new_out(folder)}, or ask for the same "
            "settings to resume"
        )
    planned = saved.get("epochs")
    extends = False
    if planned is not None and planned != config.epochs:
        if config.epochs < done:
            raise RunFolderConflict(
                f"{str(folder)!r} holds a run of epochs={planned} ({done} completed) and epochs={config.epochs} was "
                f"asked; a shorter schedule would relabel or discard trained epochs, so nothing was changed: "
                f"{_new_out(folder)}"
            )
        if not allow_more_epochs:
            raise RunFolderConflict(
                f"{str(folder)!r} holds a run of epochs={planned} and epochs={config.epochs} was asked; the "
                "learning-rate schedule depends on the number of epochs, so this is another recipe: "
                f"{_new_out(folder)}, or pass --extend-epochs (allow_more_epochs=True) to continue this run "
                f"with epochs={config.epochs}"
            )
        extends = True
    if summary is not None and summary.get("status") == "completed" and not extends:
        return Verdict("completed", summary=summary)
    if not has_checkpoint and (results or done > 0) and not never_saved:
        held = ", ".join(results) or f"summary.json ({done} epochs completed)"
        raise RunFolderConflict(
            f"{str(folder)!r} holds results ({held}) but no last.pt or previous.pt to resume from; training would "
            f"overwrite them, so nothing was changed: {_new_out(folder)}"
        )
    return Verdict("resume", summary=summary, extends=extends)


def completed_message(folder: str | os.PathLike, summary: dict) -> str:
    """Return the line saying that ``folder`` already holds this run, finished."""
    final = (summary.get("final") or {}).get("top1")
    top1 = f", final top-1 {final:.2f}" if isinstance(final, (int, float)) else ""
    return (f"{str(folder)!r} already holds this run, completed ({summary.get('epochs_completed')} of "
            f"{summary.get('epochs')} epochs{top1}); nothing was rewritten")


# --------------------------------------------------------------------------- one guarded training


@dataclass
class Guard:
    """What :func:`guarded_run` found: the verdict, and the data identity once :meth:`check_data` saw the data."""

    folder: RunFolder
    config: TrainConfig
    verdict: Verdict
    identity: dict | None = None
    started: bool = field(default=False, init=False)  # past the refusals: failures are recorded in summary.json

    @property
    def completed(self) -> dict | None:
        """Return the finished run's summary when the folder already holds this run, else None."""
        return self.verdict.summary if self.verdict.action == "completed" else None

    @property
    def unrecorded_stop(self) -> str | None:
        """Return the line saying that the folder's previous trainer stopped without recording it, when its
        summary.json still said "running" as this trainer took the folder (so no live process wrote it); else None."""
        summary = self.verdict.summary
        if self.verdict.action != "resume" or summary is None or summary.get("status") != "running":
            return None
        reason = f"; it had recorded: {summary['error']}" if summary.get("error") else ""
        return (f"note: the previous training of {str(self.folder.path)!r} stopped without recording why (killed, "
                f"or its machine, memory or disk failed; its summary.json still said running, with "
                f"{int(summary.get('epochs_completed') or 0)} of {summary.get('epochs')} epochs completed){reason}")

    def check_data(self, train, test) -> dict:
        """Return the identity of the data (train, test); refuses data other than config.json's, when it has one."""
        from ccmix.data.identity import data_identity

        self.identity = data_identity(train, test)
        if self.verdict.action == "resume":
            check_data_identity(self.folder.read_config(), self.identity, f"the run in {str(self.folder.path)!r}")
        self.started = True
        return self.identity


def _share(value, context):
    """Return rank 0's ``value`` on every rank (the value itself in a single process)."""
    if context is None or not getattr(context, "enabled", False):
        return value
    from ccmix.train.distributed import all_gather_objects

    return all_gather_objects(value, context)[0]


def record_status(folder, config: TrainConfig, status: str, sentence: str) -> None:
    """Write ``status`` ("interrupted", "failed") and ``sentence`` into summary.json of ``folder`` (a RunFolder).

    Keeps the last saved epoch's records (a summary from ``config`` when the run wrote none); a
    no-op on ranks that do not write; never fails: a full or read-only disk leaves the summary as
    it was and the sentence still reaches the user.
    """
    if not folder.writer:
        return
    try:
        summary = folder.read_summary()
        if summary is None:
            summary = dict(method=config.method, dataset=config.dataset, imb=config.imb, seed=config.seed,
                           epochs=config.epochs, epochs_completed=0, final=None, best=None, train_seconds=0.0)
        folder.write_summary(dict(summary, status=status, error=sentence))
    except Exception:  # a full or read-only disk cannot take the record either
        pass


def _interrupted(error: BaseException, requests, folder, config: TrainConfig) -> TrainingInterrupted:
    import signal

    number = getattr(error, "signal_number", None) or requests.signal_number or signal.SIGINT
    base = str(error) if isinstance(error, TrainingInterrupted) else (
        f"training was interrupted by {signal.Signals(number).name}")
    done = int((folder.read_summary() or {}).get("epochs_completed") or 0)
    kept = (f"last.pt keeps epoch {done}; run the same command again to resume" if done else
            "no epoch was completed; run the same command again to start over")
    record_status(folder, config, "interrupted", base)
    return TrainingInterrupted(f"{base}; {kept}", number)


def _stopped_too_late(number: int, folder) -> TrainingInterrupted:
    """Return the stop of a run that a signal reached after its last step boundary: it finished all the same."""
    import signal

    return TrainingInterrupted(f"training was interrupted by {signal.Signals(number).name} after its last step; the "
                               f"run in {str(folder.path)!r} completed all the same and nothing is lost", number)


@contextlib.contextmanager
def guarded_run(folder, config: TrainConfig, context=None, allow_more_epochs: bool = False):
    """Yield a Guard while training ``config`` into ``folder`` (a RunFolder) owns it; see the module docstring.

    Takes the folder's lock (rank 0; every rank learns the outcome) before anything in the
    folder is touched, examines the folder, and turns SIGINT and SIGTERM into stop requests.
    On the way out it records an interruption or a failure in summary.json (once the
    refusals are past) and raises the user's sentence: TrainingInterrupted, ValueError for
    data, ccmix.errors.RunFailed for disk and memory faults; unrecognised errors keep their
    traceback. A stop requested after the last step boundary, when the run completed all
    the same, still ends in TrainingInterrupted (saying so). The lock is released in every case.
    """
    lock = RunFolderLock(folder.path)
    refusal = None  # (busy, sentence) of rank 0, shared with every rank
    if folder.writer:
        try:
            lock.acquire()
        except RunFolderBusy as error:
            refusal = (True, str(error))
        except OSError as error:  # the folder cannot be created or written
            user_error = as_user_error(error, folder.path)
            refusal = (False, str(user_error) if user_error is not None else f"{str(folder.path)!r}: {error}")
    refusal = _share(refusal, context)
    if refusal is not None:
        lock.release()
        busy, sentence = refusal
        raise RunFolderBusy(sentence) if busy else RunFailed(sentence)
    try:
        with stop_requests() as requests:
            guard = Guard(folder=folder, config=config, verdict=examine(folder.path, config, allow_more_epochs))
            if guard.completed is not None and folder.writer:
                print(completed_message(folder.path, guard.completed), file=sys.stderr)
            try:
                yield guard
            except (ConfigError, TrainingDiverged):
                raise  # a refusal leaves the folder as it was; a divergence has recorded itself
            except (TrainingInterrupted, KeyboardInterrupt) as error:
                raise _interrupted(error, requests, folder, config) from None
            except BaseException as error:
                if requests.signal_number is not None:  # e.g. DataLoader workers stopped by the same Ctrl-C
                    raise _interrupted(error, requests, folder, config) from None
                user_error = error if isinstance(error, CheckpointError) else as_user_error(error, folder.path)
                if not guard.started and user_error is None:
                    raise
                sentence = str(user_error) if user_error is not None else (
                    f"{type(error).__name__}: {original_message(error)}")
                record_status(folder, config, "failed", sentence)
                if user_error is None or user_error is error:
                    raise
                raise user_error from None
        # here, once the handlers are restored: a signal received after the last step boundary is not dropped
        if requests.signal_number is not None:
            raise _stopped_too_late(requests.signal_number, folder)
    finally:
        lock.release()


__all__ = [
    "Verdict", "Guard", "examine", "guarded_run", "completed_message", "describe_differences", "record_status",
    "RUN_FILES"
]
