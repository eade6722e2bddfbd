"""Seconds from asking for a CIFAR dataset that is absent, with no network, to the error that says where to put it.

Usage: python benchmarks/offline_error_seconds.py [--repeats 3]
Prints one JSON line: {"milliseconds_to_error": {dataset: milliseconds}} (best of the repeats).
The network is refused inside the process (``urllib.request.urlopen`` raises), as on an
offline cluster node, so the figure is the time the data layer takes to give up and explain.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from ccmix.config.fields import TrainConfig
from ccmix.data.datasets import DataUnavailableError, build_datasets


def _refuse_network(*args, **kwargs):
    raise urllib.error.URLError("network is unreachable")


def seconds_to_error(dataset: str, repeats: int) -> float:
    """Return the best wall seconds, over ``repeats`` tries, until ``build_datasets`` raises DataUnavailableError."""
    best = float("inf")
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as root:
            started = time.perf_counter()
            try:
                build_datasets(TrainConfig(dataset=dataset, data_root=str(Path(root) / "empty")))
            except DataUnavailableError:
                best = min(best, time.perf_counter() - started)
            else:
                raise RuntimeError(f"{dataset} loaded without data or network")
    return best


def main() -> None:
    """Print the milliseconds to the offline error of cifar10 and cifar100 as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    urllib.request.urlopen = _refuse_network
    result = {dataset: round(1000 * seconds_to_error(dataset, args.repeats), 2) for dataset in ("cifar10", "cifar100")}
    print(json.dumps({"milliseconds_to_error": result}))


if __name__ == "__main__":
    main()
