"""ccmix against the published ConCutMix code, item by item.

Each test re-implements what the published code computes (its formulas, or the PIL and
torchvision calls it makes) and compares ccmix with it: the blur of the contrastive
views, the initialisation, the AutoAugment CIFAR-10 policy, the precision of evaluation,
the epoch at which semantic labels start, the ImageNet-scale RandAugment, the cosine
schedule, and that every preset validates and trains a step.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from torch import nn

from ccmix.config.fields import TrainConfig
from ccmix.config.presets import PRESETS, preset
from ccmix.config.validation import validate
from ccmix.data import views
from ccmix.data.augment import pil as pil_aug
from ccmix.data.augment import policies as fast_aug
from ccmix.data.augment.blur import box_blur, box_blur_weights, pil_box_radius
from ccmix.data.augment.recipes import classification_views, sample_classification
from ccmix.data.augment.tables import (
    AUTOAUGMENT_OPS,
    CIFAR10_POLICY,
    RANDAUGMENT_OPS,
    RANDAUGMENT_SIGNED_OPS,
    SIGNED_OPS,
    autoaugment_magnitudes,
)
from ccmix.data.batch import StepBatch
from ccmix.method.collectives import DistContext
from ccmix.models.bcl import build_model

# --------------------------------------------------------------------------- real images


@pytest.fixture(scope="module")
def real_images(cifar10_jpg_root) -> list[Image.Image]:
    """Return 24 real 32x32 RGB CIFAR-10 training images (2-3 per class)."""
    files = sorted(Path(cifar10_jpg_root, "train").glob("*/*.jpg"))
    picked = files[:: max(1, len(files) // 24)][:24]
    return [Image.open(path).convert("RGB") for path in picked]


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """Return float (N, 3, H, W) on the 0..255 scale."""
    return torch.stack([torch.from_numpy(np.array(image)).permute(2, 0, 1) for image in images]).float()


# --------------------------------------------------------------------------- 1. Gaussian blur


def published_blur(image: Image.Image, sigma: float) -> Image.Image:
    """The published contrastive-view blur: PIL's GaussianBlur with radius sigma."""
    return image.filter(ImageFilter.GaussianBlur(radius=sigma))


def batched_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The fast pipeline's blur of (N, 3, H, W) images with per-image ``sigma`` (N,) pixels, as its views run it."""
    return box_blur(images, *box_blur_weights(pil_box_radius(sigma)))


def effective_sigma(response: np.ndarray) -> float:
    """Return the standard deviation (pixels, along x) of a 2-D impulse response."""
    weights = response.astype(np.float64) / response.sum()
    x = np.arange(response.shape[1])
    mean = (weights.sum(axis=0) * x).sum()
    return float(np.sqrt((weights.sum(axis=0) * (x - mean) ** 2).sum()))


@pytest.mark.parametrize("sigma", [0.3, 1.0, 1.5, 2.0])
def test_batched_blur_matches_pil_on_real_images(real_images, sigma):
    images = to_tensor(real_images)
    published = to_tensor([published_blur(image, sigma) for image in real_images])
    ours = batched_blur(images / 255.0, torch.full((len(real_images),), sigma)) * 255.0
    difference = (ours - published).abs().mean().item()
    # PIL rounds to 8 bits after each of its six box passes; the batched blur does not
    assert difference < 0.75, f"mean |ours - PIL| = {difference:.3f} levels at sigma {sigma}"
    if sigma >= 1.0:
        assert (published - images).abs().mean().item() > 8 * difference  # the blur itself is far larger


@pytest.mark.parametrize("sigma", [1.0, 1.5, 2.0])
def test_effective_blur_width_matches_pil(sigma):
    impulse = np.zeros((41, 41, 3), np.uint8)
    impulse[20, 20] = 255
    published = effective_sigma(np.asarray(published_blur(Image.fromarray(impulse), sigma))[..., 0])
    tensor = torch.from_numpy(impulse).permute(2, 0, 1)[None].float()
    ours = effective_sigma(batched_blur(tensor, torch.tensor([sigma]))[0, 0].numpy())
    assert abs(ours - published) < 0.05 * published, (sigma, ours, published)
    assert abs(ours - sigma) < 0.05 * sigma


