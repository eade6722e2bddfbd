"""Every front end reads a config's preset and published top-1 the same way, from the fields' roles.

The train notebook (what it prints), the command line's preset resolution, the run folder's
summary.json and ``ccmix.config.presets.published_top1_for`` must agree for every preset and seed: a
seed change keeps the published number (the seed is the replicate), a recipe change such as
``epochs`` loses it everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ccmix.config import fields as config_module
from ccmix.config.fields import DEFAULT_LIST_FILES, TrainConfig, recipe_fields
from ccmix.config.presets import PRESETS, PUBLISHED_TOP1, preset_name_for, published_top1_for

CASES = [(name, seed) for name in PRESETS for seed in (0, 1)]


@pytest.fixture
def data_root(tmp_path) -> Path:
    """A data folder holding the standard split files of every list dataset (validation checks they exist)."""
    for files in DEFAULT_LIST_FILES.values():
        for file_name in files:
            (tmp_path / file_name).write_text("images/a.jpg 0\n")
    return tmp_path


@pytest.fixture
def fake_repo(tmp_path_factory) -> Path:
    """A folder that looks like a checkout, so the notebook's relative paths resolve inside the test."""
    root = tmp_path_factory.mktemp("repo")
    (root / "ccmix").mkdir()
    (root / "ccmix" / "__init__.py").write_text("")
    (root / "pyproject.toml").write_text("[project]\nname = 'ccmix'\n")
    (root / "notebooks").mkdir()
    return root


def notebook_view(name: str, seed: int, data_root: Path, fake_repo: Path, **parameters):
    """Return (preset, published top-1, printed description) of the train notebook run with ``preset=name``."""
    from ccmix.experiments.train_params import resolve_train_parameters

    run = resolve_train_parameters(preset=name, seed=seed, data_root=str(data_root), repo_root=fake_repo,
                                   **parameters)
    return run, run.published_top1, run.describe()


def command_line_view(name: str, seed: int, data_root: Path, *sets: str):
    """Return (config, record) of ``python -m ccmix train --preset name --set seed=...``."""
    from ccmix.experiments.commands import train_config

    return train_config(name, [f"seed={seed}", f"data_root={data_root}", *sets])


def summary_view(config: TrainConfig, preset: str | None, folder: Path) -> dict:
    """Return summary.json's dict as training builds it for ``fit(config, out, preset=preset)``."""
    from ccmix.train.run_folder import RunFolder

    run_folder = RunFolder(folder, writer=False)
    run_folder.start_summary(config, preset_name_for(config, preset), world_size=1)
    return run_folder.summary("running", 0, None, 0.0)


@pytest.mark.parametrize("name, seed", CASES)
def test_every_front_end_agrees_on_the_published_number(name, seed, data_root, fake_repo, tmp_path):
    expected = PUBLISHED_TOP1.get(name)
    run, notebook_published, printed = notebook_view(name, seed, data_root, fake_repo)
    assert run.config.seed == seed and run.preset == name
    assert notebook_published == expected
    if expected is not None:
        assert f"published top-1 {expected:.2f}" in printed
    config, record = command_line_view(name, seed, data_root)
    assert config == run.config.replace(data_root=str(data_root))
    assert record == {"preset": name, "published_top1": expected}
    for given in (name, None):  # the notebook hands its explicit preset to training; the CLI may give none
        summary = summary_view(run.config, given, tmp_path)
        assert (summary["preset"], summary["published_top1"]) == (name, expected)
    assert published_top1_for(run.config) == published_top1_for(run.config, name) == expected


@pytest.mark.parametrize("name, seed", CASES)
def test_a_recipe_change_loses_the_published_number_everywhere(name, seed, data_root, fake_repo, tmp_path):
    epochs = PRESETS[name].epochs - 1
    run, notebook_published, printed = notebook_view(name, seed, data_root, fake_repo, epochs=epochs)
    assert run.preset is None and notebook_published is None and "published top-1 " not in printed.splitlines()[2]
    config, record = command_line_view(name, seed, data_root, f"epochs={epochs}")
    assert record == {"preset": name, "published_top1": None}
    assert (summary_view(config, name, tmp_path)["published_top1"], summary_view(config, None, tmp_path)["preset"]) == (
        None, None)
    assert published_top1_for(config, name) is None and published_top1_for(config) is None


def another_value(config: TrainConfig, field: str):
    """Return a value of ``field`` that differs from ``config``'s and that its rule's kind can hold."""
    rule = config_module.field_rule(field)
    value = getattr(config, field)
    if rule.choices is not None:
        return next(choice for choice in rule.choices if choice != value)
    if rule.kind == "bool":
        return True if value is None else not value
    if rule.kind == "ints":
        return (*value, value[-1] + 1) if value else (1,)
    if rule.kind in ("str", "path"):
        return "elsewhere"
    return 1 if value is None else value + 1


@pytest.mark.parametrize("field", recipe_fields())
def test_every_recipe_field_is_compared(field):
    reference = PRESETS["cifar100_imb100"]
    assert published_top1_for(reference.replace(**{field: another_value(reference, field)})) is None


@pytest.mark.parametrize("field", config_module.fields_with_role("runtime"))
def test_no_runtime_field_changes_the_match(field):
    reference = PRESETS["cifar10_imb100"]
    changed = reference.replace(**{field: another_value(reference, field)})
    assert published_top1_for(changed) == PUBLISHED_TOP1["cifar10_imb100"]


def test_fit_records_what_the_functions_say(tmp_path, monkeypatch):
    from ccmix.train.fit import fit

    tiny = TrainConfig(dataset="synthetic", synthetic_classes=4, imb=10, topk=2, epochs=1, batch_size=16,
                       max_steps_per_epoch=1, warmup_epochs=0, milestones=(), l_d_warm=0, feat_dim=16)
    monkeypatch.setitem(PRESETS, "tiny_synthetic", tiny)
    monkeypatch.setitem(PUBLISHED_TOP1, "tiny_synthetic", 12.34)
    replicate = tiny.replace(seed=1, num_workers=0, device="cpu", progress=False, pipeline="classic")
    summary = fit(replicate, tmp_path / "seed1")
    assert (summary["preset"], summary["published_top1"]) == ("tiny_synthetic", 12.34)
    assert json.loads((tmp_path / "seed1" / "summary.json").read_text())["published_top1"] == 12.34
    changed = fit(replicate.replace(lr=0.05), tmp_path / "changed", preset="tiny_synthetic")
    assert (changed["preset"], changed["published_top1"]) == ("tiny_synthetic", None)
