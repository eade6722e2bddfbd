"""Semantic-label diagnostics: equal to their definition, free of host reads, present only where labels blend.

The expectation is built here from docs/method.md, image by image: λ from each box, the area
label, the semantic label by its definition (1 / distance, top-k, normalised), ρ·ω, the argmax
of the area and the training label, the class the semantic label puts highest, and the shot
group of the foreground's class from the class counts and the configured thresholds. The
embeddings and centres are those of the step's own forward pass, recorded by a wrapper.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from test_host_sync import count_reads, run_config
from torch import nn

from ccmix.config.fields import TrainConfig
from ccmix.data.batch import StepBatch
from ccmix.method.collectives import DistContext
from ccmix.method.losses import semantic_label
from ccmix.method.semantic_diagnostics import semantic_record
from ccmix.method.step import compute_step_loss, draw_cutmix_boxes
from ccmix.train.evaluation import build_run_model
from ccmix.train.fit import fit

NUM_CLASSES, SIDE, BATCH = 5, 16, 32
# many (> 120): classes 0 and 1; medium (40 to 120): class 2; few (< 40): classes 3 and 4. The default
# thresholds (100, 20) would put class 3 in medium, so the configured ones must be the ones used.
COUNTS = [400.0, 150.0, 100.0, 30.0, 10.0]
MANY, FEW = 120, 40


class Recording(nn.Module):
    """Runs ``model`` and keeps each output, so the test sees the step's own embeddings and centres."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.outputs = []

    def forward(self, images):
        output = self.model(images)
        self.outputs.append(output)
        return output


def diagnostics_config(per_sample: bool) -> TrainConfig:
    # a large omega makes the semantic label weigh enough to change some argmaxes, and not others
    return TrainConfig(dataset="synthetic", synthetic_classes=NUM_CLASSES, arch="tiny", method="concutmix", topk=2,
                       omega=2.5, l_d_warm=0, cutmix_prob=0.75, cutmix_per_sample=per_sample, many_threshold=MANY,
                       few_threshold=FEW, device="cpu", amp=False, channels_last=False, seed=0)


def make_batch() -> StepBatch:
    generator = torch.Generator().manual_seed(5)
    return StepBatch(
        view0=torch.randn(BATCH, 3, SIDE, SIDE, generator=generator),
        contrastive=torch.randn(BATCH, 2, 3, SIDE, SIDE, generator=generator),
        labels=torch.randint(0, NUM_CLASSES, (BATCH,), generator=generator),
        foreground=torch.randn(BATCH, 3, SIDE, SIDE, generator=generator) + 0.5,
        foreground_labels=torch.randint(0, NUM_CLASSES, (BATCH,), generator=generator),
    )


def shot_group(count: float) -> str:
    return "many" if count > MANY else "few" if count < FEW else "medium"


def expected_record(boxes, batch: StepBatch, embedding: torch.Tensor, centers: torch.Tensor, config: TrainConfig,
                    per_sample: bool) -> tuple[dict, dict]:
    """Return (the expected semantic_* fields, the cases seen), computed image by image from the definitions."""
    log_count_sum = sum(math.log(n) for n in COUNTS)
    images = {"": [], "_many": [], "_medium": [], "_few": []}
    cases = {"top": set(), "changed": set()}
    for i in range(BATCH):
        height, width = int(boxes.bottom[i] - boxes.top[i]), int(boxes.right[i] - boxes.left[i])
        lam = 1.0 - max(height, 0) * max(width, 0) / (SIDE * SIDE)
        if per_sample and lam == 1.0:
            continue  # an image drawn not to mix keeps its hard label: nothing blended
        a, b = int(batch.labels[i]), int(batch.foreground_labels[i])
        area = torch.zeros(1, NUM_CLASSES)
        area[0, a] += lam
        area[0, b] += 1.0 - lam
        final = semantic_label(embedding[i:i + 1], centers, area, COUNTS, topk=config.topk, omega=config.omega)[0]
        similarity = [1.0 / float(torch.linalg.norm(embedding[i].double() - centers[c].double()))
                      for c in range(NUM_CLASSES)]
        kept = sorted(range(NUM_CLASSES), key=lambda c: -similarity[c])[:config.topk]
        semantic = [similarity[c] / sum(similarity[k] for k in kept) if c in kept else 0.0 for c in range(NUM_CLASSES)]
        semantic_top = max(range(NUM_CLASSES), key=lambda c: semantic[c])
        rho = math.log(sum(n * float(y) for n, y in zip(COUNTS, area[0]))) / log_count_sum
        changed = int(area[0].argmax()) != int(final.argmax())
        top = "foreground" if semantic_top == b else "background" if semantic_top == a else "neither"
        cases["top"].add(top)
        cases["changed"].add(changed)
        for suffix in ("", f"_{shot_group(COUNTS[b])}"):
            images[suffix].append((rho * config.omega, changed, top))
    record = {}
    for suffix, rows in images.items():
        def share(values, rows=rows):
            return sum(values) / len(rows) if rows else None

        record[f"semantic_samples{suffix}"] = len(rows)
        record[f"semantic_weight_mean{suffix}"] = share([weight for weight, _, _ in rows])
        record[f"semantic_argmax_changed_share{suffix}"] = share([changed for _, changed, _ in rows])
        for kind in ("foreground", "background", "neither"):
            record[f"semantic_top_{kind}_share{suffix}"] = share([top == kind for _, _, top in rows])
    cases["groups"] = {suffix for suffix, rows in images.items() if rows}
    return record, cases


