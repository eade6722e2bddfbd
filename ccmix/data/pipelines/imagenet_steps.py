"""One training step of the fast ImageNet-recipe pipeline: file bytes in, a ``StepBatch`` of normalised views out.

The recipe is the ``imagenet`` one of Contrastive CutMix (Pan et al., "Enhanced Long-Tailed
Recognition with Contrastive CutMix Augmentation", IEEE TIP 2024): view 0 of each
background, its two contrastive views (Zhu et al., CVPR 2022) and view 0 of each
foreground for CutMix (Yun et al., ICCV 2019). ``ImageNetStepBuilder`` decodes a step's
distinct files at once (``decode_images``), draws every view's crop box, flip and colour
parameters for the whole global batch from the step's generator, keeps the rank's rows,
resamples each crop to 224x224 straight into the float batch (``resized_crops``), then
applies the colour recipe and normalises, on the CPU a cache-sized chunk of views at a time.
It holds no open resources, so it can be sent to DataLoader worker processes.
"""

from __future__ import annotations

import torch

from ccmix.config.fields import TrainConfig
from ccmix.data import views as recipe
from ccmix.data.augment.dispatch import to_device
from ccmix.data.augment.imagenet_views import (
    contrastive_colour_,
    sample_contrastive_pairs,
    sample_view0,
    select_rows,
    view0_colour_,
)
from ccmix.data.augment.recipes import normalize_
from ccmix.data.augment.resample import resized_crops
from ccmix.data.batch import StepBatch
from ccmix.data.decode import decode_images
from ccmix.rng import mix_seed

SIZE = (recipe.IMAGENET_SIZE, recipe.IMAGENET_SIZE)
_CROP_KEYS = ("top", "left", "height", "width")
# Views made per pass on the CPU: 16 float 224x224 views (9.6 MB) stay in the last-level cache
# through the ~40 element-wise passes of the colour recipe, where a whole 256-view batch
# (154 MB) streams from memory on each. One thread, 256 views: 0.77 s in one pass, 0.45 s in
# passes of 8 or 16, 0.50 s of 32, 0.62 s of 64 (2-core x86-64, 32 MB L3); the same values.
CPU_CHUNK_ROWS = 16


def step_generator(augment_seed: int, step: int) -> torch.Generator:
    """Return the CPU generator of step ``step``'s draws, seeded from the epoch's augmentation seed and the step."""
    return torch.Generator().manual_seed(mix_seed(augment_seed, step))


