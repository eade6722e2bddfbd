"""The fast batched augmentation against the per-sample classic recipe, and the fast pipeline's contract."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import RandomResizedCrop as RandomResizedCropV1
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ccmix.config.fields import TrainConfig
from ccmix.data.augment import pil as pil_aug
from ccmix.data.augment import policies as fast_aug
from ccmix.data.augment.colour import (
    adjust_hue,
    adjust_sharpness_,
    apply_color_jitter,
    to_grayscale,
)
from ccmix.data.augment.draws import (
    sample_autoaugment,
    sample_color_jitter,
    sample_contrastive,
    sample_crop_flip,
    sample_resized_crop,
)
from ccmix.data.augment.geometry import apply_crop_flip, apply_resized_crop
from ccmix.data.augment.recipes import apply_contrastive, classification_views, contrastive_views, sample_classification
from ccmix.data.augment.tables import AUTOAUGMENT_OPS, CIFAR10_POLICY, SIGNED_OPS, autoaugment_magnitudes
from ccmix.data.datasets import build_datasets
from ccmix.data.pipelines.classic import ClassicTrainPipeline
from ccmix.data.pipelines.fast import FastTrainPipeline
from ccmix.data.streams import epoch_generator, sample_epoch_indices


def smooth_images(count: int, seed: int, size: int = 32) -> torch.Tensor:
    """Return uint8 (count, 3, size, size) smooth colourful random images (natural-image-like statistics)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 6, 6, generator=generator)
    images = torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    return (images * 255).round().to(torch.uint8)


def coordinate_image() -> torch.Tensor:
    """Return a uint8 (3, 32, 32) image whose channels hold row + 1, column + 1 and a constant 100."""
    rows = torch.arange(1, 33).view(32, 1).expand(32, 32)
    columns = torch.arange(1, 33).view(1, 32).expand(32, 32)
    return torch.stack((rows, columns, torch.full((32, 32), 100))).to(torch.uint8)


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- single operations

CLASSIC_AUTOAUGMENT = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)


def to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).numpy())


