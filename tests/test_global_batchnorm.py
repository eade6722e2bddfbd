"""GlobalBatchNorm: one all-reduce of per-channel moments gives BatchNorm over the global batch, with no host reads.

Two gloo processes on loopback, meeting through a file store; each takes a different number
of rows of one fixed input, and the results are compared with one nn.BatchNorm2d over all rows.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_host_sync import HostReads
from test_step_compile import needs_cpp_compiler

from ccmix.train.distributed import GlobalBatchNorm, moments_statistics, shifted_moments

ROWS = (5, 3)  # unequal shares: rank 0 takes rows 0-4, rank 1 rows 5-7
STEPS = 2  # the second step shifts by a running mean that is no longer 0


def fixed_input(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (input (8, 3, 4, 4) with channel means other than 0, upstream gradient) of training step ``step``."""
    generator = torch.Generator().manual_seed(10 + step)
    values = torch.randn(8, 3, 4, 4, generator=generator) * 3 + torch.tensor([1.0, 4.0, -2.0]).view(1, 3, 1, 1)
    return values, torch.randn(8, 3, 4, 4, generator=generator)


def rows_of(rank: int) -> slice:
    return slice(sum(ROWS[:rank]), sum(ROWS[:rank + 1]))


def layer_steps(layer: torch.nn.Module, rank: int | None) -> list[dict]:
    """Return each step's output and gradients of ``layer`` on rank ``rank``'s rows (all rows when None)."""
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([1.5, -0.5, 2.0]))
        layer.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
    results = []
    for step in range(STEPS):
        values, upstream = fixed_input(step)
        rows = slice(None) if rank is None else rows_of(rank)
        shard = values[rows].clone().requires_grad_(True)
        layer.zero_grad()
        with HostReads() as reads:
            output = layer(shard)
            (output * upstream[rows]).sum().backward()
        results.append({"output": output.detach(), "input_grad": shard.grad, "weight_grad": layer.weight.grad.clone(),
                        "bias_grad": layer.bias.grad.clone(), "reads": reads.count,
                        "state": {k: v.clone() for k, v in layer.state_dict().items()},
                        "stats_require_grad": layer.running_var.requires_grad or layer.running_mean.requires_grad})
    return results


