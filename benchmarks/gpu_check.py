"""GPU check of ccmix: one plan of at most 420 seconds of commands, each stage with its own budget.

    OUT=results benchmarks/gpu_check.sh     on a CUDA machine (needs data/cifar10-jpg.tar.gz, see below)
    TINY=1 benchmarks/gpu_check.sh          the same stages, shrunk (tiny encoder, synthetic data, 1 epoch), on a CPU

Stages, in order (budget in seconds; a stage over its budget gets SIGTERM, then SIGKILL GRACE seconds later,
before its budget ends):
  environment (40)       python, torch, CUDA, cuDNN, card, driver; TF32 and deterministic settings; extracts
                         data/cifar10-jpg.tar.gz into data/cifar10-jpg/ when that folder is missing
  gpu-tests (65)         pytest -m gpu over the files that hold gpu-marked tests
  step-throughput (65)   eager vs compiled training step, concutmix ResNet-32, batch 256, data excluded
                         (benchmarks/step_seconds.py); on CUDA the compiled/eager samples/s ratio must be > 1
  step-throughput-deterministic (40)  the same with deterministic kernels, and what they cost
  full-run (80, plus what the earlier stages left unused and, with one GPU, the ddp stage's budget)
                         the 200-epoch cifar10_imb100 run on the JPEG tree (dataset=folder, pipeline=fast,
                         compile=true, evaluated every epoch); stopped at its budget, it reports the epochs that
                         fitted as "extrapolated", with the projected full-run minutes
  packed-runs (60)       JOBS runs at once (python -m ccmix sweep --jobs JOBS): total samples over one shared
                         wall-clock window (first run's first epoch to last run's last epoch)
  ddp (30)               2-process DistributedDataParallel (torchrun) when a second GPU exists
  imagenet-data-path (40)  python -m ccmix bench --recipe imagenet (1024 generated JPEGs; TINY: 32), when the
                         bench has --recipe

Files: OUT/gpu_check.json (rewritten atomically after each stage: per stage its status, one of passed, failed,
skipped, not-applicable, its reason, seconds and figures; the overall status) and OUT/gpu_check.log (every
stage's output); the training stages' run folders under OUT/runs/ (a rerun with the same OUT resumes the
full run; the packed runs start afresh).
Exit status: 0 when every stage passed or does not apply, 1 when one failed or was skipped, 2 when the check
refused to start (one sentence on stderr).

Environment:
  OUT                    results folder (required unless TINY=1, which defaults to a new temporary folder)
  TINY=1                 CPU, tiny encoder, synthetic data; needs no archive
  GPU_CHECK_FAIL_STAGE   a stage name: that stage's command becomes `false` (to check that a failure is reported)
  GPU_CHECK_STAGES       comma-separated stage names to run; the others are reported skipped
  GPU_CHECK_BUDGETS      e.g. "full-run=150,gpu-tests=40": other budgets, the plan still at most 420 s
  GPU_CHECK_ROOT         repository root (default: the folder above this file)
  JOBS                   runs of the packed-runs stage (default 4)
  PYTHON                 interpreter of the stages (default: the one running this file)
Data: copy cifar10-jpg.tar.gz (train/<class>/*.jpg and test/<class>/*.jpg) into data/ of the repository, or
extract it there as data/cifar10-jpg/.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

PLAN_SECONDS = 420
BUDGETS = {"environment": 40, "gpu-tests": 65, "step-throughput": 65, "step-throughput-deterministic": 40,
           "full-run": 80, "packed-runs": 60, "ddp": 30, "imagenet-data-path": 40}
GRACE = 10  # seconds (at most a fifth of a budget) between SIGTERM and SIGKILL (a training run stops at a step boundary and writes its summary)
STATUSES = ("passed", "failed", "skipped", "not-applicable")
TREE, ARCHIVE = Path("data/cifar10-jpg"), Path("data/cifar10-jpg.tar.gz")
FULL_EPOCHS, PACKED_EPOCHS = 200, 3


class Refused(Exception):
    """The check cannot start: one sentence for stderr."""


class Stopped(Exception):
    """The check itself got SIGTERM or SIGINT: the running stage is stopped and recorded as failed."""


def raise_stopped(signum: int, frame) -> None:
    """Signal handler: stop the check where it stands (the running command is stopped in turn)."""
    raise Stopped(f"the check got {signal.Signals(signum).name}")


@dataclass
class Outcome:
    """How one stage ended."""

    status: str
    reason: str
    figures: dict = field(default_factory=dict)
    seconds: float = 0.0
    budget_seconds: float = 0.0


@dataclass
class Completed:
    """A finished command: exit status (None when it was stopped), its output lines and wall seconds."""

    returncode: int | None
    lines: list[str]
    seconds: float

    def failure(self, what: str) -> str | None:
        """Return one sentence when the command was stopped or exited non-zero, else None."""
        if self.returncode is None:
            return f"{what} was stopped at its budget after {self.seconds:.0f} s"
        if self.returncode != 0:
            tail = next((line.strip() for line in reversed(self.lines) if line.strip()), "no output")
            return f"{what} exited with status {self.returncode}; its output ends: {tail[:300]}"
        return None


@dataclass
class Settings:
    """What the environment asked for, checked before anything heavy is imported."""

    root: Path
    out: Path
    tiny: bool
    budgets: dict[str, int]
    stages: tuple[str, ...]
    fail_stage: str | None
    python: str
    jobs: int


def parse_budgets(text: str) -> dict[str, int]:
    """Return BUDGETS with GPU_CHECK_BUDGETS's changes; Refused when a name, a value or the total is wrong."""
    budgets = dict(BUDGETS)
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        if name not in budgets or not value.isdigit() or int(value) < 1:
            raise Refused(f"GPU_CHECK_BUDGETS item {item!r} is not accepted; give stage=seconds with a stage "
                          f"among {', '.join(BUDGETS)} and a whole number of seconds >= 1")
        budgets[name] = int(value)
    if sum(budgets.values()) > PLAN_SECONDS:
        raise Refused(f"GPU_CHECK_BUDGETS adds up to {sum(budgets.values())} s; the plan must stay within "
                      f"{PLAN_SECONDS} s")
    return budgets


