"""Dataset sources: synthetic, CIFAR (offline paths), image folders, OLTR list files, the shared JPEG tree."""

from __future__ import annotations

import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from longtail_reference import convention_indices
from PIL import Image

from ccmix.config.fields import TrainConfig
from ccmix.config.validation import validate
from ccmix.data.datasets import DataUnavailableError, build_datasets, read_list_file

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
INAT_MEAN = (0.466, 0.471, 0.380)
INAT_STD = (0.195, 0.194, 0.192)


def exp_counts(n_max, num_classes, imb):
    return [max(1, int(n_max * (1 / imb) ** (i / (num_classes - 1)))) for i in range(num_classes)]


# --------------------------------------------------------------------------- synthetic


def test_synthetic_is_long_tailed_balanced_in_test_and_deterministic():
    config = TrainConfig(dataset="synthetic", synthetic_classes=10, imb=10)
    train, test = build_datasets(config)
    again, _ = build_datasets(config)
    assert train.class_counts == exp_counts(100, 10, 10) == [100, 77, 59, 46, 35, 27, 21, 16, 12, 10]
    assert len(train) == sum(train.class_counts) and train.num_classes == 10 and len(train.classes) == 10
    assert test.class_counts == [20] * 10
    assert train.images.dtype == np.uint8 and train.images.shape == (len(train), 32, 32, 3)
    assert np.array_equal(train.images, again.images) and train.targets == again.targets
    assert train.transform is None
    image, label = train[0]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and label == train.targets[0]
    tensor, _ = test[0]
    assert tensor.shape == (3, 32, 32) and tensor.dtype == torch.float32
    stacked = train.as_uint8_tensor()
    assert stacked.shape == (len(train), 3, 32, 32) and stacked.dtype == torch.uint8
    assert torch.equal(stacked[3].permute(1, 2, 0), torch.from_numpy(train.images[3]))


