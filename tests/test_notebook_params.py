"""Tests of ccmix.experiments.notebook_params: unknown notebook parameters, the train notebook's parameters turned into
a validated config and run folder, and the path rules."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from ccmix.config.presets import PRESETS, PUBLISHED_TOP1, preset
from ccmix.config.rules import ConfigError
from ccmix.experiments.locations import find_repo_root
from ccmix.experiments.notebook_params import (
    NOTEBOOK_PARAMETERS,
    check_notebook_parameters,
    injected_parameter_names,
    resolve_analyze_parameters,
    resolve_run_dirs,
)
from ccmix.experiments.train_params import describe_summary, nearest_base_preset, resolve_train_parameters, train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake_repo(tmp_path):
    """A folder that looks like a checkout: pyproject.toml, ccmix/__init__.py and notebooks/."""
    (tmp_path / "ccmix").mkdir()
    (tmp_path / "ccmix" / "__init__.py").write_text("")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'ccmix'\n")
    (tmp_path / "notebooks").mkdir()
    return tmp_path


def resolve(fake_repo, **params):
    return resolve_train_parameters(repo_root=fake_repo, **params)


def same_fields_except(config, reference, allowed: set[str]) -> list[str]:
    """Return the fields that differ between two configs and are not in ``allowed``."""
    return [f.name for f in dataclasses.fields(config)
            if f.name not in allowed and getattr(config, f.name) != getattr(reference, f.name)]


# --------------------------------------------------------------------------- unknown names


def test_injected_parameter_names_reads_only_papermill_cells():
    history = ["", "preset = None\nimb = 100\n", "# Parameters\nimb = 50\nepoch = 5\n", "x = 1", "# Parameters\nseed: int = 2\n"]
    assert injected_parameter_names(history) == ["imb", "epoch", "seed"]


def test_unknown_name_from_the_kernel_history_is_one_sentence():
    namespace = {"In": ["", "imb = 100", "# Parameters\nepoch = 5\n"], "imb": 100, "epoch": 5}
    with pytest.raises(ConfigError) as error:
        check_notebook_parameters(namespace, notebook="train")
    message = str(error.value)
    assert message.startswith("parameter 'epoch' is not a parameter of the train notebook")
    assert "epochs" in message and "\n" not in message


def test_config_field_passed_as_a_parameter_points_to_overrides():
    with pytest.raises(ConfigError, match=r"it is a config field, so pass it through overrides"):
        check_notebook_parameters(["topk"], notebook="train")


def test_variables_defined_after_the_parameters_are_not_parameters():
    # a re-run of the check cell inside a kernel: later cells defined `summary` and `record`
    namespace = {"In": ["", "imb = 100", "# Parameters\nimb = 10\n", "summary = fit(...)"], "imb": 10,
                 "summary": {"status": "completed"}, "record": object()}
    values = check_notebook_parameters(namespace, notebook="train")
    assert values["imb"] == 10 and values["method"] == NOTEBOOK_PARAMETERS["train"]["method"]


def test_plain_namespace_checks_data_values_only():
    import json

    namespace = {"json": json, "resolve": resolve, "_private": 1, "Path": Path, "imb": 10, "typo": "x"}
    with pytest.raises(ConfigError, match="'typo'"):
        check_notebook_parameters(namespace, notebook="train")
    del namespace["typo"]
    assert check_notebook_parameters(namespace, notebook="train")["imb"] == 10


def test_every_notebook_has_its_parameter_list():
    assert set(NOTEBOOK_PARAMETERS) == {"train", "explore_cutmix", "analyze", "sweep", "ablate"}
    check_notebook_parameters(["checkpoint", "figures_dir"], notebook="explore_cutmix")
    with pytest.raises(ConfigError, match="not a parameter of the analyze notebook"):
        check_notebook_parameters(["run_dir"], notebook="analyze")
    with pytest.raises(ValueError, match="notebook 'nope' is unknown"):
        check_notebook_parameters([], notebook="nope")


# --------------------------------------------------------------------------- presets and configs


def test_default_parameters_train_the_published_cifar100_imb100_preset(fake_repo):
    run = resolve(fake_repo)
    reference = preset("cifar100_imb100")
    assert same_fields_except(run.config, reference, {"data_root"}) == []
    assert run.config.data_root == str(fake_repo / "data")
    assert run.preset == "cifar100_imb100" and run.published_top1 == PUBLISHED_TOP1["cifar100_imb100"]
    assert run.run_name == "cifar100_imb100_concutmix_imb100_seed0"
    assert run.out_dir == fake_repo / "papermill_runs" / run.run_name
    assert run.figures_dir == fake_repo / "figures" / run.run_name


@pytest.mark.parametrize("dataset, imb", [("cifar10", 50), ("cifar100", 10), ("cifar10", 100)])
def test_published_combinations_use_their_preset(fake_repo, dataset, imb):
    run = resolve(fake_repo, dataset=dataset, imb=imb)
    name = f"{dataset}_imb{imb}"
    assert same_fields_except(run.config, PRESETS[name], {"data_root"}) == []
    assert run.preset == name and run.notes == []


def test_unpublished_imbalance_starts_from_the_nearest_preset_and_says_so(fake_repo):
    run = resolve(fake_repo, dataset="cifar100", imb=20)
    # nearest published imbalance on a log scale, computed here from the definition
    nearest = min((100, 50, 10), key=lambda published: abs(math.log(20 / published)))
    base = preset(f"cifar100_imb{nearest}")
    assert run.base == f"cifar100_imb{nearest}"
    assert same_fields_except(run.config, base, {"data_root", "imb"}) == []
    assert run.config.imb == 20.0 and run.preset is None
    assert run.run_name == "cifar100_concutmix_imb20_seed0"
    assert any("no published preset for cifar100 at imb 20" in note and run.base in note for note in run.notes)
    assert nearest_base_preset("cifar10", 200) == "cifar10_imb100"


@pytest.mark.parametrize("classes, imb, base", [(10, 100, "cifar10_imb100"), (10, 12, "cifar10_imb10"),
                                                 (20, 100, "cifar100_imb100")])
def test_folder_dataset_starts_from_the_cifar_preset_nearest_in_classes_and_imbalance(fake_repo, classes, imb, base):
    for split in ("train", "test"):
        for c in range(classes):
            (fake_repo / "images" / split / f"class{c:02d}").mkdir(parents=True)
    run = resolve(fake_repo, dataset="folder", data_root="images", imb=imb)
    assert run.base == base and run.config.dataset == "folder" and run.config.imb == imb
    assert run.config.topk <= classes
    assert nearest_base_preset("folder", imb, num_classes=classes) == base
    assert nearest_base_preset("folder", 100) == "cifar100_imb100"  # class count unknown: the CIFAR-100 recipe


def test_method_epochs_and_overrides_apply_and_the_published_number_no_longer_applies(fake_repo):
    run = resolve(fake_repo, method="la", epochs=5, overrides={"topk": 10, "omega": "20/255"})
    reference = preset("cifar100_imb100")
    assert (run.config.method, run.config.epochs, run.config.topk) == ("la", 5, 10)
    assert run.config.omega == pytest.approx(20 / 255)
    assert same_fields_except(run.config, reference, {"data_root", "method", "epochs", "topk", "omega"}) == []
    assert run.preset is None and run.published_top1 is None
    assert run.run_name == "cifar100_imb100_la_imb100_seed0"
    assert any("published top-1 53.16 does not apply" in note for note in run.notes)
    assert any("milestones 160, 180 lie beyond epoch 5" in note for note in run.notes)


def test_explicit_preset_brings_its_dataset_and_imbalance(fake_repo):
    run = resolve(fake_repo, preset="cifar10_imb10", seed=3, batch_size=128)
    assert (run.config.dataset, run.config.imb, run.config.seed, run.config.batch_size) == ("cifar10", 10.0, 3, 128)
    assert run.config.tau == PRESETS["cifar10_imb10"].tau
    assert run.run_name == "cifar10_imb10_concutmix_imb10_seed3"
    same = resolve(fake_repo, preset="cifar10_imb10", dataset="cifar10", imb=10)  # agreeing values are fine
    assert same.config == resolve(fake_repo, preset="cifar10_imb10").config and same.preset == "cifar10_imb10"
    moved = resolve(fake_repo, preset="cifar10_imb10", overrides={"imb": 50})  # on purpose, through overrides
    assert moved.config.imb == 50.0 and moved.config.tau == PRESETS["cifar10_imb10"].tau
    assert moved.run_name == "cifar10_concutmix_imb50_seed0" and moved.preset is None


@pytest.mark.parametrize("params, sentence", [
    ({"preset": "cifar10_imb100", "dataset": "cifar100"},
     "parameter dataset='cifar100' contradicts preset='cifar10_imb100'; that preset trains dataset='cifar10'; leave "
     "dataset None to take it from the preset, or change it through overrides"),
    ({"preset": "cifar10_imb100", "imb": 50},
     "parameter imb=50 contradicts preset='cifar10_imb100'; that preset trains imb=100.0; leave imb None to take "
     "it from the preset, or change it through overrides"),
])
def test_a_parameter_contradicting_the_explicit_preset_is_refused(fake_repo, params, sentence):
    with pytest.raises(ConfigError) as error:
        resolve(fake_repo, **params)
    assert str(error.value) == sentence and error.value.field == next(k for k in params if k != "preset")


def test_not_given_is_none_in_the_notebook_and_its_parameters_cell():
    import json

    assert set(NOTEBOOK_PARAMETERS["train"].values()) == {None}
    cells = json.loads((REPO / "notebooks" / "train.ipynb").read_text())["cells"]
    parameters = [cell for cell in cells if "parameters" in cell.get("metadata", {}).get("tags", [])]
    assert len(parameters) == 1 and not parameters[0].get("outputs")
    namespace: dict = {}
    exec("".join(parameters[0]["source"]), namespace)
    assert {key: namespace[key] for key in NOTEBOOK_PARAMETERS["train"]} == NOTEBOOK_PARAMETERS["train"]


def test_synthetic_caps_topk_at_its_classes(fake_repo):
    run = resolve(fake_repo, dataset="synthetic", overrides={"synthetic_classes": 2})
    assert run.config.topk == 2 and any("topk capped" in note for note in run.notes)
    assert run.run_name == "synthetic_concutmix_imb100_seed0"


@pytest.mark.parametrize("params, start", [
    ({"imb": "abc"}, "parameter imb='abc' is not accepted"),
    ({"imb": 0.5}, "parameter imb=0.5 is not accepted"),
    ({"epochs": 0}, "parameter epochs=0 is not accepted"),
    ({"epochs": 2.5}, "parameter epochs=2.5 is not accepted"),
    ({"seed": -1}, "parameter seed=-1 is not accepted"),
    ({"batch_size": 1}, "parameter batch_size=1 is not accepted"),
    ({"method": "mixup"}, "parameter method='mixup' is not accepted; method must be one of: ce, la, cutmix, bcl, "
                          "concutmix or None (the preset's)"),
    ({"seed": 2**32}, "parameter seed=4294967296 is not accepted; seed must be an integer in 0..4294967295"),
    ({"epochs": float("inf")}, "parameter epochs=inf is not accepted; epochs must be an integer >= 1"),
    ({"dataset": "mnist"}, "parameter dataset='mnist' is not accepted"),
    ({"device": "tpu"}, "parameter device='tpu' is not accepted"),
    ({"preset": "cifar100_imb7"}, "parameter preset='cifar100_imb7' is unknown"),
    ({"overrides": "topk=10"}, "parameter overrides='topk=10' is not accepted"),
    ({"overrides": {"topk": "ten"}}, "overrides topk='ten' is not accepted; topk must be an integer >= 1"),
    ({"overrides": {"lr": float("nan")}}, "overrides lr=nan is not accepted; lr must be a finite number > 0"),
    ({"overrides": {"bogus": 1}}, "overrides key 'bogus' is not a config field"),
    ({"overrides": {"topk": 1000}}, "topk=1000 is not accepted"),
    ({"out_dir": 5}, "parameter out_dir=5 is not accepted"),
    ({"nproc_per_node": 0}, "parameter nproc_per_node=0 is not accepted"),
])
def test_bad_values_stop_with_one_sentence(fake_repo, params, start):
    with pytest.raises(ConfigError) as error:
        resolve(fake_repo, **params)
    assert str(error.value).startswith(start)
    assert "\n" not in str(error.value)


# --------------------------------------------------------------------------- paths


def test_relative_paths_follow_the_documented_bases(fake_repo, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    run = resolve(fake_repo, out_dir="runs/mine", figures_dir="../figures/mine", data_root=str(elsewhere))
    assert run.out_dir == fake_repo / "runs" / "mine"
    assert run.figures_dir == fake_repo / "figures" / "mine"
    assert run.config.data_root == str(elsewhere)
    assert run.run_name == "mine"


def test_find_repo_root_walks_up_then_falls_back_to_the_package_checkout(fake_repo, tmp_path_factory):
    nested = fake_repo / "notebooks" / "deeper"
    nested.mkdir()
    assert find_repo_root(nested) == fake_repo.resolve()
    unrelated = tmp_path_factory.mktemp("unrelated")
    assert find_repo_root(unrelated) == REPO


def test_resolve_run_dirs_glob_list_and_none(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "config.json").write_text("{}")
    (tmp_path / "runs" / "not_a_run").mkdir()
    found = resolve_run_dirs("runs/*", base=tmp_path)
    assert [p.name for p in found] == ["a", "b"]
    assert [p.name for p in resolve_run_dirs([str(tmp_path / "runs" / "b"), "runs/a"], base=tmp_path)] == ["b", "a"]
    with pytest.raises(ConfigError, match="names no run folder"):
        resolve_run_dirs("runs/zzz*", base=tmp_path)
    with pytest.raises(ConfigError, match="tsne_max_items=2 is not accepted"):
        resolve_analyze_parameters(run_dirs=str(tmp_path / "runs" / "*"), tsne_max_items=2)


def test_describe_summary_labels_best_as_selected_on_test():
    summary = {"status": "completed", "epochs_completed": 2, "epochs": 2,
               "final": {"epoch": 2, "top1": 41.5, "many": 60.0, "medium": 40.0, "few": None},
               "best": {"epoch": 1, "top1": 42.25, "many": 61.0, "medium": 41.0, "few": None,
                        "note": "selected on the test set, optimistic"},
               "published_top1": None, "error": None}
    text = describe_summary(summary)
    assert "final top-1 41.50 (epoch 2)" in text and "60.00 / 40.00 / empty" in text
    assert "best top-1  42.25 (epoch 1; selected on the test set, optimistic)" in text


@pytest.mark.integration
def test_train_under_two_processes_follows_a_torchrun_subprocess(tmp_path):
    run = resolve_train_parameters(
        dataset="synthetic", epochs=1, batch_size=32, nproc_per_node=2, out_dir=str(tmp_path / "run"),
        overrides={"num_workers": 0, "max_steps_per_epoch": 2, "progress": False, "device": "cpu"},
    )
    summary = train(run)
    assert summary["status"] == "completed" and summary["world_size"] == 2
    assert (tmp_path / "run" / "launch.log").is_file() and (tmp_path / "run" / "last.pt").is_file()
