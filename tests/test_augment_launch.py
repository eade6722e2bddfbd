"""The two launch modes of the batched augmentation: constant launches, one copy a step, the same views.

``constant`` must make the same operator calls every step whatever the draws (so a step
can be captured as a CUDA graph) and copy its parameters to the device once; ``subset``
(group-wise) makes draw-dependent calls. Both must give the same views for the same draws.
Copies are counted on the ``meta`` device, where every host-to-device copy is an operator
call that a ``TorchDispatchMode`` sees.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import ccmix.method.step as step
from ccmix.config.fields import TrainConfig
from ccmix.config.rules import ConfigError
from ccmix.config.validation import validate
from ccmix.data.augment.blur import blur_reach, box_blur_weights, pil_box_radius
from ccmix.data.augment.colour import apply_color_jitter
from ccmix.data.augment.dispatch import one_image_at_a_time
from ccmix.data.augment.draws import sample_color_jitter, sample_contrastive
from ccmix.data.augment.packing import ALIGNMENT, pack, pack_to_device, unpack
from ccmix.data.augment.policies import apply_randaugment, sample_randaugment
from ccmix.data.augment.recipes import classification_views, contrastive_views, sample_classification
from ccmix.data.augment.tables import BLUR_SIGMA
from ccmix.data.datasets import build_datasets
from ccmix.data.pipelines.fast import FastTrainPipeline, resolve_augment_launch
from ccmix.data.pipelines.launch_count import count_step_launches
from ccmix.train.evaluation import build_run_model

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
# with a foreground (view 0 of 2b images) and without (view 0 of b images)
VARIANTS = {"with foreground": "concutmix", "without foreground": "bcl"}


def random_images(count: int, seed: int, size: int = 32) -> torch.Tensor:
    """Return uint8 (count, 3, size, size) images: smooth colours plus noise, so every op changes something."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 5, 5, generator=generator)
    smooth = torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False) * 230
    return (smooth + 25 * torch.rand(count, 3, size, size, generator=generator)).round().clamp(0, 255).to(torch.uint8)


@pytest.fixture(scope="module")
def synthetic_train():
    train, _ = build_datasets(TrainConfig(dataset="synthetic", synthetic_classes=10, imb=10))
    return train


def pipeline_config(method: str, launch: str, seed: int = 5) -> TrainConfig:
    return TrainConfig(dataset="synthetic", synthetic_classes=10, imb=10, batch_size=16, max_steps_per_epoch=3,
                       pipeline="fast", seed=seed, method=method, augment_launch=launch)


# --------------------------------------------------------------------------- the launch pattern


@pytest.mark.parametrize("variant", VARIANTS)
def test_constant_launch_makes_the_same_calls_every_step_and_seed(synthetic_train, variant):
    # on the CPU every call counts, the CPU draws and their preparation included
    sequences = set()
    for seed in (5, 6):
        pipeline = FastTrainPipeline(synthetic_train, pipeline_config(VARIANTS[variant], "constant", seed), "cpu")
        counts = count_step_launches(pipeline, steps=3, epoch=seed)
        assert counts["ops_per_step"][0] > 100
        sequences.update(counts["op_sequences"])
    assert len(sequences) == 1


@pytest.mark.parametrize("variant", VARIANTS)
def test_constant_launch_copies_once_a_step_with_the_same_device_calls(synthetic_train, variant):
    pipeline = FastTrainPipeline(synthetic_train, pipeline_config(VARIANTS[variant], "constant"), "meta")
    counts = count_step_launches(pipeline, steps=2)
    assert counts["copies_per_step"] == [1, 1]
    assert len(set(counts["op_sequences"])) == 1 and counts["ops_per_step"][0] > 100


