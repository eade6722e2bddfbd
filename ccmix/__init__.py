"""ccmix: a research workbench for long-tailed recognition with Contrastive CutMix.

Implements Pan et al., "Enhanced Long-Tailed Recognition with Contrastive
CutMix Augmentation" (IEEE TIP 2024), on top of balanced contrastive learning
(Zhu et al., "Balanced Contrastive Learning for Long-Tailed Visual
Recognition", CVPR 2022).

``import ccmix`` is cheap: torch and the data stack load only when a function
that needs them is called.
"""

__version__ = "0.1.0"


def fit(config, out_dir, **options):
    """Train ``config`` into the run folder ``out_dir`` and return the run summary (see ccmix.engine.fit)."""
    from ccmix.engine import fit as _fit

    return _fit(config, out_dir, **options)


__all__ = ["fit", "__version__"]