def from_pil(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


def classic_autoaugment_op(image: torch.Tensor, name: str, magnitude: float) -> torch.Tensor:
    """Return one AutoAugment operation as the classic (PIL) pipeline applies it, as a uint8 tensor."""
    return from_pil(pil_aug.apply_autoaugment_op(to_pil(image), name, magnitude))


def fast_autoaugment_op(images: torch.Tensor, name: str, magnitude: float) -> torch.Tensor:
    """Return float images after ``name`` in slot 1 (slot 2 off) through the grouped AutoAugment dispatch."""
    count = images.shape[0]
    params = {
        "policy": torch.zeros(count, dtype=torch.int64),
        "op": torch.tensor([[AUTOAUGMENT_OPS.index(name), 0]] * count),
        "apply": torch.tensor([[True, False]] * count),
        "magnitude": torch.tensor([[magnitude, 0.0]] * count, dtype=torch.float64),
    }
    return fast_aug.apply_autoaugment(images.float(), params)


@pytest.mark.parametrize("name, magnitude", [
    ("Rotate", 30.0), ("Rotate", 6.666), ("TranslateX", -14.5), ("TranslateY", 12.89), ("TranslateY", 4.83),
])
def test_nearest_geometric_autoaugment_ops_match_the_classic_pipeline_exactly(name, magnitude):
    images = smooth_images(6, seed=1)
    fast = fast_autoaugment_op(images, name, magnitude)
    classic = torch.stack([classic_autoaugment_op(image, name, magnitude) for image in images]).float()
    assert torch.equal(fast, classic)
    assert (fast == 128).all(dim=1).any()  # uncovered pixels are grey
    assert not torch.equal(fast, images.float())  # the op did something


@pytest.mark.parametrize("name, magnitude, tolerance", [
    ("ShearX", 0.2333, 1.0), ("ShearY", -0.2667, 1.0),
    ("Brightness", 0.7, 1.0), ("Brightness", -0.5, 1.0), ("Color", 0.8, 2.0), ("Color", -0.9, 2.0),
    ("Contrast", 0.6, 2.0), ("Contrast", -0.7, 2.0), ("Sharpness", 0.9, 1.5), ("Sharpness", -0.4, 1.5),
    ("AutoContrast", 0.0, 1.0), ("Posterize", 5.0, 0.0), ("Posterize", 4.0, 0.0),
    ("Solarize", 199.11, 0.0), ("Solarize", 113.78, 0.0), ("Equalize", 0.0, 0.0), ("Invert", 0.0, 0.0),
])
def test_other_autoaugment_ops_match_the_classic_pipeline(name, magnitude, tolerance):
    # PIL works on uint8: it truncates results and rounds the grey image that Color and Contrast
    # blend with, so differences up to 2 levels are rounding
    images = smooth_images(6, seed=2)
    fast = fast_autoaugment_op(images, name, magnitude)
    classic = torch.stack([classic_autoaugment_op(image, name, magnitude) for image in images]).float()
    difference = (fast - classic).abs()
    assert difference.max().item() <= tolerance + 1e-3
    assert difference.mean().item() <= 0.5 * tolerance + 0.1
    assert not torch.equal(fast, images.float())


@pytest.mark.parametrize("name", ["hue", "sharpness", "grayscale"])
def test_float_colour_ops_match_torchvision_functional(name):
    images = smooth_images(5, seed=3).float() / 255.0
    factors = torch.tensor([0.6, 0.85, 1.0, 1.2, 1.4], dtype=torch.float64)
    hues = torch.tensor([-0.1, -0.03, 0.0, 0.05, 0.1], dtype=torch.float64)
    # brightness, contrast and saturation are checked against torchvision through the colour jitter, which
    # applies them as one per-image blend (test_colour_jitter_applies_each_images_own_order)
    fast_ops = {
        "hue": lambda x: adjust_hue(x, hues),
        "sharpness": lambda x: adjust_sharpness_(x, factors),
        "grayscale": to_grayscale,
    }
    classic_ops = {
        "hue": lambda x, i: TF.adjust_hue(x, float(hues[i])),
        "sharpness": lambda x, i: TF.adjust_sharpness(x, float(factors[i])),
        "grayscale": lambda x, i: TF.rgb_to_grayscale(x, num_output_channels=3),
    }
    fast = fast_ops[name](images * 255.0) / 255.0
    classic = torch.stack([classic_ops[name](image, i) for i, image in enumerate(images)])
    torch.testing.assert_close(fast, classic, atol=2e-4, rtol=0)


def test_resized_crop_and_flip_match_torchvision():
    images = smooth_images(4, seed=4).float()
    boxes = [(5, 3, 20, 17), (0, 0, 32, 32), (10, 12, 14, 19), (2, 20, 30, 12)]
    flips = [False, True, True, False]
    params = {
        "top": torch.tensor([b[0] for b in boxes]), "left": torch.tensor([b[1] for b in boxes]),
        "height": torch.tensor([b[2] for b in boxes]), "width": torch.tensor([b[3] for b in boxes]),
        "flip": torch.tensor(flips),
    }
    fast = apply_resized_crop(images, params)
    for image, box, flip, out in zip(images, boxes, flips, fast):
        expected = TF.resized_crop(image, *box, size=[32, 32], antialias=True)
        expected = TF.horizontal_flip(expected) if flip else expected
        torch.testing.assert_close(out, expected, atol=2e-3, rtol=0)


def test_pad_crop_and_flip_match_torchvision():
    images = smooth_images(3, seed=5)
    params = {"top": torch.tensor([0, 4, 8]), "left": torch.tensor([7, 4, 0]), "flip": torch.tensor([True, False, True])}
    fast = apply_crop_flip(images, params, padding=4)
    assert fast.dtype == torch.uint8
    for image, top, left, flip, out in zip(images, params["top"], params["left"], params["flip"], fast):
        expected = TF.crop(TF.pad(image, [4]), int(top), int(left), 32, 32)
        assert torch.equal(out, TF.horizontal_flip(expected) if flip else expected)


def test_policy_table_is_the_cifar10_table_torchvision_also_has():
    # torchvision keeps its table in a private attribute; it is the published table too.
    assert [tuple(sub) for sub in CLASSIC_AUTOAUGMENT._policies] == list(CIFAR10_POLICY)


# --------------------------------------------------------------------------- distributions


def recover_crop(out: torch.Tensor) -> tuple[int, int, bool]:
    """Return (top, left, flipped) of a pad-4 crop of ``coordinate_image`` from its centre pixels."""
    flipped = bool(out[1, 16, 17] < out[1, 16, 16])
    top = int(out[0, 16, 16]) - 13
    left = int(out[1, 16, 16]) - (12 if flipped else 13)
    return top, left, flipped


def test_pad_crop_offsets_and_flips_match_classic_distribution():
    count = 3000
    source = coordinate_image()
    params = sample_crop_flip(count, generator(6), padding=4)
    fast = apply_crop_flip(source.expand(count, 3, 32, 32), params, padding=4)
    recovered = torch.tensor([recover_crop(out) for out in fast])
    assert torch.equal(recovered[:, 0], params["top"]) and torch.equal(recovered[:, 1], params["left"])
    assert torch.equal(recovered[:, 2].bool(), params["flip"])
    torch.manual_seed(6)
    classic_view = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(p=0.5)])
    classic = torch.tensor([recover_crop(classic_view(source)) for _ in range(count)])
    for draws in (recovered, classic):
        for column in (0, 1):
            frequencies = torch.bincount(draws[:, column], minlength=9).double() / count
            assert frequencies.numel() == 9  # offsets stay within 0..8
            assert (frequencies - 1 / 9).abs().max() < 0.03
        assert abs(draws[:, 2].double().mean().item() - 0.5) < 0.04


