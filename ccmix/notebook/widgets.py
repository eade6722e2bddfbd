"""The CutMix explorer: pick two images, a box, omega and top-k, and read the labels training would use.

Shows how Contrastive CutMix (Pan et al., "Enhanced Long-Tailed Recognition with
Contrastive CutMix Augmentation", IEEE TIP 2024) labels a mixed image: the area
label of CutMix (Yun et al., ICCV 2019), the semantic label from the distances
between the mixed image's projection and the class centres, and their blend
with weight rho * omega. Every number comes from the functions training calls
(``ccmix.method.cutmix.paste / kept_fraction / area_labels / sample_boxes`` and
``ccmix.method.losses.semantic_label_parts``); :func:`explore_sample` is the pure
computation and :func:`build_explorer` only wires ipywidgets to it.

The explorer feeds the unaugmented (test-view) images to the model in eval
mode, one image at a time; the gallery (:func:`gallery_batch`) shows a batch as
the training pipeline produces it (augmented views, the training box draw). Both
computations live in :mod:`ccmix.notebook.explorer`; their names are importable from here too.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from ccmix.config.fields import TrainConfig
from ccmix.method.cutmix import kept_fraction, sample_boxes
from ccmix.notebook import viz
from ccmix.notebook.explorer import (
    box_at,
    box_tuple,
    describe_result,
    explore_sample,
    explorer_figure,
    gallery_batch,
    gallery_figure,
    gallery_titles,
    view_normalization,
    view_transform,
)

# --------------------------------------------------------------------------- data for the explorer


@dataclass
class ExplorerData:
    """What the explorer notebook needs: the config, the training set, the model and what to say about them."""

    config: TrainConfig
    train: object
    model: torch.nn.Module
    trained: bool
    figures_dir: Path | None = None
    notes: list[str] = field(default_factory=list)


def prepare_explorer(dataset: str = "synthetic", data_root: str | os.PathLike = "data", imb: float = 100,
                     checkpoint: str | os.PathLike | None = None, seed: int = 0,
                     figures_dir: str | os.PathLike | None = None,
                     repo_root: str | os.PathLike | None = None) -> ExplorerData:
    """Return the explorer's config, long-tailed training set and model (from ``checkpoint``, else untrained).

    The config is the one the train notebook would use for (dataset, imb); a checkpoint brings its own
    config (dataset, imb, omega, top-k), and the model comes from ``ccmix.train.evaluation.load_model``.
    Relative ``data_root`` and ``checkpoint`` are taken from the repository root, ``figures_dir`` from
    the notebooks folder.
    """
    from ccmix.config.rules import ConfigError
    from ccmix.data.datasets import build_datasets
    from ccmix.experiments.locations import find_repo_root, notebooks_dir, resolve_path
    from ccmix.experiments.train_params import resolve_train_parameters
    from ccmix.train.evaluation import build_run_model, load_model

    root = Path(repo_root) if repo_root is not None else find_repo_root()
    run = resolve_train_parameters(dataset=dataset, data_root=data_root, imb=imb, seed=seed, device="cpu",
                                   repo_root=root)
    notes = list(run.notes[:1])
    for name, value in (("checkpoint", checkpoint), ("figures_dir", figures_dir)):
        if value is not None and (not isinstance(value, (str, os.PathLike)) or not os.fspath(value)):
            raise ConfigError(f"parameter {name}={value!r} is not accepted; it takes a path (text) or None")
    figures = resolve_path(figures_dir, notebooks_dir(root)) if figures_dir is not None else root / "figures"
    if checkpoint is not None:
        path = resolve_path(checkpoint, root)
        if not path.is_file():
            raise ConfigError(f"parameter checkpoint={os.fspath(checkpoint)!r} is not accepted; {str(path)!r} "
                              "is not a file (give a run folder's last.pt or best.pt, or None)")
        model, config = load_model(path, device="cpu")
        if (config.dataset, config.imb) != (run.config.dataset, run.config.imb):
            notes.append(f"the checkpoint was trained on {config.dataset} imb {config.imb:g}; the explorer uses that")
        config = config.replace(data_root=run.config.data_root if config.dataset == run.config.dataset
                                else config.data_root, num_workers=0, device="cpu")
        notes.append(f"semantic labels come from the model in {path}")
        trained = True
    else:
        config = run.config.replace(num_workers=0)
        model = None
        trained = False
    train, _ = build_datasets(config)
    if model is None:
        model = build_run_model(config, train.num_classes).eval()
        notes.append("no checkpoint given: semantic labels come from an untrained model (random centres), "
                     "so they show the mechanics, not what a trained model believes")
    return ExplorerData(config=config, train=train, model=model, trained=trained, figures_dir=figures, notes=notes)


# --------------------------------------------------------------------------- the widget tree

_IMAGE_CACHE_SIZE = 64  # images kept ready for the sliders


class ExplorerState:
    """The explorer's current inputs and outputs; ``refresh()`` recomputes them from the widgets.

    Attributes after a refresh: background_index, foreground_index (dataset indices), box
    (top, left, bottom, right), result (:func:`explore_sample`'s dict: mixed, lam, area_label,
    similarity_label, rho, weight, label), figure (a matplotlib Figure), saved (the PNG written to
    ``figures_dir/<figure_name>.png`` on each refresh when ``figures_dir`` is set), widgets (name -> widget).
    """

    def __init__(self, dataset, model, class_counts, config: TrainConfig, figures_dir=None, seed: int = 0,
                 top: int = 10, figure_name: str = "explorer"):
        self.dataset = dataset
        self.model = model.eval()
        self.class_counts = [int(c) for c in class_counts]
        self.config = config
        self.figures_dir = Path(figures_dir) if figures_dir is not None else None
        self.figure_name = figure_name
        self.top = top
        self.class_names = list(dataset.classes)
        self.mean, self.std = view_normalization(config)
        self.transform = view_transform(config)
        targets = np.asarray(dataset.targets, dtype=np.int64)
        self.members = [np.flatnonzero(targets == c) for c in range(len(self.class_counts))]
        self.generator = torch.Generator().manual_seed(int(seed))
        self.widgets: dict = {}
        self.result: dict | None = None
        self._figure: Figure | None = None
        self.saved: list[Path] = []
        self.box: tuple[int, int, int, int] | None = None
        self._suspended = False
        self._explicit_box: tuple[int, int, int, int] | None = None
        self._image_cache: dict[int, torch.Tensor] = {}

    # --- inputs
    def image(self, index: int) -> torch.Tensor:
        """Return training image ``index`` as the model sees it: (3, H, W) normalised, unaugmented."""
        if index not in self._image_cache:
            if len(self._image_cache) >= _IMAGE_CACHE_SIZE:
                self._image_cache.pop(next(iter(self._image_cache)))  # the oldest entry
            self._image_cache[index] = self.transform(self.dataset.load_image(int(index)))
        return self._image_cache[index]

    @property
    def background_index(self) -> int:
        """Return the dataset index of the chosen background image."""
        w = self.widgets
        return int(self.members[w["background_class"].value][w["background_image"].value])

    @property
    def foreground_index(self) -> int:
        """Return the dataset index of the chosen foreground image."""
        w = self.widgets
        return int(self.members[w["foreground_class"].value][w["foreground_image"].value])

    @contextmanager
    def hold(self):
        """Suspend refreshes while several inputs change together (widgets, draws); refresh once at the end."""
        was = self._suspended
        self._suspended = True
        try:
            yield
        finally:
            self._suspended = was
        if not was:
            self.refresh()

    def set(self, **values) -> dict:
        """Set widget values by name (e.g. ``lam=0.3, omega=1.0``), refresh once, and return the result."""
        unknown = sorted(set(values) - set(self.widgets))
        if unknown:
            raise ValueError(f"widget {unknown[0]!r} is unknown; accepted: {', '.join(sorted(self.widgets))}")
        with self.hold():
            for name in ("background_class", "foreground_class"):  # classes first: they reset the image sliders
                if name in values:
                    self.widgets[name].value = values.pop(name)
            for name, value in values.items():
                self.widgets[name].value = value
        return self.result

    def draw_from_streams(self, *_):
        """Pick A from the instance-uniform stream and B from the foreground stream (as training does)."""
        from ccmix.data.streams import sample_epoch_indices

        background, foreground = sample_epoch_indices(
            self.dataset.targets, len(self.class_counts), batch_size=1, foreground=self.config.foreground_sampler,
            generator=self.generator,
        )
        picks = {}
        for role, index in (("background", int(background[0, 0])), ("foreground", int(foreground[0, 0]))):
            label = int(self.dataset.targets[index])
            picks[f"{role}_class"] = label
            picks[f"{role}_image"] = int(np.flatnonzero(self.members[label] == index)[0])
        return self.set(**picks)

    def draw_box(self, *_):
        """Draw lambda and a box with ``sample_boxes`` (lambda ~ Beta(alpha, alpha)), as training does."""
        height, width = self.image(self.background_index).shape[-2:]
        boxes = sample_boxes(1, int(height), int(width), alpha=self.config.cutmix_alpha, generator=self.generator)
        drawn = box_tuple(boxes)
        with self.hold():
            self.widgets["lam"].value = round(float(kept_fraction(boxes, int(height), int(width))[0]), 4)
            top, left, bottom, right = drawn
            self.widgets["center_y"].value = min((top + bottom) // 2, int(height) - 1)
            self.widgets["center_x"].value = min((left + right) // 2, int(width) - 1)
            self._explicit_box = drawn  # the drawn box itself, not its re-derivation from the sliders
        return self.result

    # --- outputs
    @property
    def figure(self) -> Figure | None:
        """Return the figure of the current view (images with the box, label bars), drawn on first use."""
        if self._figure is None and self.result is not None:
            self._figure = explorer_figure(self.result, self.class_names, self.mean, self.std, top=self.top)
        return self._figure

    def current_box(self) -> tuple[int, int, int, int]:
        """Return the box of the current inputs: the last drawn one, or the sliders' lambda and centre."""
        if self._explicit_box is not None:
            return self._explicit_box
        height, width = self.image(self.background_index).shape[-2:]
        w = self.widgets
        return box_tuple(box_at(w["lam"].value, w["center_y"].value, w["center_x"].value, int(height), int(width)))

    def refresh(self, *_) -> dict | None:
        """Recompute the mixed image and labels from the widgets, redraw (and save) the figure; return the result."""
        if self._suspended:
            return self.result
        w = self.widgets
        background, foreground = self.image(self.background_index), self.image(self.foreground_index)
        self.box = self.current_box()
        result = explore_sample(
            background, foreground, w["background_class"].value, w["foreground_class"].value, self.box, self.model,
            self.class_counts, topk=w["topk"].value, omega=w["omega"].value,
        )
        result.update(background=background, foreground=foreground, background_index=self.background_index,
                      foreground_index=self.foreground_index)
        self.result = result
        self._figure = None  # drawn on demand: building it costs more than the numbers
        if self.figures_dir is not None:  # PNG only: this runs on every slider move
            self.saved = viz.save_figure(self.figure, self.figures_dir, self.figure_name, dpi=100, formats=("png",))
        if "numbers" in w:
            w["numbers"].value = f"<code>{describe_result(result, w['omega'].value)}</code>"
        if "output" in w and _in_kernel():
            from IPython.display import display

            w["output"].clear_output(wait=True)
            with w["output"]:
                display(self.figure)
        return result


