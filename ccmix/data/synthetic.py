"""A generated, learnable image dataset for smoke runs and CI: no download, fully seeded.

Each class is a prototype 32x32 RGB pattern: a sinusoidal grating whose two colours,
orientation and frequency are specific to the class. Samples shift the grating's phase
a little, scale the brightness and add Gaussian pixel noise. A small CNN separates the
classes in a few epochs, so the long-tail effects of Contrastive CutMix (Pan et al.,
"Enhanced Long-Tailed Recognition with Contrastive CutMix Augmentation", IEEE TIP 2024)
can be exercised end to end without real data.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np

IMAGE_SIZE = 32  # pixels
TRAIN_PER_CLASS = 100  # images of each class before the long-tail profile
TEST_PER_CLASS = 20
GENERATOR_SEED = 0  # fixed: the images never change; the long-tailed subset has its own seed
NOISE_STD = 0.08  # Gaussian pixel noise, in units of the [0, 1] intensity range
BRIGHTNESS_RANGE = (0.8, 1.2)  # per-image brightness factor
PHASE_JITTER = math.pi / 2  # radians, the grating phase is drawn from [0, PHASE_JITTER)
_GOLDEN = (math.sqrt(5) - 1) / 2


def class_patterns(num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return per-class (bright colour (C, 3), dark colour (C, 3), orientation (C,) radians, cycles (C,))."""
    bright = np.empty((num_classes, 3), dtype=np.float32)
    dark = np.empty((num_classes, 3), dtype=np.float32)
    for cls in range(num_classes):
        hue = cls / num_classes
        bright[cls] = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
        dark[cls] = colorsys.hsv_to_rgb((hue + 0.5) % 1.0, 0.85, 0.35)
    classes = np.arange(num_classes)
    # The golden-ratio sequence spreads orientations evenly and never repeats one.
    orientation = (np.pi * ((classes * _GOLDEN) % 1.0)).astype(np.float32)
    cycles = (1.5 + (classes % 4)).astype(np.float32)  # grating periods per image side
    return bright, dark, orientation, cycles


def synthetic_split(num_classes: int, per_class: int, split: str) -> tuple[np.ndarray, list[int]]:
    """Return (images uint8 (N, 32, 32, 3), targets) of one split, class by class; deterministic.

    ``split`` is ``train`` or ``test``; the two splits use independent random streams.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split {split!r} is not accepted; choose train or test")
    if num_classes < 1 or per_class < 1:
        raise ValueError(f"num_classes={num_classes} and per_class={per_class} must both be >= 1")
    rng = np.random.Generator(np.random.PCG64([GENERATOR_SEED, 0 if split == "train" else 1]))
    bright, dark, orientation, cycles = class_patterns(num_classes)
    coords = (np.arange(IMAGE_SIZE, dtype=np.float32) + 0.5) / IMAGE_SIZE
    yy, xx = np.meshgrid(coords, coords, indexing="ij")  # (32, 32) each, in [0, 1)
    images = np.empty((num_classes * per_class, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for cls in range(num_classes):
        projection = xx * np.cos(orientation[cls]) + yy * np.sin(orientation[cls])  # (32, 32)
        phase = rng.uniform(0.0, PHASE_JITTER, size=(per_class, 1, 1)).astype(np.float32)
        grating = 0.5 + 0.5 * np.sin(2 * np.pi * cycles[cls] * projection[None] + phase)  # (n, 32, 32)
        pattern = grating[..., None] * bright[cls] + (1 - grating[..., None]) * dark[cls]  # (n, 32, 32, 3)
        brightness = rng.uniform(*BRIGHTNESS_RANGE, size=(per_class, 1, 1, 1)).astype(np.float32)
        noise = rng.normal(0.0, NOISE_STD, size=pattern.shape).astype(np.float32)
        pixels = np.clip(pattern * brightness + noise, 0.0, 1.0)
        images[cls * per_class:(cls + 1) * per_class] = np.round(pixels * 255).astype(np.uint8)
    targets = np.repeat(np.arange(num_classes), per_class).tolist()
    return images, targets


def synthetic_class_names(num_classes: int) -> list[str]:
    """Return the class names ``pattern_00``, ``pattern_01``, ... (zero-padded to sort in class order)."""
    width = max(2, len(str(num_classes - 1)))
    return [f"pattern_{cls:0{width}d}" for cls in range(num_classes)]


__all__ = [
    "IMAGE_SIZE", "TRAIN_PER_CLASS", "TEST_PER_CLASS", "GENERATOR_SEED", "NOISE_STD",
    "class_patterns", "synthetic_split", "synthetic_class_names",
]
