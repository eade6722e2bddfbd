"""Exact checks of the training views: normalisation to 1e-5 and every probability of a recipe.

Normalisation: each recipe's views are compared, to 1e-5, with the image normalised here
by hand with the published statistics, (x / 255 - mean) / std. The statistics are
written out below rather than read from ``ccmix.data.views``, and differ by about 0.15
standard deviations between CIFAR and ImageNet, far above the tolerance.

Probabilities: each random step is measured alone (the others switched off) at an
asymmetric value such as 0.3, where an inverted comparison gives 0.7 and a constant one
0 or 1, and at the recipe's default. Classic views (torchvision/PIL, per image) and the
fast pipeline (batched draws) are both covered.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from ccmix.config.fields import TrainConfig
from ccmix.data import views as recipes
from ccmix.data.augment.draws import sample_contrastive, sample_crop_flip
from ccmix.data.datasets import build_datasets
from ccmix.data.pipelines.fast import FastTrainPipeline

CIFAR_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
INAT_STATS = ((0.466, 0.471, 0.380), (0.195, 0.194, 0.192))

# (recipe, dataset, statistics the views must use)
RECIPE_CASES = [
    ("cifar", "cifar10", CIFAR_STATS), ("cifar", "cifar100", CIFAR_STATS), ("cifar", "synthetic", CIFAR_STATS),
    ("cifar", "folder", CIFAR_STATS), ("imagenet", "imagenet_lt", IMAGENET_STATS),
    ("imagenet", "places_lt", IMAGENET_STATS), ("imagenet", "inat2018", INAT_STATS),
    ("imagenet", "folder", IMAGENET_STATS),
]
CLOSING_STEPS = (v2.ToImage, v2.ToDtype, v2.Normalize)  # uint8 image -> float in [0, 1] -> normalised


def by_hand(pixels: np.ndarray, stats) -> torch.Tensor:
    """Return (3, H, W) float64 (pixels / 255 - mean) / std of uint8 (H, W, 3) pixels."""
    mean, std = (torch.tensor(s, dtype=torch.float64).view(3, 1, 1) for s in stats)
    return (torch.from_numpy(np.array(pixels)).permute(2, 0, 1).double() / 255.0 - mean) / std


def as_pixels(image) -> np.ndarray:
    """Return uint8 (H, W, 3) pixels of a PIL image or a uint8 (3, H, W) tensor."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    return image.permute(1, 2, 0).numpy()


