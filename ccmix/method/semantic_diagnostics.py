"""What the semantic label did: per-epoch diagnostics of Contrastive CutMix's label blending.

ConCutMix (Pan et al., IEEE TIP 2024) labels a mixed image y = (ρ·ω) y_sem + (1 − ρ·ω) y_area
(``docs/method.md``, section 5). These diagnostics show how much that changes the training
label, for the mixed images whose label is blended, split by the shot group of the
foreground's class (many / medium / few by training images and the configured thresholds):

- the mean weight ρ·ω of the semantic label;
- the share whose label argmax the semantic label changes (argmax y_area ≠ argmax y);
- the share whose semantic label puts its largest value on the foreground's class, on the
  background's class, or on neither (an image whose two classes agree counts as foreground).

``semantic_sums`` runs inside the (possibly compiled) step and returns device sums alone, so
an epoch can add them up and read them back at its logging steps; ``semantic_record`` turns
an epoch's sums into the ``semantic_*`` fields of its metrics record.
"""

from __future__ import annotations

import torch

from ccmix.config.fields import TrainConfig

SHOT_GROUPS = ("many", "medium", "few")
# Per shot group, in this order: mixed images, sum of ρ·ω, argmax changed, top on foreground, top on background.
SAMPLES, WEIGHT, CHANGED, TOP_FOREGROUND, TOP_BACKGROUND = range(5)
FIELDS_PER_GROUP = 5
SEMANTIC_SIZE = FIELDS_PER_GROUP * len(SHOT_GROUPS)  # length of the flat sums, group-major


def shot_group_index(class_counts: torch.Tensor, many_threshold: int, few_threshold: int) -> torch.Tensor:
    """Return (C,) int64 on the counts' device: 0 many (> many_threshold), 1 medium, 2 few (< few_threshold)."""
    return (class_counts <= many_threshold).long() + (class_counts < few_threshold).long()


@torch.no_grad()
def semantic_sums(parts: dict[str, torch.Tensor], label: torch.Tensor, labels: torch.Tensor,
                  foreground_labels: torch.Tensor, blended: torch.Tensor, class_counts: torch.Tensor,
                  config: TrainConfig) -> torch.Tensor:
    """Return the (SEMANTIC_SIZE,) float64 device sums of one micro-batch's semantic labels, group-major.

    parts: what ``losses.semantic_label_parts`` returned for the micro-batch (similarity_label and
    area_label (b, C), weight (b,)), the step's own computation, not repeated here; label (b, C) the
    training label y; labels and foreground_labels (b,) int64 the background's and foreground's
    classes; blended (b,) bool, the images whose label the semantic label blends (the others add
    nothing); class_counts (C,) training images per class. Device operations only: nothing is read back.
    """
    semantic_top = parts["similarity_label"].argmax(dim=1)
    top_foreground = semantic_top == foreground_labels
    per_image = torch.stack([
        torch.ones_like(parts["weight"], dtype=torch.float64),
        parts["weight"].double(),
        (parts["area_label"].argmax(dim=1) != label.argmax(dim=1)).double(),
        top_foreground.double(),
        ((semantic_top == labels) & ~top_foreground).double(),
    ], dim=1) * blended.double()[:, None]  # (b, FIELDS_PER_GROUP)
    group = shot_group_index(class_counts, config.many_threshold, config.few_threshold)[foreground_labels]  # (b,)
    # a comparison, not one_hot: one_hot checks its input's range, which reads it back on an accelerator
    in_group = (group[:, None] == torch.arange(len(SHOT_GROUPS), device=group.device)).double()  # (b, groups)
    return (in_group[:, :, None] * per_image[:, None, :]).sum(dim=0).flatten()


def _group_record(sums, suffix: str) -> dict:
    """Return the fields of one group (or all groups) from its FIELDS_PER_GROUP sums."""
    samples = sums[SAMPLES]

    def mean(value):
        return value / samples if samples > 0 else None

    return {
        f"semantic_samples{suffix}": int(round(samples)),
        f"semantic_weight_mean{suffix}": mean(sums[WEIGHT]),
        f"semantic_argmax_changed_share{suffix}": mean(sums[CHANGED]),
        f"semantic_top_foreground_share{suffix}": mean(sums[TOP_FOREGROUND]),
        f"semantic_top_background_share{suffix}": mean(sums[TOP_BACKGROUND]),
        f"semantic_top_neither_share{suffix}": mean(samples - sums[TOP_FOREGROUND] - sums[TOP_BACKGROUND]),
    }


def semantic_record(sums) -> dict:
    """Return an epoch's ``semantic_*`` fields from its (SEMANTIC_SIZE,) sums (a CPU tensor or a sequence).

    Over every mixed image, then per foreground shot group (suffixes ``_many``, ``_medium``,
    ``_few``): ``semantic_samples`` (images whose label was blended), ``semantic_weight_mean``
    (mean ρ·ω), ``semantic_argmax_changed_share``, ``semantic_top_foreground_share``,
    ``semantic_top_background_share`` and ``semantic_top_neither_share`` (fractions in [0, 1]);
    a mean over no image is None.
    """
    values = [float(value) for value in sums]
    if len(values) != SEMANTIC_SIZE:
        raise ValueError(f"sums must hold {SEMANTIC_SIZE} values; got {len(values)}")
    groups = [values[index * FIELDS_PER_GROUP:(index + 1) * FIELDS_PER_GROUP] for index in range(len(SHOT_GROUPS))]
    record = _group_record([sum(column) for column in zip(*groups)], "")
    for name, group_sums in zip(SHOT_GROUPS, groups):
        record.update(_group_record(group_sums, f"_{name}"))
    return record


__all__ = ["SEMANTIC_SIZE", "SHOT_GROUPS", "semantic_record", "semantic_sums", "shot_group_index"]