def stage_names(text: str, variable: str) -> tuple[str, ...]:
    """Return the stage names of a comma-separated list; Refused when one is unknown."""
    names = tuple(filter(None, (part.strip() for part in text.split(","))))
    unknown = [name for name in names if name not in BUDGETS]
    if unknown:
        raise Refused(f"{variable} {unknown[0]!r} is not a stage; give some of {', '.join(BUDGETS)}")
    return names


def check_data(root: Path) -> None:
    """Refused unless the CIFAR-10 JPEG tree or its archive is inside the repository's data/ folder."""
    tree = root / TREE
    if (tree / "train").is_dir() and (tree / "test").is_dir():
        return
    if tree.exists():
        raise Refused(f"{TREE} has no train/ and test/ folders; remove it so that {ARCHIVE} is extracted there")
    if not (root / ARCHIVE).is_file():
        raise Refused(f"no CIFAR-10 JPEG data: copy cifar10-jpg.tar.gz into {ARCHIVE.parent}/ of the repository "
                      f"(or its tree, with train/ and test/, into {TREE}/), or run TINY=1, which needs none")


def read_settings(environ: dict[str, str]) -> Settings:
    """Return the settings of ``environ``; Refused (one sentence) on anything wrong, before torch is imported."""
    root = Path(environ.get("GPU_CHECK_ROOT") or Path(__file__).resolve().parents[1]).resolve()
    tiny = environ.get("TINY", "0") == "1"
    budgets = parse_budgets(environ.get("GPU_CHECK_BUDGETS", ""))
    stages = stage_names(environ.get("GPU_CHECK_STAGES", ""), "GPU_CHECK_STAGES") or tuple(BUDGETS)
    fail = stage_names(environ.get("GPU_CHECK_FAIL_STAGE", ""), "GPU_CHECK_FAIL_STAGE")
    if len(fail) > 1:
        raise Refused(f"GPU_CHECK_FAIL_STAGE {','.join(fail)!r} names several stages; give one")
    jobs = environ.get("JOBS", "4")
    if not jobs.isdigit() or int(jobs) < 2:
        raise Refused(f"JOBS {jobs!r} is not accepted; give a whole number >= 2 of runs to pack")
    if not tiny:
        check_data(root)
        if not environ.get("OUT"):
            raise Refused("OUT is not set; give the folder for the results (or TINY=1 for a quick CPU try)")
    out = Path(environ.get("OUT") or tempfile.mkdtemp(prefix="ccmix-gpu-check-")).resolve()
    python = environ.get("PYTHON") or sys.executable
    if os.sep in python:  # a path: absolute, as the stages run in the repository root (abspath keeps a venv's link)
        python = os.path.abspath(python)
    return Settings(root=root, out=out, tiny=tiny, budgets=budgets, stages=stages,
                    fail_stage=fail[0] if fail else None, python=python,
                    jobs=int(jobs))


