"""Figures of CutMix samples for the explorer: images, pasted boxes, and the labels a mix gets.

Contrastive CutMix (Pan et al., "Enhanced Long-Tailed Recognition with Contrastive
CutMix Augmentation", IEEE TIP 2024; ``docs/method.md``) pastes a box of one image into
another (CutMix: Yun et al., ICCV 2019) and labels the mix by area or by semantic
similarity; these panels show both. Figures are built without pyplot, as in
:mod:`ccmix.notebook.viz`, which re-exports every public name here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure, SubFigure
from matplotlib.patches import Rectangle


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