def test_resized_crop_boxes_match_torchvision_get_params():
    count = 4000
    fast = sample_resized_crop(count, generator(7), image_size=(32, 32), scale=(0.2, 1.0),
                                        ratio=(3 / 4, 4 / 3))
    torch.manual_seed(7)
    image = torch.zeros(3, 32, 32)
    classic = torch.tensor([RandomResizedCropV1.get_params(image, scale=[0.2, 1.0], ratio=[3 / 4, 4 / 3])
                            for _ in range(count)])
    fast_boxes = torch.stack((fast["top"], fast["left"], fast["height"], fast["width"]), dim=1)
    assert (fast_boxes[:, 0] + fast_boxes[:, 2] <= 32).all() and (fast_boxes[:, 1] + fast_boxes[:, 3] <= 32).all()
    assert (fast_boxes >= 0).all() and (fast_boxes[:, 2:] >= 1).all()

    def statistics(boxes: torch.Tensor) -> dict:
        top, left, height, width = boxes.double().unbind(dim=1)
        area = height * width / 1024.0
        return {
            "area_mean": area.mean(), "area_q10": area.quantile(0.1), "area_q50": area.quantile(0.5),
            "area_q90": area.quantile(0.9), "log_ratio_mean": torch.log(width / height).mean(),
            "log_ratio_std": torch.log(width / height).std(), "centre_x": (left + width / 2).mean() / 32,
            "centre_y": (top + height / 2).mean() / 32, "full_width": (width == 32).double().mean(),
        }

    fast_stats, classic_stats = statistics(fast_boxes), statistics(classic)
    for key in fast_stats:
        assert abs(fast_stats[key] - classic_stats[key]) < 0.03, (key, fast_stats[key], classic_stats[key])
    # U(0.2, 1) has mean 0.6; rejecting boxes wider or taller than the image lowers it a little
    assert 0.5 < fast_stats["area_mean"] < 0.6


def test_autoaugment_draws_follow_the_policy_table():
    count = 50_000
    params = sample_autoaugment(count, generator(8), image_size=(32, 32))
    frequencies = torch.bincount(params["policy"], minlength=25).double() / count
    assert frequencies.numel() == 25 and (frequencies - 1 / 25).abs().max() < 0.005
    magnitudes = autoaugment_magnitudes(32, 32)
    for index, sub_policy in enumerate(CIFAR10_POLICY):
        chosen = params["policy"] == index
        for slot, (name, probability, magnitude_bin) in enumerate(sub_policy):
            assert (params["op"][chosen, slot] == AUTOAUGMENT_OPS.index(name)).all()
            assert abs(params["apply"][chosen, slot].double().mean().item() - probability) < 0.05
            values = params["magnitude"][chosen, slot]
            expected = 0.0 if magnitude_bin is None else float(magnitudes[name][magnitude_bin])
            assert torch.allclose(values.abs(), torch.full_like(values, abs(expected)))
            if name in SIGNED_OPS and expected != 0:
                assert abs((values < 0).double().mean().item() - 0.5) < 0.06
            else:
                assert (values >= 0).all()


