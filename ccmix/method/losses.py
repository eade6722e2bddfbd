"""Losses of ConCutMix: logit-adjusted CE (hard and soft labels), balanced contrastive loss, semantic labels.

- Logit adjustment: Menon et al., "Long-tail learning via logit adjustment", ICLR 2021.
- Balanced contrastive loss: Zhu et al., "Balanced Contrastive Learning for
  Long-Tailed Visual Recognition", CVPR 2022.
- Semantic labels of mixed images: Pan et al., "Enhanced Long-Tailed Recognition
  with Contrastive CutMix Augmentation", IEEE TIP 2024.

The maths are pure functions of tensors; class counts may be given as a list or
a tensor and are moved to the device of the tensors they are combined with.

Every function checks shapes. Checks that read tensor values (label ranges, class
counts) run only with ``check_values=True``, the default: on an accelerator each such
read waits for the device, so the training step, which passes values it built
itself, turns them off and never reads a value back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Guard for 1 / distance when an embedding coincides with a centre.
DISTANCE_EPS = 1e-12


def _counts_tensor(class_counts, device, check_values: bool = True) -> torch.Tensor:
    """Return the class counts as a float64 (C,) tensor on ``device``; checked while still on the CPU."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64).flatten()
    if counts.numel() == 0 or (check_values and counts.device.type == "cpu" and bool((counts <= 0).any())):
        raise ValueError(f"class_counts={class_counts!r} is not accepted; every class needs a count > 0")
    return counts.to(device)


def log_prior(class_counts, device=None, check_values: bool = True) -> torch.Tensor:
    """Return log pi (C,) float32, pi_c = N_c / sum N, of the training class counts."""
    counts = _counts_tensor(class_counts, device, check_values)
    return torch.log(counts / counts.sum()).to(torch.float32)


