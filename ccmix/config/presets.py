"""The published presets of Contrastive CutMix and their published accuracies.

Presets follow the run scripts published with Contrastive CutMix (Pan et al.,
"Enhanced Long-Tailed Recognition with Contrastive CutMix Augmentation",
IEEE TIP 2024); the method is described in ``docs/method.md``. A config reproduces a
preset when every recipe field equals the preset's (seed and runtime fields may differ).
Every name here is also importable from :mod:`ccmix.config.fields`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from ccmix.config.fields import PROFILED_DATASETS, TrainConfig, recipe_differences
from ccmix.config.rules import ConfigError

# Training precision of the presets (evaluation always runs in fp32). The published runs train in fp32.
# CIFAR presets keep fp32: ResNet-32 on 32x32 images gains little from bf16, so nothing is traded for speed.
# ImageNet-scale presets train under bf16 autocast on CUDA (weights, BatchNorm statistics and the losses stay
# fp32): it roughly halves the time of these 90-180-epoch ResNet-50/152 runs; set amp=False for fp32.
CIFAR_PRESET_AMP = False
IMAGENET_PRESET_AMP = True
# Every published script runs nn.DataParallel over 4 GPUs (no --gpu, device_ids [0, 1, 2, 3]): BatchNorm normalises
# each quarter of the forward batch alone, running statistics from the first quarter (bn_chunks, docs/method.md).
PUBLISHED_BN_CHUNKS = 4


def _cifar(dataset: str, imb: int, tau: float, topk: int, omega: float, **extra) -> TrainConfig:
    return TrainConfig(dataset=dataset, imb=float(imb), tau=tau, topk=topk, omega=omega, amp=CIFAR_PRESET_AMP,
                       bn_chunks=PUBLISHED_BN_CHUNKS, **extra)


def _imagenet(arch: str, epochs: int, l_d_warm: int) -> TrainConfig:
    return TrainConfig(
        dataset="imagenet_lt", arch=arch, epochs=epochs, l_d_warm=l_d_warm, schedule="cosine",
        classifier="cosine", tau=0.99, topk=30, omega=200 / 255, lr=0.1, batch_size=256,
        weight_decay=5e-4, feat_dim=1024, temperature=0.07, alpha=1.0, beta=0.35, warmup_epochs=0,
        milestones=(), imb=1.0, amp=IMAGENET_PRESET_AMP, bn_chunks=PUBLISHED_BN_CHUNKS,
        eval_split="val",  # the published code evaluates on ImageNet_LT_val.txt / Places_LT_val.txt (docs/method.md)
    )


PRESETS: dict[str, TrainConfig] = {
    "cifar100_imb100": _cifar("cifar100", 100, 0.9, 30, 20 / 255),
    "cifar100_imb50": _cifar("cifar100", 50, 0.75, 30, 20 / 255),
    "cifar100_imb10": _cifar("cifar100", 10, 1.0, 30, 20 / 255),
    "cifar10_imb100": _cifar("cifar10", 100, 0.85, 3, 2 / 255),
    "cifar10_imb50": _cifar("cifar10", 50, 0.81, 3, 2 / 255),
    "cifar10_imb10": _cifar("cifar10", 10, 1.0, 3, 2 / 255),
    "cifar100_imb100_400": _cifar(
        "cifar100", 100, 0.79, 30, 20 / 255, epochs=400, warmup_epochs=10, milestones=(360, 380), l_d_warm=160
    ),
    "imagenet_lt_resnet50_100": _imagenet("resnet50", 100, 70),
    "imagenet_lt_resnext50_90": _imagenet("resnext50", 90, 60),
    "imagenet_lt_resnext50_180": _imagenet("resnext50", 180, 120),
    "inat2018_resnet50_100": dataclasses.replace(
        _imagenet("resnet50", 100, 80), dataset="inat2018", lr=0.2, weight_decay=1e-4, omega=1628 / 255,
        grad_accum_steps=2, cutmix_per_micro_batch=True,  # published: --batch-size 128 --grad_c, CutMix per 128
    ),
    # Places-LT: the published code reads it and names ResNet-152, but publishes no run script and no number;
    # the ImageNet-LT ResNet-50 script's settings are used at ResNet-152. Set pretrained=PATH to start from
    # ImageNet weights, as the published --reload_torch does.
    # No script, so no DataParallel setting to reproduce: BatchNorm over the whole batch (bn_chunks=1).
    "places_lt_resnet152": dataclasses.replace(_imagenet("resnet152", 100, 70), dataset="places_lt", bn_chunks=1),
}

# Published top-1 (%) of each preset, for reports that compare against it.
PUBLISHED_TOP1 = {
    "cifar100_imb100": 53.16, "cifar100_imb50": 57.40, "cifar100_imb10": 64.53,
    "cifar10_imb100": 86.07, "cifar10_imb50": 88.00, "cifar10_imb10": 91.42,
    "cifar100_imb100_400": 55.06, "imagenet_lt_resnet50_100": 58.49,
    "imagenet_lt_resnext50_90": 59.76, "imagenet_lt_resnext50_180": 60.37,
}
# Published many / medium / few top-1 (%), for the presets whose paper reports them.
PUBLISHED_SHOT_TOP1 = {
    "cifar100_imb100": {"many": 63.8, "medium": 50.5, "few": 43.8},
}


def preset(name: str) -> TrainConfig:
    """Return a fresh copy of the named preset's config."""
    if name not in PRESETS:
        raise ConfigError(f"preset {name!r} is unknown; accepted: {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name])


def preset_for(dataset: str, imb: float) -> str | None:
    """Return the name of the published preset for a CIFAR dataset and imbalance, or None."""
    imb_text = f"{imb:g}"
    name = f"{dataset}_imb{imb_text}"
    return name if name in PRESETS else None


def presets_table() -> str:
    """Return a plain-text table of every preset's main settings and its published top-1."""
    columns = ("preset", "dataset", "arch", "imb", "epochs", "tau", "topk", "omega", "l_d_warm", "published")
    rows = []
    for name, cfg in PRESETS.items():
        published = PUBLISHED_TOP1.get(name)
        rows.append((
            name, cfg.dataset, cfg.arch, f"{cfg.imb:g}" if cfg.dataset in PROFILED_DATASETS else "-",
            str(cfg.epochs), f"{cfg.tau:g}", str(cfg.topk), f"{cfg.omega:.4f}", str(cfg.l_d_warm),
            f"{published:.2f}" if published is not None else "-",
        ))
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- which preset a config reproduces


def matches_preset(config: TrainConfig | Mapping, name: str | None) -> bool:
    """True when ``config`` equals preset ``name`` in every recipe field (seed and runtime fields may differ)."""
    return name in PRESETS and not recipe_differences(config, PRESETS[name])


def preset_name_for(config: TrainConfig | Mapping, preset: str | None = None) -> str | None:
    """Return ``preset`` when given, else the first preset ``config`` matches, else None."""
    if preset is not None:
        return preset
    return next((name for name in PRESETS if matches_preset(config, name)), None)


def published_top1_for(config: TrainConfig | Mapping, preset: str | None = None) -> float | None:
    """Return the published top-1 (%) of the preset ``config`` reproduces (``preset`` or the first match), or None."""
    name = preset_name_for(config, preset)
    return PUBLISHED_TOP1.get(name) if matches_preset(config, name) else None


def preset_record(config: TrainConfig | Mapping, preset: str | None = None) -> dict:
    """Return ``{"preset": name or None, "published_top1": number or None}`` as a run folder records them."""
    return {"preset": preset_name_for(config, preset), "published_top1": published_top1_for(config, preset)}
