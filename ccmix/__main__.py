"""Command line: ``python -m ccmix train|eval|presets|bench|sweep``.

The command line writes the same run folder as ``ccmix.fit`` and the training
notebook (Pan et al., "Enhanced Long-Tailed Recognition with Contrastive CutMix
Augmentation", IEEE TIP 2024, is the method trained).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ccmix.config import ConfigError, TrainConfig


def train_config(preset: str | None, set_items: list[str] | None) -> tuple[TrainConfig, dict]:
    """Return the validated config of ``train --preset P --set KEY=VALUE...`` and its record
    ``{"preset", "published_top1"}`` (the published number only when the config reproduces the preset)."""
    from ccmix.config import parse_set_arguments, preset_record, resolve

    config = resolve(preset, parse_set_arguments(set_items or []))
    return config, preset_record(config, preset)


def _train(args: argparse.Namespace) -> int:
    from ccmix.engine import fit

    config, _ = train_config(args.preset, args.set)
    summary = fit(config, args.out, preset=args.preset, allow_more_epochs=args.extend_epochs)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return 0
    print(json.dumps({key: summary[key] for key in ("status", "final", "best", "train_seconds")}, sort_keys=True))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from ccmix.config import parse_set_arguments
    from ccmix.engine import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, parse_set_arguments(args.set or []))
    print(json.dumps(result, sort_keys=True))
    return 0


def _presets(args: argparse.Namespace) -> int:
    from ccmix.config import fields_table, presets_table

    print(fields_table() if args.fields else presets_table())
    return 0


def _bench(args: argparse.Namespace) -> int:
    from ccmix.bench import run_bench

    result = run_bench(quick=args.quick, device=args.device, preset=args.preset)
    print(json.dumps(result, sort_keys=True))
    return 0


def _fields_help() -> str:
    from ccmix.config import field_help, field_names, field_role, field_rule

    return "\n".join(f"  {name} ({field_role(name)}): {field_rule(name).accepted()}; {field_help(name)}"
                     for name in field_names())


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``python -m ccmix``."""
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

    evaluate = commands.add_parser("eval", help="evaluate a checkpoint on its test set")
    evaluate.add_argument("--checkpoint", required=True)
    evaluate.add_argument("--set", action="append", metavar="KEY=VALUE", help="e.g. data_root=... (repeatable)")
    evaluate.set_defaults(handler=_eval)

    presets = commands.add_parser("presets", help="list the presets and their published top-1")
    presets.add_argument("--fields", action="store_true", help="list the config fields instead: role, default, "
                         "accepted values and help")
    presets.set_defaults(handler=_presets)

    bench = commands.add_parser("bench", help="measure data-pipeline and training throughput; prints one JSON line")
    bench.add_argument("--quick", action="store_true", help="a short measurement (under a minute on 2 CPU cores)")
    bench.add_argument("--device", choices=("cpu", "cuda"), default=None)
    bench.add_argument("--preset", default="cifar100_imb100")
    bench.set_defaults(handler=_bench)

    sweep = commands.add_parser("sweep", help="run the training notebook over methods x imbalances x seeds",
                                add_help=False)
    sweep.set_defaults(handler=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sweep"]:
        from ccmix.sweep import main as sweep_main

        return sweep_main(argv[1:]) or 0
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt as error:  # TrainingInterrupted: SIGINT or SIGTERM stopped training cleanly
        from ccmix.interrupt import TrainingInterrupted

        if not isinstance(error, TrainingInterrupted):
            raise
        print(f"interrupted: {error}", file=sys.stderr)
        return error.exit_status
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


if __name__ == "__main__":
    sys.exit(main())