def test_per_image_sigmas_blur_each_image_with_its_own_width(real_images):
    images = to_tensor(real_images[:4])
    sigmas = torch.tensor([0.1, 0.7, 1.3, 2.0])
    together = batched_blur(images, sigmas)
    for index, sigma in enumerate(sigmas):
        alone = batched_blur(images[index:index + 1], sigma.view(1))
        torch.testing.assert_close(together[index:index + 1], alone, atol=1e-3, rtol=0)


def test_classic_contrastive_blur_is_pils_blur(real_images):
    image = real_images[0]
    assert np.array_equal(np.array(pil_aug.PILGaussianBlur((1.3, 1.3))(image)), np.array(published_blur(image, 1.3)))
    transform = views.contrastive_view("cifar", "cifar10")
    blurs = [(step.p, t) for step in transform.transforms if hasattr(step, "p") and hasattr(step, "transforms")
             for t in step.transforms if isinstance(t, pil_aug.PILGaussianBlur)]
    assert [(p, t.sigma) for p, t in blurs] == [(0.5, (0.1, 2.0))]


def test_classic_blur_draws_sigma_uniformly_in_the_published_range(monkeypatch):
    radii = []
    monkeypatch.setattr(pil_aug.ImageFilter, "GaussianBlur", lambda radius: radii.append(radius) or ImageFilter.BLUR)
    torch.manual_seed(0)
    blur = pil_aug.PILGaussianBlur((0.1, 2.0))
    image = Image.new("RGB", (8, 8))
    for _ in range(2000):
        blur(image)
    radii = np.array(radii)
    assert radii.min() >= 0.1 and radii.max() <= 2.0 and abs(radii.mean() - 1.05) < 0.03


# --------------------------------------------------------------------------- 2. initialisation


def default_linear_std(fan_in: int) -> float:
    """PyTorch's default nn.Linear weight: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), whose std is 1/sqrt(3 fan_in)."""
    return 1.0 / math.sqrt(3 * fan_in)


def test_cifar_model_initialisation_is_the_published_one():
    torch.manual_seed(0)
    model = build_model("resnet32", num_classes=100)
    # the published ResNet-32 Kaiming-normal initialises its own convolutions (fan_in, gain sqrt 2) ...
    conv = model.encoder.layer3[1].conv1
    fan_in = conv.weight[0].numel()
    assert abs(conv.weight.std().item() - math.sqrt(2.0 / fan_in)) < 0.05 * math.sqrt(2.0 / fan_in)
    # ... while the heads and the classifier keep PyTorch's default Linear init
    linears = [model.classifier, model.head[0], model.head[3], model.center_head[0], model.center_head[3]]
    for linear in linears:
        expected = default_linear_std(linear.in_features)
        assert abs(linear.weight.std().item() - expected) < 0.1 * expected, linear
        assert linear.bias.abs().max().item() <= 1.0 / math.sqrt(linear.in_features) + 1e-6
    assert abs(model.classifier.weight.std().item() - 0.072) < 0.005  # not Kaiming's sqrt(2 / 64) = 0.177


def test_imagenet_model_heads_keep_the_default_linear_init():
    torch.manual_seed(0)
    model = build_model("resnet50", num_classes=10, feat_dim=1024, classifier="cosine")
    for linear in (model.head[0], model.center_head[3]):
        expected = default_linear_std(linear.in_features)
        assert abs(linear.weight.std().item() - expected) < 0.05 * expected
    conv = model.encoder.layer1[0].conv2  # torchvision: Kaiming normal, fan_out
    fan_out = conv.weight.shape[0] * conv.weight[0, 0].numel()
    assert abs(conv.weight.std().item() - math.sqrt(2.0 / fan_out)) < 0.05 * math.sqrt(2.0 / fan_out)


# --------------------------------------------------------------------------- 3. AutoAugment CIFAR-10 policy

