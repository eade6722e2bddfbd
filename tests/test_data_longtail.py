"""Long-tail profiles and the seeded CIFAR-LT subset convention."""

from __future__ import annotations

import numpy as np
import pytest
from longtail_reference import convention_indices

from ccmix.data.longtail import longtail_counts, longtail_indices

# Published totals of the CIFAR-LT benchmarks (docs/method.md, section 1).
KNOWN_TOTALS = [
    (10, 5000, 100, 12406), (10, 5000, 50, 13996), (10, 5000, 10, 20431),
    (100, 500, 100, 10847), (100, 500, 50, 12608), (100, 500, 10, 19573),
]


def exp_counts_by_definition(n_max, num_classes, imb):
    counts = []
    for i in range(num_classes):
        counts.append(int(n_max * (1 / imb) ** (i / (num_classes - 1))))
    return counts


def balanced_targets(num_classes, per_class, seed=0):
    """CIFAR-like labels: balanced, in a scrambled order."""
    targets = np.repeat(np.arange(num_classes), per_class)
    np.random.RandomState(seed).shuffle(targets)
    return targets.tolist()


@pytest.mark.parametrize("num_classes,n_max,imb,total", KNOWN_TOTALS)
def test_cifar_lt_totals_and_per_class_counts(num_classes, n_max, imb, total):
    counts = longtail_counts(n_max, num_classes, imb)
    assert counts == exp_counts_by_definition(n_max, num_classes, imb)
    assert sum(counts) == total
    assert counts[0] == n_max and counts[-1] == int(round(n_max / imb))


def test_cifar10_imb100_counts_spelled_out():
    assert longtail_counts(5000, 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def test_step_profile():
    assert longtail_counts(500, 10, 10, profile="step") == [500] * 5 + [50] * 5
    assert longtail_counts(100, 5, 4, profile="step") == [100, 100, 25, 25, 25]


def test_counts_never_drop_below_one_image():
    counts = longtail_counts(100, 10, 500)
    assert min(counts) == 1
    assert counts[0] == 100


@pytest.mark.parametrize("kwargs,word", [
    ({"profile": "linear"}, "profile"), ({"imb": 0.5}, "imb"), ({"num_classes": 0}, "num_classes"),
    ({"n_max": 0}, "n_max"), ({"imb": float("inf")}, "imb"),
])
def test_bad_arguments_name_the_parameter(kwargs, word):
    args = {"n_max": 500, "num_classes": 10, "imb": 10.0, "profile": "exp"} | kwargs
    with pytest.raises(ValueError, match=word):
        longtail_counts(**args)


def test_indices_follow_the_numpy_convention_exactly():
    targets = balanced_targets(10, 500)
    counts = exp_counts_by_definition(500, 10, 100)
    for seed in (10, 0):
        got = longtail_indices(targets, 10, 100, seed=seed)
        assert got.dtype == np.int64
        assert got.tolist() == convention_indices(targets, 10, counts, seed)


def test_indices_per_class_counts_identical_runs_and_seed_dependence():
    targets = balanced_targets(10, 5000)
    first = longtail_indices(targets, 10, 100)
    second = longtail_indices(targets, 10, 100)
    other_seed = longtail_indices(targets, 10, 100, seed=11)
    kept_labels = np.asarray(targets)[first]
    assert np.bincount(kept_labels, minlength=10).tolist() == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert len(set(first.tolist())) == len(first) == 12406
    assert np.array_equal(first, second)
    assert not np.array_equal(first, other_seed)
    # Same per-class counts with the other seed, but a different choice of tail images.
    assert np.bincount(np.asarray(targets)[other_seed], minlength=10).tolist() == np.bincount(kept_labels).tolist()
    assert set(first[kept_labels == 9].tolist()) != set(other_seed[np.asarray(targets)[other_seed] == 9].tolist())


def test_indices_leave_the_global_numpy_state_alone():
    np.random.seed(1234)
    expected = np.random.rand(3)
    np.random.seed(1234)
    longtail_indices(balanced_targets(5, 20), 5, 10)
    assert np.array_equal(np.random.rand(3), expected)


def test_indices_step_profile_and_unbalanced_classes():
    # Class 2 has only 3 images: it keeps all of them when the profile asks for more.
    targets = [0] * 40 + [1] * 40 + [2] * 3 + [3] * 40
    kept = longtail_indices(targets, 4, 4, profile="step")
    counts = np.bincount(np.asarray(targets)[kept], minlength=4).tolist()
    assert counts == [40, 40, 3, 10]


def test_indices_reject_labels_outside_the_class_range():
    with pytest.raises(ValueError, match="outside"):
        longtail_indices([0, 1, 5], 3, 10)
