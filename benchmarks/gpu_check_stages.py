"""The stages of ``benchmarks/gpu_check.py``, in order: each takes (check, budget seconds) and returns an Outcome.

Stages that need CUDA report "skipped" (a reason the user can fix) when a full check finds none, and
"not-applicable" under TINY=1, where everything runs on the CPU and GPU-only judgements do not apply.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from gpu_check import ARCHIVE, FULL_EPOCHS, PACKED_EPOCHS, TREE, Check, Outcome
from gpu_check_figures import (
    last_json_line,
    packed_figures,
    pytest_counts,
    read_json,
    read_metrics,
    run_figures,
    samples_per_epoch,
    step_figures,
)

# tiny encoder, batch 16, dynamo's capture without code generation: the paths run, the figures mean nothing
TINY_STEP = ["--device", "cpu", "--batch-size", "16", "--steps", "1", "--arch", "tiny", "--compile-backend", "eager"]
CUDA_STEP = ["--device", "cuda", "--batch-size", "256", "--steps", "50"]
TINY_TRAIN = {"dataset": "synthetic", "synthetic_classes": "5", "topk": "3", "arch": "tiny", "batch_size": "32",
              "max_steps_per_epoch": "2", "epochs": "1", "l_d_warm": "0", "warmup_epochs": "0", "compile": "false",
              "device": "cpu", "pipeline": "fast"}
CUDA_TRAIN = {"dataset": "folder", "data_root": str(TREE), "pipeline": "fast", "compile": "true", "device": "cuda",
              "epochs": str(FULL_EPOCHS)}
PRESET = "cifar10_imb100"
BENCHMARKS = Path(__file__).resolve().parent


def print_environment_facts() -> None:
    """Print one JSON line: versions, the card, the driver, and the TF32 and deterministic settings torch starts with."""
    import json
    import platform
    import subprocess

    import torch
    import torchvision

    from ccmix.config.fields import TrainConfig

    cuda = torch.cuda.is_available()
    facts = {
        "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "cuda_available": cuda, "cuda_runtime": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        "device_count": torch.cuda.device_count() if cuda else 0,
        "card": torch.cuda.get_device_name(0) if cuda else None,
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))) if cuda else None,
        "driver": None, "cpu_threads": torch.get_num_threads(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic, "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "config_deterministic_default": TrainConfig().deterministic,
    }
    if shutil.which("nvidia-smi"):
        query = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=20)
        facts["driver"] = query.stdout.strip().splitlines()[0] if query.returncode == 0 and query.stdout else None
    print(json.dumps(facts))


def no_cuda(check: Check) -> Outcome | None:
    """Return the "skipped" outcome of a CUDA stage when a full check has no CUDA device, else None."""
    if check.settings.tiny or check.facts.get("cuda_available"):
        return None
    if not check.facts:
        return Outcome("skipped", "the environment stage did not say whether torch sees a CUDA device")
    return Outcome("skipped", "torch sees no CUDA device; run the check on a CUDA machine, or TINY=1 on a CPU")


def environment(check: Check, budget: float) -> Outcome:
    """Extract the JPEG archive when its tree is missing, then record versions and settings."""
    deadline = time.monotonic() + budget
    root = check.settings.root
    figures: dict = {}
    if not check.settings.tiny and not (root / TREE / "train").is_dir():
        partial = root / TREE.parent / f".{TREE.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        done = check.command(["tar", "-xzf", str(root / ARCHIVE), "-C", str(partial)], budget)
        if done.failure("extracting the archive"):
            return Outcome("failed", f"{done.failure(f'extracting {ARCHIVE}')}; extract it once beforehand "
                           f"(mkdir {TREE} && tar -xzf {ARCHIVE} -C {TREE}) or give environment more seconds in "
                           "GPU_CHECK_BUDGETS")
        partial.rename(root / TREE)
        figures["extracted"] = f"{ARCHIVE} into {TREE}"
    done = check.command(check.python(str(BENCHMARKS / "gpu_check.py"), "probe"), deadline - time.monotonic())
    facts = last_json_line(done.lines)
    if done.failure("the probe") or facts is None:
        return Outcome("failed", done.failure("the environment probe") or "the environment probe printed no JSON")
    check.facts = facts
    figures.update(facts)
    summary = f"python {facts['python']}, torch {facts['torch']}, CUDA {facts['cuda_runtime']}"
    if check.settings.tiny:
        return Outcome("passed", f"{summary}; TINY=1: the stages run on the CPU", figures)
    if not facts["cuda_available"]:
        return Outcome("failed", f"{summary}: torch sees no CUDA device (on a CPU, run TINY=1)", figures)
    return Outcome("passed", f"{summary} on {facts['device_count']} x {facts['card']}, driver {facts['driver']}; "
                   f"TF32 matmul {facts['tf32_matmul']}, TF32 cuDNN {facts['tf32_cudnn']}", figures)


def gpu_tests(check: Check, budget: float) -> Outcome:
    """pytest -m gpu over the test files that hold gpu-marked tests."""
    tests = check.settings.root / "tests"
    files = sorted(f"tests/{path.name}" for path in tests.glob("test_*.py") if "mark.gpu" in path.read_text())
    if not files:
        return Outcome("failed", "no test file holds a gpu-marked test")
    done = check.command(check.python("-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", "-q", "-rs", *files),
                         budget)
    counts = pytest_counts(done.lines)
    figures = {"files": files, **counts}
    if done.failure("pytest -m gpu"):
        return Outcome("failed", done.failure("pytest -m gpu"), figures)
    if not check.facts.get("cuda_available"):
        if check.settings.tiny:
            return Outcome("not-applicable", f"no CUDA device: the {counts.get('skipped', 0)} gpu-marked tests "
                           "were skipped, each with its reason (in the log)", figures)
        return Outcome("skipped", "torch sees no CUDA device, so every gpu-marked test was skipped", figures)
    if not counts.get("passed"):
        return Outcome("failed", f"on CUDA no gpu-marked test passed ({counts})", figures)
    return Outcome("passed", f"{counts.get('passed')} passed, {counts.get('skipped', 0)} skipped (reasons in the log)",
                   figures)


def run_steps(check: Check, budget: float, deterministic: bool) -> tuple[dict, str | None]:
    """Return (figures, failure sentence or None) of step_seconds.py, eager and compiled, concutmix."""
    arguments = [str(BENCHMARKS / "step_seconds.py"), "--methods", "concutmix", "--compile", "both",
                 *(TINY_STEP if check.settings.tiny else CUDA_STEP)] + (["--deterministic"] if deterministic else [])
    done = check.command(check.python(*arguments), budget)
    figures = step_figures(last_json_line(done.lines))
    return figures, done.failure("step_seconds.py") or (None if figures else "step_seconds.py printed no JSON")


def step_throughput(check: Check, budget: float) -> Outcome:
    """Eager vs compiled steps; on CUDA the compiled step must be faster (ratio > 1)."""
    if skipped := no_cuda(check):
        return skipped
    figures, failure = run_steps(check, budget, deterministic=False)
    if failure:
        return Outcome("failed", failure, figures)
    ratio = figures["compiled_over_eager"]
    if check.settings.tiny:
        return Outcome("not-applicable", f"compiled faster than eager is judged on CUDA only; on the CPU both steps "
                       f"ran (compiled/eager {ratio}, not judged)", figures)
    rates = f"compiled {figures['compiled_samples_per_second']} vs eager {figures['eager_samples_per_second']} samples/s"
    if ratio is None or ratio <= 1:
        return Outcome("failed", f"compiled/eager = {ratio}, not > 1: {rates}", figures)
    return Outcome("passed", f"compiled/eager = {ratio}: {rates}", figures)


def step_throughput_deterministic(check: Check, budget: float) -> Outcome:
    """The same steps with deterministic kernels, and their cost against the step-throughput stage."""
    if skipped := no_cuda(check):
        return skipped
    figures, failure = run_steps(check, budget, deterministic=True)
    if failure:
        return Outcome("failed", failure, figures)
    base = check.outcomes.get("step-throughput")
    base_figures = base.figures if base is not None else {}
    for mode in ("eager", "compiled"):  # deterministic samples/s over the default kernels' (< 1: they cost)
        default, deterministic = base_figures.get(f"{mode}_samples_per_second"), figures.get(
            f"{mode}_samples_per_second")
        figures[f"{mode}_speed_vs_default"] = round(deterministic / default, 3) if default and deterministic else None
    cost = (f"deterministic kernels: eager {figures['eager_samples_per_second']} samples/s "
            f"({figures['eager_speed_vs_default']} x the default kernels' speed), compiled "
            f"{figures['compiled_samples_per_second']} samples/s ({figures['compiled_speed_vs_default']} x)")
    if check.settings.tiny:
        return Outcome("not-applicable", f"their cost is judged on CUDA only; on the CPU both steps ran ({cost})",
                       figures)
    return Outcome("passed", cost, figures)


def train_command(check: Check, values: dict[str, str], out: Path) -> list[str]:
    """Return ``python -m ccmix train`` of the preset with ``values`` set, into ``out``."""
    sets = [item for key, value in values.items() for item in ("--set", f"{key}={value}")]
    return check.python("-m", "ccmix", "train", "--preset", PRESET, *sets, "--set", "eval_interval=1",
                        "--set", "progress=false", "--set", "logger=none", "--out", str(out))


def full_run(check: Check, budget: float) -> Outcome:
    """The full preset run; stopped at its budget, the epochs that fitted are reported as "extrapolated"."""
    from ccmix.config.presets import PUBLISHED_TOP1

    if skipped := no_cuda(check):
        return skipped
    tiny = check.settings.tiny
    run, epochs = check.runs / "full-run", 1 if tiny else FULL_EPOCHS
    done = check.command(train_command(check, TINY_TRAIN if tiny else CUDA_TRAIN, run), budget)
    figures = run_figures(run, epochs, None if tiny else PUBLISHED_TOP1[PRESET], done.seconds)
    figures["extrapolated"] = False
    step = check.outcomes.get("step-throughput")
    compiled = step.figures.get("compiled_samples_per_second") if step is not None else None
    if compiled and figures.get("samples_per_epoch"):  # a lower bound: no data, no evaluation, no compilation
        figures["minutes_at_step_throughput"] = round(epochs * figures["samples_per_epoch"] / compiled / 60, 2)
    completed = figures["epochs_completed"]
    published = figures["published_top1"]
    top1 = (f"final top-1 {figures.get('final_top1')}, best {figures.get('best_top1')} ("
            f"{f'published {published}' if published else 'synthetic data: no published number'}); "
            f"{figures.get('train_samples_per_second')} samples/s; "
            f"evaluation {figures.get('mean_eval_seconds_per_epoch')} s per epoch")
    if figures["run_status"] == "completed" and completed == epochs and not done.returncode:
        return Outcome("passed", f"{completed} of {epochs} epochs: {top1}", figures)
    if done.returncode is None and completed >= 1:
        figures["extrapolated"] = True
        return Outcome("passed", f"extrapolated: {completed} of {epochs} epochs fitted the budget of {budget:.0f} s; "
                       f"the full run would take {figures['projected_full_run_minutes']} minutes; after "
                       f"{completed} epochs: {top1} (not comparable with the published number)", figures)
    if done.returncode is None:
        return Outcome("skipped", f"out of budget: no epoch completed in {budget:.0f} s; give full-run more "
                       "seconds in GPU_CHECK_BUDGETS", figures)
    return Outcome("failed", done.failure("the training run") or f"the run ended {figures['run_status']} after "
                   f"{completed} of {epochs} epochs", figures)


class EpochClock:
    """Notes the wall-clock time at which each run folder under ``runs`` gains a line in metrics.jsonl."""

    def __init__(self, runs: Path):
        self.runs = runs
        self.ends: dict[str, list[float]] = {}

    def __call__(self) -> None:
        now = time.monotonic()
        for metrics in self.runs.glob("*/metrics.jsonl"):
            ends = self.ends.setdefault(metrics.parent.name, [])
            ends.extend([now] * (len(read_metrics(metrics.parent)) - len(ends)))


def single_run_rate(run: Path, epochs: int) -> float | None:
    """Return the full run's samples/s over its first ``epochs`` epochs, measured like the packed window."""
    records, config, summary = read_metrics(run)[:epochs], read_json(run / "config.json"), read_json(
        run / "summary.json")
    if len(records) < epochs or not config or not summary.get("train_images"):
        return None
    return round(epochs * samples_per_epoch(config, int(summary["train_images"])) / sum(
        r["seconds"] for r in records), 1)


