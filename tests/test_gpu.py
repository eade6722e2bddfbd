"""GPU checks: the fast pipeline draws alike on CUDA and on the CPU, bf16 autocast stays close to fp32, and
evaluation is fp32.

Every test here is marked ``gpu`` and skipped without CUDA. The default run leaves gpu tests out; select
them with ``pytest -m gpu`` (the last ``-m`` given wins over the default filter). ``benchmarks/gpu_check.sh``
runs them on a GPU machine.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ccmix.config.fields import TrainConfig
from ccmix.data.augment.tables import AUTOAUGMENT_OPS
from ccmix.data.datasets import build_datasets
from ccmix.data.pipelines.fast import FastTrainPipeline

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch sees none)"),
]

# View-0 images on which a floating-point AutoAugment operation (blend or filter: last bits may differ
# between CUDA and CPU kernels) is followed by a thresholding one, which can turn that last-bit difference
# into a whole quantisation step. Their draws are still compared exactly; their pixels are not.
ROUNDING_OPS = ("Brightness", "Color", "Contrast", "Sharpness")
THRESHOLD_OPS = ("Posterize", "Solarize", "Equalize")
# Normalised units: 1e-3 is 0.05 of a grey level for std 0.2, far above float32 rounding of the
# blends, filters and bilinear sampling, far below any real augmentation difference.
IMAGE_ATOL = 1e-3


def synthetic_config(**changes) -> TrainConfig:
    """Return a small synthetic concutmix config on the fast pipeline."""
    base = dict(dataset="synthetic", synthetic_classes=10, imb=10, batch_size=64, max_steps_per_epoch=3,
                pipeline="fast", method="concutmix", topk=3, seed=7, num_workers=0, progress=False)
    return TrainConfig(**(base | changes))


def fields_of(batch) -> dict:
    """Return a pipeline batch (a dict or a batch dataclass) as a dict of its fields."""
    return batch if isinstance(batch, dict) else vars(batch)


def record_epoch(train, config: TrainConfig, device: str, epoch: int) -> tuple[list[dict], list[dict]]:
    """Return (batches as dicts, the augmentation draws of each step) of one epoch of the fast pipeline."""
    pipeline = FastTrainPipeline(train, config, device)
    assert pipeline.fallback is None
    draws = []
    sample_step = pipeline.sample_step

    def recording(*args, **kwargs):
        draws.append(sample_step(*args, **kwargs))
        return draws[-1]

    pipeline.sample_step = recording
    batches = [{key: value.cpu() if torch.is_tensor(value) else value for key, value in fields_of(batch).items()}
               for batch in pipeline.batches(epoch)]
    return batches, draws


def assert_same_draws(cpu, cuda, where: str = "draws") -> None:
    """Assert that two nested dicts of CPU tensors (augmentation draws) are equal, key by key."""
    if isinstance(cpu, dict):
        assert cpu.keys() == cuda.keys(), where
        for key in cpu:
            assert_same_draws(cpu[key], cuda[key], f"{where}[{key!r}]")
    elif cpu is None:
        assert cuda is None, where
    else:
        assert cuda.device.type == "cpu" and torch.equal(cpu, cuda), where


def rounding_sensitive(autoaugment: dict) -> torch.Tensor:
    """Return a (B,) bool mask of the view-0 draws that apply a ROUNDING_OPS and then a THRESHOLD_OPS operation."""
    codes = {name: AUTOAUGMENT_OPS.index(name) for name in ROUNDING_OPS + THRESHOLD_OPS}
    op, fired = autoaugment["op"], autoaugment["apply"]
    first = fired[:, 0] & torch.isin(op[:, 0], torch.tensor([codes[name] for name in ROUNDING_OPS]))
    second = fired[:, 1] & torch.isin(op[:, 1], torch.tensor([codes[name] for name in THRESHOLD_OPS]))
    return first & second


def test_fast_pipeline_draws_the_same_batches_on_cuda_as_on_the_cpu():
    config = synthetic_config()
    train, _ = build_datasets(config)
    cpu_batches, cpu_draws = record_epoch(train, config, "cpu", epoch=2)
    cuda_batches, cuda_draws = record_epoch(train, config, "cuda", epoch=2)
    assert len(cpu_batches) == len(cuda_batches) == 3
    compared = skipped = 0
    for step, (cpu, cuda, cpu_draw, cuda_draw) in enumerate(zip(cpu_batches, cuda_batches, cpu_draws, cuda_draws)):
        # the draws and the sampled images are the same, bit for bit
        assert_same_draws(cpu_draw, cuda_draw, f"step {step} draws")
        assert torch.equal(cpu["labels"], cuda["labels"]) and torch.equal(cpu["foreground_labels"],
                                                                          cuda["foreground_labels"])
        # contrastive views: crops, colour jitter, grayscale and blur are continuous in their inputs
        torch.testing.assert_close(cuda["contrastive"], cpu["contrastive"], atol=IMAGE_ATOL, rtol=0)
        # view 0 of the backgrounds, then of the foregrounds (draws: backgrounds first)
        batch = cpu["view0"].shape[0]
        sensitive = rounding_sensitive(cpu_draw["view0"]["autoaugment"])
        for images_cpu, images_cuda, mask in ((cpu["view0"], cuda["view0"], sensitive[:batch]),
                                             (cpu["foreground"], cuda["foreground"], sensitive[batch:])):
            keep = ~mask
            torch.testing.assert_close(images_cuda[keep], images_cpu[keep], atol=IMAGE_ATOL, rtol=0)
            compared += int(keep.sum())
            skipped += int(mask.sum())
    # the CIFAR-10 policy pairs a blend with a threshold only in (Color, Equalize): about 2% of images
    assert skipped <= 0.1 * (compared + skipped)


@pytest.fixture
def strict_fp32():
    """Turn TF32 off for the test (so fp32 means fp32 in convolutions and matmuls), restoring it afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def one_step(config: TrainConfig, batch, class_counts: torch.Tensor) -> tuple[float, torch.Tensor, dict]:
    """Return (mean loss, flattened gradient, activation facts) of one ``train_step`` of a fresh ResNet-32."""
    from ccmix.data.batch import StepBatch
    from ccmix.method.step import COUNT, LOSS, build_optimizer, cutmix_generator, train_step
    from ccmix.train.evaluation import build_run_model

    device = torch.device("cuda")
    model = build_run_model(config, class_counts.numel()).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    facts = {}

    def encoder_seen(module, inputs, output):
        facts["input_channels_last"] = inputs[0].is_contiguous(memory_format=torch.channels_last)
        facts["feature_dtype"] = output.dtype

    handle = model.encoder.register_forward_hook(encoder_seen)
    optimizer = build_optimizer(model, config)
    step_batch = batch if isinstance(batch, StepBatch) else StepBatch(**batch)
    sums = train_step(model.train(), optimizer, step_batch, config, 1, class_counts, cutmix_generator(config, 1))
    handle.remove()
    gradient = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])
    return float(sums[LOSS] / sums[COUNT]), gradient, facts


