"""Bad input is rejected with one clear sentence: one table drives both these tests and README's "What is rejected".

Each row names where the input comes from, the input as a user writes it, and the exact
message it gets. ``python tests/test_bad_input.py`` prints the README table; a test checks
that README holds every row, so the two cannot drift apart.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from ccmix.config.fields import TrainConfig
from ccmix.config.presets import preset
from ccmix.config.rules import ConfigError
from ccmix.config.validation import validate

README = Path(__file__).resolve().parents[1] / "README.md"
CLI = "cli"  # rows checked through the command line: exit status and "error: <message>" on stderr


@dataclass(frozen=True)
class Rejection:
    """One rejected input: where it is given, the input itself, how to submit it, and the expected message."""

    area: str
    given: str
    submit: Callable[[], object]
    message: str
    raises: type[Exception] | str = ConfigError


# --------------------------------------------------------------------------- how inputs are submitted


def synthetic(**changes) -> TrainConfig:
    """Return a valid synthetic config with ``changes`` applied (not validated)."""
    return TrainConfig(dataset="synthetic", topk=3).replace(**changes)


def folder(root: str) -> TrainConfig:
    """Return a folder-dataset config over ``root`` (not validated)."""
    return TrainConfig(dataset="folder", data_root=root, topk=2, imb=1.0)


def image_list(**changes) -> TrainConfig:
    """Return an ImageNet-LT config over the ``lists`` folder (not validated)."""
    return TrainConfig(dataset="imagenet_lt", data_root="lists", topk=3).replace(**changes)


def check(config: TrainConfig):
    """Validate ``config`` as fit, the command line and the notebooks do before any data is read."""
    return validate(config)


def load(config: TrainConfig):
    """Validate ``config``, then build its datasets and decode the training images (as training would)."""
    from ccmix.data.datasets import build_datasets

    train, _ = build_datasets(validate(config))
    return train.as_uint8_tensor()


def train_notebook(**parameters):
    """Turn train-notebook parameters into a run, as the notebook's second cell does."""
    from ccmix.experiments.train_params import resolve_train_parameters

    return resolve_train_parameters(**{"dataset": "synthetic", **parameters})


def notebook_names(notebook: str, **injected):
    """Check the names papermill injected into ``notebook``, as its parameter check does."""
    from ccmix.experiments.notebook_params import check_notebook_parameters

    return check_notebook_parameters(injected, notebook)


def command(*argv: str) -> Callable[[], tuple[int, str]]:
    """Return a callable running ``python -m ccmix *argv`` in-process: (exit status, stderr)."""

    def run() -> tuple[int, str]:
        from ccmix.cli import main

        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            status = main(list(argv))
        return status, stderr.getvalue()

    return run


def without_cuda(run: Callable[[], tuple[int, str]]) -> Callable[[], tuple[int, str]]:
    """Return ``run`` made to see a machine without CUDA, whatever this one has."""

    def run_without_cuda() -> tuple[int, str]:
        from unittest import mock

        import torch

        with mock.patch.object(torch.cuda, "is_available", lambda: False):
            return run()

    return run_without_cuda


def make_inputs(root: Path) -> None:
    """Write the small image trees and split files the dataset rows read, under ``root``."""
    from PIL import Image

    trees = {
        "lt_folder": ({"a": 3, "b": 2}, {"a": 1, "b": 1}),
        "empty_class": ({"a": 2, "b": 0}, {"a": 1}),
        "extra_test": ({"a": 2, "b": 2}, {"a": 1, "zebra": 1}),
    }
    for name, splits in trees.items():
        for split, classes in zip(("train", "test"), splits):
            for cls, count in classes.items():
                os.makedirs(root / name / split / cls, exist_ok=True)
                for index in range(count):
                    Image.new("RGB", (32, 32), (40 * index, 90, 0)).save(root / name / split / cls / f"{index}.png")
    (root / "lt_folder" / "train" / "b" / "broken.png").write_bytes(b"not an image")
    (root / "lists" / "images").mkdir(parents=True)
    (root / "lists" / "train.txt").write_text("images/a.jpg 0\nimages/b.jpg\n")
    (root / "lists" / "test.txt").write_text("images/a.jpg 0\n")
    (root / "lists" / "empty.txt").write_text("\n")
    (root / "empty.pt").write_bytes(b"")
    shutil.copytree(root / "extra_test", root / "loop_class", ignore=shutil.ignore_patterns("zebra"))
    (root / "loop_class" / "train" / "loop").symlink_to("loop")
    shutil.copytree(root / "extra_test", root / "odd_size", ignore=shutil.ignore_patterns("zebra"))
    Image.new("RGB", (48, 40)).save(root / "odd_size" / "test" / "a" / "wide.png")
    make_run_inputs(root)


