"""Losses against loop implementations of their definitions (docs/method.md, section 4)."""

import math

import pytest
import torch

from ccmix.method.losses import (
    balanced_contrastive_loss,
    log_prior,
    logit_adjusted_ce,
    semantic_label,
    semantic_label_parts,
)

COUNTS = [50, 20, 7, 3]


def la_ce_loop(logits, soft_targets, counts, tau):
    """-sum_c y_c log softmax(z + tau log pi)_c, averaged over the batch, with Python floats."""
    total = sum(counts)
    losses = []
    for row, target in zip(logits.tolist(), soft_targets):
        adjusted = [z + tau * math.log(n / total) for z, n in zip(row, counts)]
        log_norm = math.log(sum(math.exp(v) for v in adjusted))
        losses.append(-sum(y * (v - log_norm) for y, v in zip(target, adjusted)))
    return sum(losses) / len(losses)


def test_log_prior_is_log_class_frequency():
    prior = log_prior(COUNTS)
    for c, n in enumerate(COUNTS):
        assert prior[c].item() == pytest.approx(math.log(n / sum(COUNTS)), rel=1e-6)
    assert torch.equal(prior, log_prior(torch.tensor(COUNTS)))


def test_la_ce_hard_targets_match_loop():
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(0)) * 3
    target = torch.tensor([0, 1, 2, 3, 3, 1])
    onehots = [[1.0 if c == t else 0.0 for c in range(4)] for t in target.tolist()]
    for tau in (0.0, 0.9, 2.0):
        loss = logit_adjusted_ce(logits, target, COUNTS, tau)
        assert loss.item() == pytest.approx(la_ce_loop(logits, onehots, COUNTS, tau), rel=1e-5)


def test_la_ce_soft_targets_match_loop_and_one_hot_equals_hard():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 4, generator=generator) * 2
    soft = torch.softmax(torch.randn(5, 4, generator=generator), dim=1)
    loss = logit_adjusted_ce(logits, soft, torch.tensor(COUNTS), 0.85)
    assert loss.item() == pytest.approx(la_ce_loop(logits, soft.tolist(), COUNTS, 0.85), rel=1e-5)

    target = torch.tensor([3, 0, 2, 1, 3])
    hard = logit_adjusted_ce(logits, target, COUNTS, 0.85)
    one_hot = logit_adjusted_ce(logits, torch.nn.functional.one_hot(target, 4).float(), COUNTS, 0.85)
    assert one_hot.item() == pytest.approx(hard.item(), rel=1e-6)


def test_la_ce_rejects_bad_counts():
    with pytest.raises(ValueError, match="class_counts"):
        logit_adjusted_ce(torch.zeros(2, 3), torch.tensor([0, 1]), [5, 0, 2], 1.0)
    with pytest.raises(ValueError, match="classes"):
        logit_adjusted_ce(torch.zeros(2, 3), torch.tensor([0, 1]), [5, 2], 1.0)


def bcl_loop(views, centers, labels, temperature):
    """Balanced contrastive loss by explicit loops over anchors, members and positives."""
    batch_size = views.shape[0]
    members = [views[i, v].double() for v in range(2) for i in range(batch_size)] + list(centers.double())
    member_labels = [labels[i].item() for _ in range(2) for i in range(batch_size)] + list(range(centers.shape[0]))
    anchor_losses = []
    for i in range(2 * batch_size):
        own = member_labels[i]
        denominator = 0.0
        for j in range(len(members)):
            if j == i:
                continue
            size = sum(1 for label in member_labels if label == member_labels[j])
            if member_labels[j] == own:
                size -= 1  # the anchor is not counted
            denominator += math.exp(float(members[i] @ members[j]) / temperature) / size
        terms = [
            -math.log(math.exp(float(members[i] @ members[p]) / temperature) / denominator)
            for p in range(len(members))
            if p != i and member_labels[p] == own
        ]
        anchor_losses.append(sum(terms) / len(terms))
    return sum(anchor_losses) / len(anchor_losses)


