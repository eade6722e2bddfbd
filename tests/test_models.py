"""Models: shapes, ResNet-32 size and shortcuts, per-class centres, and a tiny overfitting run."""

import pytest
import torch
from torch import nn

from ccmix.method.losses import logit_adjusted_ce
from ccmix.models.bcl import BCLModel, ModelOutput, build_model
from ccmix.models.resnet_cifar import OptionAShortcut, resnet32

OUTPUT_FIELDS = ("logits", "features", "embedding", "embedding_raw", "centers", "centers_raw")


def expected_shapes(batch, classes, features, dim):
    return {
        "logits": (batch, classes), "features": (batch, features), "embedding": (batch, dim),
        "embedding_raw": (batch, dim), "centers": (classes, dim), "centers_raw": (classes, dim),
    }


@pytest.mark.parametrize("classifier", ["linear", "cosine"])
def test_resnet32_forward_shapes_and_normalisation(classifier):
    torch.manual_seed(0)
    model = build_model("resnet32", num_classes=7, feat_dim=24, classifier=classifier)
    output = model(torch.randn(2, 3, 32, 32))
    assert isinstance(output, ModelOutput)
    for name, shape in expected_shapes(2, 7, 64, 24).items():
        assert tuple(getattr(output, name).shape) == shape, name
    assert torch.allclose(output.embedding.norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.allclose(output.centers.norm(dim=1), torch.ones(7), atol=1e-5)
    assert torch.allclose(output.embedding, output.embedding_raw / output.embedding_raw.norm(dim=1, keepdim=True))
    assert model.head[0].out_features == 512 and model.center_head[0].out_features == 512
    model.eval()
    with torch.no_grad():
        x = torch.randn(2, 3, 16, 16)
        assert torch.allclose(model.classify(x), model(x).logits)


def test_cosine_logits_are_scaled_cosines():
    torch.manual_seed(0)
    model = build_model("resnet32", num_classes=5, classifier="cosine", cosine_scale=30.0).eval()
    with torch.no_grad():
        output = model(torch.randn(3, 3, 16, 16))
        weight = model.classifier.weight.detach()
    for i in range(3):
        for c in range(5):
            h, w = output.features[i], weight[c]
            expected = 30.0 * float(h @ w) / (float(h.norm()) * float(w.norm()))
            assert output.logits[i, c].item() == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert not any(name.endswith("bias") for name, _ in model.classifier.named_parameters())


def test_resnet32_encoder_size_matches_the_architecture():
    encoder = resnet32()
    counted = sum(p.numel() for p in encoder.parameters())
    # stem conv 3->16 + BN, then per stage 5 blocks of two 3x3 convs + two BNs; option-A shortcuts are free
    expected = 3 * 16 * 9 + 2 * 16
    in_ch = 16
    for width in (16, 32, 64):
        for _ in range(5):
            expected += in_ch * width * 9 + width * width * 9 + 2 * (2 * width)
            in_ch = width
    assert counted == expected
    assert 0.45e6 < counted < 0.47e6
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in encoder.modules())
    assert sum(isinstance(m, nn.Conv2d) for m in encoder.modules()) == 31  # 1 + 3 stages * 5 blocks * 2


def test_option_a_shortcut_subsamples_and_zero_pads():
    x = torch.randn(2, 16, 8, 8)
    out = OptionAShortcut(32, 16)(x)
    assert out.shape == (2, 32, 4, 4)
    for n in range(2):
        for c in range(32):
            for r in range(4):
                for col in range(4):
                    expected = x[n, c - 8, 2 * r, 2 * col].item() if 8 <= c < 24 else 0.0
                    assert out[n, c, r, col].item() == expected


@pytest.mark.parametrize("classifier", ["linear", "cosine"])
def test_changing_one_class_weight_moves_only_that_centre(classifier):
    torch.manual_seed(0)
    model = build_model("resnet32", num_classes=6, classifier=classifier).eval()  # eval: BN uses running stats
    with torch.no_grad():
        before = model.class_centers_raw().clone()
        model.classifier.weight[2] += torch.randn(64)
        after = model.class_centers_raw()
    changed = (after - before).abs().amax(dim=1) > 1e-6
    assert changed.tolist() == [False, False, True, False, False, False]