def assert_same_distribution(fast: torch.Tensor, classic: torch.Tensor, name: str) -> None:
    """Assert that two samples of a per-image statistic have equal means and stds within 4 standard errors."""
    fast, classic = fast.double(), classic.double()
    mean_error = math.sqrt(fast.var() / fast.numel() + classic.var() / classic.numel())
    assert abs(fast.mean() - classic.mean()) < 4 * mean_error + 1e-9, (name, "mean", fast.mean(), classic.mean())
    std_error = math.sqrt(fast.var() / (2 * fast.numel()) + classic.var() / (2 * classic.numel()))
    assert abs(fast.std() - classic.std()) < 4 * std_error + 1e-9, (name, "std", fast.std(), classic.std())


def test_autoaugment_outputs_match_classic_statistics():
    images = smooth_images(2000, seed=9)
    fast = fast_aug.apply_autoaugment(images.float(), sample_autoaugment(len(images), generator(9)))
    torch.manual_seed(9)
    classic_images = images[:400]
    classic_policy = pil_aug.CifarAutoAugment()
    classic = torch.stack([from_pil(classic_policy(to_pil(image))) for image in classic_images]).float()

    def statistics(out: torch.Tensor, source: torch.Tensor) -> dict:
        change = (out - source.float()).abs().mean(dim=(1, 2, 3))
        return {"unchanged": (change == 0).double(), "change": change,
                "brightness": out.mean(dim=(1, 2, 3)) - source.float().mean(dim=(1, 2, 3)),
                "contrast": out.std(dim=(1, 2, 3)) - source.float().std(dim=(1, 2, 3))}

    fast_stats, classic_stats = statistics(fast, images), statistics(classic, classic_images)
    for key in fast_stats:
        assert_same_distribution(fast_stats[key], classic_stats[key], key)
    # neither op of the drawn sub-policy fires with this probability (the table); some ops can also be no-ops
    expected_unchanged = sum((1 - p1) * (1 - p2) for (_, p1, _), (_, p2, _) in CIFAR10_POLICY) / 25
    assert expected_unchanged - 0.02 < fast_stats["unchanged"].mean() < expected_unchanged + 0.08


def test_colour_jitter_applies_each_images_own_order():
    orders = list(itertools.permutations(range(4)))
    count = len(orders)
    images = smooth_images(count, seed=10).float() / 255.0
    params = sample_color_jitter(count, generator(10))
    params["order"] = torch.tensor(orders)
    params["jitter"] = torch.ones(count, dtype=torch.bool)
    fast = apply_color_jitter(images * 255.0, params) / 255.0
    operations = [
        lambda x, i: TF.adjust_brightness(x, float(params["brightness"][i])),
        lambda x, i: TF.adjust_contrast(x, float(params["contrast"][i])),
        lambda x, i: TF.adjust_saturation(x, float(params["saturation"][i])),
        lambda x, i: TF.adjust_hue(x, float(params["hue"][i])),
    ]
    for i, order in enumerate(orders):
        expected = images[i]
        for op in order:
            expected = operations[op](expected, i)
        torch.testing.assert_close(fast[i], expected, atol=5e-4, rtol=0)


def test_colour_jitter_draws_and_statistics_match_classic():
    params = sample_color_jitter(24_000, generator(11), strength=(0.4, 0.4, 0.4, 0.1), prob=0.8)
    permutation_ids = (params["order"] * torch.tensor([64, 16, 4, 1])).sum(dim=1)
    frequencies = torch.unique(permutation_ids, return_counts=True)[1].double() / 24_000
    assert frequencies.numel() == 24 and (frequencies - 1 / 24).abs().max() < 0.01
    assert abs(params["jitter"].double().mean().item() - 0.8) < 0.01
    for name, low, high in (("brightness", 0.6, 1.4), ("contrast", 0.6, 1.4), ("saturation", 0.6, 1.4),
                            ("hue", -0.1, 0.1)):
        values = params[name]
        assert values.min() >= low and values.max() <= high and abs(values.mean() - (low + high) / 2) < 0.01

    images = smooth_images(2000, seed=11).float() / 255.0
    fast = apply_color_jitter(images * 255.0, sample_color_jitter(len(images), generator(12))) / 255.0
    torch.manual_seed(12)
    classic_images = images[:300]
    classic_jitter = v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8)
    classic = torch.stack([classic_jitter(image) for image in classic_images])

    def statistics(out: torch.Tensor, source: torch.Tensor) -> dict:
        def spread(x):
            return (x.amax(dim=1) - x.amin(dim=1)).mean(dim=(1, 2))

        return {"brightness": out.mean(dim=(1, 2, 3)) - source.mean(dim=(1, 2, 3)),
                "contrast": out.std(dim=(1, 2, 3)) / source.std(dim=(1, 2, 3)),
                "saturation": spread(out) / spread(source),
                "unchanged": ((out - source).abs().amax(dim=(1, 2, 3)) < 1e-6).double()}

    fast_stats, classic_stats = statistics(fast, images), statistics(classic, classic_images)
    for key in fast_stats:
        assert_same_distribution(fast_stats[key], classic_stats[key], key)
    assert abs(fast_stats["unchanged"].mean() - 0.2) < 0.02


