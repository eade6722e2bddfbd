"""ImageNet-scale geometry on tensors against torchvision on PIL images: decoding, random resized crops, eval crop.

Tolerances. Decoding: libjpeg-turbo through ``decode_jpeg`` gave exactly PIL's pixels (0.0 mean
difference) for colour, grey and CMYK JPEGs on the machine this was written on; the tests allow
1 grey level of mean difference, since two builds of a JPEG decoder may round its IDCT differently.
Resampling: tests/test_view_exact.py holds views to 1e-5 after normalisation (under 1e-3 grey levels),
which is for pixels computed the same way; two uint8 resamplers of the same filter (PIL's and torch's
AVX2 port of it, with weights of different fixed-point precision) round some pixels one level apart,
in either direction. So here every pixel must be within 2 grey levels of PIL's, at most half the
pixels may be off (mean absolute difference <= 0.5) and the differences must not lean one way (mean
signed difference within 0.05 of a level). Measured on these cases: largest 1, mean absolute 0.0-0.25,
mean signed under 0.005; a crop misplaced by one pixel differs by tens of levels on these textured images.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ccmix.data import decode
from ccmix.data.augment.draws import sample_resized_crop
from ccmix.data.augment.resample import resize_centre_crop, resized_crops
from ccmix.data.decode import decode_images, jpeg_components, read_bytes
from ccmix.data.images import read_rgb
from ccmix.data.views import test_view
from ccmix.errors import DataError

MAX_LEVELS = 2  # grey levels any pixel may differ from PIL's resampling
MEAN_LEVELS = 0.5  # mean absolute difference allowed from PIL's resampling
BIAS_LEVELS = 0.05  # mean signed difference allowed from PIL's resampling
DECODE_MEAN_LEVELS = 1.0  # mean difference allowed from PIL's decoding


def textured(width: int, height: int, seed: int) -> Image.Image:
    """Return an RGB image of smooth colour blobs with fine texture (a misplaced pixel shows)."""
    rng = np.random.default_rng(seed)
    blobs = Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    noise = rng.integers(-40, 41, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(blobs).astype(np.int64) + noise, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Return {name: path} of image files of several sizes, modes and formats."""
    folder = tmp_path_factory.mktemp("images")
    made = {
        "landscape.jpg": textured(500, 300, 1),
        "portrait.jpg": textured(300, 500, 2),
        "tiny.jpg": textured(40, 30, 3),
        "grey.jpg": textured(320, 240, 4).convert("L"),
        "cmyk.jpg": textured(260, 310, 5).convert("CMYK"),
        "picture.png": textured(280, 230, 6),
    }
    paths = {}
    for name, image in made.items():
        paths[name] = str(folder / name)
        image.save(paths[name], quality=90) if name.endswith(".jpg") else image.save(paths[name])
    return paths


def pil_rgb(path: str) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def as_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)


def levels(actual: torch.Tensor, expected: torch.Tensor) -> tuple[int, float]:
    """Return (max, mean) absolute difference in grey levels of two uint8 tensors of one shape."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype == torch.uint8
    difference = (actual.int() - expected.int()).abs()
    return difference.max().item(), difference.double().mean().item()


def assert_resampled_like_pil(actual: torch.Tensor, expected: torch.Tensor, what) -> None:
    """Assert uint8 ``actual`` is PIL's resampling ``expected`` up to unbiased rounding (module docstring)."""
    largest, mean = levels(actual, expected)
    bias = (actual.double() - expected.double()).mean().item()
    assert largest <= MAX_LEVELS and mean <= MEAN_LEVELS and abs(bias) <= BIAS_LEVELS, (what, largest, mean, bias)


# --------------------------------------------------------------------------- decoding