def logit_adjusted_ce(logits: torch.Tensor, target: torch.Tensor, class_counts, tau: float, *,
                      check_values: bool = True) -> torch.Tensor:
    """Return the batch-mean CE of logits + tau * log pi; target (B,) int64 labels or (B, C) soft labels."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be (B, C); got shape {tuple(logits.shape)}")
    num_classes = logits.shape[1]
    prior = log_prior(class_counts, device=logits.device, check_values=check_values)
    if prior.numel() != num_classes:
        raise ValueError(f"class_counts has {prior.numel()} classes but logits have {num_classes}")
    adjusted = logits.float() + float(tau) * prior
    if target.dim() == 1:
        return F.cross_entropy(adjusted, target.long())
    if target.shape != logits.shape:
        raise ValueError(f"soft target must be (B, C) = {tuple(logits.shape)}; got {tuple(target.shape)}")
    return -(target.float() * F.log_softmax(adjusted, dim=1)).sum(dim=1).mean()


def balanced_contrastive_loss(
    views: torch.Tensor, centers: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1, *,
    check_values: bool = True,
) -> torch.Tensor:
    """Return the balanced supervised contrastive loss (scalar) of 2B view embeddings and C class centres.

    views (B, 2, D) and centers (C, D) are L2-normalised; labels (B,) int64.
    Anchors are the 2B views; the set is the 2B views plus the C centres (centre c
    has label c). Positives of an anchor: every other member of its class, its
    centre included. Each exp(s_ij / T) in the denominator is divided by the
    number of members of class(j) in the set, not counting the anchor itself.
    """
    if views.dim() != 3 or views.shape[1] != 2:
        raise ValueError(f"views must be (B, 2, D); got shape {tuple(views.shape)}")
    if centers.dim() != 2 or centers.shape[1] != views.shape[2]:
        raise ValueError(f"centers must be (C, D) with D = {views.shape[2]}; got shape {tuple(centers.shape)}")
    batch_size, num_classes = views.shape[0], centers.shape[0]
    labels = labels.to(views.device).long()
    if labels.shape != (batch_size,):
        raise ValueError(f"labels must be (B,) = ({batch_size},); got shape {tuple(labels.shape)}")
    # range check only on the CPU: on an accelerator it would cost a host sync every step
    if check_values and labels.device.type == "cpu" and batch_size and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1} (one centre per class)")

    anchors = torch.cat([views[:, 0], views[:, 1]], dim=0).float()  # (2B, D)
    members = torch.cat([anchors, centers.float()], dim=0)  # (2B + C, D)
    anchor_labels = labels.repeat(2)  # (2B,)
    member_labels = torch.cat([anchor_labels, torch.arange(num_classes, device=views.device)])  # (2B + C,)

    # float32 similarities even under autocast: at T = 0.1 bf16 rounding would shift logits visibly
    with torch.autocast(device_type=views.device.type, enabled=False):
        logits = anchors @ members.t() / temperature  # (2B, 2B + C)
    num_anchors = 2 * batch_size
    not_self = ~torch.eye(num_anchors, logits.shape[1], dtype=torch.bool, device=logits.device)
    # Subtract the row max over j != i (it cancels in the ratio): the largest denominator term is then
    # exp(0), so the sum cannot underflow even at small temperatures (the self term would dominate a max
    # taken over every j).
    row_max = logits.masked_fill(~not_self, float("-inf")).max(dim=1, keepdim=True).values
    logits = logits - row_max.detach()
    same_class = anchor_labels[:, None] == member_labels[None, :]
    positives = same_class & not_self

    # members per class; a scatter, since bincount reads its input's maximum back to size its output
    class_sizes = torch.zeros(num_classes, dtype=torch.int64, device=views.device).scatter_add_(
        0, member_labels, torch.ones_like(member_labels)).to(logits.dtype)
    # members of class(j), minus one for the anchor's own class (the anchor is not counted)
    member_weight = class_sizes[member_labels][None, :] - same_class.to(logits.dtype)
    exp_logits = torch.exp(logits.masked_fill(~not_self, float("-inf")))  # the self term may overflow: drop it first
    denominator = (exp_logits / member_weight).sum(dim=1, keepdim=True)
    log_prob = logits - torch.log(denominator)
    positive_log_prob = torch.where(positives, log_prob, torch.zeros_like(log_prob))
    mean_log_prob_pos = positive_log_prob.sum(dim=1) / positives.sum(dim=1).to(logits.dtype)
    return -mean_log_prob_pos.mean()


@torch.no_grad()
def semantic_label_parts(
    embedding: torch.Tensor,
    centers: torch.Tensor,
    area_label: torch.Tensor,
    class_counts,
    topk: int,
    omega: float,
    *,
    check_values: bool = True,
) -> dict[str, torch.Tensor]:
    """Return dict(similarity_label (B, C), area_label (B, C), rho (B,), weight (B,), label (B, C)), detached.

    embedding (B, D) and centers (C, D) are unnormalised. similarity_label keeps
    the top-k of 1 / ||u - m_c||_2 and normalises them to sum 1;
    rho = log(sum_c N_c y_area,c) / sum_c log N_c; weight = rho * omega;
    label = weight * similarity_label + (1 - weight) * area_label.
    """
    embedding = embedding.detach().float()
    centers = centers.detach().float()
    area_label = area_label.detach().float().to(embedding.device)
    num_classes = centers.shape[0]
    if embedding.dim() != 2 or centers.dim() != 2 or embedding.shape[1] != centers.shape[1]:
        raise ValueError(
            f"embedding (B, D) and centers (C, D) must share D; got {tuple(embedding.shape)} and {tuple(centers.shape)}"
        )
    if area_label.shape != (embedding.shape[0], num_classes):
        raise ValueError(f"area_label must be (B, C) = {(embedding.shape[0], num_classes)}; got {tuple(area_label.shape)}")
    if not (isinstance(topk, int) and not isinstance(topk, bool) and 1 <= topk <= num_classes):
        raise ValueError(f"topk={topk!r} is not accepted; it must be an integer in 1..{num_classes}")
    counts = _counts_tensor(class_counts, embedding.device, check_values)
    if counts.numel() != num_classes:
        raise ValueError(f"class_counts has {counts.numel()} classes but there are {num_classes} centres")
    log_count_sum = torch.log(counts).sum()
    if check_values and not log_count_sum > 0:
        raise ValueError("class_counts is not accepted; sum of log N_c must be > 0 (some class needs N_c > 1)")

    # exact pairwise distances (the matrix-product shortcut can lose precision near 0)
    with torch.autocast(device_type=embedding.device.type, enabled=False):
        distance = torch.cdist(embedding, centers, compute_mode="donot_use_mm_for_euclid_dist")  # (B, C)
    similarity = 1.0 / distance.clamp_min(DISTANCE_EPS)
    top_values, top_index = similarity.topk(topk, dim=1)
    kept = torch.zeros_like(similarity).scatter_(1, top_index, top_values)
    similarity_label = kept / kept.sum(dim=1, keepdim=True)

    rho = (torch.log((area_label.double() * counts).sum(dim=1)) / log_count_sum).float()  # (B,)
    weight = rho * float(omega)
    label = weight[:, None] * similarity_label + (1.0 - weight[:, None]) * area_label
    return {"similarity_label": similarity_label, "area_label": area_label, "rho": rho, "weight": weight, "label": label}


def semantic_label(
    embedding: torch.Tensor, centers: torch.Tensor, area_label: torch.Tensor, class_counts, topk: int, omega: float,
    *, check_values: bool = True,
) -> torch.Tensor:
    """Return the ConCutMix training label (B, C) of mixed images: (rho*omega) y_sem + (1 - rho*omega) y_area."""
    return semantic_label_parts(embedding, centers, area_label, class_counts, topk, omega,
                                check_values=check_values)["label"]


__all__ = [
    "balanced_contrastive_loss", "log_prior", "logit_adjusted_ce", "semantic_label", "semantic_label_parts",
]
