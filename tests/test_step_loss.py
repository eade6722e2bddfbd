"""The training step's loss pinned for every method, against an expectation built here from the definitions.

For ce, la, cutmix, bcl and concutmix, on a fixed tiny model, batch and boxes, the test
builds the expected loss itself (docs/method.md): the mixed image by plain slicing, λ as
the fraction of the background's pixels kept, the area label, the semantic label from the
*unnormalised* embedding and centres, the logit-adjusted cross-entropy (τ only where the
method adjusts logits), the balanced contrastive loss by loops, and α·CE + β·BCL. None of
the package's CutMix or loss helpers is used for the expectation, so a step that assembles
the method wrongly (a swapped label, λ of another image, τ or β dropped, the semantic
label from the wrong embedding, separate BatchNorm passes) no longer matches.
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ccmix.config.fields import TrainConfig
from ccmix.data.batch import StepBatch
from ccmix.method.collectives import DistContext
from ccmix.method.cutmix import CutMixBoxes
from ccmix.method.step import compute_step_loss, draw_cutmix_boxes

NUM_CLASSES = 5
CLASS_COUNTS = [50.0, 20.0, 10.0, 5.0, 2.0]
SIZE = 8  # pixels, side of the tiny images
LABELS = [0, 2, 4, 1]
FOREGROUND_LABELS = [3, 1, 0, 2]  # each differs from its background's label
# (top, left, bottom, right) per image, bottom/right exclusive: kept fractions 0.75, 0.453, 0.906 and 0.375;
# the second box is clipped at the right edge, the last spans the full height
BOXES = [(0, 0, 4, 4), (2, 1, 7, 8), (1, 3, 3, 6), (0, 0, 8, 5)]
SHARED_BOX = [(2, 2, 6, 7)] * 4  # the default CutMix: one box for the whole batch
LATE_EPOCH, WARM = 10, 2  # semantic labels are in use at LATE_EPOCH (> WARM), not at epoch 0


class TinyNet(nn.Module):
    """A small stand-in with the model's interface: encoder, projection head, centre head, classifier."""

    def __init__(self, feat_dim: int = 6):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                     nn.AdaptiveAvgPool2d(2), nn.Flatten())  # 16 features
        self.head = nn.Sequential(nn.Linear(16, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, feat_dim))
        self.center_head = nn.Sequential(nn.Linear(16, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, feat_dim))
        self.classifier = nn.Linear(16, NUM_CLASSES)

    def forward(self, images):
        features = self.encoder(images)
        embedding = 3.0 * self.head(features)  # unnormalised, norms far from 1
        centers = self.center_head(self.classifier.weight)
        return SimpleNamespace(logits=self.classifier(features), features=features,
                               embedding=F.normalize(embedding, dim=1), embedding_raw=embedding,
                               centers=F.normalize(centers, dim=1), centers_raw=centers)

    def classify(self, images):
        return self.classifier(self.encoder(images))


def make_model() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet().train()


def make_batch(seed: int = 1) -> StepBatch:
    generator = torch.Generator().manual_seed(seed)
    count = len(LABELS)
    return StepBatch(
        view0=torch.randn(count, 3, SIZE, SIZE, generator=generator),
        contrastive=torch.randn(count, 2, 3, SIZE, SIZE, generator=generator),
        labels=torch.tensor(LABELS), foreground=torch.randn(count, 3, SIZE, SIZE, generator=generator) + 1.0,
        foreground_labels=torch.tensor(FOREGROUND_LABELS),
    )


def as_boxes(rows) -> CutMixBoxes:
    return CutMixBoxes(*(torch.tensor([row[k] for row in rows], dtype=torch.int64) for k in range(4)))


def config_for(method: str, **changes) -> TrainConfig:
    # alpha, beta, tau and the temperature differ from 1, from each other and from the presets
    settings = dict(method=method, dataset="synthetic", synthetic_classes=NUM_CLASSES, tau=0.8, alpha=1.7, beta=0.45,
                    temperature=0.2, topk=2, omega=1.0, l_d_warm=WARM, device="cpu", amp=False, channels_last=False)
    settings.update(changes)
    return TrainConfig(**settings)


# --------------------------------------------------------------------------- the expectation, from the definitions