def test_decode_images_equal_pil_and_count_the_fallbacks(files):
    names = list(files)
    images, fallbacks = decode_images([read_bytes(files[name]) for name in names], "cpu")
    assert fallbacks == 1  # the PNG; every JPEG, grey and CMYK included, goes through the batched decoder
    for name, image in zip(names, images):
        expected = as_tensor(pil_rgb(files[name]))
        assert image.device.type == "cpu" and image.shape == expected.shape, name
        assert levels(image, expected)[1] <= DECODE_MEAN_LEVELS, name


def test_decode_images_fall_back_one_by_one_when_the_batched_call_fails(files, monkeypatch):
    import torchvision.io

    original = torchvision.io.decode_jpeg

    def refuses_lists(data, *args, **kwargs):
        if isinstance(data, list):
            raise RuntimeError("batched decoding refused")
        return original(data, *args, **kwargs)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", refuses_lists)
    names = list(files)
    images, fallbacks = decode_images([read_bytes(files[name]) for name in names])
    assert fallbacks == len(names)
    for name, image in zip(names, images):
        assert levels(image, as_tensor(pil_rgb(files[name])))[1] <= DECODE_MEAN_LEVELS, name


def test_decode_images_composite_transparency_over_white_as_the_classic_reader(tmp_path):
    pixels = np.asarray(textured(64, 48, 7).convert("RGBA")).copy()
    pixels[:, :20, 3] = 0  # a transparent band
    path = str(tmp_path / "alpha.png")
    Image.fromarray(pixels, "RGBA").save(path)
    (image,), fallbacks = decode_images([read_bytes(path)])
    assert fallbacks == 1
    assert torch.equal(image, as_tensor(read_rgb(path)))
    assert (image[:, :, :20] == 255).all()


def test_jpeg_components_and_the_gpu_batch_leaves_cmyk_to_the_cpu(files):
    headers = {name: read_bytes(files[name]) for name in ("landscape.jpg", "grey.jpg", "cmyk.jpg")}
    counts = {name: jpeg_components(data.numpy().tobytes()) for name, data in headers.items()}
    assert counts == {"landscape.jpg": 3, "grey.jpg": 1, "cmyk.jpg": 4}
    data = list(headers.values()) + [read_bytes(files["picture.png"])]
    assert decode._batched_on(data, torch.device("cpu")) == [True, True, True, False]
    assert decode._batched_on(data, torch.device("cuda")) == [True, True, False, False]


def test_undecodable_bytes_fail_naming_the_image(files):
    junk = torch.frombuffer(bytearray(b"\xff\xd8\xff\xe0 this is not a picture"), dtype=torch.uint8)
    with pytest.raises(DataError, match="image 1 of the batch could not be decoded"):
        decode_images([read_bytes(files["tiny.jpg"]), junk])
    with pytest.raises(ValueError, match=r"data\[0\] is not accepted"):
        decode_images([b"\xff\xd8\xff"])
    with pytest.raises(DataError, match="missing.jpg"):
        read_bytes("missing.jpg")


# --------------------------------------------------------------------------- random resized crops


CROP_CASES = [  # (file, top, left, height, width, flip)
    ("landscape.jpg", 0, 0, 300, 500, False),  # whole image, shrinking
    ("landscape.jpg", 37, 101, 180, 150, True),
    ("landscape.jpg", 250, 460, 50, 40, False),  # bottom-right corner, enlarging
    ("portrait.jpg", 11, 3, 420, 290, True),
    ("tiny.jpg", 0, 0, 30, 40, False),  # smaller than the output: enlarging
    ("tiny.jpg", 4, 9, 20, 17, True),
    ("grey.jpg", 100, 50, 120, 260, False),
    ("cmyk.jpg", 60, 40, 233, 199, True),
]


@pytest.fixture(scope="module")
def crop_inputs(files):
    names = sorted({case[0] for case in CROP_CASES})
    images = [as_tensor(pil_rgb(files[name])) for name in names]
    source = torch.tensor([names.index(case[0]) for case in CROP_CASES])
    boxes = {key: torch.tensor([case[1 + k] for case in CROP_CASES]) for k, key in
             enumerate(("top", "left", "height", "width"))}
    flip = torch.tensor([case[5] for case in CROP_CASES])
    return names, images, source, boxes, flip


