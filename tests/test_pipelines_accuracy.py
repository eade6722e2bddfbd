"""Either training pipeline teaches the model equally well: same data, same distributions of views."""

from __future__ import annotations

import pytest

from ccmix.config import TrainConfig
from ccmix.engine import fit


# la: view 0 (pad-crop, flip, AutoAugment) carries the augmentation that matters for accuracy; the
# contrastive and foreground views are compared distribution by distribution in test_fast_aug.
@pytest.mark.parametrize("method", ["la"])
def test_classic_and_fast_pipelines_reach_similar_accuracy(method, tmp_path):
    base = TrainConfig(dataset="synthetic", synthetic_classes=5, imb=5, method=method, epochs=6, batch_size=64,
                       num_workers=0, topk=2, warmup_epochs=1, milestones=(5,), lr=0.05, l_d_warm=3,
                       progress=False, eval_interval=6, seed=0)
    top1 = {}
    for pipeline in ("classic", "fast"):
        top1[pipeline] = fit(base.replace(pipeline=pipeline), tmp_path / pipeline)["final"]["top1"]
    chance = 100 / 5
    assert min(top1.values()) > 2 * chance, top1
    assert abs(top1["classic"] - top1["fast"]) < 15, top1
