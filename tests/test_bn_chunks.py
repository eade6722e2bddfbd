"""BatchNorm in k chunks (bn_chunks) equals nn.DataParallel's split over k devices, computed by hand.

DataParallel scatters a batch with ``torch.chunk`` along dim 0, runs a replica of the
module on each chunk in training mode, concatenates the outputs, sums the replicas'
gradients, and keeps the buffers of the replica on the first device. The reference here
does exactly that with ``copy.deepcopy`` replicas on the CPU.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from test_host_sync import HostReads
from test_step_compile import needs_cpp_compiler
from torch import nn

from ccmix.config.fields import TrainConfig
from ccmix.config.presets import PRESETS, preset
from ccmix.config.rules import ConfigError
from ccmix.config.validation import validate
from ccmix.data.batch import StepBatch
from ccmix.method.collectives import DistContext
from ccmix.method.step import build_optimizer, train_step
from ccmix.models.bcl import build_model
from ccmix.models.chunked_bn import ChunkedBatchNorm, chunk_batchnorm, chunk_sizes, take_over_batchnorm
from ccmix.train.distributed import check_world_size, synchronise_batchnorm, wrap_for_training
from ccmix.train.evaluation import build_run_model

TOLERANCE = 1e-6
COUNTS = torch.tensor([40.0, 20.0, 10.0, 6.0, 4.0])


def tiny_config(**changes) -> TrainConfig:
    base = TrainConfig(dataset="synthetic", synthetic_classes=5, imb=10, topk=3, arch="tiny", method="concutmix",
                       batch_size=8, l_d_warm=0, cutmix_prob=1.0, warmup_epochs=0, milestones=(), progress=False,
                       device="cpu", amp=False, seed=0)
    return base.replace(**changes)


def random_batch(size: int = 8, seed: int = 2) -> StepBatch:
    generator = torch.Generator().manual_seed(seed)
    return StepBatch(
        view0=torch.randn(size, 3, 16, 16, generator=generator),
        contrastive=torch.randn(size, 2, 3, 16, 16, generator=generator),
        labels=torch.randint(0, 5, (size,), generator=generator),
        foreground=torch.randn(size, 3, 16, 16, generator=generator),
        foreground_labels=torch.randint(0, 5, (size,), generator=generator),
    )


def data_parallel_by_hand(module: nn.Module, inputs: torch.Tensor, chunks: int):
    """Return (replicas, their outputs) of ``module`` run as DataParallel would on ``torch.chunk(inputs, chunks)``."""
    pieces = torch.chunk(inputs, chunks)
    replicas = [copy.deepcopy(module) for _ in pieces]
    return replicas, [replica(piece) for replica, piece in zip(replicas, pieces)]


def assert_buffers_equal(chunked: nn.Module, reference: nn.Module) -> None:
    buffers = dict(reference.named_buffers())
    for name, value in chunked.named_buffers():
        torch.testing.assert_close(value, buffers[name], rtol=0, atol=TOLERANCE, msg=name)


# --------------------------------------------------------------------------- the layer


@pytest.mark.parametrize("shape", [(24, 5, 4, 4), (10, 5, 3, 3), (24, 7), (9, 3)],
                         ids=["2d", "2d-uneven", "1d", "1d-uneven"])
@pytest.mark.parametrize("chunks", [1, 2, 4])
def test_the_layer_equals_a_data_parallel_split(shape, chunks):
    generator = torch.Generator().manual_seed(chunks)
    plain = nn.BatchNorm2d(shape[1]) if len(shape) == 4 else nn.BatchNorm1d(shape[1])
    with torch.no_grad():
        plain.weight.uniform_(0.5, 2.0, generator=generator)
        plain.bias.uniform_(-1.0, 1.0, generator=generator)
    inputs = torch.randn(*shape, generator=generator) * 3 + 1
    upstream = torch.randn(*shape, generator=generator)

    replicas, outputs = data_parallel_by_hand(plain, inputs, chunks)
    reference = torch.cat(outputs)
    (reference * upstream).sum().backward()
    chunked = take_over_batchnorm(copy.deepcopy(plain), ChunkedBatchNorm(shape[1], chunks))
    leaf = inputs.clone().requires_grad_(True)
    output = chunked(leaf)
    (output * upstream).sum().backward()

    torch.testing.assert_close(output, reference, rtol=0, atol=TOLERANCE)
    assert_buffers_equal(chunked, replicas[0])  # running statistics of chunk 0 only
    assert int(chunked.num_batches_tracked) == 1
    # DataParallel sums the replicas' parameter gradients; the input gradient is each chunk's own
    for name in ("weight", "bias"):
        summed = sum(getattr(replica, name).grad for replica in replicas)
        torch.testing.assert_close(getattr(chunked, name).grad, summed, rtol=0, atol=1e-5, msg=name)
    if chunks > 1:  # the test has teeth: one BatchNorm over the whole batch is something else
        assert not torch.allclose(output, copy.deepcopy(plain)(inputs), atol=1e-3)


def test_chunk_sizes_are_torch_chunk_sizes():
    for size in range(1, 30):
        for chunks in (1, 2, 3, 4, 8):
            assert chunk_sizes(size, chunks) == [len(piece) for piece in torch.chunk(torch.empty(size), chunks)]


def test_evaluation_is_plain_batchnorm():
    plain = nn.BatchNorm2d(4)
    with torch.no_grad():
        plain.running_mean.uniform_(-1, 1)
        plain.running_var.uniform_(0.5, 2)
    chunked = take_over_batchnorm(copy.deepcopy(plain), ChunkedBatchNorm(4, 4)).eval()
    inputs = torch.randn(12, 4, 3, 3)
    assert torch.equal(chunked(inputs), plain.eval()(inputs))
    assert torch.equal(chunked.running_mean, plain.running_mean)


# --------------------------------------------------------------------------- the model


@pytest.mark.parametrize("arch", ["tiny", "resnet32"])
def test_a_chunked_model_equals_a_data_parallel_split_of_the_same_batch(arch):
    # float64: in float32 the CPU convolutions of 5 and of 18 images sum in different orders (about 1e-6 apart
    # on the unnormalised embedding), which says nothing about BatchNorm
    config = tiny_config(arch=arch, bn_chunks=4)
    plain = build_run_model(config.replace(bn_chunks=1), 5).double().train()
    chunked = build_run_model(config, 5).double().train()
    assert chunked.state_dict().keys() == plain.state_dict().keys()  # checkpoints stay interchangeable
    batch = random_batch(size=6)
    inputs = torch.cat([batch.view0, batch.contrastive[:, 0], batch.contrastive[:, 1]]).double()  # the step's forward

    replicas, outputs = data_parallel_by_hand(plain, inputs, 4)  # 18 images: chunks of 5, 5, 5, 3
    output = chunked(inputs)
    for name in ("logits", "features", "embedding", "embedding_raw"):
        gathered = torch.cat([getattr(piece, name) for piece in outputs])
        torch.testing.assert_close(getattr(output, name), gathered, rtol=0, atol=TOLERANCE, msg=name)
    # every replica computed the centres from all class weights: the centre head is not chunked
    torch.testing.assert_close(output.centers_raw, outputs[0].centers_raw, rtol=0, atol=TOLERANCE)
    assert_buffers_equal(chunked, replicas[0])
    assert isinstance(chunked.center_head[1], nn.BatchNorm1d) and not isinstance(chunked.center_head[1],
                                                                                 ChunkedBatchNorm)
    assert isinstance(chunked.head[1], ChunkedBatchNorm)
    encoder_norms = [m for m in chunked.encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert encoder_norms and all(isinstance(m, ChunkedBatchNorm) and m.chunks == 4 for m in encoder_norms)


def test_one_chunk_is_todays_model_bit_for_bit():
    config = tiny_config()
    assert config.bn_chunks == 1
    torch.manual_seed(config.seed)
    today = build_model(config.arch, 5, feat_dim=config.feat_dim, classifier=config.classifier)
    model = build_run_model(config, 5)
    assert not any(isinstance(m, ChunkedBatchNorm) for m in model.modules())
    assert chunk_batchnorm(today, 1) is today
    batch = random_batch()
    inputs = torch.cat([batch.view0, batch.contrastive[:, 0], batch.contrastive[:, 1]])
    assert torch.equal(model.train()(inputs).embedding, today.train()(inputs).embedding)
    losses = [train_step(m, build_optimizer(m, config), batch, config, 1, COUNTS, np.random.default_rng(1))
              for m in (model, today)]
    assert torch.equal(losses[0], losses[1])
    for (name, a), b in zip(model.state_dict().items(), today.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_chunked_step_reads_nothing_back_and_differs_from_one_chunk():
    config = tiny_config(bn_chunks=4)
    model = build_run_model(config, 5)
    optimizer = build_optimizer(model, config)
    batch = random_batch()
    train_step(model, optimizer, batch, config, 1, COUNTS, np.random.default_rng(1))  # caches warmed
    with HostReads() as reads:
        chunked = train_step(model, optimizer, batch, config, 1, COUNTS, np.random.default_rng(1))
    assert reads.count == 0, dict(reads.sites)
    whole = build_run_model(config.replace(bn_chunks=1), 5)
    whole_optimizer = build_optimizer(whole, config)
    for _ in range(2):
        unchunked = train_step(whole, whole_optimizer, batch, config, 1, COUNTS, np.random.default_rng(1))
    assert torch.isfinite(chunked).all() and not torch.equal(chunked, unchunked)


@pytest.mark.integration  # torch.compile builds C++ kernels
@needs_cpp_compiler
def test_compiled_chunked_model_agrees_with_eager():
    config = tiny_config(bn_chunks=4)
    eager = build_run_model(config, 5).train()
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, fullgraph=True, dynamic=False)  # fullgraph: no break, no host read
    inputs = torch.randn(22, 3, 16, 16, generator=torch.Generator().manual_seed(7))  # uneven: 6, 6, 6, 4
    for _ in range(2):
        expected, got = eager(inputs), compiled(inputs)
        torch.testing.assert_close(got.embedding, expected.embedding, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.logits, expected.logits, rtol=1e-5, atol=1e-5)
    assert_buffers_equal(compiled_model, eager)


# --------------------------------------------------------------------------- presets and refusals


def test_presets_with_a_published_script_use_four_chunks():
    for name in PRESETS:
        assert preset(name).bn_chunks == (1 if name.startswith("places_lt") else 4), name
        if name.startswith("cifar"):  # no data files needed to validate: the relations hold
            validate(preset(name))
    assert TrainConfig().bn_chunks == 1


@pytest.mark.parametrize("changes, words", [
    ({"bn_chunks": 4, "sync_bn": True}, ("bn_chunks=4 is not accepted", "sync_bn=True")),
    ({"bn_chunks": 0}, ("bn_chunks=0 is not accepted", ">= 1")),
    ({"bn_chunks": 2.5}, ("bn_chunks=2.5 is not accepted",)),
    ({"bn_chunks": 4, "method": "la", "batch_size": 5}, ("bn_chunks=4 is not accepted", "chunk of 1 image")),
])
def test_bad_chunk_settings_are_refused_in_one_sentence(changes, words):
    with pytest.raises(ConfigError) as error:
        validate(tiny_config(**changes))
    message = str(error.value)
    assert "\n" not in message and message.startswith(words[0]) and all(word in message for word in words), message


def test_processes_must_divide_the_chunks():
    check_world_size(batch_size=32, grad_accum_steps=1, world_size=2, bn_chunks=4)
    check_world_size(batch_size=30, grad_accum_steps=1, world_size=3, bn_chunks=1)  # no chunks: any world
    with pytest.raises(ValueError, match=r"^bn_chunks=4 is not accepted with 3 processes; .* multiple of 3$"):
        check_world_size(batch_size=30, grad_accum_steps=1, world_size=3, bn_chunks=4)


# --------------------------------------------------------------------------- two processes


def batch_terms(output, upstream: torch.Tensor) -> torch.Tensor:
    """Return a scalar that depends on the logits (N, 5) and the projection (N, D) of a batch's forward."""
    return (output.logits * upstream).sum() + (output.embedding_raw * upstream.sum(1, keepdim=True)).sum()