def test_resized_crops_equal_torchvision_resized_crop_on_the_pil_image(files, crop_inputs):
    _, images, source, boxes, flip = crop_inputs
    out = torch.full((len(CROP_CASES), 3, 224, 224), 7, dtype=torch.uint8)
    result = resized_crops(images, source, boxes, flip, size=(224, 224), out=out)
    assert result.data_ptr() == out.data_ptr()
    for row, (name, top, left, height, width, mirror) in enumerate(CROP_CASES):
        expected = TF.resized_crop(pil_rgb(files[name]), top, left, height, width, [224, 224], antialias=True)
        expected = as_tensor(TF.horizontal_flip(expected) if mirror else expected)
        assert_resampled_like_pil(out[row], expected, name)


def test_resized_crops_equal_random_resized_crop_given_the_same_boxes(files, crop_inputs, monkeypatch):
    names, images, source, boxes, _ = crop_inputs
    out = resized_crops(images, source, boxes, None, size=(96, 128))
    assert out.shape == (len(CROP_CASES), 3, 96, 128)
    for row, (name, top, left, height, width, _) in enumerate(CROP_CASES):
        box = {"top": top, "left": left, "height": height, "width": width}
        monkeypatch.setattr(v2.RandomResizedCrop, "make_params", lambda self, flat_inputs, box=box: box)
        expected = as_tensor(v2.RandomResizedCrop((96, 128))(pil_rgb(files[name])))
        assert_resampled_like_pil(out[row], expected, name)


def test_flip_mirrors_exactly(crop_inputs):
    _, images, source, boxes, flip = crop_inputs
    plain = resized_crops(images, source, boxes, None, size=(64, 64))
    mirrored = resized_crops(images, source, boxes, flip, size=(64, 64))
    for row, mirror in enumerate(flip.tolist()):
        assert torch.equal(mirrored[row], plain[row].flip(-1) if mirror else plain[row])


def test_resized_crops_refuse_a_box_outside_its_image(crop_inputs):
    _, images, source, boxes, flip = crop_inputs
    outside = {key: value.clone() for key, value in boxes.items()}
    outside["left"][2] += 1  # the corner box now passes the right edge
    with pytest.raises(ValueError, match="box 2 .* is not inside image"):
        resized_crops(images, source, outside, flip)


# --------------------------------------------------------------------------- per-image draws


def torchvision_boxes(height: int, width: int, count: int, scale, ratio) -> torch.Tensor:
    """Return int64 (count, 4) (top, left, height, width) of torchvision's RandomResizedCrop draws."""
    transform = v2.RandomResizedCrop(224, scale=scale, ratio=ratio)
    inputs = [tv_tensors.Image(torch.zeros(3, height, width, dtype=torch.uint8))]
    boxes = [transform.make_params(inputs) for _ in range(count)]
    return torch.tensor([[b["top"], b["left"], b["height"], b["width"]] for b in boxes])


