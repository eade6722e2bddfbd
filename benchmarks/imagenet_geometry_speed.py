"""Speed and fidelity of the ImageNet-scale geometry on one CPU thread: decoding, random resized crops, eval crop.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/imagenet_geometry_speed.py [--images 32] [--crops 256]``.
Prints images/s of ``decode_images`` against PIL, of ``resized_crops`` (per-image uint8
``F.interpolate``) against ``torchvision.ops.roi_align`` on float batches and against PIL's
``resized_crop``, and of ``resize_centre_crop``; for each resampler, the largest and mean
difference in grey levels from PIL. Images are JPEGs of 360-440 pixels a side, crops 224x224
from RandomResizedCrop(scale 0.08-1) boxes.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import torch
from PIL import Image
from torchvision.ops import roi_align
from torchvision.transforms.v2 import functional as TF

from ccmix.data.augment.draws import sample_resized_crop
from ccmix.data.augment.resample import resize_centre_crop, resized_crops
from ccmix.data.decode import decode_images

SIZE = 224


def make_jpegs(count: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    files = []
    for _ in range(count):
        height, width = (int(side) for side in rng.integers(360, 441, 2))
        blobs = Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).resize((width, height),
                                                                                         Image.BICUBIC)
        buffer = io.BytesIO()
        blobs.save(buffer, "JPEG", quality=90)
        files.append(buffer.getvalue())
    return files


def rate(function, count: int, repeats: int = 3) -> float:
    """Return the best images/s over ``repeats`` timed calls of ``function`` (after one warm-up call)."""
    function()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return count / best


def roi_align_crops(images: list[torch.Tensor], source: torch.Tensor, boxes: dict) -> torch.Tensor:
    """Return uint8 (B, 3, 224, 224) crops by one ``roi_align`` call on the images zero-padded into a float batch."""
    height = max(image.shape[1] for image in images)
    width = max(image.shape[2] for image in images)
    padded = torch.zeros(len(images), 3, height, width)
    for index, image in enumerate(images):
        padded[index, :, :image.shape[1], :image.shape[2]] = image
    top, left = boxes["top"].double(), boxes["left"].double()
    rois = torch.stack((source.double(), left, top, left + boxes["width"], top + boxes["height"]), dim=1).float()
    out = roi_align(padded, rois, (SIZE, SIZE), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--crops", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    files = make_jpegs(args.images)
    data = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in files]
    pictures = [Image.open(io.BytesIO(blob)).convert("RGB") for blob in files]
    print(f"decode_images: {rate(lambda: decode_images(data), len(data)):.0f} images/s")
    print(f"PIL decode: {rate(lambda: [Image.open(io.BytesIO(b)).convert('RGB') for b in files], len(files)):.0f} "
          f"images/s")

    images, _ = decode_images(data)
    source = torch.randint(0, len(images), (args.crops,), generator=torch.Generator().manual_seed(0))
    sizes = torch.tensor([list(images[i].shape[1:]) for i in source.tolist()])
    boxes = sample_resized_crop(args.crops, torch.Generator().manual_seed(1), sizes, scale=(0.08, 1.0))
    rows = list(zip(source.tolist(), *(boxes[k].tolist() for k in ("top", "left", "height", "width"))))
    reference = torch.stack([torch.from_numpy(np.array(TF.resized_crop(pictures[i], *box, [SIZE, SIZE])))
                             .permute(2, 0, 1) for i, *box in rows])
    out = torch.empty(args.crops, 3, SIZE, SIZE, dtype=torch.uint8)
    candidates = {
        "resized_crops (uint8 F.interpolate)": lambda: resized_crops(images, source, boxes, None, out=out),
        "roi_align (float, padded batch)": lambda: roi_align_crops(images, source, boxes),
        "PIL resized_crop": lambda: [TF.resized_crop(pictures[i], *box, [SIZE, SIZE]) for i, *box in rows],
    }
    for name, function in candidates.items():
        line = f"{name}: {rate(function, args.crops):.0f} crops/s"
        if not name.startswith("PIL"):
            difference = (function().int() - reference.int()).abs()
            line += f", from PIL: max {difference.max().item()} mean {difference.double().mean().item():.3f} levels"
        print(line)
    print(f"resize_centre_crop: {rate(lambda: resize_centre_crop(images), len(images)):.0f} images/s")


if __name__ == "__main__":
    main()