def test_synthetic_classes_are_learnable_and_subset_seed_matters():
    train, test = build_datasets(TrainConfig(dataset="synthetic", synthetic_classes=10, imb=100))
    # A nearest-class-mean rule on raw pixels already separates the classes; a CNN does better.
    x = train.images.reshape(len(train), -1).astype(np.float32)
    y = np.asarray(train.targets)
    means = np.stack([x[y == c].mean(0) for c in range(10)])
    x_test = test.images.reshape(len(test), -1).astype(np.float32)
    predictions = ((x_test[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    assert (predictions == np.asarray(test.targets)).mean() > 0.9
    other, _ = build_datasets(TrainConfig(dataset="synthetic", synthetic_classes=10, imb=100, subset_seed=3))
    assert other.class_counts == train.class_counts
    assert not np.array_equal(other.images, train.images)


# --------------------------------------------------------------------------- CIFAR


class FakeCifar10:
    """Stands in for torchvision's CIFAR10: balanced labels in scrambled order, tiny images."""

    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

    def __init__(self, root, train=True, download=False):
        per_class = 5000 if train else 1000
        self.targets = np.random.RandomState(1).permutation(np.repeat(np.arange(10), per_class)).tolist()
        self.data = np.zeros((len(self.targets), 2, 2, 3), dtype=np.uint8)
        self.data[:, 0, 0, 0] = np.asarray(self.targets)  # the label, readable back from the pixels


@pytest.mark.parametrize("imb,total", [(100, 12406), (50, 13996), (10, 20431)])
def test_cifar10_lt_subset_through_build_datasets(monkeypatch, imb, total):
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCifar10)
    train, test = build_datasets(TrainConfig(dataset="cifar10", imb=imb))
    full = FakeCifar10("unused")
    assert len(train) == total
    assert train.class_counts == exp_counts(5000, 10, imb)
    expected = convention_indices(full.targets, 10, exp_counts(5000, 10, imb), seed=10)
    assert train.targets == [full.targets[i] for i in expected]
    assert train.images[:, 0, 0, 0].tolist() == train.targets  # images moved together with their labels
    assert test.class_counts == [1000] * 10 and train.classes == FakeCifar10.classes


def _refuse_network(calls):
    def urlopen(*args, **kwargs):
        calls.append(args)
        raise urllib.error.URLError("network is unreachable")

    return urlopen


@pytest.mark.parametrize("dataset,archive", [("cifar100", "cifar-100-python.tar.gz"),
                                             ("cifar10", "cifar-10-python.tar.gz")])
def test_cifar_without_network_fails_fast_and_says_where_to_put_the_archive(tmp_path, monkeypatch, dataset, archive):
    calls = []
    monkeypatch.setattr(urllib.request, "urlopen", _refuse_network(calls))
    root = tmp_path / "empty"
    # how long giving up takes is a benchmark figure (benchmarks/offline_error_seconds.py), not a test bound
    with pytest.raises(DataUnavailableError) as caught:
        build_datasets(TrainConfig(dataset=dataset, data_root=str(root)))
    message = str(caught.value)
    assert archive in message and str(root) in message and "network is unreachable" in message
    assert calls, "a download was attempted (and refused)"
    assert not (root / archive).exists()


def test_cifar_with_a_damaged_archive_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", _refuse_network([]))
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"not really an archive")
    with pytest.raises(DataUnavailableError, match="checksum"):
        build_datasets(TrainConfig(dataset="cifar10", data_root=str(tmp_path)))


# --------------------------------------------------------------------------- image folders


def write_png(path, value, size=(32, 32), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(np.full(shape, value, dtype=np.uint8)).convert(mode).save(path)


@pytest.fixture()
def folder_tree(tmp_path):
    """train/{cat,ant,bee}/ with 6 PNGs each, test/ with 2 each; pixel value = 40 * class + file number."""
    root = tmp_path / "tree"
    for label, name in enumerate(["ant", "bee", "cat"]):
        for i in range(6):
            write_png(root / "train" / name / f"{i:02d}.png", 40 * label + i)
        for i in range(2):
            write_png(root / "test" / name / f"t{i}.png", 40 * label + 10 + i)
    (root / "train" / "ant" / "notes.txt").write_text("not an image, skipped")
    return root


def test_folder_dataset_classes_profile_and_pixels(folder_tree):
    config = validate(TrainConfig(dataset="folder", data_root=str(folder_tree), imb=3, topk=2))
    train, test = build_datasets(config)
    assert train.classes == ["ant", "bee", "cat"] and train.num_classes == 3
    assert train.class_counts == exp_counts(6, 3, 3) == [6, 3, 2]
    full_targets = [c for c in range(3) for _ in range(6)]  # dataset order: classes, then sorted file names
    expected = convention_indices(full_targets, 3, [6, 3, 2], seed=10)
    expected_values = [40 * full_targets[i] + i % 6 for i in expected]
    values = [int(np.asarray(train.load_image(i))[0, 0, 0]) for i in range(len(train))]
    assert values == expected_values
    assert train.load_image(0).mode == "RGB"
    stacked = train.as_uint8_tensor()
    assert stacked.shape == (11, 3, 32, 32) and stacked.dtype == torch.uint8
    assert stacked[:, 1, 4, 4].tolist() == expected_values
    assert test.class_counts == [2, 2, 2]
    tensor, label = test[2]
    assert label == 1 and tensor.shape == (3, 32, 32)
    assert torch.allclose(tensor[0], torch.full((32, 32), (50 / 255 - CIFAR_MEAN[0]) / CIFAR_STD[0]), atol=1e-5)


def test_folder_grayscale_images_load_as_rgb(folder_tree):
    write_png(folder_tree / "train" / "bee" / "zz_gray.png", 99, mode="L")
    train, _ = build_datasets(TrainConfig(dataset="folder", data_root=str(folder_tree), imb=1))
    index = next(i for i, p in enumerate(train.paths) if p.endswith("zz_gray.png"))
    image = train.load_image(index)
    assert image.mode == "RGB" and np.asarray(image)[0, 0].tolist() == [99, 99, 99]


def test_corrupt_image_names_the_file(folder_tree):
    broken = folder_tree / "train" / "cat" / "03_broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage, not a picture")
    with pytest.raises(ValueError, match="03_broken.png"):  # the cifar recipe reads every header when it opens
        build_datasets(TrainConfig(dataset="folder", data_root=str(folder_tree), imb=1))
    train, _ = build_datasets(TrainConfig(dataset="folder", data_root=str(folder_tree), imb=1, view_recipe="imagenet"))
    index = train.paths.index(str(broken))
    with pytest.raises(ValueError, match="03_broken.png"):
        train.load_image(index)
    with pytest.raises(ValueError, match="03_broken.png"):
        train[index]
    with pytest.raises(ValueError, match="03_broken.png"):
        train.as_uint8_tensor()


def test_jpeg_tree_decodes_in_batch_like_pil_and_names_a_broken_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        for i in range(4):
            path = tmp_path / "train" / name / f"{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path, quality=90)
    (tmp_path / "test").mkdir()
    train, _ = build_datasets(TrainConfig(dataset="folder", data_root=str(tmp_path), imb=1))
    by_pil = torch.stack([torch.from_numpy(np.asarray(train.load_image(i)).copy()).permute(2, 0, 1)
                          for i in range(len(train))])
    assert torch.equal(train.as_uint8_tensor(), by_pil)
    broken = tmp_path / "train" / "b" / "2.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    train, _ = build_datasets(TrainConfig(dataset="folder", data_root=str(tmp_path), imb=1, view_recipe="imagenet"))
    with pytest.raises(ValueError, match=r"b/2\.jpg"):
        train.as_uint8_tensor()


def test_images_of_different_sizes_cannot_be_stacked(folder_tree):
    write_png(folder_tree / "train" / "cat" / "zz_big.png", 5, size=(9, 8))
    train, _ = build_datasets(TrainConfig(dataset="folder", data_root=str(folder_tree), imb=1, view_recipe="imagenet"))
    with pytest.raises(ValueError, match="zz_big.png"):
        train.as_uint8_tensor()


@pytest.mark.parametrize("split", ["train", "test"])
def test_an_image_that_does_not_fit_the_cifar_recipe_is_named_when_the_dataset_opens(folder_tree, split):
    write_png(folder_tree / split / "cat" / "zz_big.png", 5, size=(40, 30))
    with pytest.raises(ValueError, match=r"zz_big\.png' is 40x30 pixels and view_recipe 'cifar' takes 32x32"):
        build_datasets(TrainConfig(dataset="folder", data_root=str(folder_tree), imb=1))
    train, test = build_datasets(TrainConfig(dataset="folder", data_root=str(folder_tree), imb=1,
                                             view_recipe="imagenet"))  # resizes any size
    assert test[0][0].shape == (3, 224, 224)


def test_folder_test_class_unknown_to_training_is_an_error(folder_tree):
    write_png(folder_tree / "test" / "dog" / "a.png", 1)
    with pytest.raises(ValueError, match="dog"):
        build_datasets(TrainConfig(dataset="folder", data_root=str(folder_tree)))


# --------------------------------------------------------------------------- list files


@pytest.fixture()
def list_tree(tmp_path):
    """imgs/<wnid>/*.jpg and ImageNet_LT_{train,test}.txt with labels 0..2 (train counts 3, 2, 1)."""
    root = tmp_path / "lt"
    train_lines, test_lines = [], []
    for label, (wnid, n) in enumerate([("n001", 3), ("n002", 2), ("n003", 1)]):
        for i in range(n):
            write_png(root / "imgs" / wnid / f"{i}.jpg", 30 * label + i, size=(20, 12))
            train_lines.append(f"imgs/{wnid}/{i}.jpg {label}")
        write_png(root / "val" / f"{wnid}.jpg", 128, size=(300, 260))
        test_lines.append(f"val/{wnid}.jpg {label}")
    (root / "ImageNet_LT_train.txt").write_text("\n".join(train_lines) + "\n\n")
    (root / "ImageNet_LT_test.txt").write_text("\n".join(test_lines))
    return root


def test_imagenet_lt_list_files(list_tree):
    config = validate(TrainConfig(dataset="imagenet_lt", data_root=str(list_tree)))
    train, test = build_datasets(config)
    assert len(train) == 6 and train.targets == [0, 0, 0, 1, 1, 2]
    assert train.num_classes == 1000 and len(train.class_counts) == 1000
    assert train.class_counts[:4] == [3, 2, 1, 0] and sum(train.class_counts) == 6
    assert train.classes[:3] == ["n001", "n002", "n003"] and train.classes[3] == "3"
    assert int(np.asarray(train.load_image(4))[0, 0, 0]) == 31
    tensor, label = test[1]
    assert label == 1 and tensor.shape == (3, 224, 224)


def test_inat_list_files_given_by_path_use_inat_statistics(list_tree, tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train.txt").write_text((list_tree / "ImageNet_LT_train.txt").read_text())
    (lists / "val.txt").write_text((list_tree / "ImageNet_LT_test.txt").read_text())
    config = TrainConfig(dataset="inat2018", data_root=str(list_tree), train_list=str(lists / "train.txt"),
                         test_list=str(lists / "val.txt"), eval_split="val")  # inat2018 has its val list only
    train, test = build_datasets(validate(config))
    assert train.num_classes == 8142 and train.class_counts[:3] == [3, 2, 1]
    tensor, _ = test[0]
    expected = (128 / 255 - INAT_MEAN[2]) / INAT_STD[2]
    assert torch.allclose(tensor[2], torch.full((224, 224), expected), atol=1e-4)


@pytest.mark.parametrize("bad_line", ["imgs/n001/0.jpg", "imgs/n001/0.jpg cat", "imgs/n001/0.jpg 1000"])
def test_malformed_list_line_names_file_and_line(tmp_path, bad_line):
    path = tmp_path / "split.txt"
    path.write_text(f"imgs/a.jpg 0\n\n{bad_line}\n")
    with pytest.raises(ValueError, match=r"split\.txt, line 3"):
        read_list_file(str(path), 1000)


def test_list_paths_may_contain_spaces(tmp_path):
    path = tmp_path / "split.txt"
    path.write_text("my folder/a b.jpg 7\n")
    assert read_list_file(str(path), 10) == (["my folder/a b.jpg"], [7])


# --------------------------------------------------------------------------- the shared CIFAR-10 JPEG tree


def test_shared_cifar10_jpeg_tree_at_imb_100(cifar10_jpg_root):
    config = TrainConfig(dataset="folder", data_root=str(cifar10_jpg_root), imb=100, topk=3)
    train, test = build_datasets(validate(config))
    assert train.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert len(train) == 12406
    assert train.class_counts == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert len(test) == 10000 and test.class_counts == [1000] * 10
    image = train.load_image(len(train) - 1)
    assert image.size == (32, 32) and image.mode == "RGB" and "/truck/" in train.paths[-1]
    tensor, label = test[0]
    assert tensor.shape == (3, 32, 32) and label == 0
    # The batched decode of the uint8 tensor gives the pixels PIL gives, image for image.
    sample = train.subset(range(0, len(train), 97))
    by_pil = torch.stack([torch.from_numpy(np.asarray(sample.load_image(i)).copy()).permute(2, 0, 1)
                          for i in range(len(sample))])
    assert torch.equal(sample.as_uint8_tensor(), by_pil)