class Check:
    """Runs stage commands under their budgets, appends their output to one log and keeps one JSON up to date."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.out = settings.out
        self.runs = settings.out / "runs"
        self.json_path, self.log_path = settings.out / "gpu_check.json", settings.out / "gpu_check.log"
        self.outcomes: dict[str, Outcome] = {}
        self.facts: dict = {}  # the environment stage's figures
        self.started = time.time()
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_path.write_text("")
        self.environ = dict(os.environ, PYTHONPATH=os.pathsep.join(
            filter(None, [str(settings.root), os.environ.get("PYTHONPATH")])), PYTHONUNBUFFERED="1")
        if settings.tiny:  # small CPU work: one torch thread a process, as the stages run several processes at once
            self.environ.setdefault("OMP_NUM_THREADS", "1")

    def log(self, text: str) -> None:
        """Append ``text`` to the log and print it."""
        with open(self.log_path, "a") as handle:
            handle.write(text + "\n")
        print(text, flush=True)

    def command(self, argv: list[str], seconds: float, watch=None, environ: dict | None = None) -> Completed:
        """Run ``argv`` in the repository root for at most ``seconds``: SIGTERM GRACE seconds before, then SIGKILL.

        Output goes to the log (and is returned); ``watch`` is called about twice a second while it runs.
        """
        started = time.monotonic()
        self.log(f"$ {' '.join(argv)}")
        with open(self.log_path, "a") as log, tempfile.TemporaryFile("w+") as capture:
            process = subprocess.Popen(argv, cwd=self.settings.root, stdout=capture, stderr=subprocess.STDOUT,
                                       env=environ or self.environ, start_new_session=True)
            stopped = self._wait(process, started, seconds, watch)
            capture.seek(0)
            output = capture.read()
            log.write(output)
        return Completed(None if stopped else process.returncode, output.splitlines(), time.monotonic() - started)

    @staticmethod
    def _wait(process: subprocess.Popen, started: float, seconds: float, watch) -> bool:
        """Wait for ``process``; True when it had to be stopped (SIGTERM to its group, then SIGKILL)."""
        term_at, kill_at = started + seconds - min(GRACE, 0.2 * seconds), started + seconds
        stopped = False
        try:
            while process.poll() is None:
                now = time.monotonic()
                if now >= kill_at:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                elif now >= term_at and not stopped:
                    stopped = True
                    os.killpg(process.pid, signal.SIGTERM)
                if watch is not None:
                    watch()
                time.sleep(0.5)
        except BaseException:  # the check itself is being stopped: so is the command, within GRACE seconds
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(GRACE)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
            raise
        if watch is not None:
            watch()
        return stopped

    def python(self, *arguments: str) -> list[str]:
        """Return the command line of the stages' interpreter with ``arguments``."""
        return [self.settings.python, *arguments]

    def record(self, name: str, outcome: Outcome) -> None:
        """Keep ``outcome`` and rewrite gpu_check.json atomically."""
        if outcome.status not in STATUSES:
            raise ValueError(f"stage {name}: status {outcome.status!r} is not one of {', '.join(STATUSES)}")
        self.outcomes[name] = outcome
        self.log(f"gpu_check: {name} {outcome.status} in {outcome.seconds:.1f} s: {outcome.reason}")
        left = [stage for stage in BUDGETS if stage not in self.outcomes]
        bad = [stage for stage, o in self.outcomes.items() if o.status in ("failed", "skipped")]
        overall = "failed" if bad else ("incomplete" if left else "passed")
        document = {
            "status": overall, "failed_or_skipped": bad, "stages_left": left, "tiny": self.settings.tiny,
            "plan_seconds": PLAN_SECONDS, "budgets": self.settings.budgets,
            "seconds": round(time.time() - self.started, 1),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "stages": {stage: asdict(o) for stage, o in self.outcomes.items()},
        }
        partial = self.json_path.with_name(self.json_path.name + ".partial")
        partial.write_text(json.dumps(document, indent=2) + "\n")
        os.replace(partial, self.json_path)

    def unused_seconds(self, stages: tuple[str, ...]) -> float:
        """Return the budget seconds that finished ``stages`` left unused."""
        return sum(max(0.0, o.budget_seconds - o.seconds) for s, o in self.outcomes.items() if s in stages)