GREY = (128, 128, 128)


def published_cifar10_op(image: Image.Image, name: str, magnitude: float, sign: int) -> Image.Image:
    """One operation of the published CIFAR-10 policy (its SubPolicy lambdas), with the sign it drew."""
    if name == "ShearX":
        return image.transform(image.size, Image.AFFINE, (1, magnitude * sign, 0, 0, 1, 0), Image.BICUBIC,
                               fillcolor=GREY)
    if name == "ShearY":
        return image.transform(image.size, Image.AFFINE, (1, 0, 0, magnitude * sign, 1, 0), Image.BICUBIC,
                               fillcolor=GREY)
    if name == "TranslateX":
        return image.transform(image.size, Image.AFFINE, (1, 0, magnitude * image.size[0] * sign, 0, 1, 0),
                               fillcolor=GREY)
    if name == "TranslateY":
        return image.transform(image.size, Image.AFFINE, (1, 0, 0, 0, 1, magnitude * image.size[1] * sign),
                               fillcolor=GREY)
    if name == "Rotate":  # never mirrored; grey through an RGBA composite
        rotated = image.convert("RGBA").rotate(magnitude)
        return Image.composite(rotated, Image.new("RGBA", rotated.size, (128,) * 4), rotated).convert(image.mode)
    if name in ("Color", "Contrast", "Sharpness", "Brightness"):
        return getattr(ImageEnhance, name)(image).enhance(1 + magnitude * sign)
    if name == "Posterize":
        return ImageOps.posterize(image, int(magnitude))
    if name == "Solarize":
        return ImageOps.solarize(image, magnitude)
    return {"AutoContrast": ImageOps.autocontrast, "Equalize": ImageOps.equalize, "Invert": ImageOps.invert}[name](image)


PUBLISHED_RANGES = {  # the published SubPolicy ranges, 10 bins each (translations as a fraction of the side)
    "ShearX": np.linspace(0, 0.3, 10), "ShearY": np.linspace(0, 0.3, 10),
    "TranslateX": np.linspace(0, 150 / 331, 10), "TranslateY": np.linspace(0, 150 / 331, 10),
    "Rotate": np.linspace(0, 30, 10), "Color": np.linspace(0.0, 0.9, 10),
    "Posterize": np.round(np.linspace(8, 4, 10), 0).astype(int), "Solarize": np.linspace(256, 0, 10),
    "Contrast": np.linspace(0.0, 0.9, 10), "Sharpness": np.linspace(0.0, 0.9, 10),
    "Brightness": np.linspace(0.0, 0.9, 10),
}
PUBLISHED_SIGNED = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Color", "Contrast", "Sharpness", "Brightness")


def test_autoaugment_magnitudes_and_signs_are_the_published_ones():
    ours = autoaugment_magnitudes(32, 32)
    for name, published in PUBLISHED_RANGES.items():
        scale = 32.0 if name.startswith("Translate") else 1.0
        np.testing.assert_allclose(ours[name].numpy(), np.asarray(published, dtype=np.float64) * scale, atol=1e-9)
    assert set(SIGNED_OPS) == set(PUBLISHED_SIGNED)  # Rotate is never mirrored


# every operation of the policy at the bins the policy uses, with both signs where the published op draws one
POLICY_OPS = sorted({(name, bin_, sign) for sub in CIFAR10_POLICY for name, _, bin_ in sub
                     for sign in ((1, -1) if name in PUBLISHED_SIGNED else (1,))}, key=str)