def test_the_variants_differ_so_the_pattern_is_one_per_variant(synthetic_train):
    counts = {variant: count_step_launches(FastTrainPipeline(
        synthetic_train, pipeline_config(method, "constant"), "cpu"), steps=1)["op_sequences"][0]
        for variant, method in VARIANTS.items()}
    assert counts["with foreground"] != counts["without foreground"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_subset_launch_calls_depend_on_the_draws(synthetic_train, variant):
    pipeline = FastTrainPipeline(synthetic_train, pipeline_config(VARIANTS[variant], "subset"), "cpu")
    counts = count_step_launches(pipeline, steps=3)
    assert len(set(counts["op_sequences"])) > 1  # the counter can tell patterns apart


def test_subset_launch_copies_many_times_a_step(synthetic_train):
    pipeline = FastTrainPipeline(synthetic_train, pipeline_config("concutmix", "subset"), "meta")
    assert count_step_launches(pipeline, steps=1)["copies_per_step"][0] > 10


class OperatorCalls(TorchDispatchMode):
    """Record the name of every operator call."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append(str(func))
        return func(*args, **(kwargs or {}))


def test_whole_training_steps_make_the_same_calls_in_each_step_variant():
    # the variants of ccmix.method.step: not mixed, mixed with area labels (epoch 0 <= l_d_warm), mixed semantic
    patterns = {}
    for variant, (cutmix_prob, epoch) in {"not mixed": (0.0, 1), "area": (1.0, 0), "semantic": (1.0, 1)}.items():
        config = TrainConfig(dataset="synthetic", synthetic_classes=5, imb=10, topk=3, arch="tiny", method="concutmix",
                             pipeline="fast", augment_launch="constant", batch_size=8, max_steps_per_epoch=4,
                             l_d_warm=0, cutmix_prob=cutmix_prob, device="cpu", seed=3, warmup_epochs=0, milestones=())
        train, _ = build_datasets(config)
        model = build_run_model(config, train.num_classes)
        optimizer = step.build_optimizer(model, config)
        class_counts = torch.tensor(train.class_counts, dtype=torch.float32)
        pipeline = FastTrainPipeline(train, config, "cpu")
        plan, mixing_rng = pipeline.epoch_plan(epoch), step.cutmix_generator(config, epoch)
        sequences = set()
        for index in range(plan.steps):
            with OperatorCalls() as counter:
                step.train_step(model, optimizer, pipeline.step_batch(plan, index), config, epoch, class_counts,
                                mixing_rng)
            if index:  # the first step creates the optimizer's momentum buffers
                sequences.add(tuple(counter.calls))
        assert len(sequences) == 1, variant
        patterns[variant] = sequences.pop()
    assert len(set(patterns.values())) == 3


def test_counting_needs_a_fast_pipeline_and_whole_steps(synthetic_train):
    pipeline = FastTrainPipeline(synthetic_train, pipeline_config("bcl", "constant"), "meta")
    with pytest.raises(ValueError, match="steps=0 is not accepted"):
        count_step_launches(pipeline, steps=0)
    with pytest.warns(UserWarning, match="classic pipeline"):
        fallback = FastTrainPipeline(synthetic_train, pipeline_config("bcl", "constant").replace(
            view_recipe="imagenet"), "cpu")
    with pytest.raises(ValueError, match="FastTrainPipeline"):
        count_step_launches(fallback)


class HostReads(TorchDispatchMode):
    """Count reads of device values to the host and data-dependent shapes on the device (as test_host_sync.py)."""

    READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
             torch.ops.aten.masked_select.default}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func in self.READS and any(isinstance(a, torch.Tensor) and a.device.type != "cpu" for a in args)
        return func(*args, **(kwargs or {}))


def test_constant_launch_steps_read_nothing_back_from_the_device(synthetic_train):
    pipeline = FastTrainPipeline(synthetic_train, pipeline_config("concutmix", "constant"), "meta")
    plan = pipeline.epoch_plan(0)
    with HostReads() as reads:  # on meta any read of a value would raise, so reaching the end is part of the test
        pipeline.step_batch(plan, 0)
    assert reads.count == 0


# --------------------------------------------------------------------------- the same views


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_constant_and_subset_give_identical_cifar_views(seed):
    images = random_images(96, seed)
    view0 = sample_classification(96, torch.Generator().manual_seed(seed))
    contrastive = sample_contrastive(96, torch.Generator().manual_seed(seed + 10))
    assert view0["autoaugment"]["apply"].any() and contrastive["blur"].any()
    for views, params in ((classification_views, view0), (contrastive_views, contrastive)):
        subset = views(images, params, MEAN, STD, launch="subset")
        constant = views(images, params, MEAN, STD, launch="constant")
        assert torch.equal(subset, constant), views.__name__


@pytest.mark.parametrize(("seed", "size", "count"), [(0, 48, 64), (1, 48, 64), (2, 112, 24)])
def test_constant_and_subset_give_identical_randaugment_and_jitter(seed, size, count):
    # at 112x112 the subset launch blends image by image on the CPU (one_image_at_a_time), at 48x48 in one pass
    images = random_images(count, seed, size=size).float()
    assert one_image_at_a_time(images) == (size == 112)
    randaugment = sample_randaugment(count, torch.Generator().manual_seed(seed), image_size=(size, size))
    jitter = sample_color_jitter(count, torch.Generator().manual_seed(seed + 1), strength=(0.4, 0.4, 0.4, 0.1))
    results = {}
    for launch in ("subset", "constant"):
        out = apply_randaugment(images.clone(), randaugment, (124.0, 116.0, 104.0), launch=launch)
        results[launch] = apply_color_jitter(out, jitter, launch=launch)
    assert torch.equal(results["subset"], results["constant"])
    assert not torch.equal(results["subset"], images)


def test_constant_and_subset_pipelines_give_identical_batches(synthetic_train):
    batches = {launch: list(FastTrainPipeline(synthetic_train, pipeline_config("concutmix", launch), "cpu").batches(0))
               for launch in ("subset", "constant")}
    for subset, constant in zip(batches["subset"], batches["constant"]):
        for key, value in vars(subset).items():
            assert torch.equal(value, getattr(constant, key)), key


def test_a_launch_mode_outside_the_list_is_refused():
    with pytest.raises(ValueError, match="launch='fast' is not accepted; choose one of: constant, subset"):
        contrastive_views(random_images(2, 0), sample_contrastive(2, torch.Generator()), MEAN, STD, launch="fast")


# --------------------------------------------------------------------------- the pieces


def test_fixed_blur_reach_pads_the_taps_with_zeros_and_refuses_too_small_a_reach():
    sigma = torch.tensor([0.1, 0.9, 1.4])
    taps, reach = box_blur_weights(pil_box_radius(sigma))
    wide, wide_reach = box_blur_weights(pil_box_radius(sigma), reach=blur_reach(BLUR_SIGMA[1]))
    extra = wide_reach - reach
    assert extra >= 1 and torch.equal(wide[:, extra:-extra], taps)
    assert (wide[:, :extra] == 0).all() and (wide[:, -extra:] == 0).all()
    with pytest.raises(ValueError, match="reach=1 is not accepted"):
        box_blur_weights(pil_box_radius(torch.tensor([2.0])), reach=1)


def test_packing_keeps_values_dtypes_shapes_and_alignment():
    tree = {"a": torch.arange(5), "nested": {"b": torch.rand(4, 6, dtype=torch.float64)[:, 1],
                                             "c": torch.tensor([True, False, True])},
            "none": None, "d": torch.rand(2, 3), "empty": torch.empty(0, 4), "e": torch.tensor([7], dtype=torch.int16)}
    buffer, layout = pack(tree)
    assert buffer.dtype == torch.uint8 and buffer.dim() == 1
    assert all(start % ALIGNMENT == 0 for _, start, _, _ in layout)
    carved = unpack(buffer, layout, tree)
    assert carved["none"] is None and carved["empty"].shape == (0, 4)
    for original, copy in ((tree["a"], carved["a"]), (tree["nested"]["b"], carved["nested"]["b"]),
                           (tree["nested"]["c"], carved["nested"]["c"]), (tree["d"], carved["d"]),
                           (tree["e"], carved["e"])):
        assert copy.dtype == original.dtype and torch.equal(copy, original)
    on_meta = pack_to_device(tree, "meta")
    assert on_meta["d"].device.type == "meta" and on_meta["nested"]["b"].dtype == torch.float64
    assert pack_to_device(tree, "cpu") is tree


def test_augment_launch_is_validated_and_auto_resolves_by_device():
    with pytest.raises(ConfigError, match="augment_launch='graph' is not accepted; augment_launch must be one of: "
                                          "auto, constant, subset"):
        validate(TrainConfig(augment_launch="graph"))
    assert resolve_augment_launch("auto", "cuda") == "constant"
    assert resolve_augment_launch("auto", "cpu") == "subset"
    assert resolve_augment_launch("subset", "cuda") == "subset"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch sees none)")
def test_cuda_constant_views_match_subset_and_packing_round_trips():
    tree = {"a": torch.arange(5), "b": torch.rand(3, dtype=torch.float64), "c": torch.tensor([True, False])}
    on_device = pack_to_device(tree, "cuda")
    assert all(torch.equal(on_device[key].cpu(), value) for key, value in tree.items())
    images = random_images(64, 3).cuda()
    params = sample_contrastive(64, torch.Generator().manual_seed(3))
    subset = contrastive_views(images, params, MEAN, STD, launch="subset")
    constant = contrastive_views(images, params, MEAN, STD, launch="constant")
    torch.testing.assert_close(constant, subset, atol=1e-5, rtol=0)
