"""The same seed gives the same run, whatever the runtime settings that change no number.

Views of the classic pipeline depend on (seed, epoch, position in the epoch) alone: not on
the number of DataLoader workers, the order items are built in, the process building them
or its global generators. Runtime facts that can change the last bits are recorded per
start of a run; DataLoader workers end with the process that started them.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from run_helpers import metric_records

from ccmix.config.fields import TrainConfig
from ccmix.data.datasets import build_datasets
from ccmix.data.pipelines.classic import ClassicTrainPipeline
from ccmix.data.pipelines.fast import FastTrainPipeline
from ccmix.train.fit import fit
from ccmix.train.run_folder import RunFolder
from ccmix.train.segments import SEGMENTS, record_segment


def tiny_config(**changes) -> TrainConfig:
    """Return a synthetic classic-pipeline config with every view (concutmix) that trains in seconds."""
    base = TrainConfig(dataset="synthetic", synthetic_classes=5, imb=10, epochs=2, batch_size=16, num_workers=0,
                       method="concutmix", topk=3, warmup_epochs=0, milestones=(), lr=0.05, progress=False,
                       max_steps_per_epoch=2, seed=4, device="cpu", pipeline="classic", arch="tiny")
    return base.replace(**changes)


@pytest.fixture(scope="module")
def train_set():
    train, _ = build_datasets(tiny_config())
    return train




def assert_same_batches(first: list, second: list) -> None:
    assert len(first) == len(second) > 0
    for a, b in zip(first, second):
        for key, value in vars(a).items():
            other = getattr(b, key)
            assert (value is None and other is None) or torch.equal(value, other), key


def test_an_items_views_depend_on_its_position_alone(train_set):
    pipeline = ClassicTrainPipeline(train_set, tiny_config(), "cpu")
    plan, seeds = pipeline.epoch_plan(1)
    items = [(a, b, seed) for pairs, row in zip(plan, seeds) for (a, b), seed in zip(pairs, row)]
    in_order = [pipeline.items[item] for item in items]
    # other global generators, and the items built backwards: nothing may change
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(6)
    state = torch.get_rng_state()
    backwards = [pipeline.items[item] for item in reversed(items)][::-1]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's global stream is left where it was
    for a, b in zip(in_order, backwards):
        for key in ("view0", "contrastive", "foreground"):
            assert torch.equal(a[key], b[key]), key
    assert not torch.equal(in_order[0]["view0"], in_order[1]["view0"])  # positions draw differently
    _, other_epoch = pipeline.epoch_plan(2)
    assert other_epoch[0][0] != seeds[0][0]


def test_zero_one_and_two_workers_build_identical_batches(train_set, one_torch_thread):
    batches = {workers: list(ClassicTrainPipeline(train_set, tiny_config(num_workers=workers), "cpu").batches(3))
               for workers in (0, 1, 2)}
    assert_same_batches(batches[0], batches[1])
    assert_same_batches(batches[0], batches[2])


@pytest.mark.parametrize("pipeline_type", [ClassicTrainPipeline, FastTrainPipeline])
def test_each_process_builds_the_views_of_its_columns_of_the_global_batch(train_set, pipeline_type):
    pipeline = pipeline_type(train_set, tiny_config(pipeline="classic" if pipeline_type is ClassicTrainPipeline
                                                    else "fast"), "cpu")
    whole = list(pipeline.batches(0))
    for world_size in (2, 4):
        for rank in range(world_size):
            share = list(pipeline.batches(0, rank=rank, world_size=world_size))
            for step, batch in enumerate(whole):
                for key, value in vars(batch).items():
                    assert torch.equal(value[rank::world_size], getattr(share[step], key)), (world_size, rank, key)


def read_run(out) -> tuple[list[dict], dict]:
    summary = json.loads((out / "summary.json").read_text())
    return metric_records(out), {k: summary[k] for k in ("final", "best", "epochs_completed", "status")}


@pytest.mark.integration  # two runs, one with worker processes: several seconds
def test_runs_with_zero_and_two_workers_end_with_identical_metrics(tmp_path, one_torch_thread):
    config = tiny_config(eval_interval=1)
    fit(config, tmp_path / "serial")
    fit(config.replace(num_workers=2), tmp_path / "workers")
    serial, workers = read_run(tmp_path / "serial"), read_run(tmp_path / "workers")
    assert serial[1]["status"] == "completed" and len(serial[0]) == 2
    assert serial == workers


def test_a_resume_with_another_thread_count_records_a_segment_and_says_so(tmp_path, capsys):
    out = tmp_path / "run"
    config = tiny_config(method="la", epochs=1)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        fit(config, out)
        torch.set_num_threads(1)
        fit(config.replace(epochs=2), out, allow_more_epochs=True)
        changed = capsys.readouterr().out
        fit(config.replace(epochs=3), out, allow_more_epochs=True)
        unchanged = capsys.readouterr().out
    finally:
        torch.set_num_threads(threads)
    segments = [json.loads(line) for line in (out / SEGMENTS).read_text().splitlines()]
    assert [(s["first_epoch"], s["torch_threads"]) for s in segments] == [(1, 2), (2, 1), (3, 1)]
    assert {s["pipeline"] for s in segments} == {"classic"} and {s["world_size"] for s in segments} == {1}
    assert "resumed with 1 torch thread where epoch 1 used 2 torch threads; floating-point results may differ" in changed
    assert "resumed with" not in unchanged


def test_a_start_that_trained_no_epoch_leaves_no_segment(tmp_path):
    folder = RunFolder(tmp_path)
    facts = {"pipeline": "classic", "device": "cpu", "torch_threads": 2, "num_workers": 2}
    assert record_segment(folder, 0, facts) is None
    assert record_segment(folder, 0, dict(facts, num_workers=0)) is None  # the first start was killed in epoch 1
    assert record_segment(folder, 2, dict(facts, num_workers=1)) is None  # workers change no number: no line
    line = record_segment(folder, 2, dict(facts, device="cuda (GPU)"))  # that start died too, before epoch 3
    assert line == ("resumed with device=cuda (GPU) where epochs 1-2 used device=cpu; "
                    "floating-point results may differ slightly")
    segments = [json.loads(line) for line in (tmp_path / SEGMENTS).read_text().splitlines()]
    assert [(s["first_epoch"], s["num_workers"], s["device"]) for s in segments] == [(1, 0, "cpu"), (3, 2, "cuda (GPU)")]
    assert "augmentations" in record_segment(folder, 3, dict(facts, pipeline="fast"))


ORPHAN_SCRIPT = textwrap.dedent("""
    import os, sys, time
    import torch
    from ccmix.data.pipelines.workers import EndWithParent

    class Slow(torch.utils.data.Dataset):
        def __len__(self):
            return 4
        def __getitem__(self, index):
            time.sleep(60)  # busy: DataLoader's own watchdog never runs
            return index

    def announce(worker_id):
        print("worker", os.getpid(), flush=True)

    loader = torch.utils.data.DataLoader(Slow(), num_workers=2, worker_init_fn=EndWithParent(then=announce))
    next(iter(loader))
""")


def running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.integration
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux only")
def test_workers_end_silently_when_their_parent_is_killed():
    process = subprocess.Popen([sys.executable, "-c", ORPHAN_SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    workers = []
    try:
        workers += [int(process.stdout.readline().split()[1]) for _ in range(2)]
        assert all(running(pid) for pid in workers)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        deadline = time.monotonic() + 5
        while any(running(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(running(pid) for pid in workers)
        assert process.stderr.read() == ""  # the workers died without a word
    finally:
        process.kill()
        process.wait()
        for pid in filter(running, workers):  # only when the test failed: leave no orphan behind
            os.kill(pid, signal.SIGKILL)