def noise_pixels(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def gradient_pixels(height: int, width: int) -> np.ndarray:
    """Return colour pixels that grow strictly from left to right (so a mirror image is recognisable)."""
    columns = np.linspace(10, 245, width).round().astype(np.uint8)
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    pixels[..., 0] = columns[None, :]
    pixels[..., 1] = 255 - columns[None, :]
    pixels[..., 2] = np.arange(height, dtype=np.uint8)[:, None] * 3
    return pixels


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    import random

    random.seed(seed)


def assert_normalised(actual: torch.Tensor, pixels: np.ndarray, stats, what: str) -> None:
    expected = by_hand(pixels, stats)
    assert actual.dtype == torch.float32 and actual.shape == expected.shape, what
    error = (actual.double() - expected).abs().max().item()
    assert error < 1e-5, f"{what}: largest difference {error:.2e} from the image normalised by hand"


# --------------------------------------------------------------------------- normalisation, classic views


@pytest.mark.parametrize("recipe,dataset,stats", RECIPE_CASES)
def test_classic_training_views_are_normalised_exactly_with_the_dataset_statistics(recipe, dataset, stats):
    # Under one seed the full view and its augmentation steps alone draw the same numbers, so the view must
    # equal the augmented image normalised by hand, whatever the augmentation did.
    size = 32 if recipe == "cifar" else 56
    image = Image.fromarray(noise_pixels(size, size + 8, seed=1))
    for make in (recipes.classification_view, recipes.contrastive_view):
        transform = make(recipe, dataset)
        augment = v2.Compose([step for step in transform.transforms if not isinstance(step, CLOSING_STEPS)])
        for seed in range(3):
            seed_everything(seed)
            augmented = as_pixels(augment(image))
            seed_everything(seed)
            assert_normalised(transform(image), augmented, stats, f"{make.__name__}({recipe}, {dataset}) seed {seed}")


@pytest.mark.parametrize("recipe,dataset,stats", RECIPE_CASES)
def test_classic_contrastive_view_with_augmentations_off_is_the_normalised_image(recipe, dataset, stats, monkeypatch):
    params = recipes.CONTRASTIVE_PARAMS[recipe]
    off = dataclasses.replace(params, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0.0, jitter_prob=0.0,
                              grayscale_prob=0.0, blur_prob=0.0)
    monkeypatch.setitem(recipes.CONTRASTIVE_PARAMS, recipe, off)
    pixels = noise_pixels(params.size, params.size, seed=2)
    transform = recipes.contrastive_view(recipe, dataset)
    for seed in range(3):
        seed_everything(seed)
        assert_normalised(transform(Image.fromarray(pixels)), pixels, stats, f"contrastive view ({recipe}, {dataset})")


@pytest.mark.parametrize("recipe,dataset,stats", RECIPE_CASES)
def test_test_views_of_images_of_their_final_size_are_the_normalised_image(recipe, dataset, stats):
    # cifar: normalise only; imagenet: a 256-short-side image of width 256 is centre-cropped to 224
    if recipe == "cifar":
        pixels = noise_pixels(32, 32, seed=3)
        expected = pixels
    else:
        pixels = noise_pixels(256, 256, seed=3)
        expected = pixels[16:240, 16:240]
    assert_normalised(recipes.test_view(recipe, dataset)(Image.fromarray(pixels)), expected, stats,
                      f"test view ({recipe}, {dataset})")


# --------------------------------------------------------------------------- probabilities, classic views


def mirrored_fraction(transform, pixels: np.ndarray, draws: int) -> float:
    """Return the fraction of ``draws`` outputs of ``transform`` whose left-to-right order is reversed."""
    image = Image.fromarray(pixels)
    reversed_count = 0
    for _ in range(draws):
        out = transform(image)[0]  # red channel, which grows from left to right in the input
        quarter = out.shape[-1] // 4
        left, right = out[:, :quarter].mean(), out[:, -quarter:].mean()
        assert left != right
        reversed_count += int(left > right)
    return reversed_count / draws


def contrastive_with_only(recipe: str, monkeypatch, **kept) -> None:
    """Patch the ``recipe`` contrastive parameters: identity crop, every probability 0 except those in ``kept``.

    Views are made at 32 pixels for both recipes: the size changes no probability, and 224-pixel
    ImageNet-scale views would make hundreds of draws slow.
    """
    params = recipes.CONTRASTIVE_PARAMS[recipe]
    probabilities = dict(flip_prob=0.0, jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0)
    probabilities.update(kept)
    monkeypatch.setitem(recipes.CONTRASTIVE_PARAMS, recipe, dataclasses.replace(
        params, size=SMALL, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), **probabilities))


def default(recipe: str, name: str) -> float:
    return getattr(recipes.CONTRASTIVE_PARAMS[recipe], name)


# Expected values of the published recipes, written out: flip 0.5, jitter 0.8, grayscale 0.2, blur 0.5 (CIFAR only).
PUBLISHED = {"flip_prob": 0.5, "jitter_prob": 0.8, "grayscale_prob": 0.2, "blur_prob": 0.5}
SMALL = 32  # pixels, the side of the views whose probabilities are measured
DRAWS = 600


@pytest.mark.parametrize("recipe,dataset", [("cifar", "cifar10"), ("imagenet", "imagenet_lt")])
@pytest.mark.parametrize("probability", [0.3, "default"])
def test_classic_contrastive_flip_rate(recipe, dataset, probability, monkeypatch):
    value = PUBLISHED["flip_prob"] if probability == "default" else probability
    assert probability != "default" or default(recipe, "flip_prob") == value
    contrastive_with_only(recipe, monkeypatch, flip_prob=value)
    seed_everything(4)
    rate = mirrored_fraction(recipes.contrastive_view(recipe, dataset), gradient_pixels(SMALL, SMALL), DRAWS)
    assert abs(rate - value) < 4 * (value * (1 - value) / DRAWS) ** 0.5 + 0.01, (rate, value)


