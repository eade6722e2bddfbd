"""CutMix: the kept fraction is measured on the mixed pixels, boxes follow the CutMix area rule."""

import math

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from ccmix.method.cutmix import (
    CutMixBoxes,
    area_labels,
    box_mask,
    cutmix,
    kept_fraction,
    paste,
    sample_beta,
    sample_boxes,
)


def distinct_pair(batch_size=8, channels=3, height=32, width=32, seed=0):
    """Two batches that differ at every pixel, so the pasted region is visible exactly."""
    generator = torch.Generator().manual_seed(seed)
    a = torch.rand(batch_size, channels, height, width, generator=generator)
    return a, a + 10.0


def changed_fraction(a, mixed):
    """Fraction of pixels (any channel) that differ between a and mixed, per image."""
    changed = (mixed != a).any(dim=1)
    return changed.flatten(1).to(torch.float64).mean(dim=1)


@pytest.mark.parametrize("per_sample", [False, True])
def test_lam_equals_fraction_of_pixels_kept_on_the_mixed_tensor(per_sample):
    a, b = distinct_pair(batch_size=16, height=32, width=24)
    y_a = torch.arange(16) % 5
    y_b = (y_a + 1) % 5
    generator = np.random.default_rng(3)
    mixed, labels, lam = cutmix(a, b, y_a, y_b, num_classes=5, generator=generator, per_sample=per_sample)
    measured_kept = 1.0 - changed_fraction(a, mixed)
    assert torch.allclose(lam.double(), measured_kept, atol=1e-6)
    changed = (mixed != a).any(dim=1, keepdim=True).expand_as(a)
    assert torch.equal(mixed[changed], b[changed])  # pasted pixels come from b, the rest from a
    assert torch.equal(mixed[~changed], a[~changed])
    assert torch.allclose(labels.sum(dim=1), torch.ones(16))
    for i in range(16):
        assert labels[i, y_a[i]].item() == pytest.approx(lam[i].item(), abs=1e-6)
        assert labels[i, y_b[i]].item() == pytest.approx(1.0 - lam[i].item(), abs=1e-6)


def test_default_shares_one_box_and_per_sample_boxes_differ():
    shared = sample_boxes(32, 32, 32, generator=np.random.default_rng(1))
    for coordinate in (shared.top, shared.left, shared.bottom, shared.right):
        assert coordinate.shape == (32,) and coordinate.dtype == torch.int64
        assert (coordinate == coordinate[0]).all()
    a, b = distinct_pair(batch_size=32)
    masks = (paste(a, b, shared) != a).any(dim=1)
    assert all(torch.equal(masks[0], masks[i]) for i in range(32))

    own = sample_boxes(32, 32, 32, per_sample=True, generator=np.random.default_rng(1))
    as_rows = torch.stack([own.top, own.left, own.bottom, own.right], dim=1)
    assert len({tuple(row.tolist()) for row in as_rows}) > 16


def test_same_generator_seed_gives_same_boxes():
    first = sample_boxes(8, 32, 32, alpha=0.4, per_sample=True, generator=np.random.default_rng(5))
    again = sample_boxes(8, 32, 32, alpha=0.4, per_sample=True, generator=np.random.default_rng(5))
    other = sample_boxes(8, 32, 32, alpha=0.4, per_sample=True, generator=np.random.default_rng(6))
    assert torch.equal(first.top, again.top) and torch.equal(first.right, again.right)
    assert not all(torch.equal(getattr(first, f), getattr(other, f)) for f in ("top", "left", "bottom", "right"))