def mixed_images(batch: StepBatch, rows) -> tuple[torch.Tensor, list[float]]:
    """Return (view 0 with each foreground's box pasted in, λ per image = fraction of background pixels kept)."""
    mixed = batch.view0.clone()
    kept = []
    for index, (top, left, bottom, right) in enumerate(rows):
        mixed[index, :, top:bottom, left:right] = batch.foreground[index, :, top:bottom, left:right]
        kept.append(1.0 - (bottom - top) * (right - left) / (SIZE * SIZE))
    return mixed, kept


def area_label(kept: list[float]) -> torch.Tensor:
    label = torch.zeros(len(LABELS), NUM_CLASSES, dtype=torch.float64)
    for index, (a, b) in enumerate(zip(LABELS, FOREGROUND_LABELS)):
        label[index, a] += kept[index]
        label[index, b] += 1.0 - kept[index]
    return label


def semantic_blend(embedding_raw: torch.Tensor, centers_raw: torch.Tensor, area: torch.Tensor, topk: int,
                   omega: float) -> torch.Tensor:
    """Return (ρ·ω)·y_sem + (1 − ρ·ω)·y_area with y_sem from 1 / ‖u − m_c‖ over the top-k centres."""
    label = torch.zeros_like(area)
    log_count_sum = sum(math.log(n) for n in CLASS_COUNTS)
    for index in range(area.shape[0]):
        u = embedding_raw[index].double()
        similarity = [1.0 / torch.sqrt(((u - centers_raw[c].double()) ** 2).sum()).item() for c in range(NUM_CLASSES)]
        top = sorted(range(NUM_CLASSES), key=lambda c: -similarity[c])[:topk]
        semantic = [similarity[c] / sum(similarity[k] for k in top) if c in top else 0.0 for c in range(NUM_CLASSES)]
        rho = math.log(sum(n * float(area[index, c]) for c, n in enumerate(CLASS_COUNTS))) / log_count_sum
        weight = rho * omega
        for c in range(NUM_CLASSES):
            label[index, c] = weight * semantic[c] + (1.0 - weight) * float(area[index, c])
    return label


def adjusted_ce(logits: torch.Tensor, label: torch.Tensor, tau: float) -> float:
    """Return mean over images of −Σ_c y_c log softmax(z + τ log π)_c."""
    total = sum(CLASS_COUNTS)
    total_loss = 0.0
    for z, y in zip(logits.double(), label):
        adjusted = [float(z[c]) + tau * math.log(CLASS_COUNTS[c] / total) for c in range(NUM_CLASSES)]
        log_normaliser = math.log(sum(math.exp(v) for v in adjusted))
        total_loss -= sum(float(y[c]) * (adjusted[c] - log_normaliser) for c in range(NUM_CLASSES))
    return total_loss / logits.shape[0]


def balanced_contrastive(view1: torch.Tensor, view2: torch.Tensor, centers: torch.Tensor, temperature: float) -> float:
    """Return the balanced contrastive loss of 2b normalised views and C normalised centres, by loops."""
    members = [v.double() for v in view1] + [v.double() for v in view2] + [c.double() for c in centers]
    classes = LABELS + LABELS + list(range(NUM_CLASSES))
    anchors = 2 * len(LABELS)
    total = 0.0
    for i in range(anchors):
        # each term is divided by the number of members of class(j) in the set, the anchor itself not counted
        weight = {j: sum(1 for k in range(len(members)) if classes[k] == classes[j] and k != i)
                  for j in range(len(members))}
        exp_similarity = {j: math.exp(float(members[i] @ members[j]) / temperature)
                          for j in range(len(members)) if j != i}
        denominator = sum(value / weight[j] for j, value in exp_similarity.items())
        positives = [j for j in exp_similarity if classes[j] == classes[i]]
        total += sum(-math.log(exp_similarity[p] / denominator) for p in positives) / len(positives)
    return total / anchors


