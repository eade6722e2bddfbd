"""Dataset sources of the long-tailed benchmarks: CIFAR-LT, image folders, OLTR list files, synthetic.

The CIFAR-LT subsets follow the convention of Contrastive CutMix (Pan et al.,
"Enhanced Long-Tailed Recognition with Contrastive CutMix Augmentation", IEEE TIP
2024) and of balanced contrastive learning (Zhu et al., CVPR 2022); ImageNet-LT,
iNaturalist 2018 and Places-LT are read from the standard ``relative/path label``
split files.

Every dataset is a ``torch.utils.data.Dataset`` with ``targets`` (list of int),
``class_counts`` (list of int, index = class id), ``classes`` (names),
``num_classes``, ``load_image(i)`` (PIL RGB), ``transform`` and ``as_uint8_tensor()``
((N, 3, H, W) uint8). Array-backed datasets (CIFAR, synthetic) hold a uint8
(N, H, W, 3) numpy array; file-backed ones (folder, list files) decode lazily.

Image files of any mode become 8-bit RGB by one rule (:func:`~ccmix.data.images.to_rgb`;
reading and decoding image files lives in :mod:`ccmix.data.images`, whose public names
are importable from here too). The ``cifar`` view recipe takes 32x32 images: file datasets
read with it have every image's size checked from its header when the dataset is
opened (:func:`check_image_sizes`), so an odd image is named before training starts.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from ccmix.config.fields import FIXED_NUM_CLASSES, LIST_DATASETS, PROFILED_DATASETS, TrainConfig, list_files
from ccmix.data.images import decode_files, decode_rgb_tensor, read_rgb, read_size, to_rgb
from ccmix.data.longtail import longtail_indices
from ccmix.data.synthetic import TEST_PER_CLASS, TRAIN_PER_CLASS, synthetic_class_names, synthetic_split
from ccmix.data.views import CIFAR_SIZE, test_view
from ccmix.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DOWNLOAD_TIMEOUT_S = 60  # seconds without an answer before a download attempt gives up

# dataset -> (torchvision class, archive file name, extracted folder, display name)
_CIFAR = {
    "cifar10": ("CIFAR10", "cifar-10-python.tar.gz", "cifar-10-batches-py", "CIFAR-10"),
    "cifar100": ("CIFAR100", "cifar-100-python.tar.gz", "cifar-100-python", "CIFAR-100"),
}


class DataUnavailableError(FileNotFoundError):
    """The dataset is not on disk and could not be downloaded; the message says where to put it."""


# --------------------------------------------------------------------------- dataset classes


class LabelledImages(torch.utils.data.Dataset):
    """Base class: labels, class names and the (image, target) protocol shared by every source."""

    def __init__(self, targets: Sequence[int], classes: Sequence[str], transform: Callable | None = None):
        self.targets: list[int] = [int(t) for t in targets]
        self.classes: list[str] = list(classes)
        self.num_classes: int = len(self.classes)
        if self.targets and (min(self.targets) < 0 or max(self.targets) >= self.num_classes):
            raise ValueError(f"targets must lie in 0..{self.num_classes - 1} (one per class name)")
        counts = np.bincount(np.asarray(self.targets, dtype=np.int64), minlength=self.num_classes)
        self.class_counts: list[int] = [int(c) for c in counts]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        """Return ``(transform(image) if transform else image, target)``."""
        image = self.load_image(index)
        return (self.transform(image) if self.transform is not None else image), self.targets[index]

    def load_image(self, index: int) -> Image.Image:
        """Return image ``index`` as a PIL RGB image."""
        raise NotImplementedError

    def as_uint8_tensor(self) -> torch.Tensor:
        """Return every image as one uint8 tensor (N, 3, H, W)."""
        raise NotImplementedError

    def subset(self, indices: Sequence[int]) -> LabelledImages:
        """Return a dataset of the same kind holding only ``indices`` (in that order)."""
        raise NotImplementedError

    def identity_records(self) -> list[str]:
        """Return one string per image identifying it (here its index and label; see ``ccmix.data.identity``)."""
        return [f"{index}\t{target}" for index, target in enumerate(self.targets)]


class ArrayImages(LabelledImages):
    """Images held in memory as a uint8 (N, H, W, 3) numpy array (CIFAR, synthetic)."""

    def __init__(self, images: np.ndarray, targets: Sequence[int], classes: Sequence[str],
                 transform: Callable | None = None, source_indices: Sequence[int] | None = None):
        images = np.ascontiguousarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be a uint8 (N, H, W, 3) array, got {images.dtype} {images.shape}")
        if len(images) != len(targets):
            raise ValueError(f"images ({len(images)}) and targets ({len(targets)}) differ in length")
        super().__init__(targets, classes, transform)
        self.images = images
        # index of each image in the full source split (CIFAR order), which identifies a long-tailed subset
        self.source_indices = np.arange(len(images), dtype=np.int64) if source_indices is None else np.asarray(
            source_indices, dtype=np.int64)
        self._tensor: torch.Tensor | None = None

    @property
    def data(self) -> np.ndarray:
        """Return the uint8 (N, H, W, 3) image array (torchvision's name for it)."""
        return self.images

    def load_image(self, index: int) -> Image.Image:
        """Return image ``index`` as a PIL RGB image."""
        return Image.fromarray(self.images[index])

    def as_uint8_tensor(self) -> torch.Tensor:
        """Return every image as one uint8 tensor (N, 3, H, W) (made once, then cached)."""
        if self._tensor is None:
            self._tensor = torch.from_numpy(self.images).permute(0, 3, 1, 2).contiguous()
        return self._tensor

    def subset(self, indices: Sequence[int]) -> ArrayImages:
        """Return an ArrayImages holding only ``indices`` (in that order)."""
        indices = np.asarray(indices, dtype=np.int64)
        targets = np.asarray(self.targets, dtype=np.int64)[indices]
        return ArrayImages(self.images[indices], targets.tolist(), self.classes, self.transform,
                           source_indices=self.source_indices[indices])

    def identity_records(self) -> list[str]:
        """Return one string per image identifying it in its source split (its index there) and its label."""
        return [f"{int(i)}\t{t}" for i, t in zip(self.source_indices, self.targets)]


def check_image_sizes(dataset: LabelledImages, size: int, recipe: str, threads: int = 8) -> None:
    """Raise ValueError naming the first image of ``dataset`` that is not ``size`` x ``size`` pixels.

    Only file datasets are checked (CIFAR and synthetic arrays are 32x32 by construction),
    from the image headers without decoding, in ``threads`` threads.
    """
    if not isinstance(dataset, FileImages) or not dataset.paths:
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        sizes = list(pool.map(read_size, dataset.paths, chunksize=256))
    wrong = [index for index, found in enumerate(sizes) if found != (size, size)]
    if wrong:
        width, height = sizes[wrong[0]]
        others = f" (and {len(wrong) - 1} other images)" if len(wrong) > 1 else ""
        raise DataError(
            f"image file {dataset.paths[wrong[0]]!r} is {width}x{height} pixels{others} and view_recipe {recipe!r} "
            f"takes {size}x{size} images; resize them, or use view_recipe=imagenet, which resizes any size"
        )


class FileImages(LabelledImages):
    """Images stored as files and decoded lazily with PIL (folder trees, list files)."""

    def __init__(self, paths: Sequence[str], targets: Sequence[int], classes: Sequence[str],
                 transform: Callable | None = None, root: str | None = None):
        if len(paths) != len(targets):
            raise ValueError(f"paths ({len(paths)}) and targets ({len(targets)}) differ in length")
        super().__init__(targets, classes, transform)
        self.paths: list[str] = [os.fspath(p) for p in paths]
        self.root = root  # the data root the paths lie under; the data's identity does not depend on where it is
        self._tensor: torch.Tensor | None = None

    def load_image(self, index: int) -> Image.Image:
        """Return image ``index`` decoded as PIL RGB (from the cache once ``as_uint8_tensor`` has run)."""
        if self._tensor is not None:
            return Image.fromarray(np.ascontiguousarray(self._tensor[index].permute(1, 2, 0).numpy()))
        return read_rgb(self.paths[index])

    def as_uint8_tensor(self) -> torch.Tensor:
        """Return every image decoded once into a uint8 tensor (N, 3, H, W); all images must share one size."""
        if self._tensor is None:
            if not self.paths:
                raise ValueError("the dataset is empty; there is no image to decode")
            self._tensor = decode_files(self.paths)
        return self._tensor

    def subset(self, indices: Sequence[int]) -> FileImages:
        """Return a FileImages holding only ``indices`` (in that order)."""
        indices = [int(i) for i in indices]
        return FileImages([self.paths[i] for i in indices], [self.targets[i] for i in indices], self.classes,
                          self.transform, root=self.root)

    def identity_records(self) -> list[str]:
        """Return one string per image: its path (relative to the data root) and its label."""
        relative = ([os.path.relpath(p, self.root) for p in self.paths] if self.root is not None else self.paths)
        return [f"{p.replace(os.sep, '/')}\t{t}" for p, t in zip(relative, self.targets)]


# --------------------------------------------------------------------------- CIFAR


def _cifar_arrays(name: str, root: str, train: bool) -> tuple[np.ndarray, list[int], list[str]]:
    """Return (images uint8 (N, 32, 32, 3), targets, class names) of a torchvision CIFAR split."""
    from torchvision import datasets as tv_datasets

    class_name, archive, folder, title = _CIFAR[name]
    dataset_class = getattr(tv_datasets, class_name)
    try:
        loaded = dataset_class(root, train=train, download=False)
    except RuntimeError:  # not extracted yet (or damaged): download, or extract an archive placed by hand
        previous_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        try:
            loaded = dataset_class(root, train=train, download=True)
        except (OSError, RuntimeError, ValueError) as exc:
            folder_path = os.path.abspath(root)
            present = os.path.exists(os.path.join(root, archive))
            note = " (the copy already there failed its checksum)" if present else ""
            raise DataUnavailableError(
                f"{title} is not in data_root={root!r} and could not be downloaded ({type(exc).__name__}: {exc}); "
                f"without network access, place the archive {archive}{note} (the 'python version' from the "
                f"{title} home page) in the folder {folder_path!r} and run again: it is checked and extracted "
                f"there into {folder}/"
            ) from exc
        finally:
            socket.setdefaulttimeout(previous_timeout)
    return np.asarray(loaded.data, dtype=np.uint8), [int(t) for t in loaded.targets], list(loaded.classes)


def cifar_dataset(name: str, root: str, train: bool) -> ArrayImages:
    """Return the full (balanced) CIFAR-10 or CIFAR-100 split as ArrayImages, downloading it when possible."""
    if name not in _CIFAR:
        raise ValueError(f"dataset {name!r} is not a CIFAR dataset; choose cifar10 or cifar100")
    images, targets, classes = _cifar_arrays(name, root, train)
    return ArrayImages(images, targets, classes)


# --------------------------------------------------------------------------- image folders


def _folder_error(path: str, exc: OSError) -> DataError:
    what = "a symbolic link that leads back to itself" if exc.errno == errno.ELOOP else exc.strerror or str(exc)
    return DataError(f"{path!r} cannot be read ({what}); fix or remove it")


def _entry_is(entry: os.DirEntry, kind: str) -> bool:
    try:
        return entry.is_dir() if kind == "dir" else entry.is_file()
    except OSError as exc:  # a symbolic link loop, a vanished network mount
        raise _folder_error(entry.path, exc) from None


def _scan(folder: str, kind: str) -> list[str]:
    """Return the sorted names of the visible entries of ``folder`` that are folders (kind 'dir') or files."""
    try:
        with os.scandir(folder) as entries:
            return sorted(e.name for e in entries if not e.name.startswith(".") and _entry_is(e, kind))
    except OSError as exc:
        raise _folder_error(folder, exc) from None


def _image_files(folder: str) -> list[str]:
    """Return the image files of ``folder`` sorted by name (hidden files and other extensions skipped)."""
    names = [name for name in _scan(folder, "file") if name.lower().endswith(IMAGE_EXTENSIONS)]
    return [os.path.join(folder, name) for name in names]


def _class_folders(split_dir: str) -> list[str]:
    return _scan(split_dir, "dir")


def folder_dataset(root: str, split: str, classes: Sequence[str] | None = None) -> FileImages:
    """Return ``root/split/<class>/*`` as FileImages; classes sorted by folder name, files by name.

    For the test split pass the training ``classes`` so that labels agree; a test class
    folder unknown to training is an error, a missing one simply has no test images.
    """
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
        raise DataError(f"folder dataset root {root!r} has no {split}/ folder; expected {split}/<class>/<images>")
    found = _class_folders(split_dir)
    if classes is None:
        classes = found
        if not classes:
            raise DataError(f"folder {split_dir!r} has no class folders; expected {split}/<class>/<images>")
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise DataError(f"class folder {os.path.join(split_dir, unknown[0])!r} has no counterpart in train/")
    paths, targets = [], []
    for label, name in enumerate(classes):
        class_dir = os.path.join(split_dir, name)
        files = _image_files(class_dir) if os.path.lexists(class_dir) else []
        if not files and split == "train":
            raise DataError(f"class folder {class_dir!r} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
        paths += files
        targets += [label] * len(files)
    return FileImages(paths, targets, classes, root=root)


# --------------------------------------------------------------------------- OLTR list files


def read_list_file(path: str, num_classes: int) -> tuple[list[str], list[int]]:
    """Return (relative paths, labels) of a ``relative/path label`` split file; blank lines are skipped.

    A malformed line (no label, a label that is not an integer in 0..num_classes-1)
    raises ValueError naming the file and the line number.
    """
    paths, labels = [], []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            text = line.strip()
            if not text:
                continue
            parts = text.rsplit(maxsplit=1)
            label = None
            if len(parts) == 2:
                try:
                    label = int(parts[1])
                except ValueError:
                    label = None
            if label is None or not 0 <= label < num_classes:
                raise DataError(
                    f"{path}, line {number}: {text!r} is not 'relative/path label' with an integer label "
                    f"in 0..{num_classes - 1}"
                )
            paths.append(parts[0])
            labels.append(label)
    if not paths:
        raise DataError(f"split file {path!r} lists no images")
    return paths, labels


def _class_names_from_paths(paths: Sequence[str], labels: Sequence[int], num_classes: int) -> list[str]:
    """Return per-class names: the parent folder of each class's first listed image, else the label."""
    names = [str(c) for c in range(num_classes)]
    seen = set()
    for path, label in zip(paths, labels):
        if label not in seen:
            seen.add(label)
            parent = os.path.basename(os.path.dirname(path))
            if parent:
                names[label] = parent
    return names


def list_dataset(root: str, list_file: str, num_classes: int, classes: Sequence[str] | None = None) -> FileImages:
    """Return the images listed in ``list_file`` (paths relative to ``root``) as FileImages."""
    relative, labels = read_list_file(list_file, num_classes)
    if classes is None:
        classes = _class_names_from_paths(relative, labels, num_classes)
    return FileImages([os.path.join(root, p) for p in relative], labels, classes, root=root)


# --------------------------------------------------------------------------- synthetic


def synthetic_dataset(num_classes: int, split: str) -> ArrayImages:
    """Return the generated synthetic split (100 train or 20 test images per class) as ArrayImages."""
    per_class = TRAIN_PER_CLASS if split == "train" else TEST_PER_CLASS
    images, targets = synthetic_split(num_classes, per_class, split)
    return ArrayImages(images, targets, synthetic_class_names(num_classes))


# --------------------------------------------------------------------------- entry point


def build_datasets(config: TrainConfig) -> tuple[LabelledImages, LabelledImages]:
    """Return (train, test): the long-tailed training set (transform None) and the test set (test view).

    ``config`` is expected to be validated already. The long-tail profile (imb,
    imb_profile, subset_seed) applies to cifar10, cifar100, folder and synthetic; list
    datasets are long-tailed by their split files.
    """
    name = config.dataset
    if name in _CIFAR:
        train = cifar_dataset(name, config.data_root, train=True)
        test = cifar_dataset(name, config.data_root, train=False)
    elif name == "folder":
        train = folder_dataset(config.data_root, "train")
        test = folder_dataset(config.data_root, "test", classes=train.classes)
    elif name in LIST_DATASETS:
        train_list, test_list = list_files(config)
        num_classes = FIXED_NUM_CLASSES[name]
        train = list_dataset(config.data_root, train_list, num_classes)
        test = list_dataset(config.data_root, test_list, num_classes, classes=train.classes)
    elif name == "synthetic":
        train = synthetic_dataset(config.synthetic_classes, "train")
        test = synthetic_dataset(config.synthetic_classes, "test")
    else:
        raise ValueError(f"dataset {name!r} is not accepted; choose one of the ccmix.config.fields.DATASETS")
    if name in PROFILED_DATASETS:
        kept = longtail_indices(train.targets, train.num_classes, config.imb, config.imb_profile, config.subset_seed)
        train = train.subset(kept)
    train.transform = None
    recipe = config.resolved_view_recipe
    if recipe == "cifar":  # its views and its test view keep the image size: every image must be 32x32
        check_image_sizes(train, CIFAR_SIZE, recipe)
        check_image_sizes(test, CIFAR_SIZE, recipe)
    test.transform = test_view(recipe, name)
    return train, test


__all__ = [
    "DataUnavailableError", "LabelledImages", "ArrayImages", "FileImages", "read_rgb", "read_size", "to_rgb",
    "check_image_sizes", "cifar_dataset",
    "decode_rgb_tensor", "decode_files", "folder_dataset", "read_list_file", "list_dataset", "synthetic_dataset", "build_datasets", "IMAGE_EXTENSIONS",
]
