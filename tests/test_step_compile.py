"""compile=true: the step (model and losses) under torch.compile agrees with eager and compiles once per variant.

The variants of a step are: mixed or not, and (Contrastive CutMix) area or semantic labels.
New boxes, λ and epochs must reuse the graphs already compiled, so a counting backend
checks that the number of graphs stops growing once every variant has been seen.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch._dynamo.testing import CompileCounter

from ccmix.config.fields import TrainConfig
from ccmix.data.batch import StepBatch
from ccmix.method.collectives import DistContext
from ccmix.method.cutmix import sample_boxes
from ccmix.method.mixers import boxes_tensor
from ccmix.method.step import (
    CompiledLoss,
    build_optimizer,
    draw_cutmix_boxes,
    loss_parts,
    step_loss_function,
    train_step,
    uses_semantic_labels,
)
from ccmix.train.evaluation import build_run_model
from ccmix.train.fit import fit

# torch.compile builds C++ kernels: in `make test`, not in `make test-fast`
pytestmark = pytest.mark.integration

CPU = torch.device("cpu")
COUNTS = torch.tensor([40.0, 20.0, 10.0, 6.0, 4.0])


def cpp_compiler_missing() -> str | None:
    """Return why inductor cannot compile on this CPU (no C++ compiler), or None when it can."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as error:  # the reason varies by platform; any of them means no CPU compilation here
        return f"torch.compile needs a C++ compiler on the CPU and none was found ({error})"
    return None


needs_cpp_compiler = pytest.mark.skipif(cpp_compiler_missing() is not None, reason=str(cpp_compiler_missing()))


def step_config(**changes) -> TrainConfig:
    base = TrainConfig(dataset="synthetic", synthetic_classes=5, imb=10, topk=3, arch="tiny", method="concutmix",
                       batch_size=8, l_d_warm=0, cutmix_prob=0.5, progress=False, seed=0)
    return base.replace(**changes)


def random_batch(generator: torch.Generator, size: int = 8) -> StepBatch:
    return StepBatch(
        view0=torch.randn(size, 3, 32, 32, generator=generator),
        contrastive=torch.randn(size, 2, 3, 32, 32, generator=generator),
        labels=torch.randint(0, 5, (size,), generator=generator),
        foreground=torch.randn(size, 3, 32, 32, generator=generator),
        foreground_labels=torch.randint(0, 5, (size,), generator=generator),
    )


def test_new_boxes_and_epochs_reuse_the_graphs_of_each_variant():
    config = step_config()
    model = build_run_model(config, 5)
    optimizer = build_optimizer(model, config)
    counter = CompileCounter()
    loss_function = CompiledLoss(CPU, DistContext(), backend=counter)
    generator, cutmix_rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
    shadow_rng = np.random.default_rng(0)  # makes the same CutMix decisions as the step, to name each variant
    variants = set()
    for step in range(10):
        epoch = step // 4  # epoch 0: area labels; epochs 1 and 2: semantic labels (l_d_warm=0)
        mixed = draw_cutmix_boxes(config, shadow_rng, 8, 32, 32, DistContext()) is not None
        variants.add((mixed, uses_semantic_labels(config, epoch, mixed)))
        train_step(model, optimizer, random_batch(generator), config, epoch, COUNTS, cutmix_rng,
                   loss_function=loss_function)
        assert counter.frame_count == len(variants), f"step {step}: {counter.frame_count} graphs for {variants}"
    assert len(variants) == 3  # unmixed, mixed with area labels, mixed with semantic labels
    assert torch._dynamo.utils.counters["graph_break"] == {}


def test_a_backend_that_fails_leaves_the_step_eager_with_a_warning():
    def failing_backend(graph, inputs):
        raise RuntimeError("no compiler here")

    config = step_config(method="la")
    model = build_run_model(config, 5)
    reference = copy.deepcopy(model)
    loss_function = CompiledLoss(CPU, DistContext(), backend=failing_backend)
    generator = torch.Generator().manual_seed(1)
    batch = random_batch(generator)
    with pytest.warns(UserWarning, match="torch.compile failed here .*no compiler here.*training without it"):
        sums = train_step(model, build_optimizer(model, config), batch, config, 0, COUNTS, np.random.default_rng(0),
                          loss_function=loss_function)
    expected = train_step(reference, build_optimizer(reference, config), batch, config, 0, COUNTS,
                          np.random.default_rng(0))
    assert torch.equal(sums, expected) and loss_function.function is loss_parts


