"""Figures of an ablation grid: each point's accuracy with its 95 % CI over seeds, and the per-epoch statistics
of the semantic label (Contrastive CutMix's contrastive soft label: Pan et al., "Enhanced Long-Tailed
Recognition with Contrastive CutMix Augmentation", IEEE TIP 2024) that runs record in metrics.jsonl.

The numbers come from :func:`ccmix.experiments.ablation.seed_table`; these functions only draw them and
return a ``matplotlib.figure.Figure`` (no pyplot): save one with :func:`ccmix.notebook.viz.save_figure`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ccmix.notebook.viz_runs import as_runs

# panel -> the seed_table metric drawn in it (final-epoch accuracies)
SHOT_PANELS = {"overall": "final_top1", "many": "final_many", "medium": "final_medium", "few": "final_few"}
SEMANTIC_PREFIX = "semantic_"


def point_labels(table: pd.DataFrame) -> list[str]:
    """Return one short label per row of a seed table: the key values that differ between rows, ``field=value``
    joined by commas."""
    keys = table.attrs.get("keys", [])
    keys = [key for key in keys if table[key].astype(str).nunique() > 1] or keys
    if not keys:
        return [f"point {index}" for index in range(len(table))]
    return [", ".join(f"{key}={_short(row[key])}" for key in keys) for _, row in table.iterrows()]


def _short(value) -> str:
    return f"{value:g}" if isinstance(value, (float, np.floating)) else str(value)


def ablation_figure(table: pd.DataFrame, panels: dict[str, str] | None = None) -> Figure:
    """Return one panel per shot group (overall, many, medium, few): each grid point's mean final accuracy (%)
    with its 95 % CI bar over seeds. A point run with one seed is drawn hollow, without a bar (its spread is
    unknown); a group without classes says "empty"."""
    panels = dict(SHOT_PANELS if panels is None else panels)
    labels = point_labels(table)
    height = max(2.5, 0.45 * len(labels) + 1.2)
    fig = Figure(figsize=(3.2 * len(panels) + 2.5, height), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    positions = np.arange(len(labels))
    for ax, (title, metric) in zip(axes, panels.items()):
        means = pd.to_numeric(table.get(f"{metric}_mean"), errors="coerce") if len(table) else pd.Series(dtype=float)
        cis = pd.to_numeric(table.get(f"{metric}_ci"), errors="coerce") if len(table) else pd.Series(dtype=float)
        spread = means.notna() & cis.notna()
        alone = means.notna() & cis.isna()
        if spread.any():
            ax.errorbar(means[spread], positions[spread.to_numpy()], xerr=cis[spread], fmt="o", color="C0",
                        capsize=3, label="mean ± 95% CI")
        if alone.any():
            ax.plot(means[alone], positions[alone.to_numpy()], "o", mfc="none", color="C0", label="one seed (no CI)")
        if not means.notna().any():
            ax.text(0.5, 0.5, "empty", transform=ax.transAxes, ha="center", va="center", color="0.4")
        ax.set(title=title, xlabel="final accuracy (%)")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(positions, labels)
    axes[0].invert_yaxis()
    handles = {h.get_label(): h for ax in axes for h in ax.get_legend_handles_labels()[0]}
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=len(handles),
                   fontsize="small")
    return fig


def semantic_keys(runs) -> list[str]:
    """Return the numeric per-epoch metrics.jsonl columns whose names start with ``semantic_`` in any of the
    runs, sorted ([] when no run records them)."""
    keys = set()
    for record in as_runs(runs):
        metrics = record.metrics
        keys |= {c for c in metrics.columns if str(c).startswith(SEMANTIC_PREFIX) and metrics[c].notna().any()}
    return sorted(keys)


def semantic_figure(runs, labels: Sequence[str] | None = None) -> Figure | None:
    """Return one panel per semantic-label statistic (see :func:`semantic_keys`) against epoch, a line per run
    (runs sharing a label share a colour), or None when no run records any."""
    records = as_runs(runs)
    keys = semantic_keys(records)
    if not keys:
        return None
    names = list(labels) if labels is not None else [record.name for record in records]
    colours = {name: f"C{index % 10}" for index, name in enumerate(dict.fromkeys(names))}
    columns = min(3, len(keys))
    rows = -(-len(keys) // columns)
    fig = Figure(figsize=(4.2 * columns, 3.0 * rows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for ax, key in zip(axes, keys):
        for record, name in zip(records, names):
            metrics = record.metrics
            if key not in metrics or "epoch" not in metrics:
                continue
            data = metrics[["epoch", key]].dropna()
            ax.plot(data["epoch"], data[key], marker="o", markersize=3, color=colours[name], alpha=0.8)
        ax.set(title=key[len(SEMANTIC_PREFIX):].replace("_", " "), xlabel="epoch")
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    handles = [axes[0].plot([], [], color=colour, label=name)[0] for name, colour in colours.items()]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(4, len(handles)), fontsize="small")
    return fig


__all__ = ["SEMANTIC_PREFIX", "SHOT_PANELS", "ablation_figure", "point_labels", "semantic_figure", "semantic_keys"]
