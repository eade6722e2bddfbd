"""Sweeps: training over methods x imbalances x seeds, and mean ± std tables of run folders beside the paper.

Each grid point trains into its own run folder under ``runs_dir``, so a sweep's runs
are the same self-describing folders a single training run writes. Three launchers:

- ``local`` (default): ``python -m ccmix train ... --out DIR`` processes, ``jobs`` at a
  time; on one GPU they share it, several visible GPUs are handed out round-robin;
- ``slurm``: one SLURM job array through submitit, each task requeued on preemption
  and resuming its run folder (see :mod:`ccmix.experiments.slurm`);
- ``papermill``: ``notebooks/train.ipynb`` per point, one after another, the executed
  notebook kept beside its run folder.

SIGINT or SIGTERM stops a sweep cleanly (see :mod:`ccmix.experiments.stop`): the runs it
started locally are stopped and recorded as interrupted, SLURM jobs keep running unless
``cancel_on_stop``, and :class:`SweepInterrupted` says in one line how to resume.

A point whose folder already holds a completed run of the same recipe and seed is
skipped, so an interrupted sweep continues where it stopped; a folder holding another
recipe is refused (or, when asked, moved aside and trained again). Every run under
``runs_dir`` is gathered into ``runs_dir/results.csv`` as runs finish, with the
published top-1 (and many/medium/few where published) of the preset a run reproduces
and our gap to it. The methods compared are those of Contrastive CutMix (Pan et al.,
"Enhanced Long-Tailed Recognition with Contrastive CutMix Augmentation", IEEE TIP
2024) and its baselines (logit adjustment: Menon et al., ICLR 2021; BCL: Zhu et al.,
CVPR 2022).

The plan and the reuse of run folders live in :mod:`ccmix.experiments.plan`, the tables of
results in :mod:`ccmix.experiments.results`; their public names are importable from here too.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from ccmix.config.rules import ConfigError
from ccmix.experiments.ablation import parse_baseline, report_text
from ccmix.experiments.grid import parse_grid_arguments
from ccmix.experiments.locations import notebooks_dir
from ccmix.experiments.notebook_params import NOTEBOOK_PARAMETERS
from ccmix.experiments.plan import (
    PlannedRun,
    check_reuse,
    differences_text,
    grid_points,
    is_completed,
    move_aside,
    plan_sweep,
    reuse_differences,
)
from ccmix.experiments.results import (
    collect_results,
    format_mean_std,
    per_run_view,
    published_results,
    reproduction_table,
    run_folders,
    run_row,
    setting_columns,
    summarize_runs,
    write_results,
)
from ccmix.experiments.stop import (
    SweepInterrupted,
    SweepStop,
    mark_interrupted,
    run_notebook_thread,
    stopped_sentence,
    sweep_stop_signals,
)
from ccmix.train.run_folder import RunFolder

LAUNCHERS = ("local", "slurm", "papermill")


# --------------------------------------------------------------------------- the sweep


def _default_executor(**kwargs):
    import papermill

    return papermill.execute_notebook(**kwargs)


def _check_launcher(launcher: str, jobs: int, slurm, cancel_on_stop: bool = False) -> None:
    if launcher not in LAUNCHERS:
        raise ConfigError(f"launcher={launcher!r} is not accepted; choose one of: {', '.join(LAUNCHERS)}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs={jobs!r} is not accepted; it must be an integer >= 1")
    if jobs > 1 and launcher != "local":
        raise ConfigError(f"jobs={jobs} is not accepted with launcher {launcher!r}; jobs sets how many runs the local "
                          "launcher packs at once (SLURM runs as many as the array_parallelism option allows)")
    if slurm and launcher != "slurm":
        raise ConfigError(f"slurm={slurm!r} is not accepted with launcher {launcher!r}; SLURM options need "
                          "launcher 'slurm'")
    if cancel_on_stop and launcher != "slurm":
        raise ConfigError(f"cancel_on_stop=True is not accepted with launcher {launcher!r}; it cancels SLURM jobs "
                          "(launcher 'slurm'), and the other launchers always stop their runs")


def _slurm_options(slurm: dict | None):
    """Return the checked SLURM options of a sweep (ConfigError when the cluster cannot take them)."""
    from ccmix.experiments.slurm import check_cluster, slurm_options

    options = slurm_options(slurm)
    check_cluster(options)
    return options


def _train_notebook(notebook: str | os.PathLike | None) -> Path:
    """Return the path of the train notebook the papermill launcher executes (default: the repository's)."""
    notebook_path = Path(notebook) if notebook is not None else notebooks_dir() / "train.ipynb"
    if not notebook_path.is_file():
        raise ValueError(f"notebook {str(notebook_path)!r} does not exist; give the path of train.ipynb")
    return notebook_path


class _SweepReport:
    """What a sweep says as its runs start and finish, and which runs completed or failed (with why)."""

    def __init__(self, runs: Path, to_train: int):
        self.runs, self.to_train = runs, to_train
        self.executed: list[str] = []
        self.failed: list[str] = []
        self.errors: dict[str, str] = {}
        self.started: dict[str, int] = {}

    def on_start(self, name: str, where: str) -> None:
        """Print that run ``name`` starts training on ``where``."""
        self.started[name] = len(self.started) + 1
        print(f"[{self.started[name]}/{self.to_train}] {name}: training on {where}", flush=True)

    def on_finish(self, outcome) -> None:
        """Record and print how a run ended, then rewrite ``results.csv``."""
        runs = self.runs
        if outcome.error is None and is_completed(runs / outcome.name):
            self.executed.append(outcome.name)
            final = (RunFolder(runs / outcome.name).read_summary() or {}).get("final") or {}
            top1 = f"final top-1 {final['top1']:.2f}" if final.get("top1") is not None else "no final top-1"
            print(f"{outcome.name}: completed, {top1}", flush=True)
        else:
            self.failed.append(outcome.name)
            self.errors[outcome.name] = outcome.error or "the run ended without a completed summary.json"
            where = f"; log {outcome.log_path}" if outcome.log_path else ""
            print(f"{outcome.name}: failed: {self.errors[outcome.name]}{where}", flush=True)
        write_results(runs)


def run_sweep(
    methods: Sequence[str],
    imbs: Sequence[float],
    seeds: Sequence[int],
    base_params: dict | None = None,
    runs_dir: str | os.PathLike = "papermill_runs",
    launcher: str = "local",
    jobs: int = 1,
    slurm: dict | None = None,
    redo_mismatched: bool = False,
    kernel: str = "python3",
    notebook: str | os.PathLike | None = None,
    progress: bool = True,
    log_output: bool = False,
    stop_on_error: bool = False,
    execute: Callable | None = None,
    python: str | None = None,
    cancel_on_stop: bool = False,
    grid: dict | None = None,
    baseline: str | None = None,
) -> pd.DataFrame:
    """Train every (method, imb, seed) and return the mean ± std table of the grid beside the published numbers.

    ``base_params`` are train-notebook parameters shared by every point (e.g. dataset, epochs,
    overrides). Each point trains into ``runs_dir/<run name>`` with the ``launcher`` (see the module
    docstring): ``jobs`` runs at once for ``local``; ``slurm`` takes the options of
    :class:`ccmix.experiments.slurm.SlurmOptions` as a dict. A folder that already holds a completed run of
    the same recipe and seed is skipped, an unfinished one resumes; a folder holding another recipe or
    seed stops the sweep before anything runs, unless ``redo_mismatched`` moves it to
    ``runs_dir/replaced/`` and trains again. As runs finish, every run under ``runs_dir`` is written to
    ``runs_dir/results.csv``. The returned table (see :func:`summarize_runs`) covers this grid's
    points; ``table.attrs`` lists the points "executed" (completed now), "skipped" and "failed" (run
    names), and "errors" (run name -> sentence). Papermill only: ``kernel``, ``notebook``,
    ``progress``, ``log_output``, ``stop_on_error`` and ``execute`` (replaces
    ``papermill.execute_notebook``, same keyword arguments). ``python`` is the interpreter of the
    local launcher's processes (default: this one). SIGINT or SIGTERM stops the sweep (see the module
    docstring) and raises SweepInterrupted; ``cancel_on_stop`` then cancels the unfinished SLURM jobs.
    ``grid`` varies recipe fields over lists of values (``{"omega": [0, 0.1]}``) on top of methods x imbs x
    seeds; at the end the grid's points are printed with their 95 % CIs over seeds and, with ``baseline``
    ("field=value"), every point's difference to its baseline point (:mod:`ccmix.experiments.ablation`).
    """
    _check_launcher(launcher, jobs, slurm, cancel_on_stop)
    options = _slurm_options(slurm) if launcher == "slurm" else None
    notebook_path = _train_notebook(notebook) if launcher == "papermill" else None
    plan = plan_sweep(methods, imbs, seeds, base_params, runs_dir, grid=grid)
    if baseline is not None:  # checked before anything runs, against the values the sweep will train
        parse_baseline(baseline, pd.DataFrame([run.config.to_dict() for run in plan]), runs="planned run")
    runs = Path(runs_dir).expanduser().resolve()
    check_reuse(plan, runs, redo_mismatched)

    skipped = [run.name for run in plan if is_completed(run.out_dir)]
    to_train = [run for run in plan if run.name not in skipped]
    for run in plan:
        if run.name in skipped:
            print(f"{run.name}: completed already, skipped", flush=True)
    runs.mkdir(parents=True, exist_ok=True)
    report = _SweepReport(runs, len(to_train))

    with sweep_stop_signals() as stop:
        if launcher == "local":
            from ccmix.experiments.local import run_packed

            commands = [(run.name, run.out_dir, run.command(python)) for run in to_train]
            run_packed(commands, jobs, on_start=report.on_start, on_finish=report.on_finish, stop=stop,
                       gpus_per_run=max(run.nproc_per_node for run in to_train) if to_train else 1)
        elif launcher == "slurm":
            from ccmix.experiments.slurm import run_slurm

            arguments = [(run.name, run.out_dir, run.train_arguments()) for run in to_train]
            run_slurm(arguments, options, runs / "slurm", on_start=report.on_start, on_finish=report.on_finish,
                      stop=stop, cancel_on_stop=cancel_on_stop)
        else:
            _run_notebooks(to_train, runs, notebook_path, execute or _default_executor, report.on_start,
                           report.on_finish, stop, kernel=kernel, progress=progress, log_output=log_output,
                           stop_on_error=stop_on_error)
        if stop.requested:
            raise _stopped(stop, to_train, report, runs)

    return _grid_table(plan, runs, report, skipped, baseline)


def _grid_table(plan: list[PlannedRun], runs: Path, report: _SweepReport, skipped: list[str],
                baseline: str | None = None) -> pd.DataFrame:
    """Write results.csv, print the grid's mean ± std table and counts, and return the table (see run_sweep)."""
    write_results(runs)
    grid_results = collect_results([run.out_dir for run in plan if (run.out_dir / "summary.json").is_file()])
    table = summarize_runs(grid_results) if not grid_results.empty else pd.DataFrame(columns=["runs", "seeds"])
    executed, failed = report.executed, report.failed
    table.attrs.update(executed=executed, skipped=skipped, failed=failed, errors=report.errors,
                       results_csv=str(runs / "results.csv"))
    if not table.empty:
        print(format_mean_std(table).to_string(), flush=True)
        try:
            ablation = report_text(grid_results, baseline)
        except ConfigError as error:  # e.g. the baseline point failed: the runs are still reported
            ablation = f"{report_text(grid_results)}\nno comparison with the baseline: {error}"
        print(ablation, flush=True)
    print(f"{len(executed)} trained, {len(skipped)} skipped, {len(failed)} failed; every run: {runs / 'results.csv'}",
          flush=True)
    return table


def _stopped(stop: SweepStop, to_train: list[PlannedRun], report: _SweepReport, runs: Path) -> SweepInterrupted:
    """Return the one-line SweepInterrupted of a stopped sweep, after recording its unfinished runs' state."""
    unfinished = [run for run in to_train if run.name in report.started and not is_completed(run.out_dir)]
    if not stop.left_running:  # a SLURM job still running owns its folder: nothing is recorded for it
        mark_interrupted([(run.out_dir, run.config) for run in unfinished],
                         f"the sweep was stopped by {stop.name} before this run recorded its state")
    write_results(runs)
    hint = ("once they end, run the same sweep command again to gather their results" if stop.left_running else
            "run the same sweep command again to resume")
    return SweepInterrupted(stopped_sentence(stop, len(unfinished), hint), stop.signal_number)


def _run_notebooks(plan: list[PlannedRun], runs: Path, notebook_path: Path, execute: Callable, on_start, on_finish,
                   stop: SweepStop, kernel: str, progress: bool, log_output: bool, stop_on_error: bool) -> None:
    """Execute the train notebook for each run, one after another (the papermill launcher).

    Each notebook runs in a helper thread, so that this (main) thread keeps the sweep's signal
    handlers; a stop interrupts the kernel as the notebook's interrupt button does, and the run
    records itself as interrupted.
    """
    from ccmix.experiments.local import RunOutcome, failure_sentence

    for run in plan:
        if stop.requested:
            break
        output = runs / f"{run.name}.ipynb"
        on_start(run.name, f"the {kernel} kernel")
        kwargs = dict(input_path=str(notebook_path), output_path=str(output), parameters=run.params,
                      kernel_name=kernel, cwd=str(notebook_path.parent), progress_bar=progress, log_output=log_output)
        error = run_notebook_thread(execute, kwargs, stop)
        if stop.requested:
            break
        if error is None:
            on_finish(RunOutcome(run.name, None, output))
        elif stop_on_error or not isinstance(error, Exception):
            raise error
        else:  # one failed point must not lose the others; it is reported
            on_finish(RunOutcome(run.name, failure_sentence(str(error), type(error).__name__), output))


# --------------------------------------------------------------------------- command line


def _parse_list(text: str, kind: type, name: str) -> list:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        values = [kind(p) for p in parts]
    except ValueError:
        what = {int: "integers", float: "numbers", str: "names"}[kind]
        raise ConfigError(f"--{name} {text!r} is not accepted; give comma-separated {what}") from None
    if not values:
        raise ConfigError(f"--{name} {text!r} is not accepted; give at least one value")
    return values


def _parse_param(item: str, option: str = "--param") -> tuple[str, object]:
    """Return (name, value) of ``--param name=value``; the value is read as YAML, like papermill's ``-y``."""
    import yaml

    if "=" not in item:
        raise ConfigError(f"{option} {item!r} is not of the form name=value")
    name, text = (part.strip() for part in item.split("=", 1))
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        raise ConfigError(f"{option} {item!r} does not parse; write the value as YAML, e.g. "
                          "overrides={topk: 10}") from None
    return name, value


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``python -m ccmix sweep``."""
    defaults = NOTEBOOK_PARAMETERS["sweep"]
    parser = argparse.ArgumentParser(
        prog="python -m ccmix sweep",
        description="Train over methods x imbalances x seeds: JOBS local `python -m ccmix train` processes at once, "
                    "a SLURM job array (--launcher slurm), or train.ipynb through papermill. Completed runs of the "
                    "same recipe are skipped and every run is collected into RUNS_DIR/results.csv beside the "
                    "published top-1. Exit status: 0 every run completed, 1 some failed, 2 bad input.",
    )
    parser.add_argument("--methods", default=",".join(defaults["methods"]), help="comma-separated, e.g. la,concutmix")
    parser.add_argument("--imbs", default=",".join(str(i) for i in defaults["imbs"]), help="comma-separated, e.g. 100,50")
    parser.add_argument("--seeds", default=",".join(str(s) for s in defaults["seeds"]), help="comma-separated, e.g. 0,1,2")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="a train-notebook parameter for every point, value as YAML (repeatable), "
                             "e.g. --param dataset=cifar10 --param 'overrides={topk: 3}'")
    parser.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2,...",
                        help="vary a recipe field over these values, on top of methods x imbs x seeds (repeatable: "
                             "the cartesian product), e.g. --grid omega=0,0.0078,0.1 --grid topk=1,3")
    parser.add_argument("--baseline", default=None, metavar="FIELD=VALUE",
                        help="compare every grid point with the point that has FIELD=VALUE and the same other values "
                             "(difference with a 95%% CI), e.g. --baseline omega=0")
    parser.add_argument("--runs-dir", default=defaults["runs_dir"], help="where run folders go")
    parser.add_argument("--launcher", choices=LAUNCHERS, default=defaults["launcher"],
                        help="local processes (default), a SLURM job array through submitit, or papermill")
    parser.add_argument("--jobs", type=int, default=defaults["jobs"],
                        help="local launcher: runs trained at once (default 1); several GPUs are shared round-robin")
    parser.add_argument("--redo-mismatched", action="store_true",
                        help="a run folder holding another recipe or seed is moved to RUNS_DIR/replaced/ and trained "
                             "again (without it the sweep refuses)")
    slurm = parser.add_argument_group("SLURM (--launcher slurm)")
    slurm.add_argument("--partition", default=None, help="SLURM partition (default: the cluster's)")
    slurm.add_argument("--gpus-per-run", type=int, default=None, help="GPUs per run, one process each (default 1)")
    slurm.add_argument("--time-min", type=int, default=None,
                       help="time limit of one task in minutes (default 1440); longer runs are requeued and resume")
    slurm.add_argument("--no-requeue", action="store_true", help="do not requeue preempted or timed-out tasks")
    slurm.add_argument("--slurm", action="append", default=[], metavar="NAME=VALUE",
                       help="any other SlurmOptions field, value as YAML (repeatable), e.g. --slurm cpus_per_run=8 "
                            "--slurm 'extra={slurm_account: lab}'")
    papermill = parser.add_argument_group("papermill (--launcher papermill)")
    papermill.add_argument("--kernel", default=defaults["kernel"], help="Jupyter kernel name (default python3)")
    papermill.add_argument("--notebook", default=None, help="the training notebook (default notebooks/train.ipynb)")
    papermill.add_argument("--log-output", action="store_true", help="stream the notebooks' output to this terminal")
    slurm.add_argument("--cancel-on-stop", action="store_true",
                       help="on Ctrl-C or SIGTERM cancel the sweep's unfinished jobs (without it they keep running "
                            "on the cluster and the sweep only stops waiting)")
    return parser


def _slurm_arguments(args: argparse.Namespace) -> dict | None:
    options = dict(_parse_param(item, "--slurm") for item in args.slurm)
    for key, value in (("partition", args.partition), ("gpus_per_run", args.gpus_per_run),
                       ("time_min", args.time_min), ("requeue", False if args.no_requeue else None)):
        if value is not None:
            options[key] = value
    return options or None


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m ccmix sweep`` with ``argv``; return 0 when every point completed, 1 when some failed,
    2 on a bad argument."""
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    try:
        imbs = [int(v) if float(v).is_integer() else v for v in _parse_list(args.imbs, float, "imbs")]
        base_params = dict(_parse_param(item) for item in args.param)
        grid = parse_grid_arguments(args.grid)
        table = run_sweep(
            methods=_parse_list(args.methods, str, "methods"), imbs=imbs, seeds=_parse_list(args.seeds, int, "seeds"),
            base_params=base_params, runs_dir=args.runs_dir, launcher=args.launcher, jobs=args.jobs,
            slurm=_slurm_arguments(args), redo_mismatched=args.redo_mismatched, kernel=args.kernel,
            notebook=args.notebook, log_output=args.log_output, cancel_on_stop=args.cancel_on_stop, grid=grid,
            baseline=args.baseline,
        )
    except (ConfigError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except SweepInterrupted as error:
        print(f"interrupted: {error}", file=sys.stderr)
        return error.exit_status
    return 1 if table.attrs.get("failed") else 0


__all__ = [
    "LAUNCHERS", "PlannedRun", "SweepInterrupted", "collect_results", "format_mean_std", "grid_points", "is_completed", "main",
    "move_aside", "per_run_view", "plan_sweep", "published_results", "differences_text", "reproduction_table",
    "reuse_differences", "run_folders", "run_row", "run_sweep", "setting_columns", "summarize_runs", "write_results",
]

