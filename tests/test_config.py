"""Config: presets match the published scripts, overrides parse, bad values fail with one sentence."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from ccmix.config.fields import TrainConfig
from ccmix.config.presets import PRESETS, preset, preset_for, presets_table
from ccmix.config.rules import ConfigError
from ccmix.config.validation import apply_overrides, parse_set_arguments, validate

EXPECTED_CIFAR = {  # the published run scripts: imb, tau, topk, omega numerator/denominator
    "cifar100_imb100": (100, 0.9, 30, 20 / 255),
    "cifar100_imb50": (50, 0.75, 30, 20 / 255),
    "cifar100_imb10": (10, 1.0, 30, 20 / 255),
    "cifar10_imb100": (100, 0.85, 3, 2 / 255),
    "cifar10_imb50": (50, 0.81, 3, 2 / 255),
    "cifar10_imb10": (10, 1.0, 3, 2 / 255),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_CIFAR))
def test_cifar_presets_follow_the_published_scripts(name):
    config = preset(name)
    imb, tau, topk, omega = EXPECTED_CIFAR[name]
    assert (config.imb, config.tau, config.topk) == (imb, tau, topk)
    assert config.omega == pytest.approx(omega)
    assert config.dataset == name.split("_")[0]
    shared = (config.arch, config.epochs, config.batch_size, config.lr, config.weight_decay, config.warmup_epochs,
              config.milestones, config.feat_dim, config.alpha, config.beta, config.temperature, config.cutmix_prob,
              config.l_d_warm, config.classifier)
    assert shared == ("resnet32", 200, 256, 0.15, 5e-4, 5, (160, 180), 128, 2.0, 0.6, 0.1, 0.5, 100, "linear")


def test_long_and_imagenet_presets():
    long_run = preset("cifar100_imb100_400")
    assert (long_run.epochs, long_run.warmup_epochs, long_run.milestones, long_run.l_d_warm, long_run.tau) == (
        400, 10, (360, 380), 160, 0.79)
    for name, arch, epochs, warm in [("imagenet_lt_resnet50_100", "resnet50", 100, 70),
                                     ("imagenet_lt_resnext50_90", "resnext50", 90, 60),
                                     ("imagenet_lt_resnext50_180", "resnext50", 180, 120)]:
        config = preset(name)
        assert (config.arch, config.epochs, config.l_d_warm, config.schedule, config.classifier) == (
            arch, epochs, warm, "cosine", "cosine")
        assert (config.tau, config.topk, config.lr, config.feat_dim, config.temperature, config.alpha,
                config.beta, config.warmup_epochs) == (0.99, 30, 0.1, 1024, 0.07, 1.0, 0.35, 0)
        assert config.omega == pytest.approx(200 / 255)
    inat = preset("inat2018_resnet50_100")
    assert (inat.dataset, inat.lr, inat.weight_decay, inat.l_d_warm, inat.batch_size // inat.grad_accum_steps) == (
        "inat2018", 0.2, 1e-4, 80, 128)
    assert inat.omega == pytest.approx(1628 / 255)


def test_preset_returns_a_copy_and_preset_for_maps_dataset_and_imb():
    first = preset("cifar10_imb100")
    first.tau = 0.0
    assert preset("cifar10_imb100").tau == 0.85
    assert preset_for("cifar100", 100) == "cifar100_imb100"
    assert preset_for("cifar10", 50.0) == "cifar10_imb50"
    assert preset_for("cifar10", 37) is None


def test_presets_table_lists_every_preset_once():
    table = presets_table()
    for name in PRESETS:
        assert sum(line.split()[0] == name for line in table.splitlines()[2:]) == 1
    assert "53.16" in table and "86.07" in table


@pytest.mark.integration
def test_presets_command_prints_the_table():
    result = subprocess.run([sys.executable, "-m", "ccmix", "presets"], capture_output=True, text=True, check=True)
    assert "cifar100_imb100_400" in result.stdout and "inat2018_resnet50_100" in result.stdout


def test_set_values_parse_to_the_field_type():
    parsed = parse_set_arguments(["omega=20/255", "epochs=3", "cutmix_per_sample=true", "milestones=2,4",
                                  "max_steps_per_epoch=none", "method=la"])
    assert parsed == {"omega": pytest.approx(20 / 255), "epochs": 3, "cutmix_per_sample": True,
                      "milestones": (2, 4), "max_steps_per_epoch": None, "method": "la"}
    config = apply_overrides(TrainConfig(), parsed)
    assert config.milestones == (2, 4) and isinstance(config.epochs, int)


@pytest.mark.parametrize("item, fragment", [
    ("epochs=three", "epochs must be an integer >= 1"),
    ("omega=a/b", r"omega must be a number >= 0 \(fractions like 20/255 are fine\)"),
    ("amp=maybe", "amp must be true or false"),
    ("milestones=1,x", "list of increasing integers"),
    ("nonsense=1", "'nonsense' is not a config field"),
    ("epochs", "not of the form key=value"),
])
def test_set_values_that_do_not_parse_fail_with_a_sentence(item, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_set_arguments([item])


def test_python_values_are_coerced_or_rejected():
    assert apply_overrides(TrainConfig(), {"epochs": 5.0, "imb": 10}).imb == 10.0
    with pytest.raises(ConfigError, match="epochs must be an integer >= 1"):
        apply_overrides(TrainConfig(), {"epochs": 2.5})
    with pytest.raises(ConfigError, match="not a config field"):
        apply_overrides(TrainConfig(), {"topK": 3})


BAD_VALUES = [
    ({"imb": 0.5}, "imb=0.5 is not accepted"),
    ({"dataset": "mnist"}, "dataset='mnist' is not accepted; dataset must be one of: cifar10, "),
    ({"method": "mixup"}, "method='mixup' is not accepted"),
    ({"arch": "vgg"}, "arch='vgg' is not accepted"),
    ({"foreground_sampler": "random"}, "foreground_sampler='random' is not accepted"),
    ({"epochs": 0}, "epochs=0 is not accepted"),
    ({"batch_size": 1}, "batch_size=1 is not accepted"),
    ({"topk": 0}, "topk=0 is not accepted; topk must be an integer >= 1"),
    ({"topk": 101}, r"topk=101 is not accepted; topk must be an integer in 1..100 \(the number of classes\)"),
    ({"omega": -0.1}, "omega=-0.1 is not accepted; omega must be a number >= 0"),
    ({"omega": float("inf")}, "omega=inf is not accepted; omega must be a finite number >= 0"),
    ({"cutmix_prob": 1.2}, r"cutmix_prob=1.2 is not accepted; cutmix_prob must be a number in \[0, 1\]"),
    ({"classifier": "mlp"}, "classifier='mlp' is not accepted"),
    ({"schedule": "poly"}, "schedule='poly' is not accepted"),
    ({"pipeline": "turbo"}, "pipeline='turbo' is not accepted"),
    ({"milestones": (180, 160)}, r"milestones=\[180, 160\] is not accepted; milestones must be a list of increasing"),
    ({"milestones": [1, "a"]}, r"milestones=\[1, 'a'\] is not accepted"),
    ({"lr": 0.0}, "lr=0.0 is not accepted; lr must be a number > 0"),
    ({"lr": float("inf")}, "lr=inf is not accepted; lr must be a finite number > 0"),
    ({"lr": float("nan")}, "lr=nan is not accepted; lr must be a finite number > 0"),
    ({"epochs": "5"}, "epochs='5' is not accepted; epochs must be an integer >= 1"),
    ({"amp": 1}, "amp=1 is not accepted; amp must be true or false"),
    ({"seed": 2**32}, "seed=4294967296 is not accepted; seed must be an integer in 0..4294967295"),
    ({"seed": -1}, "seed=-1 is not accepted"),
    ({"subset_seed": 2**40}, "subset_seed=1099511627776 is not accepted"),
    ({"data_root": ""}, "data_root='' is not accepted; data_root must be a path"),
    ({"sync_bn": "yes"}, "sync_bn='yes' is not accepted; sync_bn must be true or false or None"),
    ({"few_threshold": 200}, "few_threshold=200 is not accepted"),
    ({"batch_size": 10, "grad_accum_steps": 3}, "grad_accum_steps=3 is not accepted"),
]


@pytest.mark.parametrize("changes, message", BAD_VALUES)
def test_validation_names_parameter_value_and_accepted(changes, message):
    with pytest.raises(ConfigError, match=message) as caught:
        validate(TrainConfig().replace(**changes))
    assert "\n" not in str(caught.value)


def test_topk_range_follows_the_dataset(tmp_path):
    assert validate(preset("cifar10_imb100").replace(topk=10)).topk == 10
    with pytest.raises(ConfigError, match="1..10"):
        validate(preset("cifar10_imb100").replace(topk=11))
    with pytest.raises(ConfigError, match="1..4"):
        validate(TrainConfig(dataset="synthetic", synthetic_classes=4, topk=5))


def test_missing_data_root_is_rejected_for_folder_and_list_datasets(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match="data_root=.*nowhere.* is not accepted for dataset 'folder'"):
        validate(TrainConfig(dataset="folder", data_root=str(missing), topk=1))
    with pytest.raises(ConfigError, match="data_root=.*nowhere.* is not accepted for dataset 'imagenet_lt'"):
        validate(TrainConfig(dataset="imagenet_lt", data_root=str(missing)))
    tmp_path.joinpath("root").mkdir()
    with pytest.raises(ConfigError, match="train_list=.*ImageNet_LT_train.txt.* the file does not exist"):
        validate(TrainConfig(dataset="imagenet_lt", data_root=str(tmp_path / "root")))


def test_unknown_preset_is_rejected():
    with pytest.raises(ConfigError, match="preset 'cifar100_imb7' is unknown; accepted: cifar100_imb100"):
        preset("cifar100_imb7")


def test_config_round_trips_through_json():
    config = preset("cifar100_imb100_400").replace(seed=3, sync_bn=True)
    assert TrainConfig.from_dict(__import__("json").loads(config.to_json())) == config


@pytest.mark.integration
def test_import_ccmix_is_cheap():
    code = "import sys, ccmix, ccmix.config.fields; print(sorted(m for m in ('torch', 'pandas', 'matplotlib') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# --------------------------------------------------------------------------- field metadata and what derives from it


def test_every_field_declares_a_role_and_a_help_line_and_its_rule_accepts_its_default():
    from dataclasses import fields

    from ccmix.config.fields import ROLES, field_rule

    for f in fields(TrainConfig):
        assert f.metadata["role"] in ROLES, f.name
        assert f.metadata["help"] and "\n" not in f.metadata["help"], f.name
        assert field_rule(f.name).check(f.name, f.default) == f.default


def test_roles_split_the_fields_and_the_documented_decisions_hold():
    from ccmix.config.fields import field_names, fields_with_role, recipe_fields

    recipe, seed, runtime = recipe_fields(), fields_with_role("seed"), fields_with_role("runtime")
    assert sorted(recipe + seed + runtime) == sorted(field_names())
    assert seed == ("seed",)
    assert {"device", "num_workers", "pipeline", "amp", "channels_last", "compile", "deterministic", "sync_bn",
            "data_root", "progress", "eval_interval"} <= set(runtime)
    assert {"method", "dataset", "imb", "epochs", "arch", "max_steps_per_epoch", "subset_seed", "omega"} <= set(recipe)
    with pytest.raises(ValueError, match="role 'learned' is unknown"):
        fields_with_role("learned")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_validates(name, tmp_path):
    from ccmix.config.fields import DEFAULT_LIST_FILES

    config = preset(name)
    if config.dataset in DEFAULT_LIST_FILES:  # list datasets: the split files must exist before data loads
        for file_name in DEFAULT_LIST_FILES[config.dataset]:
            (tmp_path / file_name).write_text("images/a.jpg 0\n")
        config = config.replace(data_root=str(tmp_path))
    assert validate(config) is config


def test_omega_above_one_is_the_published_inaturalist_setting():
    inat = preset("inat2018_resnet50_100")
    assert inat.omega > 1
    assert validate(TrainConfig(dataset="synthetic", topk=3, omega=1628 / 255)).omega == pytest.approx(1628 / 255)


def test_recipe_differences_compare_configs_and_config_dicts():
    from ccmix.config.fields import recipe_differences

    base = preset("cifar100_imb100")
    changed = base.replace(seed=1, device="cpu", amp=not base.amp, epochs=5, milestones=(2, 4))
    assert recipe_differences(changed, base) == ["epochs", "milestones"]
    assert recipe_differences(changed.to_dict(), base) == ["epochs", "milestones"]
    assert recipe_differences(changed, base, roles=("recipe", "seed")) == ["epochs", "milestones", "seed"]
    assert recipe_differences(changed, base, roles=("runtime",)) == ["device", "amp"]
    saved = {key: value for key, value in base.to_dict().items() if key != "tau"}  # written before tau existed
    assert recipe_differences(saved, base.replace(tau=0.5)) == []


def test_preset_matching_ignores_seed_and_runtime_fields_only():
    from ccmix.config.presets import matches_preset, preset_name_for, preset_record, published_top1_for

    seeded = preset("cifar100_imb100").replace(seed=1, device="cpu", num_workers=0, sync_bn=True,
                                               amp=not PRESETS["cifar100_imb100"].amp)
    assert matches_preset(seeded, "cifar100_imb100") and preset_name_for(seeded) == "cifar100_imb100"
    assert published_top1_for(seeded) == 53.16 == published_top1_for(seeded, "cifar100_imb100")
    assert preset_record(seeded) == {"preset": "cifar100_imb100", "published_top1": 53.16}
    shorter = seeded.replace(epochs=5)
    assert not matches_preset(shorter, "cifar100_imb100") and preset_name_for(shorter) is None
    assert preset_record(shorter, "cifar100_imb100") == {"preset": "cifar100_imb100", "published_top1": None}
    assert published_top1_for(seeded, "cifar10_imb100") is None  # an explicit name it does not reproduce
    assert not matches_preset(seeded, "no_such_preset") and not matches_preset(seeded, None)
    assert published_top1_for(preset("inat2018_resnet50_100")) is None  # no published number recorded


def test_resume_differences_allow_epochs_and_runtime_changes_only():
    from ccmix.config.fields import resume_differences

    saved = TrainConfig(dataset="synthetic", topk=3).to_dict()
    allowed = TrainConfig(dataset="synthetic", topk=3, epochs=400, device="cpu", pipeline="classic", amp=False)
    assert resume_differences(saved, allowed) == []
    assert resume_differences(saved, allowed.replace(seed=2, max_steps_per_epoch=3)) == ["seed", "max_steps_per_epoch"]
    assert resume_differences(saved, allowed.replace(method="la")) == ["method"]


def test_config_error_carries_its_parts_and_rewords_for_another_front_end():
    import pickle

    with pytest.raises(ConfigError) as caught:
        validate(TrainConfig(epochs=0))
    error = caught.value
    assert (error.field, error.value, error.accepted) == ("epochs", 0, "an integer >= 1")
    assert str(error) == "epochs=0 is not accepted; epochs must be an integer >= 1"
    assert str(error.with_source("overrides")) == "overrides epochs=0 is not accepted; epochs must be an integer >= 1"
    assert str(pickle.loads(pickle.dumps(error))) == str(error)
    free = ConfigError("a sentence of its own")
    assert free.field is None and str(free) == "a sentence of its own" and free.with_source("x") is free


def test_check_parameter_applies_a_field_rule_or_a_rule_of_its_own():
    from ccmix.config.validation import check_parameter

    assert check_parameter("epochs", 3.0, optional=True) == 3
    assert check_parameter("epochs", None, optional=True) is None
    with pytest.raises(ConfigError) as caught:
        check_parameter("epochs", 2.5, optional=True, none_means="the preset's")
    assert str(caught.value) == ("parameter epochs=2.5 is not accepted; epochs must be an integer >= 1 or None "
                                 "(the preset's)")
    with pytest.raises(ConfigError, match=r"parameter workers=0 is not accepted; workers must be an integer >= 1$"):
        check_parameter("workers", 0, kind="int", minimum=1)


@pytest.mark.parametrize("changes, field", [
    ({"feat_dim": 10**9}, "feat_dim"),
    ({"batch_size": 10**9}, "batch_size"),
    ({"dataset": "synthetic", "topk": 3, "synthetic_classes": 10**9}, "synthetic_classes"),
])
def test_absurd_sizes_are_refused_with_the_estimate(changes, field):
    with pytest.raises(ConfigError) as caught:
        validate(TrainConfig(**changes))
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}={changes[field]} is not accepted; a training step would need about ")
    assert "TiB of memory" in str(caught.value)


@pytest.mark.integration
def test_fields_are_listed_for_the_command_line():
    from ccmix.config.fields import field_names, fields_table

    table = fields_table()
    assert [line.split()[0] for line in table.splitlines()[1:]] == list(field_names())
    result = subprocess.run([sys.executable, "-m", "ccmix", "presets", "--fields"], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == table
    helped = subprocess.run([sys.executable, "-m", "ccmix", "train", "--help"], capture_output=True, text=True,
                            check=True)
    assert "max_steps_per_epoch" in helped.stdout and "recipe" in helped.stdout


def test_every_command_prints_its_help():
    from ccmix.experiments.commands import build_parser

    parser = build_parser()
    subcommands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    assert parser.format_help().count("\n") > 5  # the top-level list formats every command's one-line help
    for name, command in subcommands.choices.items():
        assert name in command.format_help()
