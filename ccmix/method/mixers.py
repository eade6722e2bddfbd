"""Mixers: how a training step mixes a foreground into its background images.

A mixer draws a step's mixing parameters on the host and applies them on the device.
The step (``ccmix.method.step``) asks the mixer that ``TrainConfig.mixer`` names, from the one
registry below, for both; the labelling that Contrastive CutMix adds on top of the
mixing (the semantic label, ``docs/method.md``) stays in the step. CutMix (Yun et al.,
ICCV 2019) is the built-in mixer; another one is registered with :func:`register_mixer`
and chosen with ``mixer=<name>``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch

from ccmix.config.fields import TrainConfig
from ccmix.config.rules import ConfigError
from ccmix.data.augment.dispatch import to_device
from ccmix.method.cutmix import CutMixBoxes, area_labels, kept_fraction, paste, sample_boxes


class Mixed(NamedTuple):
    """What a mixer's ``apply`` gives the loss, all device tensors of b images and C classes.

    images: (b, 3, H, W) the mixed images; target: (b, C) float32 soft labels by mixing weight;
    lam: (b,) float32 the background's weight (for CutMix the fraction of its pixels kept; 1.0:
    the image kept all of its pixels).
    """

    images: torch.Tensor
    target: torch.Tensor
    lam: torch.Tensor


class Mixer(Protocol):
    """A mixing method, built by its registered factory from the run's config.

    ``per_sample``: True when each image draws its own weight, so that some images of a mixed
    batch may be left unmixed (``lam`` 1.0); False when one draw mixes the whole batch.
    """

    per_sample: bool

    def draw(self, generator: np.random.Generator, global_batch: int, height: int, width: int) -> Any | None:
        """Return the host-side parameters of one step's global batch, or None when the step is not mixed.

        Every draw comes from ``generator`` (seeded by the run's seed and the epoch, alike on every
        rank). The parameters are sliced along the batch (``params[start:stop:step]``) to share them
        among processes and micro-batches.
        """

    def to_device(self, params: Any, device: torch.device) -> torch.Tensor:
        """Return ``params`` as a device tensor, copied without waiting for the device."""

    def apply(self, params: torch.Tensor, background: torch.Tensor, foreground: torch.Tensor,
              labels: torch.Tensor, foreground_labels: torch.Tensor, num_classes: int) -> Mixed:
        """Return the mixed images, soft labels and weights of (b, 3, H, W) images and (b,) int64 labels.

        Runs inside the (possibly compiled) loss: device operations only, nothing read back.
        """


MixerFactory = Callable[[TrainConfig], Mixer]
_MIXERS: dict[str, MixerFactory] = {}


def register_mixer(name: str, factory: MixerFactory) -> None:
    """Make ``factory(config) -> Mixer`` the mixer of runs with ``mixer=name``; a taken name is refused."""
    if not (isinstance(name, str) and name):
        raise ValueError(f"name={name!r} is not accepted; a mixer's name must be non-empty text")
    if name in _MIXERS and _MIXERS[name] is not factory:
        raise ValueError(f"name={name!r} is not accepted; a mixer of that name is already registered")
    _MIXERS[name] = factory


def mixer_names() -> tuple[str, ...]:
    """Return the names of the registered mixers, sorted."""
    return tuple(sorted(_MIXERS))


def check_mixer(config: TrainConfig) -> None:
    """Raise ConfigError (one sentence) when ``config.mixer`` names no registered mixer."""
    if config.mixer not in _MIXERS:
        raise ConfigError(field="mixer", value=config.mixer,
                          accepted=f"one of the registered mixers: {', '.join(mixer_names())}")


def build_mixer(config: TrainConfig) -> Mixer:
    """Return the mixer that ``config.mixer`` names, built from ``config``."""
    check_mixer(config)
    return _MIXERS[config.mixer](config)


# --------------------------------------------------------------------------- CutMix


def boxes_tensor(boxes: CutMixBoxes, device: torch.device) -> torch.Tensor:
    """Return (4, b) int64 [top, left, bottom, right] on ``device``, copied without waiting for the device."""
    return to_device(torch.stack([boxes.top, boxes.left, boxes.bottom, boxes.right]), device)


class CutMix:
    """CutMix: a box of the foreground pasted into the background, labelled by area.

    ``cutmix_prob`` is the chance that a step (or, with ``cutmix_per_sample``, an image) is
    mixed; λ ~ Beta(``cutmix_alpha``, ``cutmix_alpha``) sets a box of relative side sqrt(1 - λ).
    Box coordinates travel to the device as a (4, b) int64 tensor, so new boxes never
    recompile a compiled step.
    """

    def __init__(self, config: TrainConfig):
        self.alpha = config.cutmix_alpha
        self.probability = config.cutmix_prob
        self.per_sample = config.cutmix_per_sample

    def draw(self, generator: np.random.Generator, global_batch: int, height: int,
             width: int) -> CutMixBoxes | None:
        """Return the CPU boxes of one step's global batch, or None when the step is not mixed.

        Draw order: per-sample, the boxes then one mixing decision per image; per batch, the
        decision first, then (when mixed) the one box that the whole batch shares.
        """
        if self.per_sample:
            boxes = sample_boxes(global_batch, height, width, alpha=self.alpha, per_sample=True, generator=generator)
            apply = torch.from_numpy(generator.random(global_batch) < self.probability)
            # An unmixed image gets an empty box: it keeps all of its pixels and its hard label.
            return CutMixBoxes(top=boxes.top, left=boxes.left, bottom=torch.where(apply, boxes.bottom, boxes.top),
                               right=boxes.right)
        if generator.random() >= self.probability:
            return None
        return sample_boxes(global_batch, height, width, alpha=self.alpha, per_sample=False, generator=generator)

    def to_device(self, params: CutMixBoxes, device: torch.device) -> torch.Tensor:
        """Return the boxes as a (4, b) int64 device tensor (see ``boxes_tensor``)."""
        return boxes_tensor(params, device)

    def apply(self, params: torch.Tensor, background: torch.Tensor, foreground: torch.Tensor,
              labels: torch.Tensor, foreground_labels: torch.Tensor, num_classes: int) -> Mixed:
        """Return the background with each box of the foreground pasted in, area labels and λ (kept fraction)."""
        box = CutMixBoxes(*params.unbind(0))
        images = paste(background, foreground, box)
        lam = kept_fraction(box, background.shape[-2], background.shape[-1])
        return Mixed(images, area_labels(labels, foreground_labels, lam, num_classes, check_values=False), lam)


register_mixer("cutmix", CutMix)


__all__ = ["CutMix", "Mixed", "Mixer", "MixerFactory", "boxes_tensor", "build_mixer", "check_mixer", "mixer_names",
           "register_mixer"]