def make_run_inputs(root: Path) -> None:
    """Write ``done/`` (a completed run of the default preset, as its config.json and summary.json show it),
    ``crafted.pt`` (a checkpoint whose epoch is negative, with a valid checksum), ``trained/`` (a run folder
    holding it as last.pt) and ``plain_folder/`` (empty)."""
    import json

    import torch

    from ccmix.config.validation import resolve
    from ccmix.train import checkpoint as ckpt

    config = resolve(None, {}).to_dict()
    (root / "done").mkdir()
    (root / "done" / "config.json").write_text(json.dumps(config))
    (root / "done" / "summary.json").write_text(json.dumps({"status": "completed", "epochs_completed": 200}))
    ckpt.save_checkpoint(root / "crafted.pt", {"config": config, "epoch": -3, "num_classes": 100,
                                               "model": {"fc.weight": torch.zeros(100, 2)}})
    (root / "trained").mkdir()  # a run folder holding a checkpoint, and a folder holding none
    shutil.copy(root / "crafted.pt", root / "trained" / "last.pt")
    (root / "plain_folder").mkdir()


PRESET_NAMES = ("cifar100_imb100, cifar100_imb50, cifar100_imb10, cifar10_imb100, cifar10_imb50, cifar10_imb10, "
                "cifar100_imb100_400, imagenet_lt_resnet50_100, imagenet_lt_resnext50_90, imagenet_lt_resnext50_180, "
                "inat2018_resnet50_100, places_lt_resnet152")
TRAIN_PARAMETERS = ("preset, dataset, data_root, imb, method, epochs, seed, batch_size, device, out_dir, overrides, "
                    "figures_dir, nproc_per_node")
CONFIG = "configuration"
DATA = "dataset paths and files"
NOTEBOOK = "notebook parameters"
COMMAND = "command line"
RUN_FOLDER = "run folder"

# --------------------------------------------------------------------------- the table