def test_boxes_follow_the_reference_rand_bbox_rule():
    # rand_bbox of the CutMix reference, written with Python ints: cut = int(W * sqrt(1 - lam)),
    # centre uniform over pixels, [c - cut // 2, c + cut // 2) clipped to the image.
    height, width = 28, 36
    for seed in range(20):
        generator = np.random.default_rng(seed)
        lam = float(generator.beta(1.0, 1.0, size=1)[0])  # Beta(1, 1): uniform
        cx = int(generator.integers(width, size=1)[0])
        cy = int(generator.integers(height, size=1)[0])
        cut_w, cut_h = int(width * math.sqrt(1 - lam)), int(height * math.sqrt(1 - lam))
        expected = (
            min(max(cy - cut_h // 2, 0), height), min(max(cx - cut_w // 2, 0), width),
            min(max(cy + cut_h // 2, 0), height), min(max(cx + cut_w // 2, 0), width),
        )
        boxes = sample_boxes(3, height, width, generator=np.random.default_rng(seed))
        assert (boxes.top[0].item(), boxes.left[0].item(), boxes.bottom[0].item(), boxes.right[0].item()) == expected


def test_kept_fraction_matches_torchvision_cutmix_area_rule():
    batch_size, num_classes, height, width = 4, 6, 20, 30
    images = torch.rand(batch_size, 3, height, width, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(batch_size)
    transform = v2.CutMix(alpha=1.0, num_classes=num_classes)
    seen_nonempty = 0
    for seed in range(25):
        torch.manual_seed(seed)
        mixed, soft = transform(images, labels)
        changed = (mixed != images).any(dim=1)  # (B, H, W); torchvision uses one box for the batch
        rows, cols = torch.nonzero(changed[0], as_tuple=True)
        if rows.numel():
            top, bottom, left, right = rows.min().item(), rows.max().item() + 1, cols.min().item(), cols.max().item() + 1
            seen_nonempty += 1
        else:
            top = bottom = left = right = 0
        recovered = torch.zeros(height, width, dtype=torch.bool)
        recovered[top:bottom, left:right] = True
        assert all(torch.equal(changed[i], recovered) for i in range(batch_size))  # a rectangle, same for all
        boxes = CutMixBoxes(*(torch.full((batch_size,), v, dtype=torch.int64) for v in (top, left, bottom, right)))
        ours = kept_fraction(boxes, height, width)
        for i in range(batch_size):
            assert soft[i, labels[i]].item() == pytest.approx(ours[i].item(), abs=1e-6)
    assert seen_nonempty >= 20


def test_box_mask_matches_loop():
    boxes = sample_boxes(6, 9, 11, per_sample=True, generator=np.random.default_rng(2))
    mask = box_mask(boxes, 9, 11)
    assert mask.shape == (6, 1, 9, 11) and mask.dtype == torch.bool
    for i in range(6):
        for r in range(9):
            for c in range(11):
                inside = boxes.top[i] <= r < boxes.bottom[i] and boxes.left[i] <= c < boxes.right[i]
                assert bool(mask[i, 0, r, c]) == bool(inside)


def test_area_labels_match_loop():
    y_a = torch.tensor([0, 2, 1, 3])
    y_b = torch.tensor([1, 2, 0, 0])
    lam = torch.tensor([0.25, 0.5, 1.0, 0.0])
    labels = area_labels(y_a, y_b, lam, num_classes=4)
    for i in range(4):
        for c in range(4):
            expected = lam[i].item() * (c == y_a[i].item()) + (1 - lam[i].item()) * (c == y_b[i].item())
            assert labels[i, c].item() == pytest.approx(expected)


def test_paste_keeps_channels_last_inputs_working():
    a, b = distinct_pair(batch_size=4)
    boxes = sample_boxes(4, 32, 32, per_sample=True, generator=np.random.default_rng(4))
    plain = paste(a, b, boxes)
    cl = paste(a.contiguous(memory_format=torch.channels_last), b.contiguous(memory_format=torch.channels_last), boxes)
    assert torch.equal(plain, cl)
    assert torch.equal(a, distinct_pair(batch_size=4)[0])  # input not modified


def test_beta_sampler_moments():
    generator = np.random.default_rng(0)
    for alpha in (0.3, 1.0, 2.5):
        draws = sample_beta(alpha, 40000, generator=generator)
        assert ((draws >= 0) & (draws <= 1)).all()
        assert draws.mean() == pytest.approx(0.5, abs=0.01)
        assert draws.var() == pytest.approx(1.0 / (4 * (2 * alpha + 1)), rel=0.05)


def test_bad_input_fails_fast():
    with pytest.raises(ValueError, match="alpha"):
        sample_boxes(4, 32, 32, alpha=0.0)
    with pytest.raises(ValueError, match="batch_size"):
        sample_boxes(0, 32, 32)
    a, b = distinct_pair(batch_size=4)
    with pytest.raises(ValueError, match="same shape"):
        paste(a, b[:2], sample_boxes(4, 32, 32))
