"""Tests of the CutMix explorer (ccmix.notebook.widgets), driven headlessly: widget values are set in Python and
the numbers are checked against the definitions (docs/method.md, sections 2 and 5), computed here by loops."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ccmix.config.fields import TrainConfig
from ccmix.config.rules import ConfigError
from ccmix.method.cutmix import sample_boxes
from ccmix.notebook.explorer import box_at, box_tuple, explore_sample, gallery_batch, gallery_figure
from ccmix.notebook.widgets import build_explorer, prepare_explorer

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def explorer_inputs():
    from ccmix.data.datasets import build_datasets
    from ccmix.train.evaluation import build_run_model

    config = TrainConfig(dataset="synthetic", imb=10, topk=3, omega=20 / 255, num_workers=0, device="cpu")
    train, _ = build_datasets(config)
    model = build_run_model(config, train.num_classes).eval()
    return config, train, model


def expected_labels(model, mixed, y_a, y_b, lam, class_counts, topk, omega):
    """Area, similarity and final label of one mixed image (3, H, W), computed from the definitions."""
    num_classes = len(class_counts)
    area = [0.0] * num_classes
    area[y_a] += lam
    area[y_b] += 1.0 - lam
    with torch.no_grad():
        output = model.eval()(mixed[None])
    u, centres = output.embedding_raw[0].double(), output.centers_raw.double()
    similarity = [1.0 / math.sqrt(sum((float(u[d]) - float(centres[c, d])) ** 2 for d in range(u.numel())))
                  for c in range(num_classes)]
    kept = sorted(range(num_classes), key=lambda c: -similarity[c])[:topk]
    total = sum(similarity[c] for c in kept)
    semantic = [similarity[c] / total if c in kept else 0.0 for c in range(num_classes)]
    rho = math.log(sum(n * a for n, a in zip(class_counts, area))) / sum(math.log(n) for n in class_counts)
    weight = rho * omega
    final = [weight * s + (1 - weight) * a for s, a in zip(semantic, area)]
    return area, semantic, rho, weight, final


def expected_box(lam: float, center_y: int, center_x: int, size: int = 32) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of a CutMix box on a size x size image: side floor(size * sqrt(1 - lam)),
    half of it (rounded down) on each side of the centre, clipped to the image."""
    half = math.floor(size * math.sqrt(1.0 - lam)) // 2
    clip = lambda v: min(max(v, 0), size)  # noqa: E731
    return clip(center_y - half), clip(center_x - half), clip(center_y + half), clip(center_x + half)


def test_box_at_follows_the_sample_boxes_geometry():
    assert box_tuple(box_at(0.75, 16, 16, 32, 32)) == (8, 8, 24, 24)  # side floor(32 * 0.5) = 16
    assert box_tuple(box_at(0.75, 0, 0, 32, 32)) == (0, 0, 8, 8)  # clipped at the corner
    assert box_tuple(box_at(1.0, 5, 5, 32, 32)) == (5, 5, 5, 5)  # nothing pasted
    with pytest.raises(ValueError, match="center_x=32 is not accepted"):
        box_at(0.5, 0, 32, 32, 32)


def test_explore_sample_matches_the_definitions(explorer_inputs):
    config, train, model = explorer_inputs
    from ccmix.data.views import test_view

    view = test_view("cifar", "synthetic")
    a_index, b_index = 0, len(train) - 1
    a, b = view(train.load_image(a_index)), view(train.load_image(b_index))
    y_a, y_b = train.targets[a_index], train.targets[b_index]
    result = explore_sample(a, b, y_a, y_b, (4, 6, 20, 30), model, train.class_counts, topk=3, omega=0.5)
    lam = 1.0 - (20 - 4) * (30 - 6) / (32 * 32)
    assert result["lam"] == pytest.approx(lam)
    for row in range(32):
        for col in (0, 6, 29, 31):
            inside = 4 <= row < 20 and 6 <= col < 30
            assert torch.equal(result["mixed"][:, row, col], (b if inside else a)[:, row, col])
    area, semantic, rho, weight, final = expected_labels(model, result["mixed"], y_a, y_b, lam, train.class_counts,
                                                         3, 0.5)
    assert result["area_label"].tolist() == pytest.approx(area, abs=1e-6)
    assert result["similarity_label"].tolist() == pytest.approx(semantic, abs=1e-5)
    assert result["rho"] == pytest.approx(rho, rel=1e-5)
    assert result["weight"] == pytest.approx(weight, rel=1e-5)
    assert result["label"].tolist() == pytest.approx(final, abs=1e-5)


def test_explorer_sliders_drive_the_same_numbers(explorer_inputs):
    config, train, model = explorer_inputs
    tree, state = build_explorer(train, model, train.class_counts, config=config, seed=3)
    assert tree.children  # a widget tree was built
    w = state.widgets
    state.set(background_class=2, background_image=3, foreground_class=7, center_y=10, topk=4)
    # each of these assignments goes through the widget callbacks, as a moved slider does
    w["lam"].value = 0.36
    w["center_x"].value = 25
    w["omega"].value = 1.0
    members = [[i for i, t in enumerate(train.targets) if t == c] for c in range(train.num_classes)]
    assert state.background_index == members[2][3] and state.foreground_index == members[7][0]
    # the box of lambda 0.36 (side floor(32 * 0.8) = 25, half 12) centred at row 10, column 25, clipped:
    # rows 10 - 12 .. 10 + 12 -> 0 .. 22, columns 25 - 12 .. 25 + 12 -> 13 .. 32
    assert state.box == (0, 13, 22, 32)
    lam = 1.0 - (22 - 0) * (32 - 13) / (32 * 32)
    result = state.result
    assert result["lam"] == pytest.approx(lam)
    area, semantic, rho, weight, final = expected_labels(model, result["mixed"], 2, 7, lam, train.class_counts, 4, 1.0)
    assert result["area_label"].tolist() == pytest.approx(area, abs=1e-6)
    assert result["similarity_label"].tolist() == pytest.approx(semantic, abs=1e-5)
    assert result["weight"] == pytest.approx(weight, rel=1e-5)
    assert result["label"].tolist() == pytest.approx(final, abs=1e-5)
    assert f"{weight:.6f}" in w["numbers"].value


