"""The background (instance-uniform) and foreground (class-balanced / reverse / uniform) sample streams."""

from __future__ import annotations

import pytest
import torch

from ccmix.data.streams import epoch_generator, foreground_class_probabilities, sample_epoch_indices

COUNTS = [500, 300, 180, 108, 65, 39, 23, 14, 8, 5]  # a long-tailed profile, 1242 images
TARGETS = [cls for cls, n in enumerate(COUNTS) for _ in range(n)]


def chi_square(observed, expected):
    return sum((o - e) ** 2 / e for o, e in zip(observed, expected))


# Critical values of the chi-square distribution at significance 0.001 (upper tail).
CRITICAL_0001 = {4: 18.467, 9: 27.877}


def critical_value(dof):
    try:
        from scipy.special import chdtri  # inverse of the chi-square survival function
    except ImportError:
        return CRITICAL_0001[dof]
    return float(chdtri(dof, 0.001))


def test_critical_value_table_agrees_with_scipy_when_present():
    special = pytest.importorskip("scipy.special")
    for dof, value in CRITICAL_0001.items():
        assert abs(special.chdtri(dof, 0.001) - value) < 1e-3


def test_foreground_probabilities_by_definition():
    balanced = foreground_class_probabilities(COUNTS, "balanced")
    reverse = foreground_class_probabilities(COUNTS, "reverse")
    uniform = foreground_class_probabilities(COUNTS, "uniform")
    inverse_total = sum(1 / n for n in COUNTS)
    for cls, n in enumerate(COUNTS):
        assert balanced[cls].item() == pytest.approx(1 / len(COUNTS))
        assert reverse[cls].item() == pytest.approx((1 / n) / inverse_total)
        assert uniform[cls].item() == pytest.approx(n / sum(COUNTS))
    assert balanced.shape == (10,)


def test_foreground_probabilities_skip_empty_classes_and_reject_bad_input():
    probabilities = foreground_class_probabilities([4, 0, 2], "balanced")
    assert probabilities.tolist() == pytest.approx([0.5, 0.0, 0.5])
    assert foreground_class_probabilities([4, 0, 2], "reverse")[1].item() == 0
    with pytest.raises(ValueError, match="sampler"):
        foreground_class_probabilities(COUNTS, "square-root")
    with pytest.raises(ValueError, match="class_counts"):
        foreground_class_probabilities([0, 0], "balanced")


def test_epoch_shapes_and_background_is_a_permutation():
    background, foreground = sample_epoch_indices(TARGETS, 10, 100, "balanced", epoch_generator(0, 0))
    assert background.shape == foreground.shape == (12, 100)
    assert background.dtype == foreground.dtype == torch.int64
    assert len(set(background.flatten().tolist())) == 1200  # no image twice in an epoch
    assert 0 <= int(foreground.min()) and int(foreground.max()) < len(TARGETS)


def test_small_dataset_gives_one_batch_of_everything():
    background, foreground = sample_epoch_indices([0, 1, 1, 0, 1], 2, 256, "balanced", epoch_generator(0, 0))
    assert background.shape == (1, 5) and foreground.shape == (1, 5)
    assert sorted(background[0].tolist()) == [0, 1, 2, 3, 4]


def test_no_foreground_when_not_needed_and_same_background():
    with_fg, _ = sample_epoch_indices(TARGETS, 10, 64, "balanced", epoch_generator(3, 1))
    without, none = sample_epoch_indices(TARGETS, 10, 64, "balanced", epoch_generator(3, 1), need_foreground=False)
    assert none is None
    assert torch.equal(with_fg, without)


def test_epoch_generator_is_deterministic_per_seed_and_epoch():
    draw = lambda seed, epoch: torch.randint(0, 2**31, (8,), generator=epoch_generator(seed, epoch))  # noqa: E731
    assert torch.equal(draw(0, 5), draw(0, 5))
    assert not torch.equal(draw(0, 5), draw(0, 6))
    assert not torch.equal(draw(0, 5), draw(1, 5))
    first = sample_epoch_indices(TARGETS, 10, 64, "reverse", epoch_generator(7, 2))
    second = sample_epoch_indices(TARGETS, 10, 64, "reverse", epoch_generator(7, 2))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def class_histogram(indices):
    labels = torch.tensor(TARGETS)[indices.flatten()]
    return torch.bincount(labels, minlength=10).tolist()