def _in_kernel() -> bool:
    """True inside a Jupyter kernel, where an Output widget can show the figure."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def build_explorer(dataset, model, class_counts, config: TrainConfig | None = None, figures_dir=None, seed: int = 0,
                   top: int = 10, figure_name: str = "explorer"):
    """Return (widget tree, ExplorerState): class and image pickers for A and B, a stream draw, lambda and box
    centre sliders with a random draw, omega and top-k; every change recomputes through :func:`explore_sample`."""
    import ipywidgets as widgets

    config = config or TrainConfig(dataset="synthetic", synthetic_classes=len(class_counts),
                                   topk=min(3, len(class_counts)))
    state = ExplorerState(dataset, model, class_counts, config, figures_dir=figures_dir, seed=seed, top=top,
                          figure_name=figure_name)
    height, width = state.image(0).shape[-2:]
    populated = [c for c, members in enumerate(state.members) if len(members)]
    options = [(f"{c}: {state.class_names[c]} ({len(state.members[c])} images)", c) for c in populated]
    slider = {"continuous_update": False, "style": {"description_width": "initial"}}
    w = state.widgets
    w["background_class"] = widgets.Dropdown(options=options, value=populated[0], description="A class")
    w["background_image"] = widgets.IntSlider(0, 0, len(state.members[populated[0]]) - 1, description="A image",
                                              **slider)
    w["foreground_class"] = widgets.Dropdown(options=options, value=populated[-1], description="B class")
    w["foreground_image"] = widgets.IntSlider(0, 0, len(state.members[populated[-1]]) - 1, description="B image",
                                              **slider)
    w["draw_streams"] = widgets.Button(description="draw A and B from the two streams", layout={"width": "auto"})
    w["lam"] = widgets.FloatSlider(0.5, min=0.0, max=1.0, step=0.01, description="λ (target)", **slider)
    w["center_y"] = widgets.IntSlider(int(height) // 2, 0, int(height) - 1, description="box centre row", **slider)
    w["center_x"] = widgets.IntSlider(int(width) // 2, 0, int(width) - 1, description="box centre column", **slider)
    w["draw_box"] = widgets.Button(description="random λ and box", layout={"width": "auto"})
    w["omega"] = widgets.FloatSlider(float(config.omega), min=0.0, max=max(1.0, float(config.omega)), step=1 / 255,
                                     readout_format=".4f", description="ω", **slider)
    w["topk"] = widgets.IntSlider(min(int(config.topk), len(class_counts)), 1, len(class_counts), description="top-k",
                                  **slider)
    w["numbers"] = widgets.HTML()
    w["output"] = widgets.Output()

    def class_changed(role):
        def handler(change):
            with state.hold():
                w[f"{role}_image"].value = 0
                w[f"{role}_image"].max = len(state.members[change["new"]]) - 1
        return handler

    def box_slider_changed(_):
        state._explicit_box = None  # a moved slider defines the box again
        state.refresh()

    w["background_class"].observe(class_changed("background"), names="value")
    w["foreground_class"].observe(class_changed("foreground"), names="value")
    for name in ("background_image", "foreground_image", "omega", "topk"):
        w[name].observe(state.refresh, names="value")
    for name in ("lam", "center_y", "center_x"):
        w[name].observe(box_slider_changed, names="value")
    w["draw_streams"].on_click(state.draw_from_streams)
    w["draw_box"].on_click(state.draw_box)

    tree = widgets.VBox([
        widgets.HBox([widgets.VBox([w["background_class"], w["background_image"]]),
                      widgets.VBox([w["foreground_class"], w["foreground_image"]]), w["draw_streams"]]),
        widgets.HBox([w["lam"], w["center_y"], w["center_x"], w["draw_box"]]),
        widgets.HBox([w["omega"], w["topk"]]),
        w["numbers"],
        w["output"],
    ])
    state.refresh()
    return tree, state


__all__ = [
    "ExplorerData", "ExplorerState", "box_at", "box_tuple", "build_explorer", "describe_result", "explore_sample",
    "explorer_figure", "gallery_batch", "gallery_figure", "gallery_titles", "prepare_explorer",
]
