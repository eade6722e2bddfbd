"""Throughput of the ImageNet-recipe training data paths: classic (PIL in workers) against fast (bytes, batched views).

The views are those of the ``imagenet`` recipe of Contrastive CutMix (Pan et al., "Enhanced
Long-Tailed Recognition with Contrastive CutMix Augmentation", IEEE TIP 2024) with the
concutmix method: per training pair, view 0 and two contrastive views of the background and
view 0 of the foreground (four 224x224 views from two decoded files). The bench writes an
ImageNet-like folder tree of JPEGs of varied sizes in a temporary folder, times both
pipelines on it with the same CPU cores, and deletes it.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import torch
from PIL import Image

from ccmix.config.fields import TrainConfig
from ccmix.config.rules import ConfigError
from ccmix.data.datasets import folder_dataset
from ccmix.data.pipelines.classic import ClassicTrainPipeline
from ccmix.data.pipelines.fast_imagenet import FastImageNetPipeline
from ccmix.data.pipelines.launch_count import StepLaunches
from ccmix.experiments.bench import MIN_SECONDS, ROUNDS, best_rate, endless_batches, machine_load
from ccmix.train.evaluation import single_device

VIEWS_PER_PAIR = 4  # concutmix: view 0 and two contrastive views of the background, view 0 of the foreground


def write_image_tree(root: str, num_images: int, num_classes: int = 10, sides: tuple[int, int] = (300, 500),
                     seed: int = 0, split: str = "train") -> None:
    """Write ``num_images`` RGB JPEGs (quality 90) as ``root/split/class_<c>/<i>.jpg``, classes in turn.

    Each image is smooth random colour blobs with pixel noise, its height and width drawn
    uniformly in ``sides`` pixels (inclusive), so decoding and resampling cost what photos
    of that size cost.
    """
    rng = np.random.default_rng(seed)
    for index in range(num_images):
        folder = os.path.join(root, split, f"class_{index % num_classes}")
        os.makedirs(folder, exist_ok=True)
        height, width = (int(side) for side in rng.integers(sides[0], sides[1] + 1, size=2))
        blobs = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((width, height),
                                                                                        Image.BICUBIC)
        noisy = np.asarray(blobs, dtype=np.int16) + rng.integers(-12, 13, (height, width, 3), dtype=np.int16)
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(os.path.join(folder, f"{index}.jpg"), quality=90)


def fast_step_launches(pipeline: FastImageNetPipeline, steps: int = 2) -> dict:
    """Return {"ops_per_step": [...], "copies_per_step": [...]}: torch operator calls touching the pipeline's device
    (kernels, on a GPU) and host-to-device copies of each of ``steps`` steps, after one uncounted step (epoch
    after epoch when an epoch has fewer steps)."""
    iterator = endless_batches(pipeline)
    try:
        next(iterator)
        result = {"ops_per_step": [], "copies_per_step": []}
        for _ in range(steps):
            with StepLaunches(pipeline.device) as counter:
                next(iterator)
            result["ops_per_step"].append(len(counter.calls))
            result["copies_per_step"].append(counter.copies)
        return result
    finally:
        iterator.close()


def _pairs_per_second(pipeline, device: torch.device) -> dict:
    """Return ``best_rate`` of drawing the pipeline's batches (training pairs/s) after one untimed batch."""
    iterator = endless_batches(pipeline)
    try:
        next(iterator)
        return best_rate(lambda: next(iterator).size, device, ROUNDS, MIN_SECONDS)
    finally:
        iterator.close()


def run_imagenet_bench(num_images: int = 2000, batch_size: int = 256, device: str | None = "auto",
                       num_workers: int | None = None) -> dict:
    """Return the JSON-ready ImageNet-recipe bench: training pairs/s of the classic and the fast data paths.

    Both run concutmix's four views per pair on the same generated tree (``write_image_tree``:
    ``num_images`` JPEGs of 300-500 pixels a side, deleted afterwards), at ``batch_size``, with
    ``num_workers`` DataLoader workers (default: the CPUs this process may use) and the same
    torch intra-op threads: the classic workers decode and augment with PIL; the fast path's
    workers read bytes and its main process decodes and augments whole batches, and on the CPU
    also with every worker building whole batches (``build_in_workers``). ``fast_ratio``: the
    faster fast form ("fastest") over classic. Each figure is
    the best of ``ROUNDS`` rounds of at least ``MIN_SECONDS`` of work. Also the fast path's
    operator calls and host-to-device copies per step (``fast_step_launches``).
    """
    for name, value, low in (("num_images", num_images, 2), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name}={value!r} is not accepted; it must be an integer >= {low}")
    if batch_size > num_images:
        raise ConfigError(f"batch_size={batch_size} is not accepted with num_images={num_images}; "
                          f"it must not exceed the number of images")
    started = machine_load()
    workers = started["cpus"] if num_workers is None else num_workers
    config = TrainConfig(dataset="folder", view_recipe="imagenet", method="concutmix", batch_size=batch_size,
                         num_workers=workers, progress=False, device=device or "auto")
    device = single_device(config)
    config = config.replace(device=device.type)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
              "recipe": "imagenet", "method": config.method, "batch_size": batch_size, "train_images": num_images,
              "views_per_pair": VIEWS_PER_PAIR, "num_workers": workers, "torch_threads": torch.get_num_threads(),
              "rounds": ROUNDS, "min_seconds": MIN_SECONDS, "cpus": started["cpus"], "load_before": started["load"]}
    with tempfile.TemporaryDirectory(prefix="ccmix-bench-") as root:
        write_image_tree(root, num_images)
        train = folder_dataset(root, "train")
        config = config.replace(data_root=root)
        classic = ClassicTrainPipeline(train, config, device)
        pipelines = {"classic": classic, "fast": FastImageNetPipeline(train, config, device)}
        if device.type == "cpu" and workers > 0:  # the same views built by every core, one step per worker
            pipelines["fast_worker_built"] = FastImageNetPipeline(train, config, device, build_in_workers=True)
        for name, pipeline in pipelines.items():
            pairs = _pairs_per_second(pipeline, device)["samples_per_second"]
            result[f"pairs_per_second_{name}"] = pairs
            result[f"views_per_second_{name}"] = VIEWS_PER_PAIR * pairs
        launches = fast_step_launches(FastImageNetPipeline(train, config.replace(num_workers=0), device))
    fastest = max((name for name in pipelines if name != "classic"), key=lambda name: result[f"pairs_per_second_{name}"])
    result["fastest"] = fastest
    result["fast_ratio"] = result[f"pairs_per_second_{fastest}"] / result["pairs_per_second_classic"]
    result["fast_ops_per_step"], result["fast_copies_per_step"] = launches["ops_per_step"], launches["copies_per_step"]
    result["load_after"] = machine_load()["load"]
    return {key: round(value, 2) if isinstance(value, float) else value for key, value in result.items()}


__all__ = ["VIEWS_PER_PAIR", "fast_step_launches", "run_imagenet_bench", "write_image_tree"]