@pytest.mark.parametrize("classifier", ["linear", "cosine"])
def test_centres_are_the_centre_head_applied_to_weight_rows_in_train_mode(classifier):
    # In train mode the centre head's BatchNorm normalises over the C weight rows (as the reference does);
    # the centres are still one row per class: g_c applied to the (C, F) weight, not its transpose.
    torch.manual_seed(0)
    model = build_model("resnet32", num_classes=9, classifier=classifier).train()
    weight = model.classifier.weight
    assert weight.shape == (9, 64)
    output = model(torch.randn(2, 3, 16, 16))
    # g_c written out from its parameters: Linear -> BatchNorm over the 9 rows (batch statistics, biased
    # variance) -> ReLU -> Linear
    first, last = [m for m in model.center_head.modules() if isinstance(m, torch.nn.Linear)]
    (norm,) = [m for m in model.center_head.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    with torch.no_grad():
        hidden = weight @ first.weight.t() + first.bias
        hidden = (hidden - hidden.mean(dim=0)) / torch.sqrt(hidden.var(dim=0, unbiased=False) + norm.eps)
        hidden = torch.relu(hidden * norm.weight + norm.bias)
        expected = hidden @ last.weight.t() + last.bias
    assert output.centers_raw.shape == (9, 128)
    assert torch.allclose(output.centers_raw, expected, atol=1e-5)
    assert torch.allclose(output.centers, expected / expected.norm(dim=1, keepdim=True), atol=1e-5)


def test_channels_last_input_gives_the_same_outputs():
    torch.manual_seed(0)
    model = build_model("resnet32", num_classes=4).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        plain = model(x)
        cl_model = build_model("resnet32", num_classes=4).eval()
        cl_model.load_state_dict(model.state_dict())
        cl_model = cl_model.to(memory_format=torch.channels_last)
        channels_last = cl_model(x.contiguous(memory_format=torch.channels_last))
    for name in OUTPUT_FIELDS:
        expected = getattr(plain, name)
        # Kaiming-initialised activations are large (hundreds), so compare relative to their scale
        assert torch.allclose(getattr(channels_last, name), expected, rtol=1e-4, atol=1e-5 * expected.abs().max()), name


@pytest.mark.parametrize("arch", ["resnet50", "resnext50", "resnet152", "resnext101"])
def test_imagenet_encoders_forward_shapes_at_tiny_input(arch):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=5, feat_dim=32, classifier="cosine")
    assert model.head[0].out_features == 2048
    assert isinstance(model.encoder.fc, nn.Identity)
    with torch.no_grad():
        output = model(torch.randn(2, 3, 64, 64))
    for name, shape in expected_shapes(2, 5, 2048, 32).items():
        assert tuple(getattr(output, name).shape) == shape, name
    # torchvision's published sizes without the 2048 x 1000 ImageNet classifier (ResNeXt-101 is the 32x8d)
    sizes = {"resnet50": 25_557_032, "resnext50": 25_028_904, "resnet152": 60_192_808, "resnext101": 88_791_336}
    assert sum(p.numel() for p in model.encoder.parameters()) == sizes[arch] - 2048 * 1000 - 1000


def test_pretrained_torchvision_weights_load_from_a_local_file(tmp_path):
    from torchvision import models as tv_models

    torch.manual_seed(1)
    network = tv_models.resnet50(weights=None)
    path = tmp_path / "resnet50.pth"
    torch.save(network.state_dict(), path)  # torchvision format, ImageNet classifier included
    model = build_model("resnet50", num_classes=3, feat_dim=16, classifier="cosine", pretrained=str(path))
    for key, value in network.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(model.encoder.state_dict()[key], value), key
    torch.save({"state_dict": {f"module.{k}": v for k, v in network.state_dict().items()}}, path)
    wrapped = build_model("resnet50", num_classes=3, feat_dim=16, classifier="cosine", pretrained=str(path))
    assert torch.equal(wrapped.encoder.conv1.weight, network.conv1.weight)


