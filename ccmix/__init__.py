"""ccmix: a research workbench for long-tailed recognition with Contrastive CutMix.

Implements Pan et al., "Enhanced Long-Tailed Recognition with Contrastive CutMix
Augmentation" (IEEE TIP 2024), on top of balanced contrastive learning (Zhu et al.,
"Balanced Contrastive Learning for Long-Tailed Visual Recognition", CVPR 2022).

The public API is importable from here (``from ccmix import fit, TrainConfig, preset``);
each name loads its module on first use, so ``import ccmix`` does not import torch.
The subpackages hold the jobs: ``config``, ``data``, ``models``, ``method``, ``train``,
``experiments`` and ``notebook``.
"""

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_PUBLIC = {
    "fit": "ccmix.train.fit",
    "evaluate_checkpoint": "ccmix.train.evaluation",
    "load_model": "ccmix.train.evaluation",
    "TrainConfig": "ccmix.config.fields",
    "ConfigError": "ccmix.config.rules",
    "preset": "ccmix.config.presets",
    "PRESETS": "ccmix.config.presets",
    "validate": "ccmix.config.validation",
    "resolve": "ccmix.config.validation",
    "build_datasets": "ccmix.data.datasets",
    "build_train_pipeline": "ccmix.data.pipelines.build",
    "longtail_counts": "ccmix.data.longtail",
    "longtail_indices": "ccmix.data.longtail",
    "build_model": "ccmix.models.bcl",
    "balanced_contrastive_loss": "ccmix.method.losses",
    "logit_adjusted_ce": "ccmix.method.losses",
    "semantic_label": "ccmix.method.losses",
    "cutmix": "ccmix.method.cutmix",
    "sample_boxes": "ccmix.method.cutmix",
    "CutMixBoxes": "ccmix.method.cutmix",
    "shot_accuracy": "ccmix.method.metrics",
    "train_step": "ccmix.method.step",
    "build_optimizer": "ccmix.method.step",
    "launch_torchrun": "ccmix.train.launch",
    "follow_run": "ccmix.train.launch",
    "run_sweep": "ccmix.experiments.sweep",
    "collect_results": "ccmix.experiments.results",
    "Mixer": "ccmix.method.mixers",
    "register_mixer": "ccmix.method.mixers",
}


def __getattr__(name: str):
    """Return the public ``name`` from the module that defines it (PEP 562)."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'ccmix' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


__all__ = ["__version__", *_PUBLIC]