def test_grayscale_and_blur_rates():
    count = 3000
    images = smooth_images(count, seed=13).float()
    # identity crop, no flip, no jitter: only grayscale and blur change the images
    params = sample_contrastive(count, generator(13), scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_prob=0.0,
                                         jitter_prob=0.0, grayscale_prob=0.2, blur_prob=0.5)
    out = apply_contrastive(images.clone(), params)
    gray = (out.amax(dim=1) - out.amin(dim=1)).amax(dim=(1, 2)) < 1e-3
    assert torch.equal(gray, params["grayscale"])
    assert abs(gray.double().mean().item() - 0.2) < 0.03
    colour = ~params["grayscale"]
    changed = (out[colour] - images[colour]).abs().amax(dim=(1, 2, 3)) > 1e-3
    blur, sigma = params["blur"][colour], params["sigma"][colour]
    assert not (changed & ~blur).any()  # only blurred images change
    assert torch.equal(changed[sigma > 0.4], blur[sigma > 0.4])  # sigma 0.1 is nearly the identity kernel
    assert abs(params["blur"].double().mean().item() - 0.5) < 0.03
    assert 0.1 <= sigma.min() and sigma.max() <= 2.0 and abs(sigma.mean().item() - 1.05) < 0.05
    # a blur smooths: the mean absolute horizontal gradient drops on blurred colour images
    gradient = lambda x: (x[..., 1:] - x[..., :-1]).abs().mean(dim=(1, 2, 3))  # noqa: E731
    blurred = colour & params["blur"] & (params["sigma"] > 0.4)
    assert blurred.sum() > 500 and (gradient(out[blurred]) < gradient(images[blurred])).all()


# --------------------------------------------------------------------------- determinism and the pipeline


def test_fixed_generator_gives_identical_batches():
    images = smooth_images(64, seed=15)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)

    def run(seed):
        g = generator(seed)
        view0 = classification_views(images, sample_classification(64, g), mean, std)
        contrastive = contrastive_views(images, sample_contrastive(64, g), mean, std)
        return view0, contrastive

    first, second, other = run(16), run(16), run(17)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], other[0]) and not torch.equal(first[1], other[1])


@pytest.fixture(scope="module")
def synthetic_train():
    train, _ = build_datasets(TrainConfig(dataset="synthetic", synthetic_classes=10, imb=10))
    return train


def fast_config(**changes) -> TrainConfig:
    base = dict(dataset="synthetic", synthetic_classes=10, imb=10, batch_size=16, max_steps_per_epoch=2,
                pipeline="fast", seed=5)
    return TrainConfig(**(base | changes))


@pytest.mark.parametrize("method", ["ce", "la", "cutmix", "bcl", "concutmix"])
def test_pipeline_dicts_have_the_contract_shapes(synthetic_train, method):
    config = fast_config(method=method)
    pipeline = FastTrainPipeline(synthetic_train, config, "cpu")
    batches = list(pipeline.batches(1))
    assert pipeline.steps_per_epoch == 2 and len(batches) == 2
    background, foreground = sample_epoch_indices(synthetic_train.targets, 10, 16, "balanced", epoch_generator(5, 1),
                                                  need_foreground=config.uses_cutmix)
    targets = torch.tensor(synthetic_train.targets)
    for step, batch in enumerate(batches):
        assert batch.view0.shape == (16, 3, 32, 32) and batch.view0.dtype == torch.float32
        assert batch.view0.device.type == "cpu"
        assert torch.equal(batch.labels, targets[background[step]])
        if config.uses_contrastive:
            assert batch.contrastive.shape == (16, 2, 3, 32, 32) and batch.contrastive.dtype == torch.float32
            assert not torch.equal(batch.contrastive[:, 0], batch.contrastive[:, 1])
        else:
            assert batch.contrastive is None
        if config.uses_cutmix:
            assert batch.foreground.shape == (16, 3, 32, 32) and batch.foreground.dtype == torch.float32
            assert torch.equal(batch.foreground_labels, targets[foreground[step]])
        else:
            assert batch.foreground is None and batch.foreground_labels is None
        # normalised views of 0..255 images stay within the normalisation's range
        assert batch.view0.min() >= -0.4914 / 0.2023 - 1e-4 and batch.view0.max() <= (1 - 0.4465) / 0.2010 + 1e-4


