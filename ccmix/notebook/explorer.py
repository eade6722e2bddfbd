"""What the CutMix explorer computes: one mixed sample and its labels, and a gallery of training's own mixes.

Contrastive CutMix (Pan et al., "Enhanced Long-Tailed Recognition with Contrastive
CutMix Augmentation", IEEE TIP 2024) labels a mixed image by the area label of CutMix
(Yun et al., ICCV 2019) blended, with weight rho * omega, with a semantic label from the
distances between the mixed image's projection and the class centres. Every number here
comes from the functions training calls (``ccmix.method.cutmix.paste / kept_fraction /
area_labels`` and ``ccmix.method.losses.semantic_label_parts``); :mod:`ccmix.notebook.widgets` wires
ipywidgets to these functions and re-exports every public name.
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure

from ccmix.config.fields import TrainConfig
from ccmix.method.cutmix import CutMixBoxes, area_labels, box_geometry, kept_fraction, paste
from ccmix.method.losses import semantic_label_parts
from ccmix.notebook.viz_samples import gallery, label_bars, mixed_sample_panel

# --------------------------------------------------------------------------- the computation


def box_at(lam: float, center_y: int, center_x: int, height: int, width: int) -> CutMixBoxes:
    """Return one box (a CutMixBoxes of length 1) with the geometry of ``sample_boxes`` for a chosen lambda
    and centre: side ``floor(size * sqrt(1 - lam))``, centred at (center_y, center_x) pixels, clipped."""
    if not (0.0 <= float(lam) <= 1.0):
        raise ValueError(f"lam={lam!r} is not accepted; it must lie in [0, 1]")
    for name, value, size in (("center_y", center_y, height), ("center_x", center_x, width)):
        if not (0 <= int(value) < size):
            raise ValueError(f"{name}={value!r} is not accepted; it must lie in 0..{size - 1}")
    corners = box_geometry([int(center_y)], [int(center_x)], np.sqrt(1.0 - float(lam)), height, width)
    return CutMixBoxes(*(torch.from_numpy(corner) for corner in corners))


def box_tuple(boxes: CutMixBoxes, index: int = 0) -> tuple[int, int, int, int]:
    """Return (top, left, bottom, right) of box ``index`` as Python ints."""
    return tuple(int(t[index]) for t in (boxes.top, boxes.left, boxes.bottom, boxes.right))


@torch.no_grad()
def explore_sample(background: torch.Tensor, foreground: torch.Tensor, background_label: int, foreground_label: int,
                   box: CutMixBoxes | tuple[int, int, int, int], model: torch.nn.Module, class_counts,
                   topk: int, omega: float) -> dict:
    """Return the mixed image and its labels for one (background, foreground, box) choice.

    background, foreground: (3, H, W) normalised float images; box: CutMixBoxes of length 1 or
    (top, left, bottom, right) pixels. The model (put in eval mode) embeds the mixed image. Keys:
    mixed (3, H, W), box, lam (float), area_label (C,), similarity_label (C,), rho, weight (= rho * omega),
    label (C,) (the final training label), logits (C,).
    """
    if isinstance(box, tuple):
        box = CutMixBoxes(*(torch.tensor([int(v)], dtype=torch.int64) for v in box))
    height, width = background.shape[-2:]
    mixed = paste(background[None].float(), foreground[None].float(), box)
    lam = kept_fraction(box, height, width)
    num_classes = len(class_counts)
    area = area_labels(torch.tensor([background_label]), torch.tensor([foreground_label]), lam, num_classes)
    model.eval()
    device = next(model.parameters()).device
    output = model(mixed.to(device))
    parts = semantic_label_parts(output.embedding_raw, output.centers_raw, area.to(device), class_counts,
                                 topk=int(topk), omega=float(omega))
    return {
        "mixed": mixed[0], "box": box_tuple(box), "lam": float(lam[0]), "area_label": parts["area_label"][0].cpu(),
        "similarity_label": parts["similarity_label"][0].cpu(), "rho": float(parts["rho"][0]),
        "weight": float(parts["weight"][0]), "label": parts["label"][0].cpu(), "logits": output.logits[0].cpu(),
        "background_label": int(background_label), "foreground_label": int(foreground_label),
    }


def explorer_figure(result: dict, class_names, mean=None, std=None, top: int = 10) -> Figure:
    """Return one figure: background, foreground and mixed image (box outlined) above the area, semantic and
    final label bars. ``result`` is :func:`explore_sample`'s dict plus "background" and "foreground" images."""
    fig = Figure(figsize=(12, 7.2), layout="constrained")
    images, bars = fig.subfigures(2, 1, height_ratios=[1.0, 1.05])
    names = list(class_names)
    mixed_sample_panel(
        result["background"], result["foreground"], result["mixed"], box=result["box"], mean=mean, std=std, fig=images,
        titles=(f"background A: {names[result['background_label']]}",
                f"foreground B: {names[result['foreground_label']]}", f"mixed (λ = {result['lam']:.3f})"),
    )
    label_bars(result["area_label"], result["similarity_label"], result["label"], class_names=names, top=top,
                   lam=result["lam"], rho=result["rho"], weight=result["weight"], fig=bars)
    return fig