def area_and_log_ratio(boxes: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    area = boxes[:, 2].double() * boxes[:, 3].double() / (height * width)
    return area, torch.log(boxes[:, 3].double() / boxes[:, 2].double())


SIZES = [(300, 500), (500, 300), (30, 40), (224, 224), (60, 200)]  # (height, width); 60x200 often falls back


def test_per_image_draws_match_torchvision_get_params_statistics():
    count = 3000
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    sizes = torch.tensor([size for size in SIZES for _ in range(count)])
    draws = sample_resized_crop(len(sizes), torch.Generator().manual_seed(11), sizes, scale, ratio)
    ours = torch.stack([draws[key] for key in ("top", "left", "height", "width")], dim=1)
    torch.manual_seed(12)
    for k, (height, width) in enumerate(SIZES):
        mine = ours[k * count:(k + 1) * count]
        assert (mine[:, 0] >= 0).all() and (mine[:, 0] + mine[:, 2] <= height).all()
        assert (mine[:, 1] >= 0).all() and (mine[:, 1] + mine[:, 3] <= width).all()
        theirs = torchvision_boxes(height, width, count, scale, ratio)
        for a, b, what in zip(area_and_log_ratio(mine, height, width), area_and_log_ratio(theirs, height, width),
                              ("area fraction", "log aspect ratio")):
            # two-sample z statistic of the means: 4 standard errors (a false alarm about 1 in 16,000)
            standard_error = math.sqrt(a.var().item() / len(a) + b.var().item() / len(b))
            assert abs(a.mean().item() - b.mean().item()) <= 4 * standard_error, ((height, width), what)
        # the offsets too: mean top and left as a fraction of the room the box leaves
        for column in (0, 1):
            a, b = mine[:, column].double(), theirs[:, column].double()
            standard_error = math.sqrt(a.var().item() / len(a) + b.var().item() / len(b))
            assert abs(a.mean().item() - b.mean().item()) <= 4 * standard_error, ((height, width), column)


@pytest.mark.parametrize("height,width", [(50, 1000), (1000, 50), (10, 11)])
def test_extreme_aspect_images_take_torchvision_fallback_box(height, width):
    # 50x1000: no box of area >= 8% and aspect within 3/4..4/3 fits, so all 10 attempts fail
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    expected = torchvision_boxes(height, width, 1, scale, ratio)[0].tolist() if height != 10 else None
    sizes = torch.tensor([[height, width], [300, 400]] * 50)
    draws = sample_resized_crop(100, torch.Generator().manual_seed(13), sizes, scale, ratio)
    boxes = torch.stack([draws[key] for key in ("top", "left", "height", "width")], dim=1)
    if expected is not None:
        assert (boxes[0::2] == torch.tensor(expected)).all()  # the fallback, the same box every time
        assert len(set(map(tuple, boxes[1::2].tolist()))) > 40  # the ordinary images in the same batch still vary
    assert (boxes[:, 0] + boxes[:, 2] <= sizes[:, 0]).all() and (boxes[:, 1] + boxes[:, 3] <= sizes[:, 1]).all()


def test_per_image_sizes_draw_as_the_shared_size_does():
    shared = sample_resized_crop(500, torch.Generator().manual_seed(14), (300, 500), (0.08, 1.0))
    per_image = sample_resized_crop(500, torch.Generator().manual_seed(14), torch.tensor([[300, 500]] * 500),
                                    (0.08, 1.0))
    for key in shared:
        assert torch.equal(shared[key], per_image[key]), key


def test_per_image_sizes_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match=r"image_size of shape \(3, 2\)"):
        sample_resized_crop(4, torch.Generator(), torch.ones(3, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="every height and width must be >= 1"):
        sample_resized_crop(2, torch.Generator(), torch.tensor([[10, 10], [0, 5]]))


# --------------------------------------------------------------------------- evaluation crop


def test_resize_centre_crop_equals_the_imagenet_test_view_geometry(files, tmp_path):
    geometry = v2.Compose([step for step in test_view("imagenet", "imagenet_lt").transforms
                           if isinstance(step, (v2.Resize, v2.CenterCrop))])
    assert len(geometry.transforms) == 2
    pictures = [pil_rgb(files[name]) for name in ("landscape.jpg", "portrait.jpg", "tiny.jpg", "grey.jpg")]
    pictures += [textured(256, 256, 8), textured(301, 257, 9), textured(256, 999, 10)]  # no resize, odd offsets
    out = resize_centre_crop([as_tensor(picture) for picture in pictures])
    assert out.shape == (len(pictures), 3, 224, 224)
    for row, picture in enumerate(pictures):
        assert_resampled_like_pil(out[row], as_tensor(geometry(picture)), picture.size)