def test_step_loss_function_is_eager_unless_compile_is_set():
    assert step_loss_function(step_config(), CPU) is loss_parts
    assert isinstance(step_loss_function(step_config(compile=True), CPU), CompiledLoss)
    cuda = torch.device("cuda")  # only named: nothing runs on it
    assert step_loss_function(step_config(compile=True), cuda).cuda_graphs
    # gradients accumulated over micro-batches would sit in memory that the next replay reuses
    assert not step_loss_function(step_config(compile=True, grad_accum_steps=2), cuda).cuda_graphs
    assert not step_loss_function(step_config(compile=True), CPU).cuda_graphs


@needs_cpp_compiler
def test_compiled_and_eager_losses_agree():
    config = step_config()
    generator = torch.Generator().manual_seed(2)
    batch = random_batch(generator)
    boxes = boxes_tensor(sample_boxes(8, 32, 32, generator=3), CPU)
    model = build_run_model(config, 5)
    arguments = (batch.view0, batch.contrastive, batch.labels, batch.foreground, batch.foreground_labels, boxes,
                 COUNTS)
    # the inference graph compiles in seconds; training steps are compared in the slow test below
    with torch.no_grad():
        eager = loss_parts(copy.deepcopy(model), *arguments, config=config, semantic=True, context=DistContext())
        compiled = CompiledLoss(CPU, DistContext())(model, *arguments, config=config, semantic=True,
                                                    context=DistContext())
    for name, a, b in zip(("loss", "loss_ce", "loss_bcl", "correct"), eager, compiled):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)


def assert_compiled_steps_agree(device: torch.device, tolerance: float) -> None:
    """Train copies of one model eagerly and compiled for two steps (area, then semantic labels); assert they agree."""
    config = step_config(cutmix_prob=1.0, amp=False)
    generator = torch.Generator().manual_seed(4)
    batch = random_batch(generator).to(device)
    counts = COUNTS.to(device)
    eager_model = build_run_model(config, 5).to(device)
    compiled_model = copy.deepcopy(eager_model)
    eager_optimizer, compiled_optimizer = build_optimizer(eager_model, config), build_optimizer(compiled_model, config)
    loss_function = CompiledLoss(device, DistContext(device=device))
    for epoch in (0, 1, 1):  # area labels, then semantic labels twice (on CUDA: recorded, then replayed)
        eager = train_step(eager_model, eager_optimizer, batch, config, epoch, counts, np.random.default_rng(epoch))
        compiled = train_step(compiled_model, compiled_optimizer, batch, config, epoch, counts,
                              np.random.default_rng(epoch), loss_function=loss_function)
        torch.testing.assert_close(compiled, eager, rtol=tolerance, atol=tolerance)
    for (name, a), b in zip(eager_model.named_parameters(), compiled_model.parameters()):
        torch.testing.assert_close(b, a, rtol=tolerance, atol=tolerance / 10, msg=name)


@pytest.mark.slow
@needs_cpp_compiler
def test_compiled_training_steps_agree_with_eager_steps():
    assert_compiled_steps_agree(CPU, tolerance=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch sees none)")
def test_compiled_cuda_graph_steps_agree_with_eager_steps():
    # TF32 convolutions and fused kernels round differently from the eager ones: a looser tolerance
    assert_compiled_steps_agree(torch.device("cuda"), tolerance=2e-3)


@pytest.mark.slow
@needs_cpp_compiler
def test_a_compiled_run_trains_like_an_eager_one(tmp_path):
    config = TrainConfig(dataset="synthetic", synthetic_classes=5, imb=10, topk=3, arch="tiny", method="la",
                         epochs=1, batch_size=16, max_steps_per_epoch=3, num_workers=0, pipeline="fast",
                         warmup_epochs=0, milestones=(), lr=0.05, seed=1, progress=False)
    eager = fit(config, tmp_path / "eager")
    compiled = fit(config.replace(compile=True), tmp_path / "compiled")
    assert compiled["status"] == "completed"
    assert compiled["final"]["top1"] == pytest.approx(eager["final"]["top1"], abs=1.0)
