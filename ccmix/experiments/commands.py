"""The subcommands of ``python -m ccmix``: their argument parser and what each runs.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

    from ccmix.config.fields import TrainConfig


def train_config(preset: str | None, set_items: list[str] | None) -> tuple[TrainConfig, dict]:
    """Return the validated config of ``train --preset P --set KEY=VALUE...`` and its record
    ``{"preset", "published_top1"}`` (the published number only when the config reproduces the preset)."""
    from ccmix.config.presets import preset_record
    from ccmix.config.validation import parse_set_arguments, resolve

    config = resolve(preset, parse_set_arguments(set_items or []))
    return config, preset_record(config, preset)


def _print_json(result: dict) -> None:
    import json

    print(json.dumps(result, sort_keys=True), flush=True)


def _train(args: argparse.Namespace) -> int:
    from ccmix.train.fit import fit

    config, _ = train_config(args.preset, args.set)
    summary = fit(config, args.out, preset=args.preset, allow_more_epochs=args.extend_epochs)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return 0
    _print_json({key: summary[key] for key in ("status", "final", "best", "train_seconds")})
    return 0


def _eval(args: argparse.Namespace) -> int:
    from ccmix.config.validation import parse_set_arguments
    from ccmix.train.evaluation import evaluate_checkpoint, save_eval_result

    result = evaluate_checkpoint(args.checkpoint, parse_set_arguments(args.set or []), write=False, split=args.split)
    _print_json(result)  # first: the metrics are shown even when they cannot be saved
    problem = save_eval_result(result, args.checkpoint)
    if problem is not None:
        print(f"warning: {problem}", file=sys.stderr)
    return 0


def _presets(args: argparse.Namespace) -> int:
    from ccmix.config.fields import fields_table
    from ccmix.config.presets import presets_table

    print(fields_table() if args.fields else presets_table())
    return 0


def _bench(args: argparse.Namespace) -> int:
    if args.recipe == "imagenet":
        from ccmix.experiments.bench_imagenet import run_imagenet_bench

        _print_json(run_imagenet_bench(num_images=args.images, batch_size=args.batch_size, device=args.device))
        return 0
    from ccmix.experiments.bench import run_bench

    _print_json(run_bench(quick=args.quick, device=args.device, preset=args.preset))
    return 0


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ccmix.experiments.ablation import report_text
    from ccmix.experiments.results import collect_results, run_folders

    folders = run_folders(args.runs_dir)
    if not folders:
        raise ValueError(f"--runs-dir {args.runs_dir!r} holds no run folder (a folder with summary.json); give the "
                         "runs_dir of a sweep" + ("" if Path(args.runs_dir).is_dir() else " (it does not exist)"))
    print(report_text(collect_results(folders), args.baseline), flush=True)
    return 0


def _fields_help() -> str:
    from ccmix.config.fields import field_help, field_names, field_role, field_rule

    return "\n".join(f"  {name} ({field_role(name)}): {field_rule(name).accepted()}; {field_help(name)}"
                     for name in field_names())


EVAL_EPILOG = (
    "The metrics are printed as one JSON line on stdout, then saved beside the checkpoint as <name>.eval.json "
    "(last.pt: last.eval.json), or, for --split other than the run's eval_split, as <name>.eval.<split>.json "
    "(last.eval.test.json), which leaves the run's own record as it was. When that file cannot be written (a read-only or full disk) the command still "
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

    evaluate = commands.add_parser("eval", help="evaluate a checkpoint on its evaluation split (or --split)",
                                   epilog=EVAL_EPILOG)
    evaluate.add_argument("--checkpoint", required=True, help="a checkpoint file, e.g. a run folder's last.pt or best.pt")
    evaluate.add_argument("--set", action="append", metavar="KEY=VALUE", help="e.g. data_root=... (repeatable)")
    evaluate.add_argument("--split", choices=("val", "test"), default=None,
                          help="the split to evaluate on (default: the run's eval_split)")
    evaluate.set_defaults(handler=_eval)

    presets = commands.add_parser("presets", help="list the presets and their published top-1")
    presets.add_argument("--fields", action="store_true", help="list the config fields instead: role, default, "
                         "accepted values and help")
    presets.set_defaults(handler=_presets)

    bench = commands.add_parser("bench", help="measure data-pipeline and training throughput (each figure the best "
                                "of 3 rounds of at least 1 s, with the machine's load); prints one JSON line")
    bench.add_argument("--quick", action="store_true", help="a short measurement (under a minute on 2 idle CPU cores)")
    bench.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="auto (the default): CUDA when present, else the CPU")
    bench.add_argument("--preset", default="cifar100_imb100")
    bench.add_argument("--recipe", choices=("cifar", "imagenet"), default="cifar",
                       help="cifar (the default): the preset's CIFAR pipelines; imagenet: classic against fast ImageNet "
                            "data paths on generated JPEGs")
    bench.add_argument("--images", type=int, default=2000, help="--recipe imagenet: JPEGs generated (300-500 px)")
    bench.add_argument("--batch-size", type=int, default=256, help="--recipe imagenet: pairs per batch")
    bench.set_defaults(handler=_bench)

    report = commands.add_parser(
        "report", help="the runs of a sweep over seeds: mean, sd and 95%% CI per grid point, and differences to a "
                       "baseline point", description="Print one row per grid point of the completed runs under "
        "RUNS_DIR: mean ± 95% CI half-width (t, n-1 dof) and sd (ddof=1) over seeds of final and best top-1 and "
        "many/medium/few. notebooks/ablate.ipynb draws the same as a figure.")
    report.add_argument("--runs-dir", required=True, help="a sweep's runs_dir (run folders directly under it)")
    report.add_argument("--baseline", default=None, metavar="FIELD=VALUE",
                        help="add each point's difference to the point with FIELD=VALUE and the same other values, "
                             "with a 95%% CI (paired by seed when the seeds match, Welch otherwise), e.g. omega=0")
    report.set_defaults(handler=_report)

    sweep = commands.add_parser("sweep", help="run the training notebook over methods x imbalances x seeds",
                                add_help=False)
    sweep.set_defaults(handler=None)
    return parser
