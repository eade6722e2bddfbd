"""Sweep runs on a SLURM cluster: one job array through submitit, requeued on preemption.

Each array task trains one run folder exactly as ``python -m ccmix train`` would
(Contrastive CutMix: Pan et al., "Enhanced Long-Tailed Recognition with Contrastive
CutMix Augmentation", IEEE TIP 2024). When SLURM preempts a task or its time limit
nears, submitit's checkpoint hook requeues the same call; since a run folder resumes
from its last checkpoint, the requeued task continues the run. Results are gathered
as tasks finish. submitit's ``local`` and ``debug`` executors run the same jobs on
this machine, which is how the launcher is tested without a cluster.

On SIGINT or SIGTERM the sweep stops waiting; the jobs keep running on the cluster (and
their results are gathered by running the sweep again) unless ``cancel_on_stop`` asks to
cancel them, in which case SLURM stops them and each records itself as interrupted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import submitit

from ccmix.config.rules import ConfigError
from ccmix.experiments.local import RunOutcome, failure_sentence
from ccmix.experiments.stop import GRACE_SECONDS, SweepStop

CLUSTERS = ("slurm", "local", "debug")


@dataclass(frozen=True)
class SlurmOptions:
    """What the job array asks of SLURM; one array task trains one run."""

    partition: str | None = None  # None: the cluster's default partition
    gpus_per_run: int = 1  # GPUs (and processes, one a GPU) per run; 0 trains on the CPU
    time_min: int = 24 * 60  # time limit of one task, minutes; a run that needs longer is requeued and resumes
    cpus_per_run: int | None = None  # CPU cores per process (data loading); None: the cluster's default
    mem_gb: float | None = None  # memory per node, GB; None: the cluster's default
    array_parallelism: int | None = None  # array tasks running at once; None: all
    requeue: bool = True  # requeue a preempted or timed-out task; it resumes its run folder
    setup: tuple[str, ...] = ()  # shell lines run before each task, e.g. "module load cuda"
    cluster: str = "slurm"  # "local" or "debug": submitit runs the same jobs on this machine
    poll_seconds: float = 30.0  # how often finished tasks are looked for
    extra: dict = field(default_factory=dict)  # further submitit parameters, e.g. {"slurm_account": "lab"}


def slurm_options(values: Mapping | SlurmOptions | None) -> SlurmOptions:
    """Return :class:`SlurmOptions` from a mapping of its field names; ConfigError (one sentence) on a bad entry."""
    if isinstance(values, SlurmOptions):
        values = {f.name: getattr(values, f.name) for f in fields(SlurmOptions)}
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"slurm={values!r} is not accepted; give a mapping of SLURM options, e.g. {{'partition': 'gpu'}}")
    known = [f.name for f in fields(SlurmOptions)]
    for key in values:
        if key not in known:
            raise ConfigError(f"SLURM option {key!r} is not accepted; accepted: {', '.join(known)}")
    options = SlurmOptions(**{k: (tuple(v) if k == "setup" and isinstance(v, list) else v) for k, v in values.items()})
    _check_int("gpus_per_run", options.gpus_per_run, 0, optional=False)
    _check_int("time_min", options.time_min, 1, optional=False)
    _check_int("cpus_per_run", options.cpus_per_run, 1, optional=True)
    _check_int("array_parallelism", options.array_parallelism, 1, optional=True)
    if options.partition is not None and (not isinstance(options.partition, str) or not options.partition):
        raise ConfigError(f"SLURM option partition={options.partition!r} is not accepted; give a partition name or None")
    if options.mem_gb is not None and (isinstance(options.mem_gb, bool) or not isinstance(options.mem_gb, (int, float))
                                       or options.mem_gb <= 0):
        raise ConfigError(f"SLURM option mem_gb={options.mem_gb!r} is not accepted; give a number > 0 or None")
    if not isinstance(options.requeue, bool):
        raise ConfigError(f"SLURM option requeue={options.requeue!r} is not accepted; give true or false")
    if not all(isinstance(line, str) for line in options.setup):
        raise ConfigError(f"SLURM option setup={options.setup!r} is not accepted; give a list of shell lines")
    if options.cluster not in CLUSTERS:
        raise ConfigError(f"SLURM option cluster={options.cluster!r} is not accepted; choose one of: {', '.join(CLUSTERS)}")
    if isinstance(options.poll_seconds, bool) or not isinstance(options.poll_seconds, (int, float)) \
            or options.poll_seconds <= 0:
        raise ConfigError(f"SLURM option poll_seconds={options.poll_seconds!r} is not accepted; give a number > 0")
    if not isinstance(options.extra, Mapping):
        raise ConfigError(f"SLURM option extra={options.extra!r} is not accepted; give a mapping of submitit parameters")
    return options


def check_cluster(options: SlurmOptions) -> None:
    """Raise ConfigError when the SLURM commands the launcher needs are not on this machine."""
    if options.cluster == "slurm" and shutil.which("srun") is None:
        raise ConfigError(
            "launcher 'slurm' is not accepted here: SLURM's srun is not on the PATH; run the sweep on a login node "
            "of the cluster, or give the SLURM option cluster='local' to run the same jobs on this machine"
        )


def _check_int(name: str, value, minimum: int, optional: bool) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        accepted = f"an integer >= {minimum}" + (" or None" if optional else "")
        raise ConfigError(f"SLURM option {name}={value!r} is not accepted; give {accepted}")


# --------------------------------------------------------------------------- what runs inside a task


def train_in_job(arguments: list[str]) -> dict:
    """Return the summary of ``python -m ccmix train <arguments>`` run in this task (a rank when a run has
    several GPUs: the task's tasks form the process group)."""
    from ccmix.experiments.commands import build_parser, train_config
    from ccmix.train.fit import fit

    if submitit.JobEnvironment().num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export()  # RANK, WORLD_SIZE, MASTER_ADDR, ... for fit
    args = build_parser().parse_args(list(arguments))
    config, _ = train_config(args.preset, args.set)
    return fit(config, args.out, preset=args.preset)


class RequeueingTraining(submitit.helpers.Checkpointable):
    """A task that trains one run and, when preempted or out of time, is requeued with the same arguments.

    Nothing needs saving at that moment: the run folder's last checkpoint is the state, and the
    requeued call resumes from it (submitit's default ``checkpoint`` resubmits the same call).
    """

    def __call__(self, arguments: list[str]) -> dict:
        """Return the run's summary (see :func:`train_in_job`)."""
        return train_in_job(arguments)


# --------------------------------------------------------------------------- submitting and gathering


def executor_for(options: SlurmOptions, folder: Path, name: str = "ccmix-sweep") -> submitit.AutoExecutor:
    """Return a submitit executor for ``options`` whose logs go to ``folder/<job id>``."""
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=options.cluster)
    tasks = max(1, options.gpus_per_run)
    parameters = {"name": name, "timeout_min": options.time_min, "tasks_per_node": tasks, "nodes": 1,
                  "gpus_per_node": options.gpus_per_run, "cpus_per_task": options.cpus_per_run,
                  "mem_gb": options.mem_gb}
    if options.cluster == "slurm":
        parameters.update(slurm_partition=options.partition, slurm_array_parallelism=options.array_parallelism,
                          slurm_setup=list(options.setup))
    elif options.cluster == "local" and options.setup:
        parameters["local_setup"] = list(options.setup)
    parameters.update(options.extra)
    try:
        executor.update_parameters(**{k: v for k, v in parameters.items() if v is not None})
    except (NameError, ValueError, AssertionError) as error:  # submitit's own checks of parameter names and types
        reason = str(error).strip().splitlines()[0]
        raise ConfigError(f"SLURM options {parameters!r} are not accepted by submitit: {reason}") from None
    return executor


