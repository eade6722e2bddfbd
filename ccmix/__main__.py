"""Command line: ``python -m ccmix train|eval|presets|bench|sweep``.

The command line writes the same run folder as ``ccmix.fit`` and the training
notebook (Pan et al., "Enhanced Long-Tailed Recognition with Contrastive CutMix
Augmentation", IEEE TIP 2024, is the method trained).

Every way a command can end is one line on stderr: ``error: <sentence>`` for what the
user can fix (exit 1 or 2) and ``interrupted: <sentence>`` for SIGINT (Ctrl-C) or
SIGTERM (exit 128 + the signal number: 130, 143), also while torch is still loading.
Training turns those signals into a stop at its next step boundary (``ccmix.interrupt``);
outside training they stop the command at once.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

    from ccmix.config import TrainConfig

STOP_SIGNALS = ("SIGINT", "SIGTERM")
_FORK_HOOK = False  # whether _forked_child is registered (once per process)


class CommandStopped(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived outside training's step boundaries; the command stops where it is."""

    def __init__(self, signal_number: int):
        super().__init__(signal_number)
        self.signal_number = signal_number


def _stop_now(signal_number: int, frame) -> None:
    # A terminal or a scheduler signals the whole process group: DataLoader workers die of the same
    # SIGTERM, and torch's SIGCHLD handler would raise about them in the middle of this stop.
    if hasattr(signal, "SIGCHLD"):
        signal.signal(signal.SIGCHLD, _expected_child_exit)
    raise CommandStopped(signal_number)


def _expected_child_exit(signal_number: int, frame) -> None:
    """Once the command is stopping, its children ending is expected: nothing to report."""


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


if __name__ == "__main__":  # python -m ccmix: before every import below
    stop_on_signals()


def train_config(preset: str | None, set_items: list[str] | None) -> tuple[TrainConfig, dict]:
    """Return the validated config of ``train --preset P --set KEY=VALUE...`` and its record
    ``{"preset", "published_top1"}`` (the published number only when the config reproduces the preset)."""
    from ccmix.config import parse_set_arguments, preset_record, resolve

    config = resolve(preset, parse_set_arguments(set_items or []))
    return config, preset_record(config, preset)


def _print_json(result: dict) -> None:
    import json

    print(json.dumps(result, sort_keys=True), flush=True)


def _train(args: argparse.Namespace) -> int:
    from ccmix.engine import fit

    config, _ = train_config(args.preset, args.set)
    summary = fit(config, args.out, preset=args.preset, allow_more_epochs=args.extend_epochs)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return 0
    _print_json({key: summary[key] for key in ("status", "final", "best", "train_seconds")})
    return 0


def _eval(args: argparse.Namespace) -> int:
    from ccmix.config import parse_set_arguments
    from ccmix.evaluation import evaluate_checkpoint, save_eval_result

    result = evaluate_checkpoint(args.checkpoint, parse_set_arguments(args.set or []), write=False)
    _print_json(result)  # first: the metrics are shown even when they cannot be saved
    problem = save_eval_result(result, args.checkpoint)
    if problem is not None:
        print(f"warning: {problem}", file=sys.stderr)
    return 0


def _presets(args: argparse.Namespace) -> int:
    from ccmix.config import fields_table, presets_table

    print(fields_table() if args.fields else presets_table())
    return 0


def _bench(args: argparse.Namespace) -> int:
    from ccmix.bench import run_bench

    _print_json(run_bench(quick=args.quick, device=args.device, preset=args.preset))
    return 0


def _fields_help() -> str:
    from ccmix.config import field_help, field_names, field_role, field_rule

    return "\n".join(f"  {name} ({field_role(name)}): {field_rule(name).accepted()}; {field_help(name)}"
                     for name in field_names())


EVAL_EPILOG = (
    "The metrics are printed as one JSON line on stdout, then saved beside the checkpoint as <name>.eval.json "
    "(last.pt: last.eval.json). When that file cannot be written (a read-only or full disk) the command still "
    "exits 0, since the evaluation itself succeeded, and says on stderr in one line what was not saved and why."
)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``python -m ccmix``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ccmix", description="Contrastive CutMix workbench")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train", help="train a preset into a run folder (re-running on it resumes)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config fields for --set (role recipe: what is learned; seed: the replicate; runtime: how it runs):\n"
               + _fields_help(),
    )
    train.add_argument("--preset", default=None, help="a name from `python -m ccmix presets` (default: cifar100_imb100)")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one config field (repeatable)")
    train.add_argument("--out", required=True, help="run folder")
    train.add_argument("--extend-epochs", action="store_true",
                       help="let a run folder's run continue to a larger epochs= (the learning-rate schedule changes, "
                            "so this is refused without it)")
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("eval", help="evaluate a checkpoint on its test set", epilog=EVAL_EPILOG)
    evaluate.add_argument("--checkpoint", required=True, help="a checkpoint file, e.g. a run folder's last.pt or best.pt")
    evaluate.add_argument("--set", action="append", metavar="KEY=VALUE", help="e.g. data_root=... (repeatable)")
    evaluate.set_defaults(handler=_eval)

    presets = commands.add_parser("presets", help="list the presets and their published top-1")
    presets.add_argument("--fields", action="store_true", help="list the config fields instead: role, default, "
                         "accepted values and help")
    presets.set_defaults(handler=_presets)

    bench = commands.add_parser("bench", help="measure data-pipeline and training throughput; prints one JSON line")
    bench.add_argument("--quick", action="store_true", help="a short measurement (under a minute on 2 CPU cores)")
    bench.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="auto (the default): CUDA when present, else the CPU")
    bench.add_argument("--preset", default="cifar100_imb100")
    bench.set_defaults(handler=_bench)

    sweep = commands.add_parser("sweep", help="run the training notebook over methods x imbalances x seeds",
                                add_help=False)
    sweep.set_defaults(handler=None)
    return parser


def _run(argv: list[str]) -> int:
    """Run one command; the errors a user can fix become ``error: <sentence>``."""
    from ccmix.config import ConfigError

    if argv[:1] == ["sweep"]:
        from ccmix.sweep import main as sweep_main

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
        from ccmix.checkpoint import CheckpointError
        from ccmix.engine import TrainingDiverged
        from ccmix.errors import RunFailed

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
        return _run(argv)
    except KeyboardInterrupt as error:
        if as_program:  # a second signal while the process exits ends it quietly
            for name in STOP_SIGNALS:
                signal.signal(getattr(signal, name), signal.SIG_DFL)
        line, status = interrupted_line(error, argv[0] if argv else "")
        print(line, file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