def test_explorer_saves_each_view_as_png(explorer_inputs, tmp_path):
    config, train, model = explorer_inputs
    _, state = build_explorer(train, model, train.class_counts, config=config, figures_dir=tmp_path, seed=3)
    first_png = (tmp_path / "explorer.png").read_bytes()
    assert first_png.startswith(PNG_MAGIC) and state.saved == [tmp_path / "explorer.png"]
    state.widgets["lam"].value = 0.2
    second_png = (tmp_path / "explorer.png").read_bytes()
    assert second_png.startswith(PNG_MAGIC) and second_png != first_png


def test_class_change_resets_the_image_slider(explorer_inputs):
    config, train, model = explorer_inputs
    _, state = build_explorer(train, model, train.class_counts, config=config)
    rare = min(range(train.num_classes), key=lambda c: train.class_counts[c])
    state.set(background_class=0, background_image=5)
    state.set(background_class=rare)
    assert state.widgets["background_image"].max == train.class_counts[rare] - 1
    assert state.widgets["background_image"].value == 0
    assert train.targets[state.background_index] == rare


def test_random_box_button_uses_sample_boxes(explorer_inputs):
    config, train, model = explorer_inputs
    _, state = build_explorer(train, model, train.class_counts, config=config, seed=11)
    state.widgets["draw_box"].click()
    expected = sample_boxes(1, 32, 32, alpha=config.cutmix_alpha, generator=torch.Generator().manual_seed(11))
    assert state.box == box_tuple(expected)
    top, left, bottom, right = state.box
    assert state.result["lam"] == pytest.approx(1.0 - (bottom - top) * (right - left) / 1024)
    state.widgets["lam"].value = 0.5 if state.widgets["lam"].value != 0.5 else 0.6  # a slider defines the box again
    assert state.box == expected_box(state.widgets["lam"].value, state.widgets["center_y"].value,
                                     state.widgets["center_x"].value)


def test_stream_button_picks_from_the_streams(explorer_inputs):
    from ccmix.data.streams import sample_epoch_indices

    config, train, model = explorer_inputs
    _, state = build_explorer(train, model, train.class_counts, config=config, seed=5)
    state.widgets["draw_streams"].click()
    background, foreground = sample_epoch_indices(train.targets, train.num_classes, batch_size=1,
                                                  foreground="balanced", generator=torch.Generator().manual_seed(5))
    assert (state.background_index, state.foreground_index) == (int(background[0, 0]), int(foreground[0, 0]))
    assert state.result["background_label"] == train.targets[state.background_index]


def test_gallery_batch_is_mixed_as_training_mixes(explorer_inputs):
    config, train, model = explorer_inputs
    result = gallery_batch(train, model, config, count=4, seed=0)
    assert result["mixed"].shape == (4, 3, 32, 32)
    for i, (top, left, bottom, right) in enumerate(result["boxes"]):
        lam = 1.0 - (bottom - top) * (right - left) / 1024
        assert float(result["lam"][i]) == pytest.approx(lam)
        inside = torch.zeros(32, 32, dtype=torch.bool)
        inside[top:bottom, left:right] = True
        assert torch.equal(result["mixed"][i][:, inside], result["foreground"][i][:, inside])
        assert torch.equal(result["mixed"][i][:, ~inside], result["background"][i][:, ~inside])
        y_a, y_b = int(result["labels"][i]), int(result["foreground_labels"][i])
        area, semantic, rho, weight, final = expected_labels(model, result["mixed"][i], y_a, y_b, lam,
                                                             train.class_counts, config.topk, config.omega)
        assert result["area_label"][i].tolist() == pytest.approx(area, abs=1e-6)
        assert float(result["weight"][i]) == pytest.approx(weight, rel=1e-4)
        assert result["label"][i].tolist() == pytest.approx(final, abs=1e-5)
    fig = gallery_figure(result, train.classes, config)
    assert len([ax for ax in fig.axes if ax.get_title()]) == 4


def test_prepare_explorer_without_checkpoint_says_the_model_is_untrained(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    data = prepare_explorer(dataset="synthetic", imb=10, figures_dir="../figures/explorer-test", repo_root=repo)
    assert not data.trained and data.config.dataset == "synthetic" and data.config.imb == 10.0
    assert any("untrained model" in note for note in data.notes)
    assert data.figures_dir == repo / "figures" / "explorer-test"  # relative to the notebooks folder
    assert len(data.train) == sum(data.train.class_counts)
    with pytest.raises(ConfigError, match="parameter checkpoint='missing.pt' is not accepted"):
        prepare_explorer(dataset="synthetic", checkpoint="missing.pt", repo_root=tmp_path)