def test_pretrained_file_problems_are_one_sentence_naming_what_differs(tmp_path):
    with pytest.raises(ValueError, match=r"^pretrained='.*missing\.pt' is not accepted; the file does not exist$"):
        build_model("resnet32", num_classes=3, pretrained=str(tmp_path / "missing.pt"))
    encoder_state = resnet32().state_dict()
    partial = {k: v for k, v in encoder_state.items() if not k.startswith("layer3")}
    partial["extra.weight"] = torch.zeros(1)
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(ValueError) as error:
        build_model("resnet32", num_classes=3, pretrained=str(tmp_path / "partial.pt"))
    message = str(error.value)
    assert "encoder keys are missing (layer3." in message and "not in the encoder (extra.weight)" in message
    assert "\n" not in message
    reshaped = dict(encoder_state, **{"conv1.weight": torch.zeros(8, 3, 3, 3)})
    torch.save(reshaped, tmp_path / "reshaped.pt")
    with pytest.raises(ValueError, match=r"1 shapes differ \(conv1\.weight: file \(8, 3, 3, 3\), encoder \(16, 3, 3, 3\)\)"):
        build_model("resnet32", num_classes=3, pretrained=str(tmp_path / "reshaped.pt"))
    torch.save({"note": "not weights", "weights": encoder_state}, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match="does not hold a state dict of tensors"):
        build_model("resnet32", num_classes=3, pretrained=str(tmp_path / "odd.pt"))


def test_pretrained_files_are_read_with_weights_only(tmp_path):
    import datetime

    torch.save({"conv1.weight": datetime.date(2024, 1, 1)}, tmp_path / "pickle.pt")  # not a tensor-only file
    with pytest.raises(ValueError, match="not a readable weights file"):
        build_model("resnet32", num_classes=3, pretrained=str(tmp_path / "pickle.pt"))


def test_unknown_names_fail_with_the_accepted_values():
    with pytest.raises(ValueError, match=r"'resnet18'.*resnet32, resnet50, resnext50, resnet152, resnext101"):
        build_model("resnet18", num_classes=10)
    with pytest.raises(ValueError, match=r"'normed'.*linear, cosine"):
        build_model("resnet32", num_classes=10, classifier="normed")


class TinyEncoder(nn.Module):
    """A small conv encoder: enough capacity to memorise a few images quickly on a CPU."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, kernel_size=3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten()
        )

    def forward(self, x):
        return self.body(x)


def overfit(model, steps, lr):
    generator = torch.Generator().manual_seed(0)
    counts = [14, 9, 6, 3]  # long-tailed, so the logit adjustment is not a constant shift
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    images = torch.randn(32, 3, 16, 16, generator=generator)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    losses = []
    for _ in range(steps):
        loss = logit_adjusted_ce(model(images).logits, labels, counts, tau=1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        accuracy = (model.classify(images).argmax(dim=1) == labels).float().mean().item()
    return losses, accuracy


def test_small_bcl_model_overfits_a_tiny_set_with_la_ce():
    torch.manual_seed(0)
    model = BCLModel(TinyEncoder(), feature_dim=8 * 8 * 8, num_classes=4, feat_dim=16, hidden_dim=32)
    losses, accuracy = overfit(model, steps=60, lr=0.05)
    assert losses[-1] < losses[0] / 20
    assert accuracy >= 0.9


@pytest.mark.slow
def test_resnet32_overfits_a_tiny_set_with_la_ce():
    torch.manual_seed(0)
    losses, accuracy = overfit(build_model("resnet32", num_classes=4), steps=60, lr=0.05)
    assert losses[-1] < losses[0] / 20
    assert accuracy >= 0.9


def test_tiny_test_arch_builds_a_small_model_that_learns():
    torch.manual_seed(0)
    model = build_model("tiny", num_classes=4, feat_dim=16)
    assert sum(p.numel() for p in model.encoder.parameters()) < 2_000  # far below ResNet-32's ~460k
    with torch.no_grad():
        output = model.eval()(torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last))
    for name, shape in expected_shapes(2, 4, 16, 16).items():
        assert tuple(getattr(output, name).shape) == shape, name
    losses, _ = overfit(build_model("tiny", num_classes=4), steps=60, lr=0.05)
    assert losses[-1] < losses[0] / 2