@pytest.mark.parametrize("recipe,dataset", [("cifar", "cifar10"), ("imagenet", "imagenet_lt")])
@pytest.mark.parametrize("probability", [0.3, "default"])
def test_classic_view0_flip_rate(recipe, dataset, probability, monkeypatch):
    # The recipe's crop and flip steps alone (AutoAugment, RandAugment and colour jitter never mirror an image).
    value = PUBLISHED["flip_prob"] if probability == "default" else probability
    if probability != "default":
        monkeypatch.setattr(recipes, "FLIP_PROB", value)
    monkeypatch.setattr(recipes, "IMAGENET_SIZE", SMALL)  # the ImageNet-scale crop at 32 pixels: faster, same flips
    transform = recipes.classification_view(recipe, dataset)
    geometry = v2.Compose([step for step in transform.transforms if isinstance(
        step, (v2.RandomCrop, v2.RandomResizedCrop, v2.RandomHorizontalFlip, *CLOSING_STEPS))])
    assert any(isinstance(step, v2.RandomHorizontalFlip) for step in geometry.transforms)
    seed_everything(5)
    rate = mirrored_fraction(geometry, gradient_pixels(40, 48), DRAWS)
    assert abs(rate - value) < 4 * (value * (1 - value) / DRAWS) ** 0.5 + 0.01, (rate, value)


def colour_changed(out: torch.Tensor, reference: torch.Tensor) -> bool:
    return bool((out - reference).abs().max() > 1e-4)


def is_gray(out: torch.Tensor, stats) -> bool:
    mean, std = (torch.tensor(s).view(3, 1, 1) for s in stats)
    pixels = out * std + mean  # back to [0, 1]
    return bool((pixels.amax(dim=0) - pixels.amin(dim=0)).max() < 1e-4)


@pytest.mark.parametrize("recipe,dataset,stats", [("cifar", "cifar10", CIFAR_STATS),
                                                  ("imagenet", "imagenet_lt", IMAGENET_STATS)])
@pytest.mark.parametrize("probability", [0.3, "default"])
def test_classic_contrastive_jitter_grayscale_and_blur_rates(recipe, dataset, stats, probability, monkeypatch):
    pixels = noise_pixels(SMALL, SMALL, seed=6) // 2 + 64  # colourful, away from 0 and 255 so jitter always shows
    reference = by_hand(pixels, stats).float()
    draws = DRAWS
    checks = {"jitter_prob": lambda out: colour_changed(out, reference), "grayscale_prob": lambda out: is_gray(out, stats)}
    if recipe == "cifar":
        checks["blur_prob"] = lambda out: colour_changed(out, reference)
    else:
        assert default(recipe, "blur_prob") == 0.0  # no blur in the ImageNet-scale recipe
    published = {name: default(recipe, name) for name in checks}
    for name, happened in checks.items():
        value = PUBLISHED[name] if probability == "default" else probability
        assert probability != "default" or published[name] == value, name
        contrastive_with_only(recipe, monkeypatch, **{name: value})
        transform = recipes.contrastive_view(recipe, dataset)
        seed_everything(7)
        rate = sum(happened(transform(Image.fromarray(pixels))) for _ in range(draws)) / draws
        # a blur with sigma near 0.1 can leave a few images unchanged: allow 0.03 below
        slack = 0.03 if name == "blur_prob" else 0.0
        bound = 4 * (value * (1 - value) / draws) ** 0.5 + 0.01
        assert -bound - slack < rate - value < bound, (name, rate, value)


# --------------------------------------------------------------------------- the fast pipeline


@pytest.fixture(scope="module")
def fast_pipeline():
    config = TrainConfig(dataset="synthetic", synthetic_classes=5, imb=5, method="concutmix", batch_size=16,
                         num_workers=0, topk=2, device="cpu", pipeline="fast", progress=False)
    train, _ = build_datasets(config)
    return FastTrainPipeline(train, config, "cpu"), train


def views_off(draws: dict) -> dict:
    """Switch every augmentation of a step's draws off: centred pad-crop, full-image crop, nothing applied."""
    view0 = draws["view0"]
    view0["top"] = torch.full_like(view0["top"], recipes.CIFAR_PAD)
    view0["left"] = torch.full_like(view0["left"], recipes.CIFAR_PAD)
    view0["flip"] = torch.zeros_like(view0["flip"])
    view0["autoaugment"]["apply"] = torch.zeros_like(view0["autoaugment"]["apply"])
    contrastive = draws["contrastive"]
    size = recipes.CIFAR_SIZE
    contrastive["top"], contrastive["left"] = torch.zeros_like(contrastive["top"]), torch.zeros_like(contrastive["left"])
    contrastive["height"] = torch.full_like(contrastive["height"], size)
    contrastive["width"] = torch.full_like(contrastive["width"], size)
    for flag in ("flip", "jitter", "grayscale", "blur"):
        contrastive[flag] = torch.zeros_like(contrastive[flag])
    return draws