def run_slurm(
    commands: Sequence[tuple[str, Path, list[str]]],
    options: SlurmOptions,
    folder: Path,
    on_start: Callable[[str, str], None] | None = None,
    on_finish: Callable[[RunOutcome], None] | None = None,
    stop: SweepStop | None = None,
    cancel_on_stop: bool = False,
    grace_seconds: float = GRACE_SECONDS,
) -> list[RunOutcome]:
    """Submit ``(name, run folder, train arguments)`` entries as one job array and return their outcomes in
    finishing order, calling ``on_finish`` as each task ends.

    Once ``stop`` holds a request the waiting ends: the unfinished jobs keep running (``stop.left_running``),
    or with ``cancel_on_stop`` are cancelled and given ``grace_seconds`` to end; ``stop.note`` says which.
    An interrupt that arrives as KeyboardInterrupt cancels them only with ``cancel_on_stop`` too.
    """
    if not commands:
        return []
    executor = executor_for(options, folder)
    task = RequeueingTraining() if options.requeue else train_in_job
    submitted = executor.map_array(task, [list(arguments) for _, _, arguments in commands])
    pending = {job.job_id: (job, name) for job, (name, _, _) in zip(submitted, commands)}
    for job, (name, _, _) in zip(submitted, commands):
        if on_start is not None:
            on_start(name, f"job {job.job_id}")
    outcomes: list[RunOutcome] = []
    try:
        while pending and not (stop is not None and stop.requested):
            for job_id, (job, name) in list(pending.items()):
                if not job.done():
                    continue
                del pending[job_id]
                outcome = _outcome(job, name)
                outcomes.append(outcome)
                if on_finish is not None:
                    on_finish(outcome)
            if pending:
                _sleep(options.poll_seconds, stop)
    except BaseException:
        if cancel_on_stop:
            for job, _ in pending.values():
                _cancel(job, options)
        raise
    if pending and stop is not None:
        _leave_or_cancel([job for job, _ in pending.values()], options, stop, cancel_on_stop, grace_seconds)
    return outcomes


