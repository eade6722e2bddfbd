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
"""

from __future__ import annotations

import json
import os
import re
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure, SubFigure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from ccmix.io import atomic_write
from ccmix.run_folder import RunFolder

GROUP_ORDER = ("many", "medium", "few")
GROUP_COLORS = {"many": "#1f77b4", "medium": "#ff7f0e", "few": "#d62728"}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")


# --------------------------------------------------------------------------- run folders


@dataclass
class RunRecord:
    """What a run folder holds, read once: config, per-epoch metrics, per-class results, summary."""

    path: Path
    config: dict = field(default_factory=dict)
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per epoch (metrics.jsonl)
    per_class: pd.DataFrame | None = None  # per_class.csv, None when the run has not finished
    summary: dict | None = None  # summary.json, None when absent

    @property
    def name(self) -> str:
        """Return the run folder's name."""
        return self.path.name


def load_run(run: str | os.PathLike | RunRecord) -> RunRecord:
    """Return the :class:`RunRecord` of a run folder (files that are absent stay empty)."""
    if isinstance(run, RunRecord):
        return run
    path = Path(run)
    if not path.is_dir():
        raise ValueError(f"run folder {str(path)!r} does not exist")
    folder = RunFolder(path)
    config = folder.read_config() or {}
    metrics = pd.DataFrame.from_records(folder.read_metrics())
    if not metrics.empty:
        metrics = metrics.apply(pd.to_numeric, errors="coerce")  # JSON null -> NaN
    per_class = pd.read_csv(path / "per_class.csv") if (path / "per_class.csv").is_file() else None
    return RunRecord(path=path, config=config, metrics=metrics, per_class=per_class,
                     summary=folder.read_summary())


def _as_runs(runs) -> list[RunRecord]:
    if isinstance(runs, (str, os.PathLike, RunRecord)):
        runs = [runs]
    records = [load_run(run) for run in runs]
    if not records:
        raise ValueError("runs is empty; give at least one run folder")
    return records


def run_labels(runs, exclude: Iterable[str] = ()) -> list[str]:
    """Return one label per run from the config values that differ between runs, e.g. ``method=la, seed=1``.

    ``exclude`` drops keys (``("seed",)`` gives runs that differ only by seed the same label, so bar
    charts average them). Runs whose configs agree are labelled by their folder names (or all alike
    when seeds are excluded).
    """
    from ccmix.config import fields_with_role, recipe_fields

    records = _as_runs(runs)
    # what a run learns and its seed tell runs apart; paths, devices and derived values never do
    telling = {*recipe_fields(), *fields_with_role("seed"), "preset"} - set(exclude)
    keys = sorted({key for record in records for key in record.config} & telling)
    varying = [key for key in keys if len({_hashable(r.config.get(key)) for r in records}) > 1]
    if not varying:
        return ["all runs"] * len(records) if exclude else [r.name for r in records]
    priority = ["method", "dataset", "imb", "preset"]
    varying.sort(key=lambda k: (priority.index(k) if k in priority else len(priority), k))
    return [", ".join(f"{key}={_format_value(r.config.get(key))}" for key in varying) for r in records]


def _wrap(text: str, width: int = 60) -> str:
    """Return ``text`` broken into lines of at most ``width`` characters (long run labels in titles)."""
    return textwrap.fill(text, width=width, break_long_words=False) if text else text


def _hashable(value):
    return json.dumps(value, sort_keys=True)


def _format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _labels_for(records: list[RunRecord], labels: Sequence[str] | None) -> list[str]:
    if labels is None:
        return run_labels(records)
    if len(labels) != len(records):
        raise ValueError(f"labels has {len(labels)} entries but there are {len(records)} runs")
    return list(labels)


class UnusableRun(ValueError):
    """A run folder the analysis cannot use; the message is one sentence naming it and saying why."""


# what a run's config.json must hold for its figures and tables to mean anything
_REQUIRED_CONFIG_KEYS = ("method", "dataset", "imb", "seed", "num_classes", "train_class_counts")