def expected_step_loss(model: TinyNet, batch: StepBatch, rows, config: TrainConfig, semantic: bool) -> dict:
    """Return {"loss", "ce", "bcl"} of one step built from the definitions (rows: boxes or None)."""
    count = len(LABELS)
    if rows is not None:
        images, kept = mixed_images(batch, rows)
        label = area_label(kept)
    else:
        images = batch.view0
        label = F.one_hot(torch.tensor(LABELS), NUM_CLASSES).double()
    tau = 0.0 if config.method == "ce" else config.tau
    with torch.no_grad():
        if config.method in ("bcl", "concutmix"):
            # BatchNorm sees all 3b images in one pass: view 0 (mixed), then contrastive views 1 and 2
            output = model(torch.cat([images, batch.contrastive[:, 0], batch.contrastive[:, 1]]))
            logits = output.logits[:count]
            bcl = balanced_contrastive(output.embedding[count:2 * count], output.embedding[2 * count:],
                                       output.centers, config.temperature)
            if semantic:
                label = semantic_blend(output.embedding_raw[:count], output.centers_raw, label, config.topk,
                                       config.omega)
            ce = adjusted_ce(logits, label, tau)
            return {"loss": config.alpha * ce + config.beta * bcl, "ce": ce, "bcl": bcl}
        ce = adjusted_ce(model.classify(images), label, tau)
        return {"loss": ce, "ce": ce, "bcl": None}


def engine_step_loss(model: TinyNet, batch: StepBatch, rows, config: TrainConfig, epoch: int) -> dict:
    result = compute_step_loss(model, batch, config, epoch, torch.tensor(CLASS_COUNTS),
                               None if rows is None else as_boxes(rows), DistContext())
    return {"loss": float(result.loss.detach()), "ce": float(result.loss_ce),
            "bcl": None if result.loss_bcl is None else float(result.loss_bcl)}


def assert_same(got: dict, expected: dict) -> None:
    assert got["loss"] == pytest.approx(expected["loss"], rel=2e-5, abs=1e-6), (got, expected)
    assert got["ce"] == pytest.approx(expected["ce"], rel=2e-5, abs=1e-6), (got, expected)
    if expected["bcl"] is None:
        assert got["bcl"] is None
    else:
        assert got["bcl"] == pytest.approx(expected["bcl"], rel=2e-5, abs=1e-6), (got, expected)


# --------------------------------------------------------------------------- the step loss of each method


@pytest.mark.parametrize("method", ["ce", "la", "bcl"])
def test_unmixed_methods_step_loss_matches_the_definition(method):
    model, batch, config = make_model(), make_batch(), config_for(method)
    expected = expected_step_loss(model, batch, None, config, semantic=False)
    assert_same(engine_step_loss(model, batch, None, config, epoch=LATE_EPOCH), expected)


@pytest.mark.parametrize("rows", [BOXES, SHARED_BOX], ids=["per-sample boxes", "shared box"])
@pytest.mark.parametrize("method,epoch,semantic", [
    ("cutmix", LATE_EPOCH, False), ("concutmix", 0, False), ("concutmix", LATE_EPOCH, True),
], ids=["cutmix", "concutmix-warm-up", "concutmix-semantic"])
def test_mixed_methods_step_loss_matches_the_definition(method, epoch, semantic, rows):
    model, batch, config = make_model(), make_batch(), config_for(method)
    expected = expected_step_loss(model, batch, rows, config, semantic=semantic)
    assert_same(engine_step_loss(model, batch, rows, config, epoch=epoch), expected)


def test_per_sample_images_drawn_not_to_mix_keep_their_hard_label_after_warm_up():
    # with one box per image, an image drawn not to mix has an empty box: semantic labels are for mixed images only
    model, batch, config = make_model(), make_batch(), config_for("concutmix", cutmix_per_sample=True)
    rows = list(BOXES)
    rows[1] = (3, 3, 3, 3)  # empty box: image 1 keeps every pixel
    images, kept = mixed_images(batch, rows)
    area = area_label(kept)
    count = len(LABELS)
    with torch.no_grad():
        output = model(torch.cat([images, batch.contrastive[:, 0], batch.contrastive[:, 1]]))
    blended = semantic_blend(output.embedding_raw[:count], output.centers_raw, area, config.topk, config.omega)
    label = blended.clone()
    label[1] = area[1]
    assert area[1].tolist() == F.one_hot(torch.tensor(LABELS[1]), NUM_CLASSES).double().tolist()
    logits = output.logits[:count]
    bcl = balanced_contrastive(output.embedding[count:2 * count], output.embedding[2 * count:], output.centers,
                               config.temperature)
    ce = adjusted_ce(logits, label, config.tau)
    assert adjusted_ce(logits, blended, config.tau) != pytest.approx(ce, rel=1e-4)  # the distinction is visible
    expected = {"loss": config.alpha * ce + config.beta * bcl, "ce": ce, "bcl": bcl}
    assert_same(engine_step_loss(model, batch, rows, config, epoch=LATE_EPOCH), expected)