def test_bf16_autocast_channels_last_step_stays_close_to_the_fp32_step(strict_fp32):
    config = synthetic_config(arch="resnet32", l_d_warm=0, cutmix_prob=1.0)
    train, _ = build_datasets(config)
    pipeline = FastTrainPipeline(train, config, "cuda")
    batch = next(iter(pipeline.batches(1)))
    class_counts = torch.tensor(train.class_counts, dtype=torch.float32, device="cuda")
    fp32_loss, fp32_grad, fp32_facts = one_step(config.replace(amp=False, channels_last=False), batch, class_counts)
    amp_loss, amp_grad, amp_facts = one_step(config.replace(amp=True, channels_last=True), batch, class_counts)
    # the two steps ran as configured
    assert fp32_facts == {"input_channels_last": False, "feature_dtype": torch.float32}
    assert amp_facts == {"input_channels_last": True, "feature_dtype": torch.bfloat16}
    # bf16 keeps 8 significant bits (relative rounding 2^-9 = 0.2%) while products accumulate in fp32 and
    # the losses are computed from fp32 logits; on ResNet-32 at initialisation the loss moves by ~0.06%
    # (measured with CPU bf16 autocast), so 1% leaves room for other kernels without hiding a wrong step
    assert amp_loss == pytest.approx(fp32_loss, rel=1e-2)
    # gradients: bf16 rounding scatters single entries (~10% in norm) but keeps the direction
    assert torch.nn.functional.cosine_similarity(amp_grad, fp32_grad, dim=0) > 0.97


def test_evaluation_is_fp32_and_amp_predictions_equal_fp32_predictions(tmp_path):
    from ccmix.train.evaluation import build_test_loader, load_model, predict
    from ccmix.train.fit import fit

    config = synthetic_config(arch="tiny", device="cuda", amp=True, channels_last=True, epochs=3, max_steps_per_epoch=8,
                              warmup_epochs=0, milestones=(), lr=0.05)
    summary = fit(config, tmp_path)
    assert summary["final"]["top1"] > 100.0 / config.synthetic_classes  # trained beyond chance
    model, saved = load_model(tmp_path / "last.pt", device="cuda")
    _, test = build_datasets(saved)
    device = torch.device("cuda")
    logits = {}

    def classifier_output(module, inputs, output):
        logits.setdefault(current, []).append(output.detach().clone())

    handle = model.classifier.register_forward_hook(classifier_output)
    predictions = {}
    for current in ("amp", "fp32"):
        evaluated = saved.replace(amp=current == "amp")
        predictions[current] = predict(model, build_test_loader(test, evaluated, device), device, evaluated)
    handle.remove()
    assert all(chunk.dtype == torch.float32 for chunk in logits["amp"])
    amp_logits, fp32_logits = torch.cat(logits["amp"]), torch.cat(logits["fp32"])
    torch.testing.assert_close(amp_logits, fp32_logits, atol=1e-5, rtol=1e-5)
    assert np.array_equal(predictions["amp"]["preds"], predictions["fp32"]["preds"])
    assert len(predictions["amp"]["preds"]) == len(test)