def stage_budget(check: Check, name: str) -> float:
    """Return the seconds of stage ``name``: its own; full-run also gets what the earlier stages left unused and,
    when the ddp stage will not apply (fewer than 2 GPUs), that stage's, so the plan still ends within its total."""
    settings = check.settings
    budget = float(settings.budgets[name])
    if name == "full-run":
        budget += check.unused_seconds(("environment", "gpu-tests", "step-throughput",
                                        "step-throughput-deterministic"))
        if check.facts.get("device_count", 0) < 2 and "ddp" in settings.stages:
            budget += settings.budgets["ddp"]
    return budget


def stage_outcome(check: Check, name: str, function, budget: float) -> Outcome:
    """Return the outcome of stage ``name`` (Stopped and KeyboardInterrupt pass through)."""
    settings = check.settings
    if name not in settings.stages:
        return Outcome("skipped", f"not selected (GPU_CHECK_STAGES={','.join(settings.stages)})")
    if name == settings.fail_stage:
        done = check.command(["false"], budget)
        return Outcome("failed", f"forced by GPU_CHECK_FAIL_STAGE: {done.failure('its command `false`')}")
    try:
        return function(check, budget)
    except (Stopped, KeyboardInterrupt):
        raise
    except Exception as error:  # a stage's own bug is that stage's failure, and the others still run
        return Outcome("failed", f"the check's code for this stage raised {error!r}")


def run_stages(check: Check, stage_functions: dict) -> int:
    """Run every stage in order, recording each as it ends; return the exit status (0 or 1).

    When the check itself is stopped (SIGTERM, Ctrl-C), the running stage is recorded as failed and the later
    ones are left out (gpu_check.json lists them in "stages_left").
    """
    for name, function in stage_functions.items():
        budget = stage_budget(check, name)
        started = time.monotonic()
        check.log(f"gpu_check: {name}, budget {budget:.0f} s")
        stopped = False
        try:
            outcome = stage_outcome(check, name, function, budget)
        except (Stopped, KeyboardInterrupt) as error:
            stopped = True
            outcome = Outcome("failed", f"{error or 'the check got SIGINT'} during this stage; later stages did "
                              "not run")
        outcome.seconds, outcome.budget_seconds = round(time.monotonic() - started, 1), budget
        check.record(name, outcome)
        if stopped:
            break
    bad = [name for name, o in check.outcomes.items() if o.status in ("failed", "skipped")]
    check.log(f"gpu_check: {'passed' if not bad else 'not passed: ' + ', '.join(bad)}; "
              f"{time.time() - check.started:.0f} s; {check.json_path}")
    return 1 if bad else 0


def main(argv: list[str]) -> int:
    """Check the settings (exit 2 with one sentence when wrong), then run the stages."""
    if argv[1:2] == ["probe"]:
        from gpu_check_stages import print_environment_facts

        print_environment_facts()
        return 0
    try:
        settings = read_settings(dict(os.environ))
    except Refused as refusal:
        print(f"gpu_check: {refusal}.", file=sys.stderr)
        return 2
    sys.path.insert(1, str(settings.root))  # ccmix itself, for the published figures, even when not installed
    from gpu_check_stages import STAGE_FUNCTIONS

    signal.signal(signal.SIGTERM, raise_stopped)
    return run_stages(Check(settings), STAGE_FUNCTIONS)


if __name__ == "__main__":
    sys.modules.setdefault("gpu_check", sys.modules[__name__])  # the stages module imports this one by name
    sys.exit(main(sys.argv))