REJECTIONS = [
    # configuration: the fields of TrainConfig, checked by ccmix.config.validation.validate (also for ccmix.fit(TrainConfig(...)))
    Rejection(CONFIG, "dataset='imagenet'", lambda: check(synthetic(dataset="imagenet")),
              "dataset='imagenet' is not accepted; dataset must be one of: cifar10, cifar100, folder, imagenet_lt, "
              "inat2018, places_lt, synthetic"),
    Rejection(CONFIG, "imb=0.5", lambda: check(synthetic(imb=0.5)),
              "imb=0.5 is not accepted; imb is N_max / N_min and must be a number >= 1"),
    Rejection(CONFIG, "method='mixup'", lambda: check(synthetic(method="mixup")),
              "method='mixup' is not accepted; method must be one of: ce, la, cutmix, bcl, concutmix"),
    Rejection(CONFIG, "arch='vit'", lambda: check(synthetic(arch="vit")),
              "arch='vit' is not accepted; arch must be one of: resnet32, resnet50, resnext50, resnet152, resnext101, tiny"),
    Rejection(CONFIG, "epochs=0", lambda: check(synthetic(epochs=0)),
              "epochs=0 is not accepted; epochs must be an integer >= 1"),
    Rejection(CONFIG, "epochs='5' (text given to TrainConfig)", lambda: check(synthetic(epochs="5")),
              "epochs='5' is not accepted; epochs must be an integer >= 1"),
    Rejection(CONFIG, "batch_size=1", lambda: check(synthetic(batch_size=1)),
              "batch_size=1 is not accepted; batch_size must be an integer >= 2"),
    Rejection(CONFIG, "lr=0", lambda: check(synthetic(lr=0)), "lr=0 is not accepted; lr must be a number > 0"),
    Rejection(CONFIG, "lr=nan", lambda: check(synthetic(lr=float("nan"))),
              "lr=nan is not accepted; lr must be a finite number > 0"),
    Rejection(CONFIG, "lr=inf", lambda: check(synthetic(lr=float("inf"))),
              "lr=inf is not accepted; lr must be a finite number > 0"),
    Rejection(CONFIG, "seed=-1", lambda: check(synthetic(seed=-1)),
              "seed=-1 is not accepted; seed must be an integer in 0..4294967295"),
    Rejection(CONFIG, "seed=2**32", lambda: check(synthetic(seed=2**32)),
              "seed=4294967296 is not accepted; seed must be an integer in 0..4294967295"),
    Rejection(CONFIG, "device='tpu'", lambda: check(synthetic(device="tpu")),
              "device='tpu' is not accepted; device must be one of: auto, cpu, cuda"),
    Rejection(CONFIG, "tau=-1.0", lambda: check(synthetic(tau=-1.0)),
              "tau=-1.0 is not accepted; tau must be a number >= 0"),
    Rejection(CONFIG, "topk=11 (synthetic, 10 classes)", lambda: check(synthetic(topk=11)),
              "topk=11 is not accepted; topk must be an integer in 1..10 (the number of classes)"),
    Rejection(CONFIG, "omega=-1.0", lambda: check(synthetic(omega=-1.0)),
              "omega=-1.0 is not accepted; omega must be a number >= 0"),
    Rejection(CONFIG, "epochs=2.5", lambda: check(synthetic(epochs=2.5)),
              "epochs=2.5 is not accepted; epochs must be an integer >= 1"),
    Rejection(CONFIG, "l_d_warm=-1", lambda: check(synthetic(l_d_warm=-1)),
              "l_d_warm=-1 is not accepted; l_d_warm must be an integer >= 0"),
    Rejection(CONFIG, "alpha=-1.0", lambda: check(synthetic(alpha=-1.0)),
              "alpha=-1.0 is not accepted; alpha must be a number >= 0"),
    Rejection(CONFIG, "beta=-0.5", lambda: check(synthetic(beta=-0.5)),
              "beta=-0.5 is not accepted; beta must be a number >= 0"),
    Rejection(CONFIG, "temperature=0.0", lambda: check(synthetic(temperature=0.0)),
              "temperature=0.0 is not accepted; temperature must be a number > 0"),
    Rejection(CONFIG, "cutmix_prob=1.5", lambda: check(synthetic(cutmix_prob=1.5)),
              "cutmix_prob=1.5 is not accepted; cutmix_prob must be a number in [0, 1]"),
    Rejection(CONFIG, "warmup_epochs=-1", lambda: check(synthetic(warmup_epochs=-1)),
              "warmup_epochs=-1 is not accepted; warmup_epochs must be an integer >= 0"),
    Rejection(CONFIG, "milestones=(180, 160)", lambda: check(synthetic(milestones=(180, 160))),
              "milestones=[180, 160] is not accepted; milestones must be a list of increasing integers >= 1"),
    Rejection(CONFIG, "milestones=[1, 'a']", lambda: check(synthetic(milestones=[1, "a"])),
              "milestones=[1, 'a'] is not accepted; milestones must be a list of increasing integers >= 1"),
    Rejection(CONFIG, "schedule='linear'", lambda: check(synthetic(schedule="linear")),
              "schedule='linear' is not accepted; schedule must be one of: step, cosine"),
    Rejection(CONFIG, "feat_dim=0", lambda: check(synthetic(feat_dim=0)),
              "feat_dim=0 is not accepted; feat_dim must be an integer >= 1"),
    Rejection(CONFIG, "feat_dim=10**9", lambda: check(synthetic(feat_dim=10**9)),
              "feat_dim=1000000000 is not accepted; a training step would need about 45 TiB of memory (a rough "
              "estimate, mostly from feat_dim), far beyond any machine; the limit is 16 TiB"),
    Rejection(CONFIG, "classifier='mlp'", lambda: check(synthetic(classifier="mlp")),
              "classifier='mlp' is not accepted; classifier must be one of: linear, cosine"),
    Rejection(CONFIG, "foreground_sampler='random'", lambda: check(synthetic(foreground_sampler="random")),
              "foreground_sampler='random' is not accepted; foreground_sampler must be one of: balanced, reverse, "
              "uniform"),
    # dataset paths and files
    Rejection(DATA, "dataset='folder', data_root='no/such/folder'", lambda: check(folder("no/such/folder")),
              "data_root='no/such/folder' is not accepted for dataset 'folder'; it must hold train/<class>/ and "
              "test/<class>/ folders and 'no/such/folder/train' does not exist"),
    Rejection(DATA, "dataset='folder' with a class folder holding no images", lambda: load(folder("empty_class")),
              "class folder 'empty_class/train/b' holds no image files (.jpg, .jpeg, .png, .ppm, .bmp, .pgm, .tif, "
              ".tiff, .webp)", ValueError),
    Rejection(DATA, "dataset='folder' with a test class unknown to train/", lambda: load(folder("extra_test")),
              "class folder 'extra_test/test/zebra' has no counterpart in train/", ValueError),
    Rejection(DATA, "dataset='folder' with an image file that does not decode", lambda: load(folder("lt_folder")),
              "image file 'lt_folder/train/b/broken.png' could not be read (UnidentifiedImageError: cannot identify "
              "image file 'lt_folder/train/b/broken.png'); replace or remove it", ValueError),
    Rejection(DATA, "dataset='folder' with a test image that is not 32x32 (view recipe cifar)",
              lambda: load(folder("odd_size")),
              "image file 'odd_size/test/a/wide.png' is 48x40 pixels and view_recipe 'cifar' takes 32x32 images; "
              "resize them, or use view_recipe=imagenet, which resizes any size", ValueError),
    Rejection(DATA, "dataset='folder' with a class folder that is a symbolic link to itself",
              lambda: load(folder("loop_class")),
              "'loop_class/train/loop' cannot be read (a symbolic link that leads back to itself); fix or remove it",
              ValueError),
    Rejection(DATA, "dataset='imagenet_lt', data_root='no/such/root'",
              lambda: check(image_list(data_root="no/such/root")),
              "data_root='no/such/root' is not accepted for dataset 'imagenet_lt'; the folder does not exist"),
    Rejection(DATA, "train_list='lists/missing.txt'",
              lambda: check(image_list(train_list="lists/missing.txt", test_list="lists/test.txt")),
              "train_list='lists/missing.txt' is not accepted; the file does not exist"),
    Rejection(DATA, "a split-file line without a label",
              lambda: load(image_list(train_list="lists/train.txt", test_list="lists/test.txt")),
              "lists/train.txt, line 2: 'images/b.jpg' is not 'relative/path label' with an integer label in 0..999",
              ValueError),
    Rejection(DATA, "an empty split file", lambda: load(image_list(train_list="lists/empty.txt", test_list="lists/test.txt")),
              "split file 'lists/empty.txt' lists no images", ValueError),
    # notebook parameters (papermill -p / -y), checked by ccmix.experiments.notebook_params
    Rejection(NOTEBOOK, "train: -p epoch 5", lambda: notebook_names("train", epoch=5),
              f"parameter 'epoch' is not a parameter of the train notebook (did you mean epochs?); accepted: "
              f"{TRAIN_PARAMETERS}"),
    Rejection(NOTEBOOK, "train: -p topk 5", lambda: notebook_names("train", topk=5),
              f"parameter 'topk' is not a parameter of the train notebook; it is a config field, so pass it through "
              f"overrides, e.g. -y \"overrides: {{topk: ...}}\" (notebook parameters: {TRAIN_PARAMETERS})"),
    Rejection(NOTEBOOK, "explore_cutmix: -p checkpoints x", lambda: notebook_names("explore_cutmix", checkpoints="x"),
              "parameter 'checkpoints' is not a parameter of the explore_cutmix notebook (did you mean checkpoint?); "
              "accepted: dataset, data_root, imb, checkpoint, seed, figures_dir"),
    Rejection(NOTEBOOK, "train: -p preset cifar10_imb1", lambda: train_notebook(preset="cifar10_imb1"),
              f"parameter preset='cifar10_imb1' is unknown; accepted: None, {PRESET_NAMES}"),
    Rejection(NOTEBOOK, "train: -p dataset cifar", lambda: train_notebook(dataset="cifar"),
              "parameter dataset='cifar' is not accepted; dataset must be one of: cifar10, cifar100, folder, "
              "imagenet_lt, inat2018, places_lt, synthetic or None (not given: cifar100)"),
    Rejection(NOTEBOOK, "train: -p imb 0", lambda: train_notebook(imb=0),
              "parameter imb=0 is not accepted; imb is N_max / N_min and must be a number >= 1 or None (not given: "
              "100)"),
    Rejection(NOTEBOOK, "train: -p preset cifar10_imb100 -p dataset cifar100",
              lambda: train_notebook(preset="cifar10_imb100", dataset="cifar100"),
              "parameter dataset='cifar100' contradicts preset='cifar10_imb100'; that preset trains dataset='cifar10'; "
              "leave dataset None to take it from the preset, or change it through overrides"),
    Rejection(NOTEBOOK, "train: -p epochs 2.5", lambda: train_notebook(epochs=2.5),
              "parameter epochs=2.5 is not accepted; epochs must be an integer >= 1 or None (the preset's)"),
    Rejection(NOTEBOOK, "train: -p batch_size 1", lambda: train_notebook(batch_size=1),
              "parameter batch_size=1 is not accepted; batch_size must be an integer >= 2 or None (the preset's)"),
    Rejection(NOTEBOOK, "train: -p device gpu", lambda: train_notebook(device="gpu"),
              "parameter device='gpu' is not accepted; device must be one of: auto, cpu, cuda or None (the "
              "preset's)"),
    Rejection(NOTEBOOK, "train: -y \"overrides: [topk, 3]\"", lambda: train_notebook(overrides=["topk", 3]),
              "parameter overrides=['topk', 3] is not accepted; it takes a mapping of config fields to values, "
              "e.g. -y \"overrides: {topk: 10}\""),
    Rejection(NOTEBOOK, "train: -y \"overrides: {topk: many}\"", lambda: train_notebook(overrides={"topk": "many"}),
              "overrides topk='many' is not accepted; topk must be an integer >= 1"),
    Rejection(NOTEBOOK, "train: -y \"overrides: {epoch: 3}\"", lambda: train_notebook(overrides={"epoch": 3}),
              "overrides key 'epoch' is not a config field (did you mean epochs?); see `python -m ccmix presets "
              "--fields` and TrainConfig"),
    # command line: --preset and --set values (exit status 2, "error: <message>" on stderr)
    Rejection(COMMAND, "train --preset cifar10_imb1", command("train", "--preset", "cifar10_imb1", "--out", "run"),
              f"preset 'cifar10_imb1' is unknown; accepted: {PRESET_NAMES}", CLI),
    Rejection(COMMAND, "train --set epochs=ten", command("train", "--set", "epochs=ten", "--out", "run"),
              "--set epochs='ten' does not parse; epochs must be an integer >= 1", CLI),
    Rejection(COMMAND, "train --set lr=fast", command("train", "--set", "lr=fast", "--out", "run"),
              "--set lr='fast' does not parse; lr must be a number > 0 (fractions like 20/255 are fine)", CLI),
    Rejection(COMMAND, "train --set amp=maybe", command("train", "--set", "amp=maybe", "--out", "run"),
              "--set amp='maybe' does not parse; amp must be true or false", CLI),
    Rejection(COMMAND, "train --set milestones=a,b", command("train", "--set", "milestones=a,b", "--out", "run"),
              "--set milestones='a,b' does not parse; milestones must be a list of increasing integers >= 1", CLI),
    Rejection(COMMAND, "train --set omega=1/0", command("train", "--set", "omega=1/0", "--out", "run"),
              "--set omega='1/0' does not parse; omega must be a number >= 0 (fractions like 20/255 are fine)", CLI),
    Rejection(COMMAND, "train --set epochs", command("train", "--set", "epochs", "--out", "run"),
              "--set 'epochs' is not of the form key=value", CLI),
    Rejection(COMMAND, "train --set epoch=3", command("train", "--set", "epoch=3", "--out", "run"),
              "parameter 'epoch' is not a config field (did you mean epochs?); see `python -m ccmix presets --fields` "
              "and TrainConfig", CLI),
    Rejection(COMMAND, "train --set dataset=synthetic --set topk=11",
              command("train", "--set", "dataset=synthetic", "--set", "topk=11", "--out", "run"),
              "topk=11 is not accepted; topk must be an integer in 1..10 (the number of classes)", CLI),
    Rejection(COMMAND, "eval --checkpoint missing.pt", command("eval", "--checkpoint", "missing.pt"),
              "checkpoint 'missing.pt' does not exist", CLI),
    Rejection(COMMAND, "eval --checkpoint empty.pt (a 0-byte file)", command("eval", "--checkpoint", "empty.pt"),
              "checkpoint 'empty.pt' is truncated or corrupt and cannot be read (0 bytes; EOFError: no detail)", CLI),
    Rejection(COMMAND, "eval --checkpoint crafted.pt (its epoch is -3)", command("eval", "--checkpoint", "crafted.pt"),
              "checkpoint 'crafted.pt' is inconsistent: its epoch is -3, and a saved epoch count is an integer >= 1",
              CLI),
    Rejection(COMMAND, "eval --checkpoint trained (a run folder)", command("eval", "--checkpoint", "trained"),
              "checkpoint 'trained' is a run folder, not a checkpoint file; give its 'trained/last.pt'", CLI),
    Rejection(COMMAND, "eval --checkpoint plain_folder (a folder without checkpoints)",
              command("eval", "--checkpoint", "plain_folder"),
              "checkpoint 'plain_folder' is a folder, not a checkpoint file; give a .pt file, such as a run folder's "
              "last.pt or best.pt", CLI),
    Rejection(COMMAND, "bench --device cuda (on a machine without CUDA)",
              without_cuda(command("bench", "--device", "cuda", "--quick")),
              "device='cuda' was asked for but no CUDA device is available; use device=cpu or auto", CLI),
    Rejection(COMMAND, "train --set mixer=mixup", command("train", "--set", "mixer=mixup", "--out", "run"),
              "mixer='mixup' is not accepted; mixer must be one of the registered mixers: cutmix", CLI),
    # run folders: what a training may do with a folder that already holds a run (ccmix.train.guard)
    Rejection(RUN_FOLDER, "train --set method=ce --out done (done holds a completed run of the default preset)",
              command("train", "--set", "method=ce", "--out", "done"),
              "'done' holds a run with other settings (method: 'concutmix' in the folder, 'ce' asked); resuming would "
              "mix two recipes, so nothing was changed: choose a new out_dir (--out) such as 'done-2', or ask for the "
              "same settings to resume", CLI),
    Rejection(RUN_FOLDER, "train --set epochs=300 --out done", command("train", "--set", "epochs=300", "--out", "done"),
              "'done' holds a run of epochs=200 and epochs=300 was asked; the learning-rate schedule depends on the "
              "number of epochs, so this is another recipe: choose a new out_dir (--out) such as 'done-2', or pass "
              "--extend-epochs (allow_more_epochs=True) to continue this run with epochs=300", CLI),
    Rejection(RUN_FOLDER, "train --set epochs=100 --out done", command("train", "--set", "epochs=100", "--out", "done"),
              "'done' holds a run of epochs=200 (200 completed) and epochs=100 was asked; a shorter schedule would "
              "relabel or discard trained epochs, so nothing was changed: choose a new out_dir (--out) such as "
              "'done-2'", CLI),
]