def fast_step(pipeline, draws_edit, count: int = 6):
    """Return (batch, background uint8 (b, 3, H, W), foreground uint8) of one fast step with edited draws."""
    background = torch.arange(count)
    foreground = torch.arange(count, 2 * count)
    draws = draws_edit(views_off(pipeline.sample_step(count, torch.Generator().manual_seed(8))))
    batch = pipeline.make_batch(background, foreground, draws)
    return batch, pipeline.images[background], pipeline.images[foreground]


def assert_batch_normalised(views: torch.Tensor, images: torch.Tensor, what: str, mirrored=None) -> None:
    for index, (view, image) in enumerate(zip(views, images)):
        pixels = image.permute(1, 2, 0).numpy()
        if mirrored is not None and mirrored[index]:
            pixels = pixels[:, ::-1]
        assert_normalised(view, pixels, CIFAR_STATS, f"{what} {index}")


def test_fast_views_with_augmentations_off_are_the_images_normalised_with_the_cifar_statistics(fast_pipeline):
    pipeline, _ = fast_pipeline
    batch, background, foreground = fast_step(pipeline, lambda draws: draws)
    assert_batch_normalised(batch.view0, background, "view 0")
    assert_batch_normalised(batch.foreground, foreground, "foreground view 0")
    assert_batch_normalised(batch.contrastive[:, 0], background, "contrastive view 1")
    assert_batch_normalised(batch.contrastive[:, 1], background, "contrastive view 2")


def test_fast_flips_mirror_exactly_the_images_drawn_to_flip(fast_pipeline):
    pipeline, _ = fast_pipeline
    count = 6
    view0_flips = torch.tensor([True, False, True, True, False, False] * 2)  # backgrounds, then foregrounds
    pair_flips = torch.tensor([True, False, False, True, True, True, False, False, True, False, False, True])

    def flips_on(draws):
        draws["view0"]["flip"] = view0_flips.clone()
        draws["contrastive"]["flip"] = pair_flips.clone()  # two views per background, interleaved
        return draws

    batch, background, foreground = fast_step(pipeline, flips_on, count)
    assert_batch_normalised(batch.view0, background, "view 0", mirrored=view0_flips[:count])
    assert_batch_normalised(batch.foreground, foreground, "foreground view 0", mirrored=view0_flips[count:])
    assert_batch_normalised(batch.contrastive[:, 0], background, "contrastive view 1", mirrored=pair_flips[0::2])
    assert_batch_normalised(batch.contrastive[:, 1], background, "contrastive view 2", mirrored=pair_flips[1::2])


def rate(flags: torch.Tensor) -> float:
    return flags.double().mean().item()


def close_rate(flags: torch.Tensor, value: float) -> bool:
    return abs(rate(flags) - value) < 4 * (value * (1 - value) / flags.numel()) ** 0.5 + 0.005


ASYMMETRIC = {"flip_prob": 0.3, "jitter_prob": 0.6, "grayscale_prob": 0.15, "blur_prob": 0.4}  # all distinct
DRAW_FLAGS = {"flip_prob": "flip", "jitter_prob": "jitter", "grayscale_prob": "grayscale", "blur_prob": "blur"}


def test_fast_sampler_probabilities_at_asymmetric_values():
    count = 20_000
    generator = torch.Generator().manual_seed(9)
    assert close_rate(sample_crop_flip(count, generator, flip_prob=0.3)["flip"], 0.3)
    draws = sample_contrastive(count, generator, **ASYMMETRIC)
    for name, flag in DRAW_FLAGS.items():
        assert close_rate(draws[flag], ASYMMETRIC[name]), (name, rate(draws[flag]))


@pytest.mark.parametrize("values", ["default", "asymmetric"])
def test_fast_pipeline_draws_each_probability_of_the_recipe(fast_pipeline, values, monkeypatch):
    pipeline, _ = fast_pipeline
    expected = dict(PUBLISHED) if values == "default" else dict(ASYMMETRIC)
    view0_flip = expected["flip_prob"] if values == "default" else 0.7  # distinct from the contrastive flip
    if values == "asymmetric":
        monkeypatch.setattr(recipes, "FLIP_PROB", view0_flip)
        monkeypatch.setattr(pipeline, "contrastive_params",
                            dataclasses.replace(pipeline.contrastive_params, **ASYMMETRIC))
    draws = pipeline.sample_step(6_000, torch.Generator().manual_seed(10))
    assert close_rate(draws["view0"]["flip"], view0_flip), rate(draws["view0"]["flip"])
    for name, flag in DRAW_FLAGS.items():
        assert close_rate(draws["contrastive"][flag], expected[name]), (name, rate(draws["contrastive"][flag]))
