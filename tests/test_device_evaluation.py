"""Device-resident evaluation gives the classic DataLoader evaluation's results, reading nothing back per batch.

The fast pipeline's test set is decoded once into a uint8 tensor on the device and normalised
there per batch (``ccmix.data.pipelines.test_batches``). These tests compare its normalised
images (to the last bit), predictions and metrics with the DataLoader of PIL test views, on
synthetic images and on a slice of the CIFAR-10 JPEG test set, and count host reads with a
``TorchDispatchMode`` on the meta device, where any read of a value would fail and the one
transfer of predictions back to the host is seen.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import ccmix.train.evaluation as evaluation
from ccmix.config.fields import TrainConfig
from ccmix.data.datasets import ArrayImages, build_datasets, folder_dataset
from ccmix.data.pipelines.test_batches import DeviceTestSource, ResidentTestImages, shard_indices
from ccmix.data.views import normalization, test_view
from ccmix.method.collectives import DistContext
from ccmix.train.evaluation import (
    build_run_model,
    build_test_loader,
    build_test_source,
    evaluate,
    evaluate_checkpoint,
    load_model,
    predict,
    predict_on_device,
)
from ccmix.train.fit import fit

CPU = torch.device("cpu")
FAST_IMAGENET = "ccmix.data.pipelines.fast_imagenet"
aten = torch.ops.aten
SCALAR_READS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default}


def tiny_config(**changes) -> TrainConfig:
    base = TrainConfig(dataset="synthetic", synthetic_classes=5, imb=10, arch="tiny", pipeline="fast", device="cpu",
                       num_workers=0, batch_size=8, topk=3, seed=3, progress=False)
    return base.replace(**changes)


def random_test_set(count: int = 600, classes: int = 5, seed: int = 0) -> ArrayImages:
    """Return ``count`` random uint8 32x32 images with the CIFAR test view (several batches of either path)."""
    draw = np.random.default_rng(seed)
    images = draw.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)
    test = ArrayImages(images, draw.integers(0, classes, count).tolist(), [f"class{c}" for c in range(classes)])
    test.transform = test_view("cifar", "synthetic")
    return test


def discriminating_model(config: TrainConfig, classes: int) -> torch.nn.Module:
    """Return a model whose BatchNorm statistics are random, left in train mode: evaluation must call eval()."""
    model = build_run_model(config, classes)
    draw = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=draw))
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=draw) + 0.5)
    return model.train()


def classic_images(loader) -> torch.Tensor:
    return torch.cat([images for images, _ in loader])


def device_images(source: DeviceTestSource) -> torch.Tensor:
    return torch.cat([images for images, _ in source.batches()])


def bn_state(model) -> dict:
    return {name: value.clone() for name, value in model.state_dict().items() if "running" in name}


# --------------------------------------------------------------------------- same values, same predictions


def test_normalised_test_images_equal_the_classic_test_view_to_the_last_bit():
    config = tiny_config()
    test = random_test_set()
    source = build_test_source(test, config, CPU)
    assert isinstance(source, DeviceTestSource)
    classic = classic_images(build_test_loader(test, config, CPU))
    resident = device_images(source)
    assert resident.dtype == torch.float32 and resident.shape == classic.shape == (600, 3, 32, 32)
    assert torch.equal(resident, classic)


def test_predictions_and_metrics_equal_the_classic_evaluation_for_a_model_left_in_train_mode():
    config = tiny_config()
    _, test = build_datasets(config)
    counts = [100, 50, 30, 15, 10]
    model = discriminating_model(config, 5)
    before = bn_state(model)
    resident = evaluate(model, build_test_source(test, config, CPU), CPU, counts, config)
    assert not model.training
    assert all(torch.equal(before[name], value) for name, value in bn_state(model).items())  # no train-mode update
    classic = evaluate(model.train(), build_test_loader(test, config, CPU), CPU, counts, config)
    assert len(np.unique(classic["preds"])) > 1  # a model that tells images apart, so equality means something
    np.testing.assert_array_equal(resident["preds"], classic["preds"])
    np.testing.assert_array_equal(resident["labels"], classic["labels"])
    assert resident["preds"].dtype == classic["preds"].dtype == np.int64
    for key in ("top1", "many", "medium", "few", "per_class"):
        assert resident[key] == classic[key], key


def test_cifar10_jpeg_test_images_give_the_classic_values_and_predictions(cifar10_jpg_root):
    config = tiny_config(dataset="folder", data_root=str(cifar10_jpg_root))
    full = folder_dataset(str(cifar10_jpg_root), "test", classes=folder_dataset(str(cifar10_jpg_root), "train").classes)
    test = full.subset(range(0, len(full), 25))  # 400 images of every class
    test.transform = test_view(config.resolved_view_recipe, config.dataset)
    source = build_test_source(test, config, CPU)
    assert isinstance(source, DeviceTestSource)
    loader = build_test_loader(test, config, CPU)
    assert torch.equal(device_images(source), classic_images(loader))
    model = discriminating_model(config, 10)
    resident = predict(model, source, CPU, config)
    classic = predict(model, loader, CPU, config)
    assert len(resident["preds"]) == 400 and len(np.unique(classic["preds"])) > 1
    np.testing.assert_array_equal(resident["preds"], classic["preds"])
    np.testing.assert_array_equal(resident["labels"], classic["labels"])


@pytest.mark.parametrize("world_size", [2, 3])
def test_rank_shards_merged_in_strided_order_give_the_single_process_predictions(world_size):
    config = tiny_config()
    test = random_test_set(count=301)
    model = discriminating_model(config, 5)
    whole = predict(model, build_test_source(test, config, CPU), CPU, config)
    merged = {key: np.full(len(test), -1, dtype=np.int64) for key in ("preds", "labels")}
    for rank in range(world_size):
        context = DistContext(rank=rank, world_size=world_size)
        source = build_test_source(test, config, CPU, context)
        assert source.num_images == len(test) and len(source.uint8_batches) == len(shard_indices(301, rank, world_size))
        shard = predict(model, source, CPU, config)
        for key in merged:
            merged[key][rank::world_size] = shard[key]
    np.testing.assert_array_equal(merged["preds"], whole["preds"])
    np.testing.assert_array_equal(merged["labels"], np.asarray(test.targets))


def test_a_rank_without_test_images_predicts_nothing():
    config = tiny_config()
    test = random_test_set(count=2)
    source = build_test_source(test, config, CPU, DistContext(rank=2, world_size=3))
    result = predict_on_device(build_run_model(config, 5), source, CPU, config)
    assert result["preds"].shape == result["labels"].shape == (0,)


# --------------------------------------------------------------------------- decoded once, nothing read back


class Transfers(TorchDispatchMode):
    """Count host reads of values and copies from a device to the host (from the meta device: answered with zeros)."""

    def __init__(self):
        super().__init__()
        self.reads = 0
        self.to_host = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in SCALAR_READS:
            self.reads += 1
        source = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if func is aten._to_copy.default and source.device.type != "cpu" and kwargs.get("device") == CPU:
            self.to_host += 1
            if source.is_meta:
                return torch.zeros(source.shape, dtype=kwargs.get("dtype") or source.dtype)
        return func(*args, **kwargs)


@pytest.mark.parametrize("batch_size", [100, 33])
def test_evaluation_reads_nothing_back_per_batch_and_moves_predictions_once(batch_size):
    # On the meta device values do not exist: a read would fail, and each copy to the host is seen.
    config = tiny_config()
    test = random_test_set(count=200)
    meta = torch.device("meta")
    source = DeviceTestSource(ResidentTestImages(test, batch_size, meta), len(test), (0.5,) * 3, (0.25,) * 3, meta)
    model = build_run_model(config, 5).to(meta).train()
    with Transfers() as transfers:
        result = predict_on_device(model, source, meta, config)
    assert len(result["preds"]) == 200
    assert (transfers.reads, transfers.to_host) == (0, 1)


def test_the_transfer_counter_sees_reads_and_copies_to_the_host():
    values = torch.ones(3, device="meta")
    with Transfers() as transfers:
        values.cpu()
        values.to("cpu")
        torch.ones(3).nonzero()
    assert (transfers.reads, transfers.to_host) == (1, 2)


def test_a_run_decodes_its_test_set_once_and_its_metrics_equal_the_classic_evaluation(tmp_path, monkeypatch):
    built, evaluations = [], []

    class CountedImages(ResidentTestImages):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self.images)

        def __call__(self):
            evaluations.append(1)
            return super().__call__()

    monkeypatch.setattr(evaluation, "ResidentTestImages", CountedImages)
    config = tiny_config(epochs=2, eval_interval=1, max_steps_per_epoch=2, warmup_epochs=0, milestones=(), lr=0.05)
    summary = fit(config, tmp_path)
    assert len(built) == 1 and built[0].dtype == torch.uint8 and built[0].shape == (100, 3, 32, 32)
    assert len(evaluations) == 2  # one evaluation per epoch, from the images decoded before training
    classic = evaluate_checkpoint(tmp_path / "last.pt", write=False)  # DataLoader of PIL test views
    for key in ("top1", "many", "medium", "few"):
        assert summary["final"][key] == classic[key], key
    model, saved = load_model(tmp_path / "last.pt")
    _, test = build_datasets(saved)
    expected = predict(model, build_test_loader(test, saved, CPU), CPU, saved)
    with np.load(tmp_path / "predictions.npz") as written:
        np.testing.assert_array_equal(written["preds"], expected["preds"])
        np.testing.assert_array_equal(written["labels"], expected["labels"])


def test_the_resident_images_are_never_decoded_again(monkeypatch):
    config = tiny_config()
    test = random_test_set(count=50)
    source = build_test_source(test, config, CPU)

    def refuse(index):
        raise AssertionError(f"image {index} decoded during evaluation")

    monkeypatch.setattr(test, "load_image", refuse)
    model = build_run_model(config, 5)
    first, second = predict(model, source, CPU, config), predict(model, source, CPU, config)
    np.testing.assert_array_equal(first["preds"], second["preds"])


# --------------------------------------------------------------------------- which source


def test_the_classic_pipeline_keeps_the_dataloader():
    source = build_test_source(random_test_set(count=10), tiny_config(pipeline="classic"), CPU)
    assert isinstance(source, torch.utils.data.DataLoader)


def test_the_imagenet_recipe_keeps_the_dataloader_without_a_fast_imagenet_source(monkeypatch):
    monkeypatch.setitem(sys.modules, FAST_IMAGENET, None)  # the module cannot be imported
    source = build_test_source(random_test_set(count=10), tiny_config(view_recipe="imagenet"), CPU)
    assert isinstance(source, torch.utils.data.DataLoader)
    monkeypatch.setitem(sys.modules, FAST_IMAGENET, types.ModuleType(FAST_IMAGENET))  # a module without it
    source = build_test_source(random_test_set(count=10), tiny_config(view_recipe="imagenet"), CPU)
    assert isinstance(source, torch.utils.data.DataLoader)


def test_the_imagenet_recipe_uses_imagenet_test_batches_where_it_exists(monkeypatch):
    calls = []

    def imagenet_test_batches(test, batch_size, device, rank=0, world_size=1):
        calls.append((len(test), batch_size, device, rank, world_size))
        labels = torch.as_tensor(test.targets[rank::world_size])
        yield torch.full((len(labels), 3, 224, 224), 128, dtype=torch.uint8, device=device), labels.to(device)

    module = types.ModuleType(FAST_IMAGENET)
    module.imagenet_test_batches = imagenet_test_batches
    monkeypatch.setitem(sys.modules, FAST_IMAGENET, module)
    config = tiny_config(view_recipe="imagenet", batch_size=2048)
    test = random_test_set(count=10)
    source = build_test_source(test, config, CPU, DistContext(rank=1, world_size=2))
    assert isinstance(source, DeviceTestSource) and calls == []  # decoded per evaluation, not when built
    images, labels = next(source.batches())
    assert calls == [(10, 2048, CPU, 1, 2)]
    assert images.dtype == torch.float32 and labels.tolist() == test.targets[1::2]
    mean, std = map(torch.tensor, normalization(config.dataset, config.resolved_view_recipe))
    assert torch.equal(images[0, :, 0, 0], (torch.tensor(128.0) * (1.0 / 255) - mean) / std)


def test_bad_shards_and_batch_sizes_are_refused_in_one_sentence():
    test = random_test_set(count=4)
    with pytest.raises(ValueError, match=r"rank=2, world_size=2 are not accepted; need 0 <= rank < world_size"):
        ResidentTestImages(test, 8, CPU, rank=2, world_size=2)
    with pytest.raises(ValueError, match=r"batch_size=0 is not accepted; need a positive integer"):
        ResidentTestImages(test, 0, CPU)


# --------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch sees none)")
def test_cuda_evaluation_gives_the_classic_predictions_with_one_transfer():
    device = torch.device("cuda")
    config = tiny_config(device="cuda")
    test = random_test_set(count=3000)
    model = discriminating_model(config, 5).to(device)
    source = build_test_source(test, config, device)
    assert source.uint8_batches.images.device.type == "cuda"
    predict_on_device(model, source, device, config)  # first use: kernels chosen, caches filled
    with Transfers() as transfers:
        resident = predict_on_device(model, source, device, config)
    classic = predict(model, build_test_loader(test, config, device), device, config)
    np.testing.assert_array_equal(resident["preds"], classic["preds"])
    assert (transfers.reads, transfers.to_host) == (0, 1)
