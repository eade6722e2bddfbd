"""Seconds per training step of each method (forward, losses, backward, SGD step), data excluded.

Usage: python benchmarks/step_seconds.py [--batch-size 256] [--steps 3] [--device cpu]
Prints one JSON line: {"device": ..., "batch_size": ..., "seconds_per_step": {method: seconds}}.
The batch is random CIFAR-shaped tensors, so only the model and the losses are timed.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from ccmix.config import METHODS, preset
from ccmix.evaluation import build_run_model
from ccmix.step import StepBatch, build_optimizer, train_step


def seconds_per_step(method: str, batch_size: int, steps: int, device: torch.device) -> float:
    """Return the mean wall seconds of one full training step of ``method`` after one warm-up step."""
    config = preset("cifar10_imb100").replace(method=method, batch_size=batch_size, l_d_warm=0, cutmix_prob=1.0)
    counts = torch.tensor([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50], dtype=torch.float32, device=device)
    model = build_run_model(config, 10).to(device).train()
    optimizer = build_optimizer(model, config)
    cutmix_rng = np.random.default_rng(0)
    batch = StepBatch(
        view0=torch.randn(batch_size, 3, 32, 32, device=device),
        contrastive=torch.randn(batch_size, 2, 3, 32, 32, device=device) if config.uses_contrastive else None,
        labels=torch.randint(0, 10, (batch_size,), device=device),
        foreground=torch.randn(batch_size, 3, 32, 32, device=device) if config.uses_cutmix else None,
        foreground_labels=torch.randint(0, 10, (batch_size,), device=device) if config.uses_cutmix else None,
    )
    timings = []
    for step in range(steps + 1):
        started = time.perf_counter()
        train_step(model, optimizer, batch, config, 0, counts, cutmix_rng)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step:  # the first step warms up allocators and kernels
            timings.append(time.perf_counter() - started)
    return sum(timings) / len(timings)


def main() -> None:
    """Print the seconds per step of every method as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    result = {method: round(seconds_per_step(method, args.batch_size, args.steps, device), 3) for method in METHODS}
    print(json.dumps({"device": args.device, "torch_threads": torch.get_num_threads(), "batch_size": args.batch_size,
                      "seconds_per_step": result}))


if __name__ == "__main__":
    main()
