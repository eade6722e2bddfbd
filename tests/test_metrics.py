"""Metrics: many/medium/few groups, per-class accuracy, confusion matrix, against loops."""

import numpy as np
import pytest
import torch

from ccmix.method.metrics import confusion_matrix, shot_accuracy, shot_groups, top_confused_pairs

CIFAR10_LT_100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def test_shot_groups_follow_the_thresholds():
    counts = [500, 101, 100, 50, 20, 19, 1]
    assert shot_groups(counts) == ["many", "many", "medium", "medium", "medium", "few", "few"]
    assert shot_groups(counts, many=50, few=50) == ["many", "many", "many", "medium", "few", "few", "few"]
    with pytest.raises(ValueError, match="few"):
        shot_groups(counts, many=10, few=20)


def loop_accuracy(preds, labels, counts, many, few):
    """Per-class and group accuracies (percent) by explicit loops over the definitions."""
    per_class = []
    for c in range(len(counts)):
        idx = [i for i, y in enumerate(labels) if y == c]
        per_class.append(100.0 * sum(preds[i] == c for i in idx) / len(idx) if idx else None)
    groups = {"many": [], "medium": [], "few": []}
    for c, n in enumerate(counts):
        group = "many" if n > many else ("few" if n < few else "medium")
        if per_class[c] is not None:
            groups[group].append(per_class[c])
    result = {g: (sum(v) / len(v) if v else None) for g, v in groups.items()}
    result["top1"] = 100.0 * sum(p == y for p, y in zip(preds, labels)) / len(labels)
    result["per_class"] = per_class
    return result


def test_shot_accuracy_matches_loop():
    rng = np.random.default_rng(0)
    counts = [300, 150, 101, 100, 60, 20, 19, 5]
    labels = rng.integers(0, 8, size=400).tolist()
    preds = [y if rng.random() < 0.3 + 0.08 * y else int(rng.integers(0, 8)) for y in labels]
    got = shot_accuracy(preds, labels, counts, many=100, few=20)
    expected = loop_accuracy(preds, labels, counts, 100, 20)
    for key in ("top1", "many", "medium", "few"):
        assert got[key] == pytest.approx(expected[key])
    assert got["per_class"] == pytest.approx(expected["per_class"])


def test_accepts_tensors_arrays_and_lists_alike():
    labels = [0, 1, 2, 2, 1, 0, 3]
    preds = [0, 1, 1, 2, 1, 3, 3]
    counts = [200, 50, 10, 10]
    as_list = shot_accuracy(preds, labels, counts)
    as_numpy = shot_accuracy(np.array(preds), np.array(labels), np.array(counts))
    as_torch = shot_accuracy(torch.tensor(preds), torch.tensor(labels), torch.tensor(counts))
    assert as_list == as_numpy == as_torch
    assert as_list["many"] == pytest.approx(50.0)  # class 0: one of two right
    assert as_list["medium"] == pytest.approx(100.0)
    assert as_list["few"] == pytest.approx(75.0)  # classes 2 (50 %) and 3 (100 %)


def test_cifar10_lt_has_an_empty_few_group_reported_as_none():
    labels = np.repeat(np.arange(10), 10)
    preds = labels.copy()
    preds[::3] = 0
    result = shot_accuracy(preds, labels, CIFAR10_LT_100)
    assert result["few"] is None
    assert result["many"] is not None and result["medium"] is not None
    assert shot_groups(CIFAR10_LT_100).count("medium") == 2  # 83 and 50 images


def test_class_without_test_images_is_none_and_left_out_of_its_group():
    counts = [500, 400, 5]
    labels = [0, 0, 2, 2]
    preds = [0, 1, 2, 0]
    result = shot_accuracy(preds, labels, counts)
    assert result["per_class"] == [50.0, None, 50.0]
    assert result["many"] == pytest.approx(50.0)  # only class 0 counts; class 1 has no test image
    assert result["medium"] is None


def test_confusion_matrix_and_top_pairs_match_loops():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 5, size=200)
    preds = rng.integers(0, 5, size=200)
    matrix = confusion_matrix(torch.tensor(preds), labels, 5)
    assert matrix.dtype == torch.int64 and matrix.shape == (5, 5)
    for t in range(5):
        for p in range(5):
            assert matrix[t, p].item() == sum(1 for y, q in zip(labels, preds) if y == t and q == p)

    pairs = top_confused_pairs(matrix, k=4)
    off_diagonal = sorted(
        ((matrix[t, p].item(), t, p) for t in range(5) for p in range(5) if t != p), key=lambda x: (-x[0], x[1], x[2])
    )
    assert pairs == [(t, p, n) for n, t, p in off_diagonal[:4]]
    assert all(t != p for t, p, _ in pairs)


def test_top_pairs_skip_zero_counts():
    matrix = torch.tensor([[5, 2, 0], [0, 7, 0], [1, 0, 4]])
    assert top_confused_pairs(matrix, k=10) == [(0, 1, 2), (2, 0, 1)]