def run_problem(run) -> str | None:
    """Return why a run folder cannot be analysed, as one sentence naming it, or None when it can: not
    completed (failed, diverged, still running), non-finite results, or a missing or inconsistent config."""
    folder = Path(getattr(run, "path", run))
    for filename in ("config.json", "summary.json"):  # checked here: a reader may take a damaged file for none
        if (folder / filename).is_file() and not _is_json(folder / filename):
            return f"run {folder.name!r} has a {filename} that cannot be read as JSON"
    try:
        record = load_run(run)
    except (ValueError, OSError) as error:  # a missing folder, or a damaged CSV file
        return f"run {str(folder)!r} cannot be read ({error})"
    name = f"run {record.name!r}"
    if not record.config:
        return f"{name} has no config.json"
    if record.summary is None:
        return f"{name} has no summary.json (it has not finished an epoch)"
    status = record.summary.get("status")
    if status != "completed":
        error = record.summary.get("error")
        return f"{name} is {status or 'of unknown status'}" + (f": {error}" if error else "")
    missing = [key for key in _REQUIRED_CONFIG_KEYS if key not in record.config]
    if missing:
        return f"{name} has a config.json without {', '.join(missing)}"
    counts = record.config["train_class_counts"]
    if not isinstance(counts, list) or len(counts) != record.config["num_classes"]:
        return f"{name} has a config.json whose train_class_counts do not list its num_classes classes"
    disagreeing = [key for key in ("method", "dataset", "seed")
                   if key in record.summary and record.summary[key] != record.config[key]]
    if disagreeing:
        return f"{name} has a summary.json that disagrees with its config.json on {', '.join(disagreeing)}"
    for which in ("final", "best"):
        result = record.summary.get(which) or {}
        if result.get("top1") is None:
            return f"{name} has no {which} top-1 in summary.json"
        bad = [key for key in ("top1", *GROUP_ORDER) if result.get(key) is not None
               and not (isinstance(result[key], (int, float)) and np.isfinite(result[key]))]
        if bad:
            return f"{name} has non-finite {which} {', '.join(bad)} in summary.json"
    if record.per_class is not None and "accuracy" in record.per_class:
        accuracy = pd.to_numeric(record.per_class["accuracy"], errors="coerce")
        if np.isinf(accuracy).any():
            return f"{name} has non-finite per-class accuracies in per_class.csv"
    return None


def _is_json(path: Path) -> bool:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def usable_runs(runs, report=print) -> list[RunRecord]:
    """Return the :class:`RunRecord` of every run the analysis can use, in order; each other run is skipped
    with one sentence passed to ``report`` (default: printed)."""
    if isinstance(runs, (str, os.PathLike, RunRecord)):
        runs = [runs]
    usable = []
    for run in runs:
        problem = run_problem(run)
        if problem is not None:
            report(f"skipped: {problem}")
            continue
        usable.append(load_run(run))
    return usable


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
    records = _as_runs(runs)
    names = _labels_for(records, labels)
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
    records = _as_runs(runs)
    names = _labels_for(records, labels)
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
    ax.set(xlabel="", ylabel=f"{which} test accuracy (%)", ylim=(0, 100),
           title=f"{which}-epoch accuracy by shot group" + (" (best: selected on test)" if which == "best" else ""))
    if ax.get_legend() is not None:
        ax.legend(title=None, fontsize="small")
    return fig


