"""Where runs evaluate, CutMix per micro-batch, and the RandAugment strength of the randstack views.

The published ImageNet-LT and Places-LT code evaluates on the validation lists and the
iNaturalist loop draws CutMix once per 128-image loader batch (``docs/method.md``, sections 2,
7 and 10); these tests pin ccmix's fields that reproduce both, and that randstack views take
``randaugment_ops`` / ``randaugment_magnitude``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ccmix.config.fields import SPLIT_FILES, TrainConfig, list_files
from ccmix.config.presets import PRESETS, preset
from ccmix.config.rules import ConfigError
from ccmix.config.validation import validate
from ccmix.data.augment import pil
from ccmix.data.views import contrastive_view_pair
from ccmix.method.collectives import DistContext
from ccmix.method.step import MicroBatchMixing, draw_mixing

# --------------------------------------------------------------------------- eval_split


def test_presets_evaluate_where_the_published_code_evaluates():
    splits = {name: config.eval_split for name, config in PRESETS.items()}
    assert {name for name, split in splits.items() if split == "val"} == {
        "imagenet_lt_resnet50_100", "imagenet_lt_resnext50_90", "imagenet_lt_resnext50_180",
        "inat2018_resnet50_100", "places_lt_resnet152"}
    assert all(split == "test" for name, split in splits.items() if name.startswith("cifar"))


def _list_root(tmp_path, dataset: str):
    for file_name in SPLIT_FILES[dataset].values():
        (tmp_path / file_name).write_text("a.jpg 0\n")
    return str(tmp_path)


@pytest.mark.parametrize("dataset", ["imagenet_lt", "places_lt"])
def test_eval_split_chooses_the_list_file_and_an_explicit_test_list_wins(tmp_path, dataset):
    root = _list_root(tmp_path, dataset)
    for split in ("val", "test"):
        config = validate(TrainConfig(dataset=dataset, data_root=root, eval_split=split, topk=3))
        assert list_files(config)[1] == str(tmp_path / SPLIT_FILES[dataset][split])
    mine = tmp_path / "mine.txt"
    mine.write_text("a.jpg 0\n")
    config = validate(TrainConfig(dataset=dataset, data_root=root, eval_split="val", test_list=str(mine), topk=3))
    assert list_files(config)[1] == str(mine)


def test_a_missing_val_list_is_named(tmp_path):
    root = _list_root(tmp_path, "imagenet_lt")
    (tmp_path / "ImageNet_LT_val.txt").unlink()
    validate(TrainConfig(dataset="imagenet_lt", data_root=root, eval_split="test", topk=3))
    with pytest.raises(ConfigError, match=r"ImageNet_LT_val\.txt.*does not exist"):
        validate(TrainConfig(dataset="imagenet_lt", data_root=root, eval_split="val", topk=3))


@pytest.mark.parametrize("dataset, bad, accepted", [
    ("synthetic", "val", "test"), ("cifar10", "val", "test"), ("cifar100", "val", "test"),
    ("inat2018", "test", "val"),
])
def test_a_split_the_dataset_lacks_is_one_sentence(tmp_path, dataset, bad, accepted):
    config = TrainConfig(dataset=dataset, data_root=_list_root(tmp_path, "inat2018"), eval_split=bad, topk=3)
    with pytest.raises(ConfigError) as caught:
        validate(config)
    message = str(caught.value)
    assert message == (f"eval_split={bad!r} is not accepted; eval_split must be {accepted} for dataset "
                       f"{dataset!r}, the only split it has")


def test_an_old_inat_config_without_the_field_keeps_its_val_list():
    saved = preset("inat2018_resnet50_100").to_dict()
    del saved["eval_split"]
    assert TrainConfig.from_dict(saved).eval_split == "val"
    saved_cifar = preset("cifar10_imb100").to_dict()
    del saved_cifar["eval_split"]
    assert TrainConfig.from_dict(saved_cifar).eval_split == "test"


def test_header_summary_and_results_name_the_split(tmp_path):
    from ccmix.experiments.results import collect_results
    from ccmix.train.report import epoch_line, run_header
    from ccmix.train.run_folder import RunFolder

    header = run_header(device="cpu", preset="p", method="concutmix", arch="resnet50", dataset="imagenet_lt",
                        imb=None, epochs=2, start_epoch=0, train_images=10, test_images=4, steps_per_epoch=1,
                        batch_size=2, precision="fp32", eval_split="val")
    assert "10 training images, 4 validation images (eval_split val)" in header
    record = {"epoch": 1, "lr": 0.1, "loss": 1.0, "train_top1": 5.0, "top1": 7.0, "many": 1.0, "medium": 2.0,
              "few": 3.0, "seconds": 1.0}
    assert "val top-1 7.00" in epoch_line(record, epochs=2, seconds_left=None, eval_split="val")

    config = preset("imagenet_lt_resnet50_100")
    folder = RunFolder(tmp_path / "run")
    folder.write_config(config, "imagenet_lt_resnet50_100")
    folder.start_summary(config, "imagenet_lt_resnet50_100")
    metrics = {"top1": 50.0, "many": 60.0, "medium": 50.0, "few": 40.0}
    summary = folder.summary("completed", 2, None, 1.0, final_metrics=metrics)
    assert summary["eval_split"] == "val"
    assert summary["best"]["note"] == "selected on the validation set, optimistic"
    folder.write_summary(summary)
    assert collect_results([tmp_path / "run"]).loc[0, "eval_split"] == "val"


def test_eval_of_another_split_gets_its_own_file(tmp_path):
    from ccmix.train.evaluation import save_eval_result

    checkpoint = tmp_path / "last.pt"
    own = {"top1": 1.0, "split": "val", "run_split": "val"}
    other = {"top1": 2.0, "split": "test", "run_split": "val"}
    assert save_eval_result(own, checkpoint) is None
    assert save_eval_result(other, checkpoint) is None
    assert json.loads((tmp_path / "last.eval.json").read_text()) == own
    assert json.loads((tmp_path / "last.eval.test.json").read_text()) == other


def test_eval_refuses_another_split_when_an_explicit_file_would_be_reused():
    from ccmix.train.evaluation import _with_split

    config = TrainConfig(dataset="imagenet_lt", eval_split="val", test_list="mine.txt")
    with pytest.raises(ConfigError, match=r"^split='test' is not accepted; .*test_list='mine\.txt'"):
        _with_split(config, "test", {})
    assert _with_split(config, "test", {"test_list": "other.txt"}).eval_split == "test"
    assert _with_split(config, None, {}) is config


# --------------------------------------------------------------------------- CutMix per micro-batch


def _cutmix_config(batch: int, accum: int, per_micro_batch: bool) -> TrainConfig:
    return TrainConfig(dataset="synthetic", method="cutmix", topk=3, batch_size=batch, grad_accum_steps=accum,
                       cutmix_per_micro_batch=per_micro_batch)


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return all(torch.equal(x, y) for x, y in zip((a.top, a.left, a.bottom, a.right), (b.top, b.left, b.bottom, b.right)))


@pytest.mark.parametrize("world_size", [1, 2])
def test_each_micro_batch_draws_what_a_run_with_that_batch_would(world_size):
    """Per micro-batch, a 2 x 8 step's draws equal two successive steps of 8 images without accumulation."""
    on, small = _cutmix_config(16, 2, True), _cutmix_config(8, 1, False)
    differ = 0
    for seed in range(40):
        for rank in range(world_size):
            context = DistContext(rank=rank, world_size=world_size)
            mixing = draw_mixing(_mixer(on), on, np.random.default_rng(seed), 16, 32, 32, context)
            assert isinstance(mixing, MicroBatchMixing) and len(mixing) == 2
            generator = np.random.default_rng(seed)
            expected = [draw_mixing(_mixer(small), small, generator, 8, 32, 32, context) for _ in range(2)]
            assert all(_same(got, want) for got, want in zip(mixing, expected))
            assert all(part is None or len(part) == 8 // world_size for part in mixing)
        differ += (mixing[0] is None) != (mixing[1] is None) or (
            mixing[0] is not None and mixing[1] is not None and not _same(mixing[0], mixing[1]))
    assert differ > 10  # the two micro-batches really draw separately


def test_off_or_without_accumulation_one_draw_serves_the_step():
    for config in (_cutmix_config(16, 2, False), _cutmix_config(16, 1, True)):
        today = _cutmix_config(16, 1, False)
        for seed in range(10):
            got = draw_mixing(_mixer(config), config, np.random.default_rng(seed), 16, 32, 32, DistContext())
            want = draw_mixing(_mixer(today), today, np.random.default_rng(seed), 16, 32, 32, DistContext())
            assert not isinstance(got, MicroBatchMixing) and _same(got, want)


def test_each_micro_batch_is_paired_with_its_own_draw():
    from ccmix.data.batch import StepBatch
    from ccmix.method.step import _split

    config = _cutmix_config(8, 2, True).replace(cutmix_prob=1.0)
    mixing = draw_mixing(_mixer(config), config, np.random.default_rng(3), 8, 32, 32, DistContext())
    labels = torch.arange(8)
    batch = StepBatch(view0=torch.zeros(8, 3, 32, 32), contrastive=None, labels=labels,
                      foreground=torch.zeros(8, 3, 32, 32), foreground_labels=labels)
    parts = _split(batch, mixing, 2)
    assert [p[0].labels.tolist() for p in parts] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert parts[0][1] is mixing[0] and parts[1][1] is mixing[1]


def _mixer(config):
    from ccmix.method.mixers import build_mixer

    return build_mixer(config)


# --------------------------------------------------------------------------- randstack honours n and m


def _image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8))