def test_pipeline_is_deterministic_per_epoch_and_shards_ranks(synthetic_train):
    config = fast_config(method="concutmix")
    first = list(FastTrainPipeline(synthetic_train, config, "cpu").batches(0))
    second = list(FastTrainPipeline(synthetic_train, config, "cpu").batches(0))
    later = list(FastTrainPipeline(synthetic_train, config, "cpu").batches(1))
    for a, b in zip(first, second):
        for key, value in vars(a).items():
            assert torch.equal(value, getattr(b, key)), key
    assert not torch.equal(first[0].view0, later[0].view0)
    rank1 = list(FastTrainPipeline(synthetic_train, config, "cpu").batches(0, rank=1, world_size=2))
    background, _ = sample_epoch_indices(synthetic_train.targets, 10, 16, "balanced", epoch_generator(5, 0))
    targets = torch.tensor(synthetic_train.targets)
    assert rank1[0].view0.shape[0] == 8
    assert torch.equal(rank1[0].labels, targets[background[0, 1::2]])


def test_imagenet_recipe_falls_back_to_classic_with_a_message(synthetic_train):
    config = fast_config(view_recipe="imagenet")
    with pytest.warns(UserWarning, match="classic pipeline"):
        pipeline = FastTrainPipeline(synthetic_train, config, "cpu")
    assert isinstance(pipeline.fallback, ClassicTrainPipeline)
    assert pipeline.steps_per_epoch == 2


def test_operator_calls_do_not_grow_with_the_batch():
    from ccmix.experiments.bench import count_augment_ops

    small, large, larger = count_augment_ops(16), count_augment_ops(64), count_augment_ops(128)
    # a per-sample loop would multiply the count by 4 and 8; only empty groups (skipped) may differ
    assert large == larger
    assert small <= large and large - small < 0.1 * large


def test_channels_last_inputs_give_the_same_views():
    images = smooth_images(48, seed=18)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    view0_params = sample_classification(48, generator(18))
    contrastive_params = sample_contrastive(48, generator(19))
    for layout in (torch.contiguous_format, torch.channels_last):
        source = images.contiguous(memory_format=layout)
        view0 = classification_views(source, view0_params, mean, std)
        contrastive = contrastive_views(source, contrastive_params, mean, std)
        if layout is torch.contiguous_format:
            expected = (view0, contrastive)
        else:
            torch.testing.assert_close(view0, expected[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(contrastive, expected[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("axis", ["x", "y"])
def test_one_axis_warps_equal_the_two_dimensional_kernel(interpolation, axis):
    from ccmix.data.augment.geometry import pil_affine

    generator = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (12, 3, 37, 29), generator=generator).float()
    shear = (torch.rand(12, generator=generator, dtype=torch.float64) - 0.5) * 0.6
    shift = (torch.rand(12, generator=generator, dtype=torch.float64) - 0.5) * 30.0
    shear[:4], shift[4:8] = 0.0, 0.0  # pure translations, pure shears, both
    ones, zeros = torch.ones(12, dtype=torch.float64), torch.zeros(12, dtype=torch.float64)
    columns = (ones, shear, shift, zeros, ones, zeros) if axis == "x" else (ones, zeros, zeros, shear, ones, shift)
    coefficients = torch.stack(columns, dim=1)
    fill = (124.0, 116.0, 104.0)
    two_d = pil_affine(images, coefficients, fill, interpolation)
    one_axis = pil_affine(images, coefficients, fill, interpolation, axis)
    assert not torch.equal(two_d, images)
    assert torch.equal(one_axis, two_d)
    with pytest.raises(ValueError, match="axis 'z' is not accepted"):
        pil_affine(images, coefficients, fill, interpolation, "z")
