"""View recipes: shapes, dtypes, normalisation and the recipe's parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from ccmix.data import views
from ccmix.data.augment import pil as pil_aug
from ccmix.data.augment.tables import BLUR_PROB, BLUR_SIGMA, CONTRASTIVE_JITTER, CONTRASTIVE_JITTER_PROB
from ccmix.data.views import classification_view, contrastive_view, normalization, test_view

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INAT_MEAN = (0.466, 0.471, 0.380)
INAT_STD = (0.195, 0.194, 0.192)


def constant_image(value, width=32, height=32):
    return Image.fromarray(np.full((height, width, 3), value, dtype=np.uint8))


def noise_image(width=32, height=32, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("dataset,expected", [
    ("cifar10", (CIFAR_MEAN, CIFAR_STD)), ("cifar100", (CIFAR_MEAN, CIFAR_STD)), ("synthetic", (CIFAR_MEAN, CIFAR_STD)),
    ("imagenet_lt", (IMAGENET_MEAN, IMAGENET_STD)), ("places_lt", (IMAGENET_MEAN, IMAGENET_STD)),
    ("inat2018", (INAT_MEAN, INAT_STD)), ("folder", (CIFAR_MEAN, CIFAR_STD)),
])
def test_normalization_constants(dataset, expected):
    assert normalization(dataset) == expected


def test_folder_takes_the_statistics_of_its_recipe_and_unknown_names_fail():
    assert normalization("folder", "imagenet") == (IMAGENET_MEAN, IMAGENET_STD)
    with pytest.raises(ValueError, match="mnist"):
        normalization("mnist")
    with pytest.raises(ValueError, match="recipe"):
        classification_view("simclr", "cifar10")


@pytest.mark.parametrize("value", [0, 77, 255])
def test_cifar_test_view_of_constant_image_is_normalised_value(value):
    out = test_view("cifar", "cifar10")(constant_image(value))
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    for channel in range(3):
        expected = (value / 255 - CIFAR_MEAN[channel]) / CIFAR_STD[channel]
        assert torch.allclose(out[channel], torch.full((32, 32), expected), atol=1e-5)


def test_imagenet_test_view_resizes_crops_and_uses_inat_statistics():
    out = test_view("imagenet", "inat2018")(constant_image(128, width=400, height=300))
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    for channel in range(3):
        expected = (128 / 255 - INAT_MEAN[channel]) / INAT_STD[channel]
        assert torch.allclose(out[channel], torch.full((224, 224), expected), atol=1e-4)


def test_imagenet_test_view_keeps_the_centre():
    # Left third black, rest white: after resize 256 (short side) and centre crop 224 of a 300x200 image
    # (-> 384x256, crop x from 80 to 304) the black band (x < 128) covers crop columns 0..47.
    pixels = np.full((200, 300, 3), 255, dtype=np.uint8)
    pixels[:, :100] = 0
    out = test_view("imagenet", "imagenet_lt")(Image.fromarray(pixels))
    black = (0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    white = (1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    assert torch.allclose(out[0, :, 10], torch.full((224,), black), atol=1e-3)
    assert torch.allclose(out[0, :, 100], torch.full((224,), white), atol=1e-3)


@pytest.mark.parametrize("recipe,dataset,size", [("cifar", "cifar100", 32), ("imagenet", "imagenet_lt", 224)])
def test_training_views_shapes_and_seeded_randomness(recipe, dataset, size):
    image = noise_image(48 if recipe == "imagenet" else 32, 40 if recipe == "imagenet" else 32)
    for make in (classification_view, contrastive_view):
        transform = make(recipe, dataset)
        torch.manual_seed(5)
        first = transform(image)
        torch.manual_seed(5)
        again = transform(image)
        other = transform(image)
        assert first.shape == (3, size, size) and first.dtype == torch.float32
        assert torch.equal(first, again)
        assert not torch.equal(first, other)


def find(compose, kind):
    found = []
    for step in compose.transforms:
        if isinstance(step, v2.RandomApply):
            found += [(t, step.p) for t in step.transforms if isinstance(t, kind)]
        elif isinstance(step, kind):
            found.append((step, 1.0))
    return found


def test_cifar_recipes_use_the_published_parameters():
    view0 = classification_view("cifar", "cifar10")
    (crop, _), = find(view0, v2.RandomCrop)
    assert crop.size == (32, 32) and crop.padding == [4, 4, 4, 4]
    (auto, _), = find(view0, pil_aug.CifarAutoAugment)  # the published policy with grey fill
    contrastive = contrastive_view("cifar", "cifar10")
    (resized, _), = find(contrastive, v2.RandomResizedCrop)
    assert resized.size == (32, 32) and tuple(resized.scale) == (0.2, 1.0)
    (jitter, p_jitter), = find(contrastive, v2.ColorJitter)
    assert p_jitter == 0.8
    assert jitter.brightness == (0.6, 1.4) and jitter.saturation == (0.6, 1.4) and jitter.hue == (-0.1, 0.1)
    (gray, _), = find(contrastive, v2.RandomGrayscale)
    assert gray.p == 0.2
    (blur, p_blur), = find(contrastive, pil_aug.PILGaussianBlur)
    assert p_blur == 0.5 and blur.sigma == (0.1, 2.0)


def test_imagenet_recipes_use_the_published_parameters():
    view0 = classification_view("imagenet", "imagenet_lt")
    (resized, _), = find(view0, v2.RandomResizedCrop)
    assert resized.size == (224, 224) and tuple(resized.scale) == (0.08, 1.0)
    (jitter, p_jitter), = find(view0, v2.ColorJitter)
    assert p_jitter == 1.0 and jitter.hue is None and jitter.contrast == (0.6, 1.4)
    (rand, _), = find(view0, pil_aug.RandAugment)
    assert (rand.num_ops, rand.magnitude, rand.magnitude_std, rand.fill) == (2, 10, 0.5, (124, 116, 104))
    contrastive = contrastive_view("imagenet", "imagenet_lt")
    assert not find(contrastive, pil_aug.PILGaussianBlur) and not find(contrastive, pil_aug.RandAugment)
    (_, p_jitter), = find(contrastive, v2.ColorJitter)
    assert p_jitter == 0.8


def test_module_constants_are_the_ones_the_recipes_use():
    assert views.CIFAR_MEAN == CIFAR_MEAN and views.INAT_STD == INAT_STD
    assert views.CIFAR_PAD == 4 and views.CIFAR_CONTRASTIVE_SCALE == (0.2, 1.0)
    assert CONTRASTIVE_JITTER == (0.4, 0.4, 0.4, 0.1) and CONTRASTIVE_JITTER_PROB == 0.8
    assert BLUR_SIGMA == (0.1, 2.0) and BLUR_PROB == 0.5
    assert views.CONTRASTIVE_PARAMS["imagenet"].blur_prob == 0.0


@pytest.mark.parametrize("variant, stacked", [("sim-sim", (False, False)), ("sim-rand", (True, False)),
                                              ("randstack", (True, True))])
def test_contrastive_view_variants_add_the_published_randaugment(variant, stacked):
    first, second = views.contrastive_view_pair("imagenet", "imagenet_lt", variant)
    assert (bool(find(first, pil_aug.RandAugment)), bool(find(second, pil_aug.RandAugment))) == stacked
    torch.manual_seed(3)
    assert first(noise_image(48, 40)).shape == (3, 224, 224)


def test_contrastive_view_variants_other_than_sim_sim_are_imagenet_only():
    with pytest.raises(ValueError, match="imagenet recipe only"):
        views.contrastive_view_pair("cifar", "cifar10", "sim-rand")
    with pytest.raises(ValueError, match="simclr"):
        views.contrastive_view_pair("imagenet", "imagenet_lt", "simclr")
    first, second = views.contrastive_view_pair("cifar", "cifar10", "sim-sim")
    assert find(first, pil_aug.PILGaussianBlur) and find(second, pil_aug.PILGaussianBlur)


def test_randaugment_settings_reach_view_0():
    view0 = classification_view("imagenet", "imagenet_lt", randaugment_ops=3, randaugment_magnitude=7)
    (rand, _), = find(view0, pil_aug.RandAugment)
    assert (rand.num_ops, rand.magnitude) == (3, 7)