def test_each_ingredient_moves_the_expected_loss():
    """The expectation itself is sensitive to every ingredient the step assembles, so a step that drops one
    of them cannot match it by accident."""
    model, batch = make_model(), make_batch()
    base = config_for("concutmix")
    reference = expected_step_loss(model, batch, BOXES, base, semantic=True)["loss"]
    swapped = BOXES[1:] + BOXES[:1]  # each image takes the next image's box
    variants = {
        "no logit adjustment": expected_step_loss(model, batch, BOXES, base.replace(tau=0.0), semantic=True),
        "beta = 1": expected_step_loss(model, batch, BOXES, base.replace(beta=1.0), semantic=True),
        "area label only": expected_step_loss(model, batch, BOXES, base, semantic=False),
        "another image's box": expected_step_loss(model, batch, swapped, base, semantic=True),
        "top-k of every class": expected_step_loss(model, batch, BOXES, base.replace(topk=NUM_CLASSES), semantic=True),
    }
    for name, other in variants.items():
        assert abs(other["loss"] - reference) > 1e-3, name


def test_the_step_loss_carries_gradients_to_every_trained_part():
    model, batch, config = make_model(), make_batch(), config_for("concutmix")
    result = compute_step_loss(model, batch, config, LATE_EPOCH, torch.tensor(CLASS_COUNTS), as_boxes(BOXES),
                               DistContext())
    result.loss.backward()
    for name in ("encoder.0.weight", "head.0.weight", "center_head.0.weight", "classifier.weight"):
        gradient = dict(model.named_parameters())[name].grad
        assert gradient is not None and gradient.abs().sum() > 0, name


# --------------------------------------------------------------------------- the CutMix decisions of a step


def mixed_fraction(config: TrainConfig, steps: int, batch: int = 50) -> tuple[float, float]:
    """Return (fraction of steps with boxes, fraction of images with a non-empty box) over ``steps`` draws."""
    generator = np.random.default_rng(12)
    mixed_steps, mixed_images_count = 0, 0
    for _ in range(steps):
        boxes = draw_cutmix_boxes(config, generator, batch, 32, 32, DistContext())
        if boxes is None:
            continue
        mixed_steps += 1
        area = (boxes.bottom - boxes.top).clamp_min(0) * (boxes.right - boxes.left).clamp_min(0)
        mixed_images_count += int((area > 0).sum())
    return mixed_steps / steps, mixed_images_count / (steps * batch)


@pytest.mark.parametrize("probability", [0.3, 0.5, 0.8])
def test_per_sample_cutmix_mixes_each_image_with_the_cutmix_probability(probability):
    config = config_for("cutmix", cutmix_per_sample=True, cutmix_prob=probability)
    steps_with_boxes, images = mixed_fraction(config, steps=80)
    assert steps_with_boxes == 1.0  # every step carries boxes; an unmixed image has an empty one
    # a drawn box is empty only when λ > 1 - (2/32)^2 (about 0.4% of draws)
    assert abs(images - probability * 0.996) < 0.03, (images, probability)


@pytest.mark.parametrize("probability", [0.3, 0.8])
def test_shared_box_cutmix_mixes_whole_steps_with_the_cutmix_probability(probability):
    config = config_for("cutmix", cutmix_prob=probability)
    steps_with_boxes, _ = mixed_fraction(config, steps=1500, batch=2)
    assert abs(steps_with_boxes - probability) < 0.05, (steps_with_boxes, probability)


@pytest.mark.parametrize("method", ["ce", "la", "bcl"])
def test_methods_without_cutmix_draw_no_boxes(method):
    generator = np.random.default_rng(0)
    state = copy.deepcopy(generator.bit_generator.state)
    assert draw_cutmix_boxes(config_for(method, cutmix_prob=1.0), generator, 8, 32, 32, DistContext()) is None
    assert generator.bit_generator.state == state  # and consume no random numbers