def describe_result(result: dict, omega: float) -> str:
    """Return one line with lambda, rho, omega and rho*omega of an explored sample."""
    return (f"λ = {result['lam']:.4f}   ρ = {result['rho']:.4f}   ω = {omega:.4f}   "
            f"ρ·ω = {result['weight']:.6f} (share of the semantic label in the final label)")


def view_transform(config: TrainConfig):
    """Return the test-view transform the explorer applies to a dataset image (no augmentation)."""
    from ccmix.data.views import test_view

    return test_view(config.resolved_view_recipe, config.dataset)


def view_normalization(config: TrainConfig):
    """Return the (mean, std) per channel that the views of ``config`` normalise images with."""
    from ccmix.data.views import normalization

    return normalization(config.dataset, config.resolved_view_recipe)


# --------------------------------------------------------------------------- the gallery


@torch.no_grad()
def gallery_batch(train, model, config: TrainConfig, count: int = 8, epoch: int = 0, seed: int | None = None) -> dict:
    """Return a batch of mixed training samples as training builds them, with their labels.

    The batch comes from the real training pipeline (``ccmix.data.pipelines.build.build_train_pipeline``; augmented
    view 0 of A from the instance-uniform stream, of B from the foreground stream), the box from
    ``ccmix.method.step.draw_cutmix_boxes`` (forced to mix, so every sample shows a box), and the labels from
    ``paste / kept_fraction / area_labels`` and ``semantic_label_parts`` on the model's projection (eval
    mode). Keys: mixed, background, foreground (B, 3, H, W) normalised, labels, foreground_labels, boxes
    (list of (top, left, bottom, right)), lam (B,), area_label, similarity_label, rho, weight, label.
    """
    from ccmix.data.pipelines.build import build_train_pipeline
    from ccmix.method.collectives import DistContext
    from ccmix.method.step import cutmix_generator, draw_cutmix_boxes

    size = max(2, int(count))
    gallery_config = config.replace(
        method="cutmix", cutmix_prob=1.0, batch_size=size, grad_accum_steps=1, num_workers=0, device="cpu",
        pipeline="classic", max_steps_per_epoch=1, seed=config.seed if seed is None else int(seed),
    )
    pipeline = build_train_pipeline(train, gallery_config, torch.device("cpu"))
    batches = pipeline.batches(epoch)
    batch = next(iter(batches))
    if hasattr(batches, "close"):
        batches.close()
    view0, foreground = batch.view0, batch.foreground
    height, width = view0.shape[-2:]
    boxes = draw_cutmix_boxes(gallery_config, cutmix_generator(gallery_config, epoch), view0.shape[0], int(height),
                              int(width), DistContext())
    mixed = paste(view0, foreground, boxes)
    lam = kept_fraction(boxes, int(height), int(width))
    num_classes = len(train.class_counts)
    area = area_labels(batch.labels, batch.foreground_labels, lam, num_classes)
    model.eval()
    output = model(mixed)
    parts = semantic_label_parts(output.embedding_raw, output.centers_raw, area, train.class_counts,
                                 topk=min(int(config.topk), num_classes), omega=float(config.omega))
    return {
        "mixed": mixed[:count], "background": view0[:count], "foreground": foreground[:count],
        "labels": batch.labels[:count], "foreground_labels": batch.foreground_labels[:count],
        "boxes": [box_tuple(boxes, i) for i in range(min(count, len(boxes)))], "lam": lam[:count],
        **{key: value[:count] for key, value in parts.items()},
    }


def gallery_titles(result: dict, class_names, top: int = 2) -> list[str]:
    """Return one title per gallery sample: A and B classes, lambda, rho*omega and the final label's top classes."""
    titles = []
    for i in range(len(result["labels"])):
        final = result["label"][i]
        best = torch.argsort(final, descending=True, stable=True)[:top].tolist()
        tops = ", ".join(f"{class_names[c]} {float(final[c]):.2f}" for c in best)
        titles.append(
            f"A {class_names[int(result['labels'][i])]} · B {class_names[int(result['foreground_labels'][i])]}\n"
            f"λ={float(result['lam'][i]):.2f}  ρω={float(result['weight'][i]):.4f}\nfinal: {tops}"
        )
    return titles


def gallery_figure(result: dict, class_names, config: TrainConfig, ncols: int = 4) -> Figure:
    """Return the gallery of :func:`gallery_batch`'s samples with their boxes and labels."""
    mean, std = view_normalization(config)
    return gallery(result["mixed"], gallery_titles(result, class_names), ncols=ncols, boxes=result["boxes"],
                       mean=mean, std=std)
