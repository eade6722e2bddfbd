"""Command line: ``python -m ccmix train|eval|presets|bench|sweep|report``.

The command line writes the same run folder as ``ccmix.fit`` and the training
notebook (Pan et al., "Enhanced Long-Tailed Recognition with Contrastive CutMix
Augmentation", IEEE TIP 2024, is the method trained).

Every way a command can end is one line on stderr: ``error: <sentence>`` for what the
user can fix (exit 1 or 2) and ``interrupted: <sentence>`` for SIGINT (Ctrl-C) or
SIGTERM (exit 128 + the signal number: 130, 143), also while torch is still loading.
Training turns those signals into a stop at its next step boundary (``ccmix.train.interrupt``);
outside training they stop the command at once, except in the middle of an import, which
they let finish first (see ``_deliver_later``).
"""

from __future__ import annotations

import os
import signal
import sys

from ccmix.experiments.commands import build_parser

STOP_SIGNALS = ("SIGINT", "SIGTERM")
_FORK_HOOK = False  # whether _forked_child is registered (once per process)


class CommandStopped(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived outside training's step boundaries; the command stops where it is."""

    def __init__(self, signal_number: int):
        super().__init__(signal_number)
        self.signal_number = signal_number


_PENDING: list[int] = []  # a stop signal held back until the import in progress is done
_RETRY_SECONDS = 0.02  # how often a held-back signal is delivered again


def _stop_now(signal_number: int, frame) -> None:
    if _importing(frame) and _deliver_later(signal_number):
        return
    # A terminal or a scheduler signals the whole process group: DataLoader workers die of the same
    # SIGTERM, and torch's SIGCHLD handler would raise about them in the middle of this stop.
    if hasattr(signal, "SIGCHLD"):
        signal.signal(signal.SIGCHLD, _expected_child_exit)
    raise CommandStopped(signal_number)


def _expected_child_exit(signal_number: int, frame) -> None:
    """Once the command is stopping, its children ending is expected: nothing to report."""


_IMPORT_MACHINERY = ("<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>",
                     "importlib/_bootstrap.py", "importlib/_bootstrap_external.py")  # frozen, or not


def _importing(frame) -> bool:
    """True when ``frame`` (where a signal interrupted the main thread) runs inside an import."""
    while frame is not None:
        if frame.f_code.co_filename.replace("\\", "/").endswith(_IMPORT_MACHINERY):
            return True
        frame = frame.f_back
    return False


def _deliver_later(signal_number: int) -> bool:
    """Hold ``signal_number`` back and send it again in a moment; False where no timer can do it (then: stop now).

    An exception raised in the middle of an import is not safe to raise: torch's C++
    start-up imports numpy and clears whatever error that import raised (the stop would be
    lost and the run would train to its end), and a module left half-imported fails later
    with an unrelated traceback. The signal is sent again every few milliseconds until no
    import is in progress; whichever handler holds it then takes it (training's records it).
    """
    if not hasattr(signal, "setitimer"):
        return False
    if not _PENDING:
        _PENDING.append(signal_number)
    signal.signal(signal.SIGALRM, _deliver_pending)
    signal.setitimer(signal.ITIMER_REAL, _RETRY_SECONDS)
    return True


def _deliver_pending(signal_number: int, frame) -> None:
    """SIGALRM's handler while a stop signal is held back: send it again."""
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    if _PENDING:
        signal.raise_signal(_PENDING.pop())


def _cancel_pending() -> int | None:
    """Cancel the delivery of a held-back stop signal; return its number, or None when there was none."""
    if hasattr(signal, "setitimer"):
        signal.setitimer(signal.ITIMER_REAL, 0)
    return _PENDING.pop() if _PENDING else None


def stop_on_signals() -> None:
    """Make SIGINT and SIGTERM raise CommandStopped in this process (the command line's own handlers).

    Installed before anything heavy is imported, so a signal while torch loads ends in
    one line too; a KeyboardInterrupt subclass, so code that cleans up on Ctrl-C (a
    launcher stopping its children) does the same on SIGTERM. Processes forked from this
    one without exec (DataLoader workers) do not keep these handlers: see _forked_child.
    """
    installed = False
    for name in STOP_SIGNALS:
        number = getattr(signal, name, None)
        if number is not None:
            try:
                signal.signal(number, _stop_now)
                installed = True
            except (ValueError, OSError):  # not the main thread, or an interpreter that does not allow it
                pass
    global _FORK_HOOK
    if installed and not _FORK_HOOK and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_forked_child)
        _FORK_HOOK = True


def _forked_child() -> None:
    """Signal handling of a process forked from the command line: the parent handles Ctrl-C, SIGTERM kills.

    A terminal's Ctrl-C reaches the whole process group; a worker that raised on it could
    print a traceback (when it had not reached its own handling yet), so it ignores it and
    the parent, which stops, ends its workers. SIGTERM gets the default action back (torch's
    workers install their own handler for it).
    """
    for name, action in (("SIGINT", signal.SIG_IGN), ("SIGTERM", signal.SIG_DFL)):
        if getattr(signal, name, None) is not None and signal.getsignal(getattr(signal, name)) is _stop_now:
            signal.signal(getattr(signal, name), action)


def _run(argv: list[str]) -> int:
    """Run one command; the errors a user can fix become ``error: <sentence>``."""
    from ccmix.config.rules import ConfigError

    if argv[:1] == ["sweep"]:
        from ccmix.experiments.sweep import main as sweep_main

        return sweep_main(argv[1:]) or 0
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as error:  # dataset files and paths: their messages name the file
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:  # CheckpointError, TrainingDiverged: a sentence for the user, not a traceback
        from ccmix.errors import RunFailed
        from ccmix.method.step import TrainingDiverged
        from ccmix.train.checkpoint import CheckpointError

        if not isinstance(error, (CheckpointError, TrainingDiverged, RunFailed)):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1


def interrupted_line(error: KeyboardInterrupt, command: str) -> tuple[str, int]:
    """Return the ``interrupted: ...`` line for a stop that ended ``command`` and the exit status (128 + signal).

    A stop that carries its own sentence and status (training's, a sweep's) keeps them;
    torch need not be loaded (the stop may have come while it was loading).
    """
    status = getattr(error, "exit_status", None)
    if isinstance(status, int) and str(error):
        return f"interrupted: {error}", status
    number = getattr(error, "signal_number", None) or signal.SIGINT
    name = signal.Signals(number).name
    what = f"python -m ccmix {command}".rstrip()
    line = f"interrupted: {what} was stopped by {name} before it finished"
    if command == "train":  # before its first step or after its last: the run folder is consistent either way
        line += "; run the same command again to start or resume the run"
    return line, 128 + number


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return its exit status (see the module docstring)."""
    as_program = argv is None
    if as_program:  # the `ccmix` entry point: the same handlers as python -m ccmix
        stop_on_signals()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        status = _run(argv)
        held_back = _cancel_pending() if as_program else None
        if held_back is not None:  # arrived in an import of the command's last moments
            raise CommandStopped(held_back)
        return status
    except KeyboardInterrupt as error:
        if as_program:  # a second signal while the process exits ends it quietly
            _cancel_pending()
            for name in STOP_SIGNALS:
                signal.signal(getattr(signal, name), signal.SIG_DFL)
        line, status = interrupted_line(error, argv[0] if argv else "")
        print(line, file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
