"""Figures for run folders and the CutMix explorer: each function returns a matplotlib Figure.

The figures are those a long-tailed-recognition study reads (Pan et al.,
"Enhanced Long-Tailed Recognition with Contrastive CutMix Augmentation",
IEEE TIP 2024; the many/medium/few split of Zhu et al., "Balanced Contrastive
Learning for Long-Tailed Visual Recognition", CVPR 2022): learning curves,
many/medium/few accuracy, per-class accuracy against training-set size, the
most confused class pairs, a t-SNE of test embeddings, and CutMix samples with
their area, semantic and final labels (CutMix: Yun et al., ICCV 2019).

Figures are built as ``matplotlib.figure.Figure`` objects without pyplot, so
this module never selects a backend: a notebook shows them inline
(``display(fig)`` or as a cell's last value) and :func:`save_figure` writes PNG
and SVG files with whatever backend is active.

Reading run folders lives in :mod:`ccmix.notebook.viz_runs` and the CutMix sample panels in
:mod:`ccmix.notebook.viz_samples`; their public names are importable from here too.
"""

from __future__ import annotations

import os
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ccmix.io import atomic_write
from ccmix.notebook.viz_runs import (
    GROUP_ORDER,
    RunRecord,
    UnusableRun,
    as_runs,
    labels_for,
    load_run,
    run_labels,
    run_problem,
    usable_runs,
)
from ccmix.notebook.viz_samples import gallery, label_bars, mixed_sample_panel, to_display_image

GROUP_COLORS = {"many": "#1f77b4", "medium": "#ff7f0e", "few": "#d62728"}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")


def _wrap(text: str, width: int = 60) -> str:
    """Return ``text`` broken into lines of at most ``width`` characters (long run labels in titles)."""
    return textwrap.fill(text, width=width, break_long_words=False) if text else text


# --------------------------------------------------------------------------- saving


