"""Seconds per training step of each method (forward, losses, backward, SGD step), data excluded.

Usage: python benchmarks/step_seconds.py [--batch-size 256] [--steps 3] [--device cpu] [--methods la,concutmix]
                                         [--compile off|on|both] [--compile-backend inductor] [--arch resnet32]
                                         [--deterministic]
Prints one JSON line: {"device": ..., "batch_size": ..., "seconds_per_step": {method: seconds},
"samples_per_second": {method: pairs/s}}; with --compile both, also "compiled": the same two
tables for the compiled step and "compile_seconds" (the first compiled steps, compilation included).
The batch is random CIFAR-shaped tensors, so only the model and the losses are timed; steps run at
semantic-label time with every batch mixed, so every part of each method's loss is computed.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from ccmix.config.fields import METHODS
from ccmix.config.presets import preset
from ccmix.data.batch import StepBatch
from ccmix.method.collectives import DistContext
from ccmix.method.step import CompiledLoss, build_optimizer, loss_parts, train_step
from ccmix.train.evaluation import build_run_model

WARMUP_STEPS = {False: 1, True: 3}  # compiled: compilation, then the CUDA graphs are recorded on later calls


def time_steps(method: str, batch_size: int, steps: int, device: torch.device, compiled: bool = False,
               backend: str = "inductor", arch: str = "resnet32") -> dict:
    """Return {"seconds_per_step", "samples_per_second", "warmup_seconds"} of full training steps of ``method``.

    ``warmup_seconds`` covers the untimed first steps (with ``compiled``, compilation and CUDA-graph recording).
    """
    config = preset("cifar10_imb100").replace(method=method, batch_size=batch_size, l_d_warm=0, cutmix_prob=1.0,
                                              arch=arch, channels_last=True)
    counts = torch.tensor([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50], dtype=torch.float32, device=device)
    model = build_run_model(config, 10).to(device).train()
    if device.type == "cuda" and config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config)
    cutmix_rng = np.random.default_rng(0)
    loss_function = CompiledLoss(device, DistContext(device=device), backend=backend) if compiled else loss_parts
    batch = StepBatch(
        view0=torch.randn(batch_size, 3, 32, 32, device=device),
        contrastive=torch.randn(batch_size, 2, 3, 32, 32, device=device) if config.uses_contrastive else None,
        labels=torch.randint(0, 10, (batch_size,), device=device),
        foreground=torch.randn(batch_size, 3, 32, 32, device=device) if config.uses_cutmix else None,
        foreground_labels=torch.randint(0, 10, (batch_size,), device=device) if config.uses_cutmix else None,
    )
    warmup = WARMUP_STEPS[compiled]

    def run(count: int) -> float:
        started = time.perf_counter()
        for _ in range(count):  # epoch 1 > l_d_warm: semantic labels, the whole Contrastive CutMix loss
            train_step(model, optimizer, batch, config, 1, counts, cutmix_rng, loss_function=loss_function)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    warmup_seconds = run(warmup)
    seconds = run(steps) / steps
    return {"seconds_per_step": seconds, "samples_per_second": batch_size / seconds, "warmup_seconds": warmup_seconds}


def use_deterministic_kernels() -> None:
    """Make torch pick deterministic kernels; an operation without one warns instead of stopping the timing."""
    # cuBLAS is deterministic only with a fixed workspace, which must be set before CUDA starts
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def main() -> None:
    """Print the seconds per step (and samples/s) of the chosen methods as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated, e.g. la,concutmix")
    parser.add_argument("--compile", choices=("off", "on", "both"), default="off",
                        help="time the eager step, the compiled step (torch.compile, CUDA graphs on CUDA) or both")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend (inductor; eager or aot_eager only check the capture)")
    parser.add_argument("--arch", default="resnet32", help="encoder (tiny: a quick try of the script)")
    parser.add_argument("--deterministic", action="store_true",
                        help="deterministic kernels (torch.use_deterministic_algorithms, cuDNN deterministic, no "
                             "cuDNN autotuning), to time what they cost")
    args = parser.parse_args()
    if args.deterministic:
        use_deterministic_kernels()
    device = torch.device(args.device)
    methods = [name for name in args.methods.split(",") if name]
    unknown = [name for name in methods if name not in METHODS]
    if unknown:
        parser.error(f"--methods {unknown[0]!r} is not accepted; give some of {', '.join(METHODS)}")
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else args.device,
              "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "batch_size": args.batch_size,
              "arch": args.arch, "steps": args.steps, "deterministic": args.deterministic}
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    for compiled in modes:
        timings = {method: time_steps(method, args.batch_size, args.steps, device, compiled=compiled,
                                      backend=args.compile_backend, arch=args.arch) for method in methods}
        tables = {"seconds_per_step": {m: round(t["seconds_per_step"], 4) for m, t in timings.items()},
                  "samples_per_second": {m: round(t["samples_per_second"], 1) for m, t in timings.items()}}
        if compiled:
            tables["compile_seconds"] = {m: round(t["warmup_seconds"], 1) for m, t in timings.items()}
            tables["compile_backend"] = args.compile_backend
        if compiled and len(modes) == 2:
            result["compiled"] = tables
        else:
            result.update(tables, compiled=compiled)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