def _rank_worker(rank: int, world_size: int, out_dir: str, inputs: torch.Tensor, upstream: torch.Tensor) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    if os.path.exists("/sys/class/net/lo"):
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", init_method=f"file://{Path(out_dir) / 'store'}", rank=rank,
                            world_size=world_size)
    try:
        context = DistContext(rank=rank, world_size=world_size)
        config = tiny_config(bn_chunks=4)
        model = build_run_model(config, 5, processes=world_size).double().train()
        model, sync_bn = synchronise_batchnorm(model, config, context)
        training_model = wrap_for_training(model, config, context, sync_bn=sync_bn)
        share = slice(rank * len(inputs) // world_size, (rank + 1) * len(inputs) // world_size)
        output = training_model(inputs[share])
        # DDP averages gradients over ranks: the batch terms, scaled by world_size, sum to the whole batch's; every
        # rank computes the same centres, so their term is not scaled. Every parameter is used, as in training.
        (world_size * batch_terms(output, upstream[share]) + output.centers_raw.square().sum()).backward()
        torch.save({"sync_bn": sync_bn, "logits": output.logits.detach(), "buffers": dict(model.named_buffers()),
                    "grads": {name: p.grad for name, p in model.named_parameters() if p.grad is not None},
                    "chunks": {m.chunks for m in model.modules() if isinstance(m, ChunkedBatchNorm)}},
                   Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.integration
def test_two_processes_normalise_their_shares_as_one_process_normalises_the_global_batch():
    generator = torch.Generator().manual_seed(11)
    inputs = torch.randn(24, 3, 16, 16, generator=generator, dtype=torch.float64)
    upstream = torch.randn(24, 5, generator=generator, dtype=torch.float64)
    out_dir = tempfile.mkdtemp(prefix="ccmix-bn-chunks-")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mp.spawn(_rank_worker, args=(2, out_dir, inputs, upstream), nprocs=2, join=True)
        ranks = [torch.load(Path(out_dir) / f"rank{rank}.pt", weights_only=False) for rank in range(2)]
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(out_dir, ignore_errors=True)
    single = build_run_model(tiny_config(bn_chunks=4), 5).double().train()
    output = single(inputs)
    (batch_terms(output, upstream) + output.centers_raw.square().sum()).backward()

    assert [r["sync_bn"] for r in ranks] == [False, False] and ranks[0]["chunks"] == {2}
    gathered = torch.cat([r["logits"] for r in ranks])
    torch.testing.assert_close(gathered, output.logits.detach(), rtol=0, atol=TOLERANCE)
    for name, value in single.named_buffers():  # rank 0 holds global chunk 0
        torch.testing.assert_close(ranks[0]["buffers"][name], value, rtol=0, atol=TOLERANCE, msg=name)
    for name, parameter in single.named_parameters():
        if parameter.grad is not None:
            torch.testing.assert_close(ranks[0]["grads"][name], parameter.grad, rtol=0, atol=TOLERANCE, msg=name)