def save_figure(fig: Figure, figures_dir: str | os.PathLike, name: str, dpi: int = 150,
                formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Return the written paths (PNG then SVG by default) after saving ``fig`` to ``figures_dir/name.<format>``,
    each file atomically (a reader never sees half a figure)."""
    stem = name[:-4] if name.lower().endswith((".png", ".svg")) else name
    if not _SAFE_NAME.match(stem):
        raise ValueError(
            f"figure name {name!r} is not accepted; use letters, digits and . _ + = - (no folders or spaces)"
        )
    unknown = [f for f in formats if f not in ("png", "svg", "pdf")]
    if unknown or not formats:
        raise ValueError(f"formats={list(formats)!r} is not accepted; choose from png, svg and pdf")
    folder = Path(figures_dir)
    paths = []
    for fmt in formats:
        target = folder / f"{stem}.{fmt}"
        atomic_write(target, lambda handle, fmt=fmt: fig.savefig(handle, format=fmt, dpi=dpi))
        paths.append(target)
    return paths


# --------------------------------------------------------------------------- training curves and accuracy


def learning_curves(runs, labels: Sequence[str] | None = None) -> Figure:
    """Return the learning curves: loss, train/test top-1, many/medium/few and lr per epoch (one run),
    or loss and test top-1 per run (several runs)."""
    records = as_runs(runs)
    names = labels_for(records, labels)
    if len(records) == 1:
        return _single_run_curves(records[0], names[0])
    fig = Figure(figsize=(11, 4), layout="constrained")
    ax_loss, ax_top1 = fig.subplots(1, 2)
    for record, name in zip(records, names):
        metrics = record.metrics
        if metrics.empty:
            continue
        line = _plot_series(ax_loss, metrics, "loss", label=name)
        color = line.get_color() if line is not None else None
        _plot_series(ax_top1, metrics, "top1", label=name, color=color)
        _plot_series(ax_top1, metrics, "train_top1", color=color, linestyle=":", alpha=0.6)
    ax_loss.set(title="training loss", xlabel="epoch", ylabel="loss")
    ax_top1.set(title="top-1 (solid: test, dotted: train)", xlabel="epoch", ylabel="top-1 (%)")
    ax_top1.legend(fontsize="small")
    return fig


def _single_run_curves(record: RunRecord, name: str) -> Figure:
    fig = Figure(figsize=(15, 3.6), layout="constrained")
    ax_loss, ax_top1, ax_shots, ax_lr = fig.subplots(1, 4)
    metrics = record.metrics
    if not metrics.empty:
        for column, label in (("loss", "total"), ("loss_ce", "CE"), ("loss_bcl", "BCL")):
            _plot_series(ax_loss, metrics, column, label=label)
        _plot_series(ax_top1, metrics, "train_top1", label="train (mixed images)")
        _plot_series(ax_top1, metrics, "top1", label="test")
        for group in GROUP_ORDER:
            _plot_series(ax_shots, metrics, group, label=group, color=GROUP_COLORS[group])
        _plot_series(ax_lr, metrics, "lr", label="lr")
    ax_loss.set(title="training loss", xlabel="epoch", ylabel="loss")
    ax_top1.set(title="top-1", xlabel="epoch", ylabel="top-1 (%)")
    ax_shots.set(title="test accuracy by shot group", xlabel="epoch", ylabel="accuracy (%)")
    ax_lr.set(title="learning rate", xlabel="epoch", ylabel="lr")
    for ax in (ax_loss, ax_top1, ax_shots):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.suptitle(_wrap(name, 100))
    return fig


class _WholeEpochLocator(MaxNLocator):
    """Epoch-axis ticks at whole epochs only (no 0.5 or 1.5), also on the narrow axis of a one-epoch run."""

    def __init__(self):
        super().__init__(integer=True)

    def tick_values(self, vmin, vmax):
        """Return MaxNLocator's ticks that are whole, or every whole epoch in [vmin, vmax] when under two are."""
        ticks = super().tick_values(vmin, vmax)
        whole = ticks[np.isclose(ticks, np.round(ticks))]
        return whole if len(whole) >= 2 else np.arange(np.ceil(vmin), np.floor(vmax) + 1)


def _plot_series(ax, metrics: pd.DataFrame, column: str, **style):
    """Plot ``column`` against epoch, skipping epochs without a value; return the line or None."""
    if column not in metrics or "epoch" not in metrics:
        return None
    data = metrics[["epoch", column]].dropna()
    if data.empty:
        return None
    marker = "o" if len(data) <= 20 else None
    (line,) = ax.plot(data["epoch"], data[column], marker=marker, markersize=3, **style)
    ax.xaxis.set_major_locator(_WholeEpochLocator())
    return line


def shot_table(runs, labels: Sequence[str] | None = None, which: str = "final") -> pd.DataFrame:
    """Return a long table (run, label, group, accuracy) of the summary's all/many/medium/few top-1 (%)."""
    if which not in ("final", "best"):
        raise ValueError(f"which={which!r} is not accepted; choose final or best")
    records = as_runs(runs)
    names = labels_for(records, labels)
    rows = []
    for record, name in zip(records, names):
        result = (record.summary or {}).get(which) or {}
        for group, key in (("all", "top1"), *((g, g) for g in GROUP_ORDER)):
            value = result.get(key)
            rows.append({"run": record.name, "label": name, "group": group,
                         "accuracy": float(value) if value is not None else np.nan})
    return pd.DataFrame(rows, columns=["run", "label", "group", "accuracy"])


def shot_bars(runs, labels: Sequence[str] | None = None, which: str = "final") -> Figure:
    """Return grouped bars of all/many/medium/few top-1 (%) for one or many runs.

    Runs that share a label are averaged and drawn with a standard-deviation error bar (give labels
    from ``run_labels(runs, exclude=("seed",))`` to pool seeds). An empty group (no class in it) is
    marked "empty" rather than drawn as 0.
    """
    import seaborn as sns

    table = shot_table(runs, labels, which)
    order = ["all", *GROUP_ORDER]
    fig = Figure(figsize=(max(6.0, 1.5 + 1.2 * table["label"].nunique() * 1.0), 4), layout="constrained")
    ax = fig.subplots()
    plotted = table.dropna(subset=["accuracy"])
    if not plotted.empty:
        sns.barplot(data=plotted, x="group", y="accuracy", hue="label", order=order, errorbar="sd", ax=ax,
                    palette="deep", capsize=0.1)
    for position, group in enumerate(order):
        if table.loc[table["group"] == group, "accuracy"].isna().all():
            ax.text(position, 1.0, "empty", ha="center", va="bottom", color="0.4", fontsize="small")
    ax.set_xlim(-0.5, len(order) - 0.5)
    ax.set_xticks(range(len(order)), [f"{g}\n(top-1)" if g == "all" else g for g in order])
    ax.set(xlabel="", ylabel=f"{which} accuracy on the evaluation set (%)", ylim=(0, 100),
           title=f"{which}-epoch accuracy by shot group" + (" (best: selected on the evaluation set)" if which == "best" else ""))
    if ax.get_legend() is not None:
        ax.legend(title=None, fontsize="small")
    return fig


def reproduction(results: pd.DataFrame) -> Figure:
    """Return grouped bars, one group per published preset that completed runs reproduce: the published top-1,
    our final and our best top-1 (mean over seeds, standard-deviation error bars), from
    ``ccmix.experiments.results.collect_results`` (or its ``reproduction_table``)."""
    from ccmix.experiments.results import reproduction_table

    table = results if "final_top1_mean" in results else reproduction_table(results)
    series = (("published", "published_top1", None, "0.55"), ("ours, final epoch", "final_top1_mean",
              "final_top1_std", "C0"), ("ours, best epoch (selected on the evaluation set)", "best_top1_mean", "best_top1_std", "C2"))
    fig = Figure(figsize=(max(6.0, 1.0 + 2.2 * len(table)), 4.2), layout="constrained")
    ax = fig.subplots()
    if table.empty:
        ax.text(0.5, 0.5, "no completed run reproduces a published preset\n(its recipe unchanged, any seed)",
                ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    positions, width = np.arange(len(table)), 0.27
    for offset, (label, mean_column, std_column, color) in zip((-width, 0.0, width), series):
        heights = table[mean_column].to_numpy(dtype=float)
        errors = table[std_column].fillna(0.0).to_numpy(dtype=float) if std_column else None
        bars = ax.bar(positions + offset, heights, width, yerr=errors, capsize=3, color=color, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize="x-small", padding=2)
    ax.set_xticks(positions, [f"{name}\n({int(runs)} run{'s' if runs != 1 else ''})"
                              for name, runs in zip(table.index, table["runs"])])
    ax.set(ylabel="test top-1 (%)", ylim=(0, 100), title="reproduction: published top-1 against ours")
    ax.legend(fontsize="small", loc="upper right")
    return fig


def per_class_vs_count(runs, labels: Sequence[str] | None = None) -> Figure:
    """Return per-class test accuracy (%) against training images per class (log x), one colour per run
    (one run: coloured by many/medium/few), with the shot thresholds marked."""
    records = [r for r in as_runs(runs)]
    names = labels_for(records, labels)
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.subplots()
    drawn = False
    for index, (record, name) in enumerate(zip(records, names)):
        table = record.per_class
        if table is None or table.empty:
            continue
        table = table.dropna(subset=["accuracy"])
        if len(records) == 1:
            for group in GROUP_ORDER:
                part = table[table["group"] == group]
                if not part.empty:
                    ax.scatter(part["train_count"], part["accuracy"], s=18, color=GROUP_COLORS[group],
                               label=f"{group} ({len(part)} classes)")
        else:
            ax.scatter(table["train_count"], table["accuracy"], s=16, alpha=0.7, color=f"C{index % 10}", label=name)
        drawn = True
    config = records[0].config
    many, few = config.get("many_threshold", 100), config.get("few_threshold", 20)
    for threshold, text in ((few, f"few < {few}"), (many, f"many > {many}")):
        ax.axvline(threshold, color="0.5", linestyle="--", linewidth=0.8)
        ax.text(threshold, 101, text, ha="center", va="bottom", fontsize="x-small", color="0.35")
    ax.set_xscale("log")
    ax.set(xlabel="training images of the class (log scale)", ylabel="test accuracy (%)", ylim=(-2, 108),
           title="per-class accuracy against training-set size")
    if drawn:
        ax.legend(fontsize="small", loc="lower right")
    else:
        ax.text(0.5, 0.5, "no per_class.csv yet", transform=ax.transAxes, ha="center")
    return fig


# --------------------------------------------------------------------------- errors and embeddings


def confused_pairs_table(preds, labels, class_names: Sequence[str] | None = None, num_classes: int | None = None,
                         top: int = 10) -> pd.DataFrame:
    """Return the ``top`` most frequent (true, predicted) confusions: true, predicted, names, count, and
    share (% of the true class's test images)."""
    from ccmix.method.metrics import confusion_matrix, top_confused_pairs

    preds = np.asarray(preds, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    if num_classes is None:
        num_classes = len(class_names) if class_names is not None else int(max(preds.max(), labels.max())) + 1
    confusion = confusion_matrix(preds, labels, num_classes)
    per_class = confusion.sum(dim=1)
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    rows = [
        {"true": t, "predicted": p, "true_name": names[t], "predicted_name": names[p], "count": n,
         "share": 100.0 * n / int(per_class[t])}
        for t, p, n in top_confused_pairs(confusion, k=top)
    ]
    return pd.DataFrame(rows, columns=["true", "predicted", "true_name", "predicted_name", "count", "share"])


def confused_pairs(runs=None, *, preds=None, labels=None, class_names: Sequence[str] | None = None, top: int = 10,
                   run_names: Sequence[str] | None = None) -> Figure:
    """Return horizontal bars of the most confused (true -> predicted) class pairs: one panel per run
    (from predictions.npz), or one panel for the given ``preds`` and ``labels`` arrays."""
    panels = []
    if runs is not None:
        records = as_runs(runs)
        titles = labels_for(records, run_names)
        for record, title in zip(records, titles):
            npz = record.path / "predictions.npz"
            if not npz.is_file():
                panels.append((title, None))
                continue
            with np.load(npz) as data:
                names = record.config.get("class_names") or class_names
                panels.append((title, confused_pairs_table(data["preds"], data["labels"], names,
                                                           record.config.get("num_classes"), top)))
    else:
        if preds is None or labels is None:
            raise ValueError("give run folders, or both preds and labels")
        panels.append(("", confused_pairs_table(preds, labels, class_names, top=top)))
    fig = Figure(figsize=(6.5 * len(panels), 0.35 * top + 1.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (title, table) in zip(axes, panels):
        if table is None or table.empty:
            ax.text(0.5, 0.5, "no predictions.npz" if table is None else "no confusions", ha="center",
                    transform=ax.transAxes)
            ax.set_axis_off()
            ax.set_title(_wrap(title, 55), fontsize="medium")
            continue
        names = [f"{t} → {p}" for t, p in zip(table["true_name"], table["predicted_name"])]
        positions = np.arange(len(table))[::-1]
        ax.barh(positions, table["share"], color="C3")
        ax.set_yticks(positions, names, fontsize="small")
        for y, share, count in zip(positions, table["share"], table["count"]):
            ax.text(share, y, f" {count}", va="center", fontsize="x-small")
        ax.set_xlabel("% of the true class's test images")
        ax.set_title(_wrap(title, 55) or "most confused pairs (true → predicted)", fontsize="medium")
    return fig


def tsne_embedding(features: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """Return a (N, 2) t-SNE of ``features`` (N, D); perplexity is capped for small N."""
    from sklearn.manifold import TSNE

    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or features.shape[0] < 4:
        raise ValueError(f"features must be (N, D) with N >= 4; got shape {features.shape}")
    perplexity = float(min(perplexity, (features.shape[0] - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)


def tsne_scatter(points: np.ndarray, labels: np.ndarray, train_counts: Sequence[int], many: int = 100,
                 few: int = 20, title: str = "t-SNE of test embeddings") -> Figure:
    """Return a scatter of 2-D points (N, 2), each coloured by its class's many/medium/few group."""
    from ccmix.method.metrics import shot_groups

    points = np.asarray(points)
    labels = np.asarray(labels, dtype=np.int64)
    groups = np.asarray(shot_groups(train_counts, many=many, few=few))[labels]
    fig = Figure(figsize=(6, 5.5), layout="constrained")
    ax = fig.subplots()
    for group in GROUP_ORDER:
        chosen = groups == group
        if chosen.any():
            ax.scatter(points[chosen, 0], points[chosen, 1], s=6, alpha=0.7, color=GROUP_COLORS[group],
                       label=f"{group} ({chosen.sum()} images)")
    ax.set(xticks=[], yticks=[])
    ax.set_title(_wrap(title, 55), fontsize="medium")
    ax.legend(fontsize="small", markerscale=2)
    return fig


def tsne_of_run(run, max_items: int | None = 2000, seed: int = 0, title: str | None = None,
                checkpoint: str = "last.pt", space: str = "features") -> Figure | None:
    """Return the t-SNE scatter of a run's test images (coloured by many/medium/few), or None when the run
    folder has no checkpoint; UnusableRun when its features are not finite. ``space`` is "features" (encoder output, trained by every method) or
    "embedding" (the normalised projection of the contrastive methods). Embeds up to ``max_items`` test
    images with ``ccmix.train.evaluation.embed_test_set``."""
    from ccmix.train.evaluation import embed_test_set

    if space not in ("features", "embedding"):
        raise ValueError(f"space={space!r} is not accepted; choose features or embedding")
    record = load_run(run)
    if not (record.path / checkpoint).is_file():
        return None
    embedded = embed_test_set(record.path, checkpoint=checkpoint, max_items=max_items)
    if not np.isfinite(embedded[space]).all():
        raise UnusableRun(f"run {record.name!r} gives non-finite test {space} from {checkpoint} (its weights "
                          "overflow), so it has no t-SNE")
    points = tsne_embedding(embedded[space], seed=seed)
    config = record.config
    return tsne_scatter(points, embedded["labels"], config["train_class_counts"],
                        many=config.get("many_threshold", 100), few=config.get("few_threshold", 20),
                        title=title or f"t-SNE of test {space}: {record.name}")


__all__ = [
    "RunRecord", "UnusableRun", "confused_pairs", "confused_pairs_table", "gallery", "label_bars", "learning_curves",
    "load_run", "mixed_sample_panel", "per_class_vs_count", "reproduction", "run_labels", "run_problem",
    "save_figure", "shot_bars", "shot_table", "to_display_image", "tsne_embedding", "tsne_of_run", "tsne_scatter",
    "usable_runs",
]