def reproduction(results: pd.DataFrame) -> Figure:
    """Return grouped bars, one group per published preset that completed runs reproduce: the published top-1,
    our final and our best top-1 (mean over seeds, standard-deviation error bars), from
    ``ccmix.sweep.collect_results`` (or its ``reproduction_table``)."""
    from ccmix.sweep import reproduction_table

    table = results if "final_top1_mean" in results else reproduction_table(results)
    series = (("published", "published_top1", None, "0.55"), ("ours, final epoch", "final_top1_mean",
              "final_top1_std", "C0"), ("ours, best epoch (selected on test)", "best_top1_mean", "best_top1_std", "C2"))
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
    records = [r for r in _as_runs(runs)]
    names = _labels_for(records, labels)
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
    from ccmix.metrics import confusion_matrix, top_confused_pairs

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
        records = _as_runs(runs)
        titles = _labels_for(records, run_names)
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
    from ccmix.metrics import shot_groups

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
    images with ``ccmix.engine.embed_test_set``."""
    from ccmix.engine import embed_test_set

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


# --------------------------------------------------------------------------- CutMix samples


def to_display_image(image, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> np.ndarray:
    """Return an (H, W, 3) float array in [0, 1] from a (3, H, W) or (H, W, 3) tensor/array (uint8, or float
    normalised with ``mean``/``std``, or float in [0, 1]) or a PIL image."""
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    array = np.asarray(image)
    if array.ndim != 3:
        raise ValueError(f"an image must have 3 dimensions (3, H, W) or (H, W, 3); got shape {array.shape}")
    if array.shape[0] == 3 and array.shape[-1] != 3:
        array = array.transpose(1, 2, 0)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    array = array.astype(np.float32)
    if mean is not None and std is not None:
        array = array * np.asarray(std, dtype=np.float32) + np.asarray(mean, dtype=np.float32)
    return np.clip(array, 0.0, 1.0)


def _outline(ax, box, color: str = "yellow") -> None:
    top, left, bottom, right = (int(v) for v in box)
    if bottom > top and right > left:
        ax.add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False, edgecolor=color,
                               linewidth=2))


def mixed_sample_panel(background, foreground, mixed, box: Sequence[int] | None = None,
                       titles: Sequence[str] = ("background A", "foreground B", "mixed"),
                       mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                       fig: Figure | SubFigure | None = None) -> Figure | SubFigure:
    """Return background, foreground and mixed image side by side; ``box`` (top, left, bottom, right) in
    pixels is outlined on the foreground (the region taken) and on the mixed image (where it went).
    ``fig`` draws into an existing figure or subfigure instead of a new one."""
    fig = fig if fig is not None else Figure(figsize=(9, 3.4), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, image, title, outlined in zip(axes, (background, foreground, mixed), titles, (False, True, True)):
        ax.imshow(to_display_image(image, mean, std), interpolation="nearest")
        if outlined and box is not None:
            _outline(ax, box)
        ax.set_title(title, fontsize="medium")
        ax.set_axis_off()
    return fig


def label_bars(area_label, semantic_label, final_label, class_names: Sequence[str] | None = None, top: int = 10,
               lam: float | None = None, rho: float | None = None, weight: float | None = None,
               fig: Figure | SubFigure | None = None) -> Figure | SubFigure:
    """Return bar charts of the area, semantic (top-k similarity) and final label (each (C,)) over the
    ``top`` classes that weigh most in any of them, with lambda, rho and rho*omega in the title.
    ``fig`` draws into an existing figure or subfigure instead of a new one."""
    area, semantic, final = (np.asarray(_to_numpy(v), dtype=np.float64).reshape(-1)
                             for v in (area_label, semantic_label, final_label))
    num_classes = area.shape[0]
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    weight_order = np.argsort(-np.maximum.reduce([area, semantic, final]), kind="stable")
    shown = weight_order[: min(top, num_classes)]
    shown = shown[np.argsort(-final[shown], kind="stable")]
    fig = fig if fig is not None else Figure(figsize=(12, 3.6), layout="constrained")
    axes = fig.subplots(1, 3, sharey=True)
    panels = (("area label", area, "C0"), ("semantic label (top-k similarity)", semantic, "C2"),
              ("final label", final, "C3"))
    positions = np.arange(len(shown))
    for ax, (title, values, color) in zip(axes, panels):
        ax.bar(positions, values[shown], color=color)
        ax.set_xticks(positions, [names[c] for c in shown], rotation=60, ha="right", fontsize="small")
        ax.set_title(title, fontsize="medium")
        for x, value in zip(positions, values[shown]):
            if value > 0:
                ax.text(x, value, f"{value:.3f}", ha="center", va="bottom", fontsize="xx-small")
    axes[0].set_ylabel("probability")
    parts = []
    if lam is not None:
        parts.append(f"λ = {lam:.3f}")
    if rho is not None:
        parts.append(f"ρ = {rho:.4f}")
    if weight is not None:
        parts.append(f"ρ·ω = {weight:.5f}")
    if parts:
        fig.suptitle("   ".join(parts))
    return fig


def _to_numpy(value):
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return value


def gallery(images, titles: Sequence[str], ncols: int = 4, boxes: Sequence[Sequence[int]] | None = None,
            mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> Figure:
    """Return a grid of images ((B, 3, H, W) or a list) with one title each and optional boxes outlined."""
    count = len(images)
    if count == 0:
        raise ValueError("images is empty; give at least one image")
    if len(titles) != count:
        raise ValueError(f"titles has {len(titles)} entries but there are {count} images")
    ncols = max(1, min(ncols, count))
    nrows = -(-count // ncols)
    fig = Figure(figsize=(2.6 * ncols, 2.9 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).reshape(-1)
    for index, ax in enumerate(axes):
        ax.set_axis_off()
        if index >= count:
            continue
        ax.imshow(to_display_image(images[index], mean, std), interpolation="nearest")
        if boxes is not None:
            _outline(ax, boxes[index])
        ax.set_title(titles[index], fontsize="x-small")
    return fig


__all__ = [
    "RunRecord", "UnusableRun", "confused_pairs", "confused_pairs_table", "gallery", "label_bars", "learning_curves",
    "load_run", "mixed_sample_panel", "per_class_vs_count", "reproduction", "run_labels", "run_problem",
    "save_figure", "shot_bars", "shot_table", "to_display_image", "tsne_embedding", "tsne_of_run", "tsne_scatter",
    "usable_runs",
]