@pytest.mark.parametrize("name, magnitude_bin, sign", POLICY_OPS)
def test_autoaugment_ops_follow_the_published_semantics_in_both_pipelines(real_images, name, magnitude_bin, sign):
    size = real_images[0].size[0]
    published_magnitude = float(PUBLISHED_RANGES[name][magnitude_bin]) if name in PUBLISHED_RANGES else 0.0
    ours_magnitude = float(autoaugment_magnitudes(size, size)[name][magnitude_bin]) if magnitude_bin is not None else 0.0
    ours_magnitude *= sign if name in PUBLISHED_SIGNED else 1
    published = to_tensor([published_cifar10_op(image, name, published_magnitude, sign) for image in real_images])
    classic = to_tensor([pil_aug.apply_autoaugment_op(image, name, ours_magnitude) for image in real_images])
    assert torch.equal(classic, published)
    count = len(real_images)
    params = {"policy": torch.zeros(count, dtype=torch.int64),
              "op": torch.tensor([[AUTOAUGMENT_OPS.index(name), 0]] * count),
              "apply": torch.tensor([[True, False]] * count),
              "magnitude": torch.tensor([[ours_magnitude, 0.0]] * count, dtype=torch.float64)}
    fast = fast_aug.apply_autoaugment(to_tensor(real_images), params)
    difference = (fast - published).abs()
    # PIL truncates to 8 bits and blends with an 8-bit grey; the batched ops stay in float
    assert difference.max().item() <= 2.0 and difference.mean().item() <= 0.6, (difference.max(), difference.mean())
    if name in ("TranslateX", "TranslateY", "Rotate", "Posterize", "Solarize", "Equalize", "Invert"):
        assert difference.max().item() == 0.0


def test_geometric_ops_fill_grey_not_black():
    white = Image.new("RGB", (32, 32), (255, 255, 255))
    for name, magnitude in (("Rotate", 30.0), ("ShearY", 0.3), ("TranslateX", 14.5), ("TranslateY", -14.5)):
        out = np.array(pil_aug.apply_autoaugment_op(white, name, magnitude))
        assert (out == 128).all(axis=2).any() and not (out == 0).all(axis=2).any(), name


def test_classic_policy_draws_as_published(monkeypatch):
    calls = []
    monkeypatch.setattr(pil_aug, "apply_autoaugment_op", lambda image, name, magnitude: calls.append((name, magnitude))
                        or image)
    torch.manual_seed(1)
    policy = pil_aug.CifarAutoAugment()
    image = Image.new("RGB", (32, 32))
    for _ in range(6000):
        policy(image)
    rotations = [m for name, m in calls if name == "Rotate"]
    assert rotations and min(rotations) > 0  # never mirrored
    shears = np.array([m for name, m in calls if name == "ShearY"])
    assert abs((shears < 0).mean() - 0.5) < 0.05
    # expected firing rate of each op: P(sub-policy) x its probability, summed over the table
    expected = {}
    for sub in CIFAR10_POLICY:
        for name, probability, _ in sub:
            expected[name] = expected.get(name, 0.0) + probability / 25
    for name, rate in expected.items():
        observed = sum(1 for n, _ in calls if n == name) / 6000
        assert abs(observed - rate) < 0.015, (name, observed, rate)


def test_view0_black_pixel_share_is_the_published_one_in_both_pipelines(real_images):
    # Black pixels of view 0 come from the zero padding of the crop only; AutoAugment fills grey.
    images = (real_images * 17)[:400]
    torch.manual_seed(2)
    view = views.classification_view("cifar", "cifar10")
    mean = torch.tensor(views.CIFAR_MEAN).view(3, 1, 1)
    std = torch.tensor(views.CIFAR_STD).view(3, 1, 1)

    def black_share(batch: torch.Tensor) -> float:  # normalised (N, 3, H, W)
        pixels = ((batch * std + mean) * 255).round()
        return (pixels.sum(dim=1) == 0).double().mean().item()

    classic = black_share(torch.stack([view(image) for image in images]))
    uint8 = to_tensor(images).to(torch.uint8)
    draws = sample_classification(len(images), torch.Generator().manual_seed(2))
    fast = black_share(classification_views(uint8, draws, views.CIFAR_MEAN, views.CIFAR_STD))
    # zero padding alone: E[uncovered share] of a pad-4 crop is about 11%; torchvision's black fill gave about 19%
    assert 0.09 < classic < 0.145 and 0.09 < fast < 0.145, (classic, fast)
    assert abs(classic - fast) < 0.02


# --------------------------------------------------------------------------- 4. fp32 evaluation


