"""Config: presets match the published scripts, overrides parse, bad values fail with one sentence."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ccmix.config import (
    PRESETS,
    ConfigError,
    TrainConfig,
    apply_overrides,
    parse_set_arguments,
    preset,
    preset_for,
    presets_table,
    validate,
)

EXPECTED_CIFAR = {  # DESIGN section 5: imb, tau, topk, omega numerator/denominator
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
    ("epochs=three", "epochs takes an integer"),
    ("omega=a/b", "omega takes a number"),
    ("amp=maybe", "amp takes true or false"),
    ("milestones=1,x", "list of integers"),
    ("nonsense=1", "'nonsense' is not a config field"),
    ("epochs", "not of the form key=value"),
])
def test_set_values_that_do_not_parse_fail_with_a_sentence(item, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_set_arguments([item])


def test_python_values_are_coerced_or_rejected():
    assert apply_overrides(TrainConfig(), {"epochs": 5.0, "imb": 10}).imb == 10.0
    with pytest.raises(ConfigError, match="epochs takes an integer"):
        apply_overrides(TrainConfig(), {"epochs": 2.5})
    with pytest.raises(ConfigError, match="not a config field"):
        apply_overrides(TrainConfig(), {"topK": 3})


BAD_VALUES = [
    ({"imb": 0.5}, "imb=0.5 is not accepted"),
    ({"dataset": "mnist"}, "dataset 'mnist' is not accepted; choose one of"),
    ({"method": "mixup"}, "method 'mixup' is not accepted"),
    ({"arch": "vgg"}, "arch 'vgg' is not accepted"),
    ({"foreground_sampler": "random"}, "foreground_sampler 'random' is not accepted"),
    ({"epochs": 0}, "epochs=0 is not accepted"),
    ({"batch_size": 1}, "batch_size=1 is not accepted"),
    ({"topk": 0}, "topk=0 is not accepted; it must be an integer in 1..100"),
    ({"topk": 101}, "topk=101 is not accepted; it must be an integer in 1..100"),
    ({"omega": 1.5}, r"omega=1.5 is not accepted; it must lie in \[0, 1\]"),
    ({"omega": -0.1}, "omega=-0.1 is not accepted"),
    ({"cutmix_prob": 1.2}, r"cutmix_prob=1.2 is not accepted; it must lie in \[0, 1\]"),
    ({"classifier": "mlp"}, "classifier 'mlp' is not accepted"),
    ({"schedule": "poly"}, "schedule 'poly' is not accepted"),
    ({"pipeline": "turbo"}, "pipeline 'turbo' is not accepted"),
    ({"milestones": (180, 160)}, "milestones=.* is not accepted"),
    ({"lr": 0.0}, "lr=0.0 is not accepted"),
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


def test_import_ccmix_is_cheap():
    code = "import sys, ccmix, ccmix.config; print(sorted(m for m in ('torch', 'pandas', 'matplotlib') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