def normalized(*shape, seed):
    return torch.nn.functional.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_bcl_matches_loop_with_a_class_absent_from_the_batch(temperature):
    views = normalized(4, 2, 5, seed=0)
    centers = normalized(3, 5, seed=1)
    labels = torch.tensor([0, 2, 0, 0])  # class 1 only appears through its centre
    loss = balanced_contrastive_loss(views, centers, labels, temperature=temperature)
    assert loss.item() == pytest.approx(bcl_loop(views, centers, labels, temperature), rel=1e-5)


def test_bcl_hand_built_case_counts_centres_excludes_anchor_and_uses_the_centre_as_positive():
    # One image of class 0 (both views (1, 0)), centre 0 = (0, 1), centre 1 = (-1, 0), T = 1.
    # For either view: class 0 holds {v1, v2, c0} -> 3 members, 2 without the anchor; class 1 holds {c1}.
    # denominator = (e^1 + e^0) / 2 + e^-1 / 1; positives v2 (s = 1) and c0 (s = 0).
    views = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    centers = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    loss = balanced_contrastive_loss(views, centers, torch.tensor([0]), temperature=1.0).item()

    denominator = (math.e + 1.0) / 2 + math.exp(-1.0)
    expected = 0.5 * ((math.log(denominator) - 1.0) + (math.log(denominator) - 0.0))
    assert loss == pytest.approx(expected, rel=1e-6)

    counting_the_anchor = (math.e + 1.0) / 3 + math.exp(-1.0)
    without_centres_in_counts = (math.e + 1.0) / 1 + math.exp(-1.0)
    without_centre_positive = math.log(denominator) - 1.0
    for wrong in (
        0.5 * ((math.log(counting_the_anchor) - 1.0) + math.log(counting_the_anchor)),
        0.5 * ((math.log(without_centres_in_counts) - 1.0) + math.log(without_centres_in_counts)),
        without_centre_positive,
    ):
        assert abs(loss - wrong) > 0.05


def test_bcl_is_stable_at_low_temperature_and_has_finite_gradients():
    views = normalized(8, 2, 16, seed=2).requires_grad_(True)
    centers = normalized(5, 16, seed=3).requires_grad_(True)
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1, 1])
    loss = balanced_contrastive_loss(views, centers, labels, temperature=0.005)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(views.grad).all() and torch.isfinite(centers.grad).all()
    assert centers.grad.abs().sum() > 0


def test_bcl_does_not_depend_on_batch_order():
    views = normalized(6, 2, 8, seed=4)
    centers = normalized(4, 8, seed=5)
    labels = torch.tensor([0, 1, 1, 3, 0, 2])
    order = torch.tensor([5, 2, 0, 4, 1, 3])
    first = balanced_contrastive_loss(views, centers, labels)
    permuted = balanced_contrastive_loss(views[order], centers, labels[order])
    assert first.item() == pytest.approx(permuted.item(), rel=1e-5)


def semantic_loop(embedding, centers, area, counts, topk, omega):
    """Semantic label by explicit loops: top-k of 1/distance, normalised, blended with rho * omega."""
    sum_log_counts = sum(math.log(n) for n in counts)
    labels, rhos = [], []
    for u, y_area in zip(embedding.tolist(), area.tolist()):
        similarity = [1.0 / math.sqrt(sum((a - b) ** 2 for a, b in zip(u, m))) for m in centers.tolist()]
        kept = sorted(range(len(similarity)), key=lambda c: similarity[c], reverse=True)[:topk]
        total = sum(similarity[c] for c in kept)
        y_sem = [similarity[c] / total if c in kept else 0.0 for c in range(len(similarity))]
        rho = math.log(sum(n * y for n, y in zip(counts, y_area))) / sum_log_counts
        weight = rho * omega
        labels.append([weight * s + (1 - weight) * a for s, a in zip(y_sem, y_area)])
        rhos.append(rho)
    return labels, rhos