def global_sizes(rows: int, mine: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Return int64 (rows, 2) image sizes: ``sizes`` (b, 2) at rows ``mine`` (b,), 224x224 placeholders elsewhere.

    The placeholders stand for images other processes crop: their draws are made and dropped.
    """
    full = torch.full((rows, 2), recipe.IMAGENET_SIZE, dtype=torch.int64)
    full[mine] = sizes
    return full


class ImageNetStepBuilder:
    """Builds a rank's StepBatch of one step from its files' bytes (see the module docstring).

    ``targets``: int64 (N,) CPU labels of the training set; ``device``: where the views are
    made (decoding on CUDA uses nvJPEG).
    """

    def __init__(self, config: TrainConfig, targets: torch.Tensor, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.need_contrastive = config.uses_contrastive
        self.need_foreground = config.uses_cutmix
        self.variant = config.contrastive_views
        self.randaugment = (config.randaugment_ops, config.randaugment_magnitude)
        self.mean, self.std = recipe.normalization(config.dataset, "imagenet")
        self.targets = targets.to(self.device)

    def sample_step(self, width: int, generator: torch.Generator, columns: torch.Tensor,
                    sizes: torch.Tensor) -> tuple[dict, dict | None]:
        """Return (view-0 draws, contrastive draws or None) of one step, cut to the rank's rows.

        width: the global batch; columns: int64 (b,) the rank's columns; sizes: int64 (b, 2) or
        (2b, 2) (with the foreground, backgrounds first) image sizes of the rank's view-0 rows.
        Draw order: view 0 of 2*width rows (backgrounds, then foregrounds) or width rows, then
        the 2*width contrastive rows (two per background, interleaved).
        """
        first = torch.cat((columns, width + columns)) if self.need_foreground else columns
        rows0 = 2 * width if self.need_foreground else width
        view0 = select_rows(sample_view0(rows0, generator, global_sizes(rows0, first, sizes), *self.randaugment), first)
        if not self.need_contrastive:
            return view0, None
        pairs = (2 * columns.unsqueeze(1) + torch.arange(2)).reshape(-1)
        background_sizes = global_sizes(2 * width, pairs, sizes[: columns.shape[0]].repeat_interleave(2, dim=0))
        contrastive = sample_contrastive_pairs(2 * width, generator, background_sizes, self.variant, *self.randaugment)
        return view0, select_rows(contrastive, pairs)

    def _views(self, rows: int, shared: bool) -> torch.Tensor:
        """Return a new float32 (rows, 3, 224, 224) batch; in shared memory when ``shared``, so that a DataLoader
        worker hands it to the main process without the copy into shared memory that pickling would make."""
        shape = (rows, 3, *SIZE)
        if not shared:
            return torch.empty(shape, dtype=torch.float32, device=self.device)
        # straight into shared memory, as DataLoader's own collation does: share_memory_() of a new tensor would
        # copy it there (256 views: 0.17 s instead of 0.23 to make and fill, one thread)
        storage = torch.UntypedStorage._new_shared(rows * 3 * SIZE[0] * SIZE[1] * 4)
        return torch.empty(0, dtype=torch.float32).set_(storage).view(shape)

    def _make_views(self, views: torch.Tensor, images: list[torch.Tensor], source: torch.Tensor, params: dict,
                    colour) -> None:
        """Write normalised views of ``params``' crops of ``images[source]`` into float ``views`` (n, 3, 224, 224).

        On the CPU ``CPU_CHUNK_ROWS`` views at a time (crop, convert, colour, normalise while
        they are in cache); elsewhere all n at once (fewer kernel launches).
        """
        rows = source.shape[0]
        chunk = CPU_CHUNK_ROWS if self.device.type == "cpu" else rows
        for start in range(0, rows, chunk):
            part = torch.arange(start, min(start + chunk, rows))
            chosen = select_rows(params, part)
            out = resized_crops(images, source[part], {k: chosen[k] for k in _CROP_KEYS}, chosen["flip"], SIZE,
                                out=views[start:start + part.shape[0]])
            normalize_(colour(out, chosen), self.mean, self.std)

    def build(self, data: list[torch.Tensor], files: list[int], background: list[int], foreground: list[int] | None,
              columns: torch.Tensor, width: int, generator: torch.Generator,
              shared: bool = False) -> tuple[StepBatch, int]:
        """Return (the step's StepBatch on the builder's device, the number of images decoded one at a time).

        data: the bytes of the dataset images ``files`` (distinct indices); background and
        foreground: the rank's dataset indices (b each; foreground None without CutMix);
        columns: int64 (b,) their columns in the global batch of ``width``; generator: the
        step's (``step_generator``); shared: make the views in shared memory (CPU, in a
        DataLoader worker).
        """
        images, fallbacks = decode_images(data, self.device)
        where = {index: position for position, index in enumerate(files)}
        first = background + (foreground or [])
        source = torch.tensor([where[index] for index in first], dtype=torch.int64)
        sizes = torch.tensor([list(images[i].shape[-2:]) for i in source.tolist()], dtype=torch.int64).view(-1, 2)
        view0, contrastive = self.sample_step(width, generator, columns, sizes)
        batch, rows0 = len(background), source.shape[0]
        views = self._views(rows0 + (2 * batch if contrastive is not None else 0), shared)
        self._make_views(views[:rows0], images, source, view0, view0_colour_)
        if contrastive is not None:
            self._make_views(views[rows0:], images, source[:batch].repeat_interleave(2), contrastive,
                             contrastive_colour_)
        labels = self.targets.index_select(0, to_device(torch.tensor(first, dtype=torch.int64), self.device))
        return StepBatch(
            view0=views[:batch],
            contrastive=views[rows0:].view(batch, 2, 3, *SIZE) if contrastive is not None else None,
            labels=labels[:batch],
            foreground=views[batch:rows0] if foreground is not None else None,
            foreground_labels=labels[batch:] if foreground is not None else None,
        ), fallbacks


__all__ = ["CPU_CHUNK_ROWS", "SIZE", "ImageNetStepBuilder", "global_sizes", "step_generator"]