def _sleep(seconds: float, stop: SweepStop | None) -> None:
    """Sleep ``seconds``, waking early when a stop is requested."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not (stop is not None and stop.requested):
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


def _leave_or_cancel(jobs: list, options: SlurmOptions, stop: SweepStop, cancel: bool, grace_seconds: float) -> None:
    """Cancel the unfinished ``jobs`` and wait up to ``grace_seconds`` for them to end, or leave them running;
    record on ``stop`` what was done."""
    count = f"{len(jobs)} unfinished job{'s' if len(jobs) != 1 else ''} ({', '.join(job.job_id for job in jobs)})"
    if cancel:
        for job in jobs:
            _cancel(job, options)
        deadline = time.monotonic() + grace_seconds
        while not all(job.done() for job in jobs) and time.monotonic() < deadline:
            time.sleep(0.5)
        stop.note = f"its {count} {'were' if len(jobs) != 1 else 'was'} cancelled"
        return
    if options.cluster == "debug":  # submitit's debug executor runs the jobs in this process: they end with it
        stop.note = f"its {count} ended with it"
        return
    stop.left_running = True
    if options.cluster == "slurm":
        how = "scancel " + " ".join(sorted({job.job_id.split("_")[0] for job in jobs}))
    else:  # submitit's local executor: a job is a controller process that forwards SIGTERM to its tasks
        how = "kill " + " ".join(job.job_id for job in jobs)
    stop.note = (f"its {count} {'keep' if len(jobs) != 1 else 'keeps'} running on the {options.cluster} cluster; "
                 f"cancel {'them' if len(jobs) != 1 else 'it'} with `{how}`, or stop the sweep with --cancel-on-stop")


def _cancel(job, options: SlurmOptions) -> None:
    """Cancel ``job``: scancel on a cluster; on this machine SIGTERM to submitit's controller, which forwards it to
    the tasks (its own cancel sends SIGINT, which the controller answers with a traceback)."""
    if options.cluster != "local":
        job.cancel(check=False)
        return
    with contextlib.suppress(ProcessLookupError, ValueError):
        os.kill(int(job.job_id), signal.SIGTERM)


def _outcome(job, name: str) -> RunOutcome:
    log_path = Path(job.paths.stderr)
    error = job.exception()
    if error is None:
        return RunOutcome(name, None, log_path)
    return RunOutcome(name, failure_sentence(str(error), f"job {job.job_id} failed ({type(error).__name__})"),
                      log_path)


__all__ = ["CLUSTERS", "RequeueingTraining", "SlurmOptions", "check_cluster", "executor_for", "run_slurm", "slurm_options",
           "train_in_job"]