def packed_runs(check: Check, budget: float) -> Outcome:
    """JOBS runs at once through the sweep; their samples over one shared wall-clock window."""
    if skipped := no_cuda(check):
        return skipped
    tiny, jobs = check.settings.tiny, check.settings.jobs
    runs, epochs = check.runs / "packed", 1 if tiny else PACKED_EPOCHS
    if tiny:
        params = ["dataset=synthetic", "batch_size=16", "device=cpu",
                  "overrides={arch: tiny, max_steps_per_epoch: 2, synthetic_classes: 5, topk: 3, progress: false, "
                  "logger: none}"]
    else:
        params = ["dataset=folder", f"data_root={TREE}", "device=cuda",
                  "overrides={pipeline: fast, compile: true, progress: false, logger: none}"]
    params.append(f"epochs={epochs}")
    shutil.rmtree(runs, ignore_errors=True)  # a measurement, not a resume: a sweep would skip completed runs
    clock = EpochClock(runs)
    done = check.command(check.python("-m", "ccmix", "sweep", "--methods", "concutmix", "--imbs", "100", "--seeds",
                                      ",".join(map(str, range(jobs))), "--jobs", str(jobs), "--runs-dir", str(runs),
                                      *[item for param in params for item in ("--param", param)]),
                         budget, watch=clock)
    folders = {p.name: p for p in runs.iterdir() if (p / "config.json").is_file()} if runs.is_dir() else {}
    figures = {"jobs": jobs, "epochs": epochs, **packed_figures(clock.ends, folders)}
    single = single_run_rate(check.runs / "full-run", epochs)
    figures["single_run_samples_per_second_same_epochs"] = single
    rate = figures.get("samples_per_second")
    figures["packing_gain"] = round(rate / single, 2) if rate and single else None
    text = (f"{figures['runs_with_epochs']} runs at once: {rate} samples/s over one "
            f"{figures.get('window_seconds')} s window; one run alone over its first {epochs} epochs {single} "
            f"samples/s (gain {figures['packing_gain']})")
    if done.returncode is None:
        if figures["runs_with_epochs"] == jobs:
            return Outcome("passed", f"stopped at its budget after every run's first epochs; {text}", figures)
        return Outcome("skipped", f"out of budget: {figures['runs_with_epochs']} of {jobs} runs completed an epoch "
                       f"in {budget:.0f} s; give packed-runs more seconds in GPU_CHECK_BUDGETS", figures)
    if done.failure("the sweep") or figures["runs_with_epochs"] != jobs:
        return Outcome("failed", done.failure("the sweep") or f"only {text}", figures)
    return Outcome("passed", text, figures)


