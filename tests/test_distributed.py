"""Data-parallel training: two CPU processes (gloo) train exactly like one.

Network traffic stays on 127.0.0.1: gloo is bound to the loopback interface, the spawned
workers meet through a file store, and torchrun's rendezvous store is addressed as 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from ccmix.config.fields import TrainConfig
from ccmix.config.rules import ConfigError
from ccmix.data.batch import StepBatch
from ccmix.method.collectives import DistContext
from ccmix.method.step import build_optimizer, cutmix_generator, draw_cutmix_boxes
from ccmix.train.distributed import (
    GlobalBatchNorm,
    check_world_size,
    cleanup,
    convert_sync_batchnorm,
    init_distributed,
    synchronise_batchnorm,
    wrap_for_training,
)
from ccmix.train.evaluation import build_run_model
from ccmix.train.fit import fit, train_one_epoch

RUN_FILES = ("config.json", "metrics.jsonl", "per_class.csv", "summary.json", "predictions.npz", "last.pt", "best.pt")
METHODS = ("ce", "la", "cutmix", "bcl", "concutmix")
GLOBAL_BATCH = 32
IMAGE_SIDE = 16  # the fixed batch is downsampled to keep the CPU steps short; ResNet-32 pools globally
NUM_CLASSES = 5
# The step comparisons run the model in float64 (the engine computes the losses in float32): then one and two
# processes agree to about 1e-8. In float32 a single ReLU whose input rounds to the other side of 0 can move a
# gradient by 1e-3, which says nothing about the distributed code, so float32 is not compared.
LOSS_TOLERANCE = 1e-6
PARAMETER_TOLERANCE = 1e-6


def torchrun_style_env(rank: int, world_size: int) -> dict:
    """Return the environment torchrun gives one process of a one-node world, gloo on loopback."""
    env = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
           "LOCAL_WORLD_SIZE": str(world_size)}
    if os.path.exists("/sys/class/net/lo"):
        env["GLOO_SOCKET_IFNAME"] = "lo"  # gloo's own connections on loopback, not the host's address
    return env


SEMANTIC_EPOCH = 1  # 0-based; after l_d_warm=0, so concutmix steps use semantic labels


def step_config(method: str, sync_bn: bool = True) -> TrainConfig:
    """Return the config of the one-step comparisons: mixing on every step, semantic labels in the step's epoch.

    The step trains 0-based epoch 1: semantic labels start after epoch ``l_d_warm`` (0), as published.
    """
    return TrainConfig(
        dataset="synthetic", synthetic_classes=NUM_CLASSES, imb=10, method=method, batch_size=GLOBAL_BATCH,
        num_workers=0, topk=3, omega=1.0, l_d_warm=0, cutmix_prob=1.0, cutmix_per_sample=method == "concutmix",
        warmup_epochs=0, milestones=(), lr=0.1, epochs=2, max_steps_per_epoch=1, sync_bn=sync_bn, progress=False,
        seed=3,
    )


def fixed_global_batch(dtype: torch.dtype = torch.float64) -> tuple[dict, list[int]]:
    """Return (a fixed global batch of 32 pairs in the pipeline's dict layout, train class counts).

    Views are deterministic functions of the images (flip, shift), so one process and two
    processes see exactly the same 32 samples; mixing and labels are left to the engine.
    """
    from ccmix.data.datasets import build_datasets

    train, _ = build_datasets(step_config("la"))
    images = F.avg_pool2d(train.as_uint8_tensor().to(dtype) / 255.0, 2)
    images = (images - 0.5) / 0.25
    targets = torch.as_tensor(train.targets)
    generator = torch.Generator().manual_seed(0)
    background = torch.randperm(len(train), generator=generator)[:GLOBAL_BATCH]
    foreground = torch.randint(len(train), (GLOBAL_BATCH,), generator=generator)
    view0 = images[background]
    contrastive = torch.stack([view0.flip(-1), torch.roll(view0, shifts=(2, -3), dims=(-2, -1))], dim=1)
    batch = {"view0": view0, "contrastive": contrastive, "labels": targets[background],
             "foreground": images[foreground], "foreground_labels": targets[foreground]}
    return batch, list(train.class_counts)


class FixedPipeline:
    """A one-step pipeline over a fixed global batch; rank r takes columns r::world_size, as the real ones do."""

    steps_per_epoch = 1

    def __init__(self, batch: dict, config: TrainConfig):
        self.batch = batch
        self.config = config

    def batches(self, epoch: int, rank: int = 0, world_size: int = 1):
        """Yield this rank's share of the fixed batch, with only the parts the method uses."""
        keep = {"view0", "labels"} | ({"contrastive"} if self.config.uses_contrastive else set())
        keep |= {"foreground", "foreground_labels"} if self.config.uses_cutmix else set()
        yield StepBatch(**{key: (value[rank::world_size] if key in keep else None)
                           for key, value in self.batch.items()})


def train_one_step(config: TrainConfig, context: DistContext) -> dict:
    """Return the step's record and the model's state after one SGD step on the fixed batch."""
    batch, class_counts = fixed_global_batch()
    model = build_run_model(config, NUM_CLASSES).double()
    model, sync_bn = synchronise_batchnorm(model, config, context)
    optimizer = build_optimizer(model, config)
    training_model = wrap_for_training(model, config, context, sync_bn=sync_bn)
    record = train_one_epoch(training_model, FixedPipeline(batch, config), optimizer, config, SEMANTIC_EPOCH,
                             torch.tensor(class_counts, dtype=torch.float32), torch.device("cpu"), context,
                             progress=False)
    state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    return {"record": record, "state": state}


def batchnorm_check(context: DistContext) -> dict:
    """Return this rank's GlobalBatchNorm output and input/weight gradients on its columns of a fixed input."""
    generator = torch.Generator().manual_seed(5)
    full = torch.randn(8, 3, 4, 4, generator=generator) * 3 + 1
    upstream = torch.randn(8, 3, 4, 4, generator=generator)
    layer = GlobalBatchNorm(3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([1.5, -0.5, 2.0]))
    shard = full[context.rank::context.world_size].clone().requires_grad_(True)
    output = layer(shard)
    (output * upstream[context.rank::context.world_size]).sum().backward()
    return {"output": output.detach(), "input_grad": shard.grad, "weight_grad": layer.weight.grad,
            "running_var": layer.running_var.clone()}


def _two_process_worker(rank: int, world_size: int, out_dir: str) -> None:
    import torch.distributed as dist

    os.environ.update(torchrun_style_env(rank, world_size))
    torch.set_num_threads(1)
    # a file store instead of a TCP store: no port to pick, nothing listening
    dist.init_process_group("gloo", init_method=f"file://{Path(out_dir) / 'store'}", rank=rank,
                            world_size=world_size)
    context = init_distributed("cpu")  # the group exists: this reads rank, world size and device
    assert context.world_size == world_size and context.rank == rank and not context.owns_group
    try:
        results = {"bn": batchnorm_check(context)}
        for method in METHODS:
            results[method] = train_one_step(step_config(method), context)
        results["la_per_rank_bn"] = train_one_step(step_config("la", sync_bn=False), context)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        cleanup(context)  # leaves the group alone: it was not created by init_distributed
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine's two cores are shared with the worker processes
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def two_process_results(one_thread):
    """Return the results of both ranks of a 2-process gloo world (one spawn for every comparison)."""
    out_dir = tempfile.mkdtemp(prefix="ccmix-ddp-")
    try:
        mp.spawn(_two_process_worker, args=(2, out_dir), nprocs=2, join=True)
        yield [torch.load(Path(out_dir) / f"rank{rank}.pt", weights_only=False) for rank in range(2)]
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def max_state_difference(a: dict, b: dict) -> float:
    return max(float((a[key].double() - b[key].double()).abs().max()) for key in a if a[key].is_floating_point())


# --------------------------------------------------------------------------- one step, one vs two processes


@pytest.mark.integration
@pytest.mark.parametrize("method", METHODS)
def test_two_processes_take_the_same_step_as_one(method, two_process_results, one_thread):
    single = train_one_step(step_config(method), DistContext())
    initial = build_run_model(step_config(method), NUM_CLASSES).double().state_dict()
    for rank, result in enumerate(two_process_results):
        record, state = result[method]["record"], result[method]["state"]
        for key in ("loss", "loss_ce", "loss_bcl", "train_top1"):
            expected = single["record"][key]
            if expected is None:
                assert record[key] is None, key
            else:
                assert record[key] == pytest.approx(expected, abs=LOSS_TOLERANCE, rel=LOSS_TOLERANCE), (rank, key)
        assert set(state) == set(single["state"])
        difference = max_state_difference(state, single["state"])
        assert difference < PARAMETER_TOLERANCE, f"rank {rank}: parameters differ by {difference:.3g}"
    # the step did move the parameters (far more than the tolerance), the same way on both ranks
    update = max_state_difference(single["state"], initial)
    assert update > 1000 * PARAMETER_TOLERANCE
    assert max_state_difference(two_process_results[0][method]["state"], two_process_results[1][method]["state"]) == 0


@pytest.mark.integration
def test_the_comparison_exercises_mixing_and_separates_per_rank_batchnorm(two_process_results, one_thread):
    from ccmix.method.cutmix import kept_fraction

    for method in ("cutmix", "concutmix"):
        config = step_config(method)
        boxes = draw_cutmix_boxes(config, cutmix_generator(config, 0), GLOBAL_BATCH, IMAGE_SIDE, IMAGE_SIDE, DistContext())
        assert boxes is not None and float(kept_fraction(boxes, IMAGE_SIDE, IMAGE_SIDE).min()) < 0.9
    # without synchronised BatchNorm each rank normalises with its own 16 images: visibly another step
    single = train_one_step(step_config("la"), DistContext())
    per_rank = two_process_results[0]["la_per_rank_bn"]
    assert max_state_difference(per_rank["state"], single["state"]) > 100 * PARAMETER_TOLERANCE


@pytest.mark.integration
def test_global_batchnorm_matches_batchnorm_over_the_whole_batch(two_process_results):
    generator = torch.Generator().manual_seed(5)
    full = (torch.randn(8, 3, 4, 4, generator=generator) * 3 + 1).requires_grad_(True)
    upstream = torch.randn(8, 3, 4, 4, generator=generator)
    reference = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        reference.weight.copy_(torch.tensor([1.5, -0.5, 2.0]))
    output = reference(full)
    (output * upstream).sum().backward()
    for rank, result in enumerate(two_process_results):
        bn = result["bn"]
        torch.testing.assert_close(bn["output"], output.detach()[rank::2], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(bn["input_grad"], full.grad[rank::2], atol=1e-5, rtol=1e-5)
        # DDP averages parameter gradients over ranks; each rank holds its shard's part of the sum
        torch.testing.assert_close(bn["running_var"], reference.running_var, atol=1e-6, rtol=1e-6)
    weight_grad = two_process_results[0]["bn"]["weight_grad"] + two_process_results[1]["bn"]["weight_grad"]
    torch.testing.assert_close(weight_grad, reference.weight.grad, atol=1e-5, rtol=1e-5)


def test_sync_batchnorm_conversion_keeps_parameters_and_state_dict_keys():
    model = build_run_model(step_config("bcl"), NUM_CLASSES)
    before = model.state_dict()
    parameters = {id(p) for p in model.parameters()}
    converted = convert_sync_batchnorm(model, exclude=("center_head",))
    kinds = {name: type(module).__name__ for name, module in converted.named_modules()}
    assert any(kind == "GlobalBatchNorm" for kind in kinds.values())
    assert kinds["center_head.1"] == "BatchNorm1d" and kinds["head.1"] == "GlobalBatchNorm"
    assert {id(p) for p in converted.parameters()} == parameters  # an optimizer built before stays valid
    assert list(converted.state_dict()) == list(before)


# --------------------------------------------------------------------------- sharding and validation


def test_ranks_share_each_global_batch_without_overlap_and_stay_class_balanced():
    from ccmix.data.datasets import build_datasets
    from ccmix.data.pipelines.classic import ClassicTrainPipeline

    config = step_config("cutmix").replace(max_steps_per_epoch=None)
    train, _ = build_datasets(config)
    pipeline = ClassicTrainPipeline(train, config)
    world_size = 4
    foreground_classes = [[] for _ in range(world_size)]
    for epoch in range(40):
        whole, _ = pipeline.epoch_plan(epoch)
        shares = [pipeline.epoch_plan(epoch, rank, world_size)[0] for rank in range(world_size)]
        seen = []
        for step, row in enumerate(whole):
            for rank in range(world_size):
                assert shares[rank][step] == row[rank::world_size]
                foreground_classes[rank] += [train.targets[b] for _, b in shares[rank][step]]
            seen += [a for a, _ in row]
        assert len(seen) == len(set(seen))  # each background image at most once an epoch, over all ranks
    counts = np.bincount(train.targets, minlength=NUM_CLASSES)
    assert counts[0] / counts.sum() > 0.35  # the training set itself is far from balanced
    for classes in foreground_classes:
        frequency = np.bincount(classes, minlength=NUM_CLASSES) / len(classes)
        assert np.abs(frequency - 1 / NUM_CLASSES).max() < 0.04, frequency


def test_the_global_batch_must_split_evenly():
    check_world_size(batch_size=32, grad_accum_steps=2, world_size=4)
    with pytest.raises(ValueError, match="batch_size=30 .* divisible by 4"):
        check_world_size(batch_size=30, grad_accum_steps=1, world_size=4)
    with pytest.raises(ValueError, match="divisible by 8"):
        check_world_size(batch_size=36, grad_accum_steps=2, world_size=4)


def test_launch_refuses_a_batch_that_does_not_split(tmp_path):
    from ccmix.train.launch import launch_torchrun

    with pytest.raises(ConfigError, match="batch_size=30"):
        launch_torchrun(None, {"dataset": "synthetic", "batch_size": 30, "topk": 3}, tmp_path / "run",
                        nproc_per_node=4)
    assert not (tmp_path / "run").exists()


def test_torchrun_command_round_trips_overrides(tmp_path):
    from ccmix.config.validation import parse_set_arguments
    from ccmix.train.launch import torchrun_command

    overrides = {"omega": 20 / 255, "milestones": (160, 180), "sync_bn": None, "amp": False, "method": "la"}
    command = torchrun_command("cifar10_imb100", overrides, tmp_path, nproc_per_node=2)
    assert command[command.index("--rdzv-endpoint") + 1].startswith("127.0.0.1:")
    assert command[command.index("-m", 3):][:3] == ["-m", "ccmix", "train"]
    sets = [command[i + 1] for i, arg in enumerate(command) if arg == "--set"]
    assert parse_set_arguments(sets) == overrides
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        torchrun_command(None, {}, tmp_path, nproc_per_node=2, nnodes=2)


@pytest.mark.integration
def test_follow_run_yields_each_epoch_once_and_reports_a_failed_run(tmp_path):
    from ccmix.train.launch import follow_run

    (tmp_path / "config.json").write_text(json.dumps({"epochs": 3}))
    lines = [{"epoch": 1, "loss": 2.0, "top1": None}, {"epoch": 2, "loss": 1.5, "top1": 40.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (tmp_path / "launch.log").write_text("Traceback (most recent call last):\nValueError: the workers stopped\n")
    process = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])
    process.log_path = tmp_path / "launch.log"
    records = []
    with pytest.raises(RuntimeError, match="status 3(.|\n)*the workers stopped"):
        for record in follow_run(tmp_path, process, poll_seconds=0.05, progress=False):
            records.append(record)
    assert records == lines


# --------------------------------------------------------------------------- torchrun end to end


def run_config(**changes) -> dict:
    base = {"dataset": "synthetic", "synthetic_classes": NUM_CLASSES, "imb": 10, "method": "la", "batch_size": 32,
            "num_workers": 0, "topk": 3, "warmup_epochs": 0, "milestones": (), "lr": 0.05, "epochs": 1,
            "max_steps_per_epoch": 2, "seed": 1, "progress": False}
    return dict(base, **changes)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> Path:
    """Return the folder of a finished 1-epoch run trained by `torchrun --nproc-per-node 2 -m ccmix train`."""
    from ccmix.train.launch import follow_run, launch_torchrun

    out = tmp_path_factory.mktemp("torchrun") / "run"
    process = launch_torchrun(None, run_config(), out, nproc_per_node=2)
    records = list(follow_run(out, process, poll_seconds=0.5, progress=False))
    assert process.returncode == 0
    assert [r["epoch"] for r in records] == [1] and records[0]["top1"] is not None
    return out


@pytest.mark.integration
def test_torchrun_two_processes_write_a_complete_run_folder(two_process_run):
    from ccmix.data.datasets import build_datasets

    out = two_process_run
    for name in RUN_FILES:
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert config["world_size"] == 2 and summary["world_size"] == 2 and summary["status"] == "completed"
    assert summary["final"]["top1"] == pytest.approx(records[-1]["top1"])
    # both processes trained: every step of the epoch saw the whole global batch
    assert records[0]["samples_per_second"] > 0
    # predictions of the two shards are merged back into test-set order
    _, test = build_datasets(TrainConfig(**run_config()))
    predictions = np.load(out / "predictions.npz")
    assert predictions["labels"].tolist() == list(test.targets)
    payload = torch.load(out / "last.pt", weights_only=True)
    assert payload["world_size"] == 2 and not any(key.startswith("module.") for key in payload["model"])
    assert not list(out.glob(".*.tmp"))  # nothing half-written left behind


def check_resumed_under_one_process(out: Path, done: int) -> None:
    """Resume ``out`` (trained for ``done`` epochs by two processes) in this process for one more epoch."""
    stopped = torch.load(out / "last.pt", weights_only=True)
    assert stopped["world_size"] == 2 and int(stopped["epoch"]) == done
    two_process_records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][:done]
    summary = fit(TrainConfig(**run_config(epochs=done + 1)), out, allow_more_epochs=True)  # a new schedule
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, done + 2))
    assert records[:done] == two_process_records
    assert summary["world_size"] == 1 and summary["status"] == "completed" and summary["epochs_completed"] == done + 1
    assert json.loads((out / "config.json").read_text())["world_size"] == 1
    resumed = torch.load(out / "last.pt", weights_only=True)
    assert resumed["epoch"] == done + 1 and resumed["world_size"] == 1
    # the single process started from the two-process weights (kept as previous.pt when it saved)
    previous = torch.load(out / "previous.pt", weights_only=True)
    assert previous["epoch"] == done and max_state_difference(previous["model"], stopped["model"]) == 0
    assert max_state_difference(resumed["model"], stopped["model"]) > 0


@pytest.mark.integration
def test_a_two_process_run_continues_under_one_process(two_process_run, tmp_path, one_thread):
    out = tmp_path / "run"
    shutil.copytree(two_process_run, out)
    check_resumed_under_one_process(out, done=1)


@pytest.mark.slow
def test_a_run_stopped_mid_epoch_under_two_processes_resumes_under_one(tmp_path, one_thread):
    from ccmix.train.launch import launch_torchrun, stop_run

    out = tmp_path / "run"
    process = launch_torchrun(None, run_config(epochs=50), out, nproc_per_node=2)
    deadline = time.monotonic() + 300
    try:
        while not (out / "last.pt").exists():
            assert process.poll() is None, "the two-process run ended early"
            assert time.monotonic() < deadline, "no checkpoint within 5 minutes"
            time.sleep(0.2)
    finally:
        stop_run(process)  # SIGTERM to torchrun, which stops both workers, mid-way through a later epoch
    assert json.loads((out / "summary.json").read_text())["status"] != "completed"
    check_resumed_under_one_process(out, done=int(torch.load(out / "last.pt", weights_only=True)["epoch"]))
