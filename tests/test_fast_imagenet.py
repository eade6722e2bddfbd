"""The fast ImageNet-recipe pipeline: batches from image files of any size, reproducibility, test batches, training."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from ccmix.config.fields import TrainConfig
from ccmix.data.augment import colour, dispatch, imagenet_views
from ccmix.data.augment.colour import apply_color_jitter, blend_, blend_image_, blend_rows_
from ccmix.data.augment.dispatch import one_image_at_a_time
from ccmix.data.augment.draws import sample_color_jitter
from ccmix.data.augment.imagenet_views import color_jitter_
from ccmix.data.augment.resample import resize_centre_crop
from ccmix.data.datasets import build_datasets, folder_dataset
from ccmix.data.decode import decode_images, read_bytes
from ccmix.data.pipelines import imagenet_steps
from ccmix.data.pipelines.build import build_train_pipeline
from ccmix.data.pipelines.fast_imagenet import FastImageNetPipeline, imagenet_test_batches
from ccmix.data.pipelines.imagenet_steps import step_generator
from ccmix.data.views import IMAGENET_MEAN, IMAGENET_STD

# (width, height, mode, format) of the training files, classes in turn: landscape, portrait, tiny, grey, PNG
SHAPES = [(420, 300, "RGB", "JPEG"), (260, 380, "RGB", "JPEG"), (23, 31, "RGB", "JPEG"), (330, 330, "L", "JPEG"),
          (300, 250, "RGB", "PNG"), (500, 320, "RGB", "JPEG"), (240, 240, "L", "JPEG"), (310, 410, "RGB", "JPEG")]


def _smooth_image(rng: np.random.Generator, width: int, height: int, mode: str) -> Image.Image:
    coarse = Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    return coarse.convert(mode)


def _write_tree(root, train_images: int, test_images: int, classes: int = 3, png: bool = True) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", train_images), ("test", test_images)):
        for index in range(count):
            width, height, mode, form = SHAPES[index % len(SHAPES)]
            if form == "PNG" and (not png or split == "test" or index >= len(SHAPES)):  # one PNG at most
                form = "JPEG"
            folder = os.path.join(root, split, f"class_{index % classes}")
            os.makedirs(folder, exist_ok=True)
            suffix = "png" if form == "PNG" else "jpg"
            _smooth_image(rng, width, height, mode).save(os.path.join(folder, f"{index}.{suffix}"), form)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet_tree")
    _write_tree(root, train_images=16, test_images=10)
    return str(root)


def _config(root, **changes) -> TrainConfig:
    values = {"dataset": "folder", "data_root": root, "view_recipe": "imagenet", "method": "concutmix",
              "batch_size": 8, "num_workers": 0, "seed": 3}
    values.update(changes)
    return TrainConfig(**values)


def _epoch(pipeline, epoch=0, rank=0, world_size=1):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the PNG's fallback, tested on its own
        return list(pipeline.batches(epoch, rank, world_size))


def test_batches_have_the_contract_shapes_normalised_values_and_the_planned_labels(tree):
    train = folder_dataset(tree, "train")
    pipeline = FastImageNetPipeline(train, _config(tree), "cpu")
    batches = _epoch(pipeline)
    plan = pipeline.epoch_plan(0)
    assert pipeline.steps_per_epoch == 2 and len(batches) == 2
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    for step, batch in enumerate(batches):
        assert batch.view0.shape == (8, 3, 224, 224) and batch.view0.dtype == torch.float32
        assert batch.contrastive.shape == (8, 2, 3, 224, 224)
        assert batch.foreground.shape == (8, 3, 224, 224)
        assert batch.labels.tolist() == [train.targets[i] for i in plan[step]["background"]]
        assert batch.foreground_labels.tolist() == [train.targets[i] for i in plan[step]["foreground"]]
        for views in (batch.view0, batch.contrastive.flatten(0, 1), batch.foreground):
            pixels = (views * std + mean) * 255  # back on the 0..255 scale: inside it, not constant
            assert pixels.min() > -1e-3 and pixels.max() < 255 + 1e-3
            assert pixels.std() > 10
    # the two contrastive views of an image differ (independent draws)
    assert not torch.equal(batches[0].contrastive[:, 0], batches[0].contrastive[:, 1])


def test_a_png_is_decoded_by_the_fallback_counted_and_reported_once(tree):
    pipeline = FastImageNetPipeline(folder_dataset(tree, "train"), _config(tree, method="ce"), "cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for epoch in range(2):
            list(pipeline.batches(epoch))
    reports = [w for w in caught if issubclass(w.category, UserWarning) and "decoded one at a time" in str(w.message)]
    assert len(reports) == 1 and str(reports[0].message).startswith("1 of the ")
    assert pipeline.fallback_images == 2  # the PNG is a background once per epoch (16 images, 2 steps of 8)


def test_same_seed_gives_the_same_batches_and_another_epoch_other_ones(tree):
    train = folder_dataset(tree, "train")
    first, second = (_epoch(FastImageNetPipeline(train, _config(tree), "cpu")) for _ in range(2))
    for a, b in zip(first, second):
        assert torch.equal(a.view0, b.view0) and torch.equal(a.contrastive, b.contrastive)
        assert torch.equal(a.foreground, b.foreground)
    other = _epoch(FastImageNetPipeline(train, _config(tree), "cpu"), epoch=1)
    assert not torch.equal(first[0].view0, other[0].view0)


def test_ranks_take_columns_of_the_global_batch(tree):
    train = folder_dataset(tree, "train")
    config = _config(tree, contrastive_views="sim-rand")
    whole = _epoch(FastImageNetPipeline(train, config, "cpu"))
    for rank in range(2):
        part = _epoch(FastImageNetPipeline(train, config, "cpu"), rank=rank, world_size=2)
        for full, mine in zip(whole, part):
            columns = slice(rank, None, 2)
            assert torch.equal(mine.labels, full.labels[columns])
            # the same crops and draws; float results may differ in the last bits with the batch size
            torch.testing.assert_close(mine.view0, full.view0[columns], atol=1e-4, rtol=0)
            torch.testing.assert_close(mine.contrastive, full.contrastive[columns], atol=1e-4, rtol=0)
            torch.testing.assert_close(mine.foreground, full.foreground[columns], atol=1e-4, rtol=0)


@pytest.mark.integration
@pytest.mark.parametrize("build_in_workers", [False, True])
def test_two_workers_give_the_batches_of_none(tree, build_in_workers):
    train = folder_dataset(tree, "train")
    alone = _epoch(FastImageNetPipeline(train, _config(tree), "cpu"))
    workers = FastImageNetPipeline(train, _config(tree, num_workers=2), "cpu", build_in_workers=build_in_workers)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        built = list(workers.batches(0))
    assert len(built) == len(alone) == 2
    for a, b in zip(alone, built):
        assert torch.equal(a.labels, b.labels) and torch.equal(a.foreground_labels, b.foreground_labels)
        # one intra-op thread in a worker and here, whatever the caller's: the same values
        assert torch.equal(a.view0, b.view0) and torch.equal(a.contrastive, b.contrastive)
        assert torch.equal(a.foreground, b.foreground)
    assert workers.fallback_images >= 1 and sum("decoded one at a time" in str(w.message) for w in caught) == 1


def test_build_routes_the_imagenet_recipe_with_pipeline_fast_here(tree):
    train = folder_dataset(tree, "train")
    fast = build_train_pipeline(train, _config(tree, pipeline="fast"), "cpu")
    assert isinstance(fast, FastImageNetPipeline) and not fast.build_in_workers  # no workers to build in
    assert build_train_pipeline(train, _config(tree, pipeline="fast", num_workers=2), "cpu").build_in_workers
    assert not isinstance(build_train_pipeline(train, _config(tree, pipeline="classic"), "cpu"), FastImageNetPipeline)


@pytest.mark.parametrize("size", [(40, 48), (112, 120)])
def test_colour_jitter_equals_the_batched_jitter_and_skips_only_zero_hue(size):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, 3, *size), generator=generator).float()
    assert one_image_at_a_time(images) == (size[0] >= 112)  # the image-by-image form on the CPU
    params = sample_color_jitter(12, generator, (0.4, 0.4, 0.4, 0.1), 0.8)
    assert (params["hue"] != 0).all()
    assert torch.equal(color_jitter_(images.clone(), params), apply_color_jitter(images.clone(), params))
    params["hue"] = torch.zeros(12, dtype=torch.float64)  # ColorJitter(0.4, 0.4, 0.4, 0): no hue operation
    # the reference rotates by 0 through HSV, which rounds in float32
    torch.testing.assert_close(color_jitter_(images.clone(), params), apply_color_jitter(images.clone(), params),
                               atol=2e-3, rtol=0)


def test_blends_image_by_image_equal_one_batched_blend_and_leave_identity_rows_alone():
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (8, 3, 112, 112), generator=generator).float()
    factor = torch.empty(8, dtype=torch.float64).uniform_(0.1, 1.9, generator=generator)
    # brightness, contrast, saturation, identity, then a made-up row using both weights at once
    kinds = [(1, 0, 0), (0, 1, 0), (0, 0, 1), None, (1, 0, 0), (0, 1, 0), None, (0, 1, 1)]
    blend = torch.tensor([[1.0, 0.0, 0.0] if kind is None else
                          [f, (1 - f) * kind[2], (1 - f) * kind[1]] for f, kind in zip(factor.tolist(), kinds)],
                         dtype=torch.float64)
    blends = torch.tensor([kind is not None for kind in kinds])
    assert one_image_at_a_time(images)
    by_image = blend_rows_(images.clone(), blend, blends)
    batched = blend_(images.clone(), blend[:, 0], blend[:, 1], blend[:, 2])
    assert torch.equal(by_image, batched)
    assert torch.equal(by_image[~blends], images[~blends]) and not torch.equal(by_image[blends], images[blends])
    for row in range(8):  # blend_image_ on one image with the weights as numbers
        weights = blend[row].float().tolist()
        assert torch.equal(blend_image_(images[row:row + 1].clone(), *weights), batched[row:row + 1])


@pytest.mark.filterwarnings("ignore:.*decoded one at a time:UserWarning")  # the tree's PNG, reported elsewhere
def test_views_made_in_chunks_equal_views_made_in_one_pass_and_the_batched_ops_of_a_gpu(tree, monkeypatch):
    config = _config(tree, pipeline="fast")
    train = folder_dataset(tree, "train")
    batches = {}
    for name, chunk in (("chunks", 3), ("one pass", 10_000)):  # 3: every block in pieces, the last one short
        monkeypatch.setattr(imagenet_steps, "CPU_CHUNK_ROWS", chunk)
        batches[name] = list(FastImageNetPipeline(train, config, "cpu").batches(0))
    # the form a GPU runs: every per-image op over the whole batch at once, no image-by-image loops
    for module in (colour, dispatch, imagenet_views):
        monkeypatch.setattr(module, "one_image_at_a_time", lambda images: False)
    batches["batched"] = list(FastImageNetPipeline(train, config, "cpu").batches(0))
    assert len(batches["chunks"]) == len(batches["batched"]) >= 2
    for other in ("one pass", "batched"):
        for small, whole in zip(batches["chunks"], batches[other]):
            for key, value in vars(small).items():
                assert torch.equal(value, getattr(whole, key)), (other, key)


def test_worker_built_views_are_made_in_shared_memory(tree):
    config = _config(tree, pipeline="fast")
    pipeline = FastImageNetPipeline(folder_dataset(tree, "train"), config, "cpu")
    step = pipeline.epoch_plan(0)[0]
    data = [read_bytes(pipeline.paths[index]) for index in step["files"]]
    made = {}
    for shared in (False, True):
        made[shared], _ = pipeline.builder.build(data, step["files"], step["background"], step["foreground"],
                                                 step["columns"], step["width"],
                                                 step_generator(step["augment_seed"], step["step"]), shared=shared)
    assert made[True].view0.is_shared() and made[True].contrastive.is_shared() and not made[False].view0.is_shared()
    for key, value in vars(made[False]).items():
        assert torch.equal(value, getattr(made[True], key)), key


def test_test_batches_shard_the_test_set_and_crop_like_the_resize_centre_crop(tree):
    test = folder_dataset(tree, "test")
    seen = []
    for rank in range(2):
        batches = list(imagenet_test_batches(test, 3, "cpu", rank=rank, world_size=2, num_workers=0))
        positions = list(range(rank, len(test), 2))
        assert [len(labels) for _, labels in batches] == [3, 2]
        assert torch.cat([labels for _, labels in batches]).tolist() == [test.targets[i] for i in positions]
        images = torch.cat([images for images, _ in batches])
        assert images.shape == (5, 3, 224, 224) and images.dtype == torch.uint8
        decoded, _ = decode_images([read_bytes(test.paths[i]) for i in positions])
        assert torch.equal(images, resize_centre_crop(decoded))
        seen += positions
    assert sorted(seen) == list(range(len(test)))


def test_bad_arguments_fail_with_one_sentence(tree):
    test = folder_dataset(tree, "test")
    with pytest.raises(ValueError, match="batch_size=0 is not accepted"):
        next(imagenet_test_batches(test, 0, "cpu"))
    pipeline = FastImageNetPipeline(folder_dataset(tree, "train"), _config(tree), "cpu")
    with pytest.raises(ValueError, match="rank=2, world_size=2 are not accepted"):
        next(pipeline.batches(0, rank=2, world_size=2))
    with pytest.raises(ValueError, match="build_in_workers=True is accepted for CPU training with num_workers >= 1"):
        FastImageNetPipeline(folder_dataset(tree, "train"), _config(tree), "cpu", build_in_workers=True)


@pytest.mark.integration
def test_training_a_folder_run_and_the_fast_evaluation_agrees_with_the_classic_one(tmp_path):
    from ccmix.train.evaluation import build_test_loader, build_test_source, load_model, predict
    from ccmix.train.fit import fit

    root = tmp_path / "data"
    _write_tree(root, train_images=60, test_images=40, png=False)
    config = _config(str(root), arch="tiny", epochs=1, batch_size=16, pipeline="fast", imb=1, progress=False,
                     device="cpu", method="concutmix", topk=3)
    summary = fit(config, tmp_path / "run")
    assert summary["status"] == "completed"
    model, _ = load_model(tmp_path / "run" / "last.pt")
    _, test = build_datasets(config)
    device = torch.device("cpu")
    source = build_test_source(test, config, device)
    # the inputs themselves: the resampling differs from PIL's by a grey level or two at most
    fast_inputs = torch.cat([images for images, _ in source.batches()])
    classic_inputs = torch.stack([test[i][0] for i in range(len(test))])
    difference = (fast_inputs - classic_inputs).abs() * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    assert difference.max() <= 2.01 and difference.mean() < 0.1
    fast = predict(model, source, device, config)
    classic = predict(model, build_test_loader(test, config.replace(pipeline="classic"), device), device, config)
    assert len(fast["preds"]) == len(classic["preds"]) == 40
    assert (fast["labels"] == classic["labels"]).all()
    assert (fast["preds"] == classic["preds"]).mean() >= 0.99


@pytest.mark.integration  # DataLoader worker processes build the steps
def test_cpu_training_with_workers_builds_steps_in_them_and_completes(tmp_path, monkeypatch):
    from ccmix.data.pipelines import fast_imagenet
    from ccmix.train.fit import fit

    root = tmp_path / "data"
    _write_tree(root, train_images=24, test_images=6, png=False)
    built = []
    original = fast_imagenet.FastImageNetPipeline._worker_built

    def counting(self, plan):
        for batch in original(self, plan):
            built.append(batch.view0.is_shared())
            yield batch

    monkeypatch.setattr(fast_imagenet.FastImageNetPipeline, "_worker_built", counting)
    config = _config(str(root), arch="tiny", epochs=1, batch_size=8, pipeline="fast", imb=1, progress=False,
                     device="cpu", num_workers=1, topk=3)
    summary = fit(config, tmp_path / "run")
    assert summary["status"] == "completed"
    assert built == [True] * 3  # every step of the epoch came from the worker, in shared memory