def _views(variant: str, ops: int, magnitude: int, seed: int = 5):
    first, second = contrastive_view_pair("imagenet", "imagenet_lt", variant, randaugment_ops=ops,
                                          randaugment_magnitude=magnitude)
    torch.manual_seed(seed)
    return first(_image()), second(_image())


def test_randstack_with_no_ops_is_the_sim_view():
    for variant in ("sim-rand", "randstack"):
        got, sim = _views(variant, 0, 0), _views("sim-sim", 2, 10)
        assert all(torch.equal(a, b) for a, b in zip(got, sim))
    assert not torch.equal(_views("randstack", 2, 10)[1], _views("sim-sim", 2, 10)[1])


@pytest.mark.parametrize("ops, magnitude", [(1, 0), (3, 10), (2, 5)])
def test_randstack_applies_n_ops_at_level_m(monkeypatch, ops, magnitude):
    levels = []
    original = pil.randaugment_level_argument
    monkeypatch.setattr(pil, "RANDAUGMENT_OP_PROB", 1.0)  # every drawn op applied, so the count is exactly n
    monkeypatch.setattr(pil, "randaugment_level_argument",
                        lambda name, level, size: levels.append(level) or original(name, level, size))
    _views("randstack", ops, magnitude)
    assert len(levels) == 2 * ops  # both views
    assert all(abs(level - magnitude) < 2.5 for level in levels)  # N(m, 0.5) clipped to [0, 10]
    levels.clear()
    _views("sim-rand", ops, magnitude)
    assert len(levels) == ops  # the first view only


def test_randstack_on_the_cifar_recipe_is_refused_without_calling_it_published():
    with pytest.raises(ConfigError) as caught:
        validate(TrainConfig(dataset="synthetic", topk=3, contrastive_views="randstack"))
    assert "published" not in str(caught.value) and "imagenet recipe only" in str(caught.value)
