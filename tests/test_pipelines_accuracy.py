"""Either training pipeline teaches the model equally well: same data, same distributions of views.

Both pipelines draw the same sample streams and start from the same weights for a seed,
so a seed gives a paired comparison. Each run uses one intra-op thread (set here and
restored), so the numbers do not depend on the machine's thread count; several seeds and
three methods (la, cutmix, concutmix: view 0 alone, with the foreground, with the
contrastive views) are pooled. On the tiny encoder, 10 synthetic classes and 200 test
images, a run reaches 70-100% (chance: 10%); the pooled means of the two pipelines agree
within a point or two, so a pipeline that teaches markedly worse (mislabelled pairs,
views of the wrong images, broken augmentation) breaks the tolerance.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from ccmix.config.fields import TrainConfig
from ccmix.train.fit import fit

# twelve tiny training runs: in `make test`, not in `make test-fast`
pytestmark = pytest.mark.integration

METHODS = ("la", "cutmix", "concutmix")
CLASSES = 10
POOLED_TOLERANCE = 8.0  # points between the pooled means of the two pipelines
METHOD_FLOOR = 50.0  # % each method's mean must reach with either pipeline (5x chance)
POOLED_FLOOR = 70.0  # % each pipeline's pooled mean must reach (7x chance)


@contextlib.contextmanager
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def final_top1(method: str, pipeline: str, seed: int, out) -> float:
    config = TrainConfig(dataset="synthetic", synthetic_classes=CLASSES, imb=5, method=method, arch="tiny", epochs=5,
                         batch_size=32, lr=0.1, warmup_epochs=1, milestones=(3,), topk=2, l_d_warm=2,
                         num_workers=0, device="cpu", pipeline=pipeline, progress=False, eval_interval=5, seed=seed)
    with one_thread():
        return fit(config, out / f"{method}-{pipeline}-{seed}")["final"]["top1"]


def compare_pipelines(seeds, tmp_path) -> None:
    top1 = {(method, pipeline, seed): final_top1(method, pipeline, seed, tmp_path)
            for method in METHODS for pipeline in ("classic", "fast") for seed in seeds}

    def mean(pipeline, methods=METHODS):
        values = [top1[(m, pipeline, s)] for m in methods for s in seeds]
        return sum(values) / len(values)

    for method in METHODS:
        for pipeline in ("classic", "fast"):
            assert mean(pipeline, (method,)) >= METHOD_FLOOR, (method, pipeline, top1)
    assert min(mean("classic"), mean("fast")) >= POOLED_FLOOR, top1
    assert abs(mean("classic") - mean("fast")) < POOLED_TOLERANCE, top1


def test_classic_and_fast_pipelines_reach_similar_accuracy(tmp_path):
    compare_pipelines(seeds=(0, 1), tmp_path=tmp_path)


@pytest.mark.slow
def test_classic_and_fast_pipelines_reach_similar_accuracy_over_more_seeds(tmp_path):
    compare_pipelines(seeds=(0, 1, 2, 3), tmp_path=tmp_path)