def ddp(check: Check, budget: float) -> Outcome:
    """Two processes, one GPU each (torchrun), when a second GPU exists."""
    if check.settings.tiny:
        return Outcome("not-applicable", "TINY=1 runs on the CPU; DDP over 2 GPUs does not apply")
    if skipped := no_cuda(check):
        return skipped
    count = check.facts.get("device_count", 0)
    if count < 2:
        return Outcome("not-applicable", f"torch sees {count} GPU here; the 2-process DDP run needs a second one")
    run = check.runs / "ddp"
    values = dict(CUDA_TRAIN, epochs="2", max_steps_per_epoch="20", compile="false")
    argv = train_command(check, values, run)
    launcher = check.python("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2")
    done = check.command(launcher + argv[1:], budget)
    figures = run_figures(run, 2, None, done.seconds)
    figures["world_size"] = read_json(run / "summary.json").get("world_size")
    if done.failure("torchrun") or figures["run_status"] != "completed" or figures["world_size"] != 2:
        return Outcome("failed", done.failure("torchrun") or f"the run ended {figures['run_status']} with world "
                       f"size {figures['world_size']}", figures)
    return Outcome("passed", f"2 processes: {figures['train_samples_per_second']} samples/s", figures)


def imagenet_data_path(check: Check, budget: float) -> Outcome:
    """python -m ccmix bench --recipe imagenet, when the bench has that option."""
    deadline = time.monotonic() + budget
    shown = check.command(check.python("-m", "ccmix", "bench", "--help"), min(budget, 30.0))
    if shown.failure("python -m ccmix bench --help"):
        return Outcome("failed", shown.failure("python -m ccmix bench --help"))
    if "--recipe" not in "\n".join(shown.lines):
        return Outcome("not-applicable", "python -m ccmix bench --help lists no --recipe option, so the ImageNet "
                       "data path cannot be measured by this version")
    arguments = ["--device", "cpu", "--images", "32", "--batch-size", "8"] if check.settings.tiny else [
        "--device", "cuda", "--images", "1024"]  # fewer generated JPEGs than the default 2000: the budget
    done = check.command(check.python("-m", "ccmix", "bench", "--recipe", "imagenet", *arguments),
                         deadline - time.monotonic())
    figures = last_json_line(done.lines) or {}
    if done.failure("the ImageNet bench") or not figures:
        return Outcome("failed", done.failure("the ImageNet bench") or "the ImageNet bench printed no JSON", figures)
    return Outcome("passed", f"ImageNet-recipe data paths: fast {figures.get('pairs_per_second_fast')} vs classic "
                   f"{figures.get('pairs_per_second_classic')} pairs/s (ratio {figures.get('fast_ratio')})", figures)


STAGE_FUNCTIONS = {
    "environment": environment, "gpu-tests": gpu_tests, "step-throughput": step_throughput,
    "step-throughput-deterministic": step_throughput_deterministic, "full-run": full_run,
    "packed-runs": packed_runs, "ddp": ddp, "imagenet-data-path": imagenet_data_path,
}