def test_evaluation_runs_in_fp32_even_inside_an_autocast_region():
    from ccmix.train.evaluation import predict

    class Recorder(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(3, 4)
            self.seen = []

        def classify(self, x):
            logits = self.linear(x.mean(dim=(2, 3)))
            self.seen.append((torch.is_autocast_enabled("cpu"), logits.dtype))
            return logits

    model = Recorder()
    loader = [(torch.randn(5, 3, 4, 4), torch.zeros(5, dtype=torch.int64))]
    config = TrainConfig(dataset="synthetic", amp=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        predict(model, loader, torch.device("cpu"), config)
    assert model.seen == [(False, torch.float32)]


# --------------------------------------------------------------------------- 5. when semantic labels start


def test_semantic_labels_start_after_epoch_l_d_warm(monkeypatch):
    import ccmix.method.losses as losses
    import ccmix.method.step as step

    calls = []
    real = losses.semantic_label_parts
    monkeypatch.setattr(losses, "semantic_label_parts", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    config = TrainConfig(dataset="synthetic", synthetic_classes=4, batch_size=4, feat_dim=8, topk=2, l_d_warm=3)
    torch.manual_seed(0)
    model = build_model("resnet32", 4, feat_dim=8)
    generator = torch.Generator().manual_seed(0)
    batch = StepBatch(view0=torch.rand(4, 3, 16, 16, generator=generator),
                           contrastive=torch.rand(4, 2, 3, 16, 16, generator=generator),
                           labels=torch.tensor([0, 1, 2, 3]), foreground=torch.rand(4, 3, 16, 16, generator=generator),
                           foreground_labels=torch.tensor([3, 2, 1, 0]))
    counts = torch.tensor([40.0, 20.0, 10.0, 5.0])
    boxes = step.draw_cutmix_boxes(config.replace(cutmix_prob=1.0), np.random.default_rng(0), 4, 16, 16,
                                   DistContext())
    assert boxes is not None
    used = []
    for epoch in (2, 3, 4, 5):  # 0-based epochs, as the published loop counts them
        calls.clear()
        step.compute_step_loss(model, batch, config, epoch, counts, boxes)
        used.append(bool(calls))
    # published: `epoch > l_d_warm`, so area labels through epoch l_d_warm and semantic labels after it
    assert used == [False, False, True, True]


# --------------------------------------------------------------------------- 7. ImageNet-scale RandAugment

MAX_LEVEL = 10.0
IMAGENET_FILL = tuple(min(255, round(255 * x)) for x in (0.485, 0.456, 0.406))


def published_level_argument(name: str, level: float, size: tuple[int, int]) -> float:
    """The published (timm-style) level-to-argument functions, unsigned."""
    if name == "Rotate":
        return level / MAX_LEVEL * 30.0
    if name in ("ShearX", "ShearY"):
        return level / MAX_LEVEL * 0.3
    if name == "TranslateXRel":
        return level / MAX_LEVEL * 0.45 * size[0]
    if name == "TranslateYRel":
        return level / MAX_LEVEL * 0.45 * size[1]
    if name == "Posterize":
        return int(level / MAX_LEVEL * 4)
    if name == "Solarize":
        return int(level / MAX_LEVEL * 256)
    if name == "SolarizeAdd":
        return int(level / MAX_LEVEL * 110)
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return level / MAX_LEVEL * 1.8 + 0.1
    return 0.0


def published_randaugment_op(image: Image.Image, name: str, argument: float, resample) -> Image.Image:
    """One published RandAugment op with its signed argument, interpolation and ImageNet-mean fill."""
    kwargs = {"resample": resample, "fillcolor": IMAGENET_FILL}
    if name == "Rotate":
        return image.rotate(argument, **kwargs)
    affine = {"ShearX": (1, argument, 0, 0, 1, 0), "ShearY": (1, 0, 0, argument, 1, 0),
              "TranslateXRel": (1, 0, argument, 0, 1, 0), "TranslateYRel": (1, 0, 0, 0, 1, argument)}
    if name in affine:
        return image.transform(image.size, Image.AFFINE, affine[name], **kwargs)
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return getattr(ImageEnhance, name)(image).enhance(argument)
    if name == "Posterize":
        return image if argument >= 8 else ImageOps.posterize(image, argument)
    if name == "Solarize":
        return ImageOps.solarize(image, argument)
    if name == "SolarizeAdd":
        lut = [min(255, i + argument) if i < 128 else i for i in range(256)]
        return image.point(lut * 3)
    return {"AutoContrast": ImageOps.autocontrast, "Equalize": ImageOps.equalize, "Invert": ImageOps.invert}[name](image)


@pytest.mark.parametrize("name", RANDAUGMENT_OPS)
@pytest.mark.parametrize("level, negative, bicubic", [(10.0, False, False), (9.4, True, True)])
def test_randaugment_ops_follow_the_published_semantics_in_both_pipelines(real_images, name, level, negative, bicubic):
    images = [image.resize((56, 48), Image.BICUBIC) for image in real_images[:10]]
    size = images[0].size
    argument = published_level_argument(name, level, size)
    assert pil_aug.randaugment_level_argument(name, level, size) == pytest.approx(argument)
    if negative and name in RANDAUGMENT_SIGNED_OPS:
        argument = -argument
    resample = Image.BICUBIC if bicubic else Image.BILINEAR
    published = to_tensor([published_randaugment_op(image, name, argument, resample) for image in images])
    classic = to_tensor([pil_aug.apply_randaugment_op(image, name, argument, resample, IMAGENET_FILL)
                         for image in images])
    assert torch.equal(classic, published)
    count = len(images)
    params = {"op": torch.full((count, 1), RANDAUGMENT_OPS.index(name)),
              "apply": torch.ones(count, 1, dtype=torch.bool),
              "argument": torch.full((count, 1), float(argument), dtype=torch.float64),
              "bicubic": torch.full((count, 1), bicubic)}
    fast = fast_aug.apply_randaugment(to_tensor(images), params, IMAGENET_FILL)
    difference = (fast - published).abs()
    assert difference.max().item() <= 2.0 and difference.mean().item() <= 0.6, (difference.max(), difference.mean())


def test_randaugment_enhancements_never_darken_and_solarize_inverts_nothing_at_full_level():
    # published semantics at m=10: enhancement factor 1.9 (not 1 - 0.9), solarize threshold 256 (no pixel)
    assert pil_aug.randaugment_level_argument("Brightness", 10.0, (8, 8)) == pytest.approx(1.9)
    image = Image.new("RGB", (8, 8), (200, 100, 30))
    assert np.array_equal(np.array(pil_aug.apply_randaugment_op(image, "Solarize", 256, Image.BILINEAR, (0, 0, 0))),
                          np.array(image))


def test_randaugment_draws_follow_the_published_distribution(monkeypatch):
    count = 40_000
    params = fast_aug.sample_randaugment(count, torch.Generator().manual_seed(3), image_size=(224, 224))
    frequencies = torch.bincount(params["op"].reshape(-1), minlength=15).double() / (2 * count)
    assert (frequencies - 1 / 15).abs().max() < 0.005
    assert abs(params["apply"].double().mean().item() - 0.5) < 0.005
    level = params["level"]
    assert level.min() >= 0 and level.max() <= 10
    # N(10, 0.5) clipped at 10: half the draws sit at 10, E[level] = 10 - 0.5 / sqrt(2 pi)
    assert abs((level == 10).double().mean().item() - 0.5) < 0.01
    assert abs(level.mean().item() - (10 - 0.5 / math.sqrt(2 * math.pi))) < 0.01
    assert abs(params["bicubic"].double().mean().item() - 0.5) < 0.01
    rotate = params["op"] == RANDAUGMENT_OPS.index("Rotate")
    assert abs((params["argument"][rotate] < 0).double().mean().item() - 0.5) < 0.02
    # the classic transform draws from the same distribution
    calls = []
    monkeypatch.setattr(pil_aug, "apply_randaugment_op",
                        lambda image, name, argument, resample, fill: calls.append((name, argument, fill)) or image)
    torch.manual_seed(3)
    transform = views.randaugment()
    image = Image.new("RGB", (224, 224))
    for _ in range(6000):
        transform(image)
    assert abs(len(calls) / 12000 - 0.5) < 0.015
    assert {fill for _, _, fill in calls} == {IMAGENET_FILL}
    brightness = np.array([a for name, a, _ in calls if name == "Brightness"])
    # factors near 1.9, never the darkening 1 - 0.9 of a random sign; half at the full level
    assert brightness.min() > 1.5 and abs(np.isclose(brightness, 1.9).mean() - 0.5) < 0.1


# --------------------------------------------------------------------------- 8. cosine schedule


@pytest.mark.parametrize("warmup", [0, 3])
def test_cosine_schedule_is_the_published_one(warmup):
    from ccmix.method.step import learning_rate

    config = preset("imagenet_lt_resnet50_100").replace(warmup_epochs=warmup)
    for epoch in range(config.epochs):
        if epoch < warmup:
            expected = config.lr / warmup * (epoch + 1)
        else:
            progress = (epoch - warmup + 1) / (config.epochs - warmup + 1)
            expected = config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        assert learning_rate(epoch, config) == pytest.approx(expected, rel=1e-12, abs=1e-15), epoch
    assert learning_rate(config.epochs - 1, config) > 0  # the last epoch still learns


# --------------------------------------------------------------------------- 6. every preset starts


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_validates_builds_its_model_and_trains_a_step(name, tmp_path):
    from ccmix.data.batch import StepBatch
    from ccmix.method.step import build_optimizer, train_step
    from ccmix.models.chunked_bn import chunk_batchnorm

    config = preset(name)
    if config.dataset in ("imagenet_lt", "inat2018", "places_lt"):
        train_list, test_list = tmp_path / "train.txt", tmp_path / "test.txt"
        train_list.write_text("a.jpg 0\n")
        test_list.write_text("b.jpg 0\n")
        config = config.replace(data_root=str(tmp_path), train_list=str(train_list), test_list=str(test_list))
    validate(config)
    # one step at the preset's architecture, heads, losses and semantic labels, on a few small synthetic images
    # of at most 100 classes (iNaturalist's 8142 class centres alone would cost a minute of CPU a step)
    num_classes = min(config.num_classes, 100)
    batch_size = 2 * config.grad_accum_steps
    config = config.replace(batch_size=batch_size, cutmix_prob=1.0, device="cpu")
    torch.manual_seed(0)
    model = build_model(config.arch, num_classes, feat_dim=config.feat_dim, classifier=config.classifier,
                        cosine_scale=config.cosine_scale)
    model = chunk_batchnorm(model, config.bn_chunks)  # BatchNorm as the published DataParallel runs normalise
    optimizer = build_optimizer(model, config)
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(batch_size) % num_classes
    batch = StepBatch(view0=torch.randn(batch_size, 3, 32, 32, generator=generator),
                      contrastive=torch.randn(batch_size, 2, 3, 32, 32, generator=generator), labels=labels,
                      foreground=torch.randn(batch_size, 3, 32, 32, generator=generator),
                      foreground_labels=labels.flip(0))
    counts = torch.arange(num_classes, 0, -1).double() + 1
    before = model.classifier.weight.detach().clone()
    sums = train_step(model, optimizer, batch, config, config.l_d_warm + 1, counts, np.random.default_rng(0))
    assert torch.isfinite(sums).all()
    assert not torch.equal(model.classifier.weight.detach(), before)


def test_python_random_is_not_used_by_the_classic_views():
    # views draw from torch's generator only, so seeding torch alone reproduces them
    image = Image.new("RGB", (32, 32), (90, 160, 30))
    view = views.classification_view("cifar", "cifar10")
    torch.manual_seed(7)
    random.seed(1)
    first = view(image)
    torch.manual_seed(7)
    random.seed(2)
    assert torch.equal(first, view(image))