def semantic_case(seed=0, batch=5, classes=6, dim=4):
    generator = torch.Generator().manual_seed(seed)
    embedding = torch.randn(batch, dim, generator=generator) * 2
    centers = torch.randn(classes, dim, generator=generator) * 2
    lam = torch.rand(batch, generator=generator)
    y_a = torch.randint(classes, (batch,), generator=generator)
    y_b = torch.randint(classes, (batch,), generator=generator)
    area = lam[:, None] * torch.nn.functional.one_hot(y_a, classes) + (1 - lam[:, None]) * torch.nn.functional.one_hot(
        y_b, classes
    )
    return embedding, centers, area.float()


def test_semantic_label_keeps_exactly_topk_and_sums_to_one():
    embedding, centers, area = semantic_case()
    counts = [500, 200, 80, 30, 12, 5]
    for topk in (1, 3, 6):
        parts = semantic_label_parts(embedding, centers, area, counts, topk=topk, omega=0.5)
        assert ((parts["similarity_label"] > 0).sum(dim=1) == topk).all()
        assert torch.allclose(parts["similarity_label"].sum(dim=1), torch.ones(5))
        assert torch.allclose(parts["label"].sum(dim=1), torch.ones(5), atol=1e-6)


def test_semantic_label_blend_matches_loop():
    embedding, centers, area = semantic_case(seed=1)
    counts = [500, 200, 80, 30, 12, 5]
    omega = 20 / 255
    expected_labels, expected_rhos = semantic_loop(embedding, centers, area, counts, topk=3, omega=omega)
    parts = semantic_label_parts(embedding, centers, area, torch.tensor(counts), topk=3, omega=omega)
    assert torch.allclose(parts["label"], torch.tensor(expected_labels), atol=1e-6)
    assert torch.allclose(parts["rho"], torch.tensor(expected_rhos), atol=1e-6)
    assert torch.allclose(parts["weight"], torch.tensor(expected_rhos) * omega, atol=1e-7)
    assert torch.equal(parts["area_label"], area)
    assert torch.allclose(semantic_label(embedding, centers, area, counts, topk=3, omega=omega), parts["label"])


def test_semantic_label_carries_no_gradient():
    embedding, centers, area = semantic_case(seed=2)
    embedding.requires_grad_(True)
    centers.requires_grad_(True)
    area.requires_grad_(True)
    with torch.enable_grad():
        parts = semantic_label_parts(embedding, centers, area, [9, 8, 7, 6, 5, 4], topk=2, omega=0.3)
    assert all(not value.requires_grad for value in parts.values())
    assert not semantic_label(embedding, centers, area, [9, 8, 7, 6, 5, 4], topk=2, omega=0.3).requires_grad


def test_semantic_label_survives_an_embedding_on_a_centre():
    embedding, centers, area = semantic_case(seed=3)
    embedding[0] = centers[4]
    parts = semantic_label_parts(embedding, centers, area, [9, 8, 7, 6, 5, 4], topk=3, omega=1.0)
    assert torch.isfinite(parts["label"]).all()
    assert parts["similarity_label"][0, 4].item() == pytest.approx(1.0, abs=1e-6)


def test_semantic_weight_is_about_a_thousandth_at_the_cifar100_imb100_setting():
    counts = [int(500 * (1 / 100) ** (i / 99)) for i in range(100)]
    area = torch.zeros(1, 100)
    area[0, 0], area[0, 99] = 0.6, 0.4  # a head background with a tail foreground
    parts = semantic_label_parts(torch.randn(1, 8), torch.randn(100, 8), area, counts, topk=30, omega=20 / 255)
    assert 0.0005 < parts["weight"].item() < 0.002


def test_semantic_label_rejects_bad_topk():
    embedding, centers, area = semantic_case()
    with pytest.raises(ValueError, match="topk"):
        semantic_label(embedding, centers, area, [9, 8, 7, 6, 5, 4], topk=7, omega=0.1)