def _worker(rank: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    if os.path.exists("/sys/class/net/lo"):
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", init_method=f"file://{Path(out_dir) / 'store'}", rank=rank, world_size=2)
    try:
        results = {momentum: layer_steps(GlobalBatchNorm(3, momentum=momentum), rank) for momentum in (0.1, None)}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks():
    out_dir = tempfile.mkdtemp(prefix="ccmix-gbn-")
    try:
        mp.spawn(_worker, args=(out_dir,), nprocs=2, join=True)
        yield [torch.load(Path(out_dir) / f"rank{rank}.pt", weights_only=False) for rank in range(2)]
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


@pytest.mark.integration
@pytest.mark.parametrize("momentum", [0.1, None])
def test_two_unequal_shares_normalise_like_one_batchnorm_over_all_rows(two_ranks, momentum):
    expected = layer_steps(torch.nn.BatchNorm2d(3, momentum=momentum), None)
    for step in range(STEPS):
        reference = expected[step]
        for rank in range(2):
            result = two_ranks[rank][momentum][step]
            rows = rows_of(rank)
            torch.testing.assert_close(result["output"], reference["output"][rows], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(result["input_grad"], reference["input_grad"][rows], atol=1e-5, rtol=1e-5)
            for key, value in reference["state"].items():
                torch.testing.assert_close(result["state"][key], value, atol=1e-5, rtol=1e-5, msg=key)
            assert result["reads"] == 0  # momentum=None included: the cumulative factor stays on the device
            assert not result["stats_require_grad"]  # running statistics never join the autograd graph
        # DDP averages parameter gradients over ranks; each rank holds its rows' part of the sum
        for key in ("weight_grad", "bias_grad"):
            total = two_ranks[0][momentum][step][key] + two_ranks[1][momentum][step][key]
            torch.testing.assert_close(total, reference[key], atol=1e-5, rtol=1e-5, msg=key)
    assert int(two_ranks[0][momentum][-1]["state"]["num_batches_tracked"]) == STEPS


def test_moments_summed_over_shares_give_the_mean_and_variance_of_all_rows():
    values, _ = fixed_input(0)
    shift = torch.tensor([0.5, 3.0, -1.5])
    moments = shifted_moments(values[:5], shift) + shifted_moments(values[5:], shift)
    mean, variance, count = moments_statistics(moments, shift)
    expected_variance, expected_mean = torch.var_mean(values, dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(mean, expected_mean)
    torch.testing.assert_close(variance, expected_variance)
    assert count.tolist() == [8 * 4 * 4]


def test_the_shift_keeps_float32_variance_accurate_far_from_zero():
    # mean 3000, standard deviation 1: unshifted, E[x^2] - E[x]^2 cancels 7 significant digits in float32
    values = torch.randn(64, 2, 8, 8, dtype=torch.float64) + 3000.0
    expected = values.var(dim=(0, 2, 3), unbiased=False)
    shifted = moments_statistics(shifted_moments(values.float(), torch.full((2,), 2999.5)), torch.full((2,), 2999.5))
    unshifted = moments_statistics(shifted_moments(values.float(), None), None)
    assert (shifted[1].double() - expected).abs().max() < 1e-4
    assert (unshifted[1].double() - expected).abs().max() > 1e-2  # what the shift is for


def test_sync_batchnorm_layers_become_global_batchnorm():
    from ccmix.train.distributed import convert_sync_batchnorm

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.SyncBatchNorm(4), torch.nn.BatchNorm1d(4))
    converted = convert_sync_batchnorm(model)
    assert [type(layer).__name__ for layer in converted] == ["Conv2d", "GlobalBatchNorm", "GlobalBatchNorm"]


# --------------------------------------------------------------------------- training with DDP


def _fit_worker(rank: int, out_dir: str, runs: list) -> None:
    from ccmix.config.fields import TrainConfig
    from ccmix.train.fit import fit

    torch.set_num_threads(1)
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"})
    if os.path.exists("/sys/class/net/lo"):
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", init_method=f"file://{Path(out_dir) / 'store'}", rank=rank, world_size=2)
    try:
        results = {}
        for name, changes in runs:
            config = TrainConfig(dataset="synthetic", synthetic_classes=5, imb=10, topk=3, arch="tiny", method="la",
                                 epochs=1, batch_size=16, num_workers=0, pipeline="fast", device="cpu",
                                 warmup_epochs=0, milestones=(), lr=0.05, seed=1, progress=False, log_every=100,
                                 **changes)
            with HostReads() as reads, warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                fit(config, Path(out_dir) / name)
            results[name] = {"reads": reads.count, "sites": reads.sites, "warnings": [str(w.message) for w in caught],
                             "metrics": (Path(out_dir) / name / "metrics.jsonl").read_text()}
        torch.save(results, Path(out_dir) / f"fit{rank}.pt")
    finally:
        dist.destroy_process_group()


def two_process_fits(runs: list) -> list[dict]:
    out_dir = tempfile.mkdtemp(prefix="ccmix-gbn-fit-")
    try:
        mp.spawn(_fit_worker, args=(out_dir, runs), nprocs=2, join=True)
        return [torch.load(Path(out_dir) / f"fit{rank}.pt", weights_only=False) for rank in range(2)]
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


@pytest.mark.integration
def test_ddp_training_steps_with_global_batchnorm_read_nothing_back():
    # warm, then N and 3N steps: what happens once a run cancels, the difference is 2N steps' reads
    fits = two_process_fits([("warm", {"max_steps_per_epoch": 1}), ("short", {"max_steps_per_epoch": 1}),
                             ("long", {"max_steps_per_epoch": 3})])
    for rank, result in enumerate(fits):
        extra = result["long"]["sites"] - result["short"]["sites"]
        # the ranks agree on stop signals through a CPU tensor of their own gloo group on every backend:
        # a read of host memory, never of the accelerator, so it is not counted
        device_reads = {site: n for site, n in extra.items() if "interrupt.py" not in site}
        assert sum(device_reads.values()) / 2 == 0, (rank, device_reads)
        assert sum(extra.values()) == 2  # the counter did run: the stop agreement's read, once a step


@pytest.mark.integration
@pytest.mark.slow
@needs_cpp_compiler
def test_ddp_with_compile_trains_like_eager_ddp():
    import json

    fits = two_process_fits([("eager", {"max_steps_per_epoch": 3}),
                             ("compiled", {"max_steps_per_epoch": 3, "compile": True})])
    eager, compiled = (json.loads(fits[0][name]["metrics"].splitlines()[0]) for name in ("eager", "compiled"))
    assert not [w for w in fits[0]["compiled"]["warnings"] if "torch.compile failed" in w]  # not eager after all
    assert compiled["loss"] == pytest.approx(eager["loss"], abs=1e-4)
    assert compiled["loss_ce"] == pytest.approx(eager["loss_ce"], abs=1e-4)
