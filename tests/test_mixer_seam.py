"""A mixing method is one class registered from outside the package and chosen by ``mixer=<name>``.

MixUp below lives in this file alone: registering it is all it takes for ``fit`` to train
cutmix and concutmix runs with it, to record it in ``config.json`` and to refuse resuming
a run folder with another mixer. CutMix, the built-in mixer, keeps its draws: the step's
boxes and losses are pinned by ``test_step_loss.py``, ``test_cutmix.py`` and ``test_engine.py``.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ccmix.config.fields import TrainConfig
from ccmix.config.rules import ConfigError
from ccmix.method import mixers
from ccmix.method.collectives import DistContext
from ccmix.method.cutmix import area_labels
from ccmix.method.mixers import CutMix, Mixed, build_mixer, mixer_names, register_mixer
from ccmix.method.step import draw_cutmix_boxes, draw_mixing
from ccmix.train.conflict import RunFolderConflict
from ccmix.train.fit import fit


class MixUp:
    """MixUp (Zhang et al., ICLR 2018): each image blended with its foreground by λ ~ Beta(alpha, alpha)."""

    per_sample = True
    calls = {"draw": 0, "apply": 0}

    def __init__(self, config: TrainConfig):
        self.alpha = config.cutmix_alpha

    def draw(self, generator: np.random.Generator, global_batch: int, height: int, width: int) -> torch.Tensor:
        MixUp.calls["draw"] += 1
        return torch.from_numpy(generator.beta(self.alpha, self.alpha, size=global_batch)).float()

    def to_device(self, params: torch.Tensor, device: torch.device) -> torch.Tensor:
        return params.to(device)

    def apply(self, params, background, foreground, labels, foreground_labels, num_classes) -> Mixed:
        MixUp.calls["apply"] += 1
        weight = params[:, None, None, None]
        images = weight * background + (1.0 - weight) * foreground
        return Mixed(images, area_labels(labels, foreground_labels, params, num_classes, check_values=False), params)


@pytest.fixture(autouse=True)
def mixup_registered():
    """Register MixUp for this file's tests only: other tests in the same process see the package's own mixers."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mixers, "_MIXERS", dict(mixers._MIXERS))
        register_mixer("mixup", MixUp)
        yield


def tiny_config(**changes) -> TrainConfig:
    """Return a synthetic run of two short steps an epoch; l_d_warm=0 gives semantic labels from epoch 2."""
    base = TrainConfig(dataset="synthetic", synthetic_classes=5, imb=10, topk=3, arch="tiny", epochs=1, l_d_warm=0,
                       batch_size=16, max_steps_per_epoch=2, num_workers=0, device="cpu", pipeline="fast",
                       warmup_epochs=0, milestones=(), lr=0.05, seed=2, cutmix_prob=1.0, progress=False)
    return base.replace(**changes)


@pytest.mark.parametrize("method, epochs", [("cutmix", 1), ("concutmix", 2)])
def test_a_mixer_registered_outside_the_package_trains(method, epochs, tmp_path):
    before = dict(MixUp.calls)
    summary = fit(tiny_config(method=method, mixer="mixup", epochs=epochs), tmp_path)
    steps = 2 * epochs
    assert MixUp.calls == {"draw": before["draw"] + steps, "apply": before["apply"] + steps}
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == epochs and summary["status"] == "completed"
    for record in records:
        assert all(math.isfinite(record[key]) for key in ("loss", "loss_ce", "train_top1", "top1"))
    assert json.loads((tmp_path / "config.json").read_text())["mixer"] == "mixup"


def test_methods_that_do_not_mix_never_call_the_mixer(tmp_path):
    before = dict(MixUp.calls)
    fit(tiny_config(method="la", mixer="mixup"), tmp_path)
    assert MixUp.calls == before


def test_a_run_folder_is_not_resumed_with_another_mixer(tmp_path):
    fit(tiny_config(method="cutmix", mixer="mixup"), tmp_path)
    with pytest.raises(RunFolderConflict, match="mixer"):
        fit(tiny_config(method="cutmix", mixer="cutmix", epochs=2), tmp_path)


def test_an_unknown_mixer_is_refused_in_one_sentence_before_any_file_is_written(tmp_path):
    with pytest.raises(ConfigError) as caught:
        fit(tiny_config(mixer="mixupp"), tmp_path / "run")
    assert str(caught.value) == (f"mixer='mixupp' is not accepted; mixer must be one of the registered mixers: "
                                 f"{', '.join(mixer_names())}")
    assert "cutmix" in mixer_names() and "mixup" in mixer_names()
    assert not (tmp_path / "run").exists()


def test_a_taken_name_is_refused_and_registering_again_is_harmless():
    register_mixer("mixup", MixUp)  # the same factory again, e.g. a module imported twice
    with pytest.raises(ValueError, match="name='cutmix' is not accepted; a mixer of that name is already registered"):
        register_mixer("cutmix", MixUp)
    assert isinstance(build_mixer(tiny_config()), CutMix)


@pytest.mark.parametrize("per_sample", [False, True])
def test_the_step_draws_cutmix_boxes_through_the_mixer_and_shares_them_by_rank(per_sample):
    config = tiny_config(method="concutmix", cutmix_per_sample=per_sample, cutmix_prob=0.5)
    for seed in range(4):
        whole = draw_cutmix_boxes(config, np.random.default_rng(seed), 8, 32, 32, DistContext())
        for rank in range(2):
            context = DistContext(rank=rank, world_size=2)
            share = draw_mixing(build_mixer(config), config, np.random.default_rng(seed), 8, 32, 32, context)
            assert (share is None) == (whole is None)
            if share is not None:
                for name in ("top", "left", "bottom", "right"):
                    assert torch.equal(getattr(share, name), getattr(whole, name)[rank::2])