# --------------------------------------------------------------------------- README rendering


def markdown_cell(text: str, code: bool = False) -> str:
    """Return ``text`` safe inside a Markdown table cell (as a code span when ``code``)."""
    if code:
        return "`" + text.replace("|", "\\|") + "`"
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def markdown_row(row: Rejection) -> str:
    """Return the README table line of ``row``."""
    return f"| {row.area} | {markdown_cell(row.given, code=True)} | {markdown_cell(row.message)} |"


def markdown_table() -> str:
    """Return the README table of every rejection."""
    lines = ["| where | input | message |", "|---|---|---|"]
    return "\n".join(lines + [markdown_row(row) for row in REJECTIONS])


# --------------------------------------------------------------------------- tests


@pytest.fixture
def inputs_dir(tmp_path, monkeypatch) -> Path:
    """Return a working folder holding the rows' input files (paths in messages are relative to it)."""
    make_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("row", REJECTIONS, ids=lambda row: f"{row.area}: {row.given}")
def test_bad_input_is_rejected_with_its_message(row: Rejection, inputs_dir):
    if row.raises == CLI:
        status, stderr = row.submit()
        assert status in (1, 2) and stderr == f"error: {row.message}\n"
        assert not (inputs_dir / "run").exists()  # rejected before a run folder was made
    else:
        with pytest.raises(row.raises) as caught:
            row.submit()
        assert str(caught.value) == row.message


def test_readme_lists_every_rejection():
    text = README.read_text(encoding="utf-8")
    assert "## What is rejected" in text
    missing = [row.given for row in REJECTIONS if markdown_row(row) not in text]
    assert missing == [], f"README lacks these rows (regenerate with `python tests/test_bad_input.py`): {missing}"


def test_every_design_config_field_has_a_row():
    design_fields = ("dataset data_root imb method arch epochs batch_size lr seed device tau topk omega l_d_warm alpha "
                     "beta temperature cutmix_prob warmup_epochs milestones schedule feat_dim classifier "
                     "foreground_sampler").split()
    covered = " ".join(row.given for row in REJECTIONS)
    assert [name for name in design_fields if f"{name}=" not in covered] == []


def test_the_preset_names_in_the_messages_are_current():
    from ccmix.config.presets import PRESETS

    assert PRESET_NAMES == ", ".join(PRESETS)
    with pytest.raises(ConfigError, match="is unknown"):
        preset("cifar10_imb1")


if __name__ == "__main__":
    print(markdown_table())