@pytest.mark.parametrize("per_sample", [False, True], ids=["one-box", "per-sample-boxes"])
def test_step_diagnostics_equal_the_definition(per_sample):
    config = diagnostics_config(per_sample)
    torch.manual_seed(0)
    model = Recording(build_run_model(config, NUM_CLASSES).train())
    batch = make_batch()
    generator = np.random.default_rng(1)
    boxes = None
    while boxes is None:  # the first mixed draw of this stream
        boxes = draw_cutmix_boxes(config, generator, BATCH, SIDE, SIDE, DistContext())
    result = compute_step_loss(model, batch, config, 1, torch.tensor(COUNTS), boxes)
    (output,) = model.outputs
    embedding, centers = output.embedding_raw[:BATCH].detach().float(), output.centers_raw.detach().float()
    expected, cases = expected_record(boxes, batch, embedding, centers, config, per_sample)

    # the batch covers every case, so each part of the expectation is exercised
    assert cases["top"] == {"foreground", "background", "neither"} and cases["changed"] == {True, False}
    assert cases["groups"] == {"", "_many", "_medium", "_few"}
    if per_sample:
        assert 0 < expected["semantic_samples"] < BATCH  # some images drawn not to mix
    actual = semantic_record(result.semantic)
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        assert actual[key] == pytest.approx(value, rel=1e-6, abs=1e-12), key


def test_unmixed_and_warm_up_steps_have_no_diagnostics():
    config = diagnostics_config(per_sample=False)
    model, batch, counts = build_run_model(config, NUM_CLASSES), make_batch(), torch.tensor(COUNTS)
    boxes = None
    generator = np.random.default_rng(1)
    while boxes is None:
        boxes = draw_cutmix_boxes(config, generator, BATCH, SIDE, SIDE, DistContext())
    assert compute_step_loss(model, batch, config, 1, counts, None).semantic is None  # not mixed
    assert compute_step_loss(model, batch, config, 0, counts, boxes).semantic is None  # epoch 0 = l_d_warm
    assert compute_step_loss(model, batch, config.replace(method="cutmix"), 1, counts, boxes).semantic is None


def semantic_fields(run_dir) -> list[set]:
    """Return, per epoch of metrics.jsonl, the names of its semantic_* fields."""
    with open(run_dir / "metrics.jsonl") as lines:
        return [{key for key in json.loads(line) if key.startswith("semantic_")} for line in lines]


def test_diagnostics_read_nothing_back_between_logging_steps(tmp_path):
    changes = dict(cutmix_prob=1.0)
    fit(run_config("concutmix", "fast", 1, **changes), tmp_path / "warm")  # values cached once per process
    short = count_reads(run_config("concutmix", "fast", 1, **changes), tmp_path / "short")
    long = count_reads(run_config("concutmix", "fast", 3, **changes), tmp_path / "long")
    assert long.count == short.count, f"reads added by the longer run: {dict(long.sites - short.sites)}"
    with open(tmp_path / "long" / "metrics.jsonl") as lines:
        warm_up, semantic = [json.loads(line) for line in lines]
    assert not any(key.startswith("semantic_") for key in warm_up)  # epoch 1 = l_d_warm: area labels only
    assert semantic["semantic_samples"] == 3 * 8  # every image of the 3 mixed steps of 8 images
    assert semantic["semantic_weight_mean"] > 0


@pytest.mark.parametrize("method", ["ce", "la", "cutmix"])
def test_methods_without_semantic_labels_record_no_diagnostics(method, tmp_path):
    fit(run_config(method, "fast", 2, epochs=2, cutmix_prob=1.0), tmp_path)
    assert semantic_fields(tmp_path) == [set(), set()]