def draw_many(sampler, epochs=20, need_foreground=True):
    """Concatenate many epochs of both streams (batch 100 leaves 42 images out of each epoch)."""
    backgrounds, foregrounds = [], []
    for epoch in range(epochs):
        bg, fg = sample_epoch_indices(TARGETS, 10, 100, sampler, epoch_generator(123, epoch), need_foreground)
        backgrounds.append(bg.flatten())
        if fg is not None:
            foregrounds.append(fg.flatten())
    return torch.cat(backgrounds), (torch.cat(foregrounds) if foregrounds else None)


def test_balanced_foreground_is_class_uniform_and_background_follows_counts():
    background, foreground = draw_many("balanced")
    draws = foreground.numel()
    fg_hist = class_histogram(foreground)
    assert chi_square(fg_hist, [draws / 10] * 10) < critical_value(9)
    bg_hist = class_histogram(background)
    total = sum(COUNTS)
    assert chi_square(bg_hist, [background.numel() * n / total for n in COUNTS]) < critical_value(9)
    # The balanced stream really is different from the background's long tail.
    assert chi_square(fg_hist, [draws * n / total for n in COUNTS]) > 100 * critical_value(9)


def test_reverse_foreground_is_proportional_to_inverse_counts():
    _, foreground = draw_many("reverse")
    inverse_total = sum(1 / n for n in COUNTS)
    expected = [foreground.numel() * (1 / n) / inverse_total for n in COUNTS]
    assert chi_square(class_histogram(foreground), expected) < critical_value(9)


def test_uniform_foreground_is_instance_uniform():
    _, foreground = draw_many("uniform", epochs=10)
    expected = [foreground.numel() * n / sum(COUNTS) for n in COUNTS]
    assert chi_square(class_histogram(foreground), expected) < critical_value(9)


def test_foreground_picks_images_uniformly_within_a_class():
    # Class 9 has 5 images (indices 1237..1241); each should appear equally often.
    _, foreground = draw_many("balanced", epochs=40)
    tail = foreground[foreground >= len(TARGETS) - 5] - (len(TARGETS) - 5)
    hist = torch.bincount(tail, minlength=5).tolist()
    assert chi_square(hist, [tail.numel() / 5] * 5) < critical_value(4)
    assert set(foreground.tolist()) >= set(range(len(TARGETS) - 5, len(TARGETS)))


def test_probability_tensor_as_foreground_and_errors():
    probabilities = torch.zeros(10, dtype=torch.float64)
    probabilities[3] = 1.0
    _, foreground = sample_epoch_indices(TARGETS, 10, 50, probabilities, epoch_generator(0, 0))
    assert set(torch.tensor(TARGETS)[foreground.flatten()].tolist()) == {3}
    with pytest.raises(ValueError, match="batch_size"):
        sample_epoch_indices(TARGETS, 10, 0, "balanced", epoch_generator(0, 0))
    with pytest.raises(ValueError, match="targets"):
        sample_epoch_indices([0, 1, 12], 10, 2, "balanced", epoch_generator(0, 0))


@pytest.mark.parametrize("background", ["balanced", "reverse"])
def test_background_ablation_samplers_draw_classes_like_the_published_ones(background):
    # the published background ablation: a class uniformly (balance) or with probability ∝ 1/N_c (reverse),
    # then one of its images uniformly
    draws = []
    for epoch in range(20):
        bg, fg = sample_epoch_indices(TARGETS, 10, 100, "balanced", epoch_generator(321, epoch), background=background)
        assert bg.shape == fg.shape == (12, 100)
        draws.append(bg.flatten())
    draws = torch.cat(draws)
    weights = [1.0] * 10 if background == "balanced" else [1.0 / n for n in COUNTS]
    expected = [draws.numel() * w / sum(weights) for w in weights]
    assert chi_square(class_histogram(draws), expected) < critical_value(9)
    # within a class the images are drawn uniformly: the head class's 500 images are all reachable
    head = draws[torch.tensor(TARGETS)[draws] == 0]
    assert head.unique().numel() > 0.4 * min(500, head.numel())


def test_uniform_background_is_the_default_shuffle_and_names_are_checked():
    default = sample_epoch_indices(TARGETS, 10, 64, "reverse", epoch_generator(5, 1))
    explicit = sample_epoch_indices(TARGETS, 10, 64, "reverse", epoch_generator(5, 1), background="uniform")
    assert all(torch.equal(a, b) for a, b in zip(default, explicit))
    assert default[0].flatten().unique().numel() == default[0].numel()  # a permutation: no repeats
    with pytest.raises(ValueError, match="background sampler 'balance' is not accepted; choose one of: uniform"):
        sample_epoch_indices(TARGETS, 10, 64, "balanced", epoch_generator(5, 1), background="balance")
