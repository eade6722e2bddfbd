"""Tests of ccmix.notebook.viz on run folders fabricated in the run-folder format (config.json, metrics.jsonl,
per_class.csv, summary.json, predictions.npz)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from ccmix.config.fields import TrainConfig
from ccmix.experiments.results import collect_results, reproduction_table, run_folders
from ccmix.notebook import viz
from ccmix.notebook.viz_runs import UnusableRun, load_run, run_labels, usable_runs
from ccmix.notebook.viz_samples import gallery, label_bars, mixed_sample_panel, to_display_image

CLASS_COUNTS = [150, 90, 50, 30, 19, 12, 8, 5]  # one many, three medium, four few classes
TEST_PER_CLASS = 10


def write_fake_run(folder: Path, method: str = "concutmix", seed: int = 0, epochs: int = 3, imb: float = 30.0,
                   accuracy_bias: float = 0.0, evaluated_every: int = 1) -> dict:
    """Write a small run folder; return the numbers written (predictions, per-class and group accuracies)."""
    folder.mkdir(parents=True, exist_ok=True)
    num_classes = len(CLASS_COUNTS)
    names = [f"class{c}" for c in range(num_classes)]
    config = TrainConfig(dataset="synthetic", synthetic_classes=num_classes, method=method, seed=seed, imb=imb,
                         epochs=epochs, topk=3).to_dict()
    config.update(preset=None, world_size=1, num_classes=num_classes, class_names=names,
                  train_class_counts=CLASS_COUNTS)
    (folder / "config.json").write_text(json.dumps(config))

    rng = np.random.default_rng(seed + 17 * len(method))
    labels = np.repeat(np.arange(num_classes), TEST_PER_CLASS)
    # head classes right more often, so per-class accuracy rises with the training count
    p_right = np.clip(np.array(CLASS_COUNTS) / 160 + accuracy_bias, 0, 1)[labels]
    wrong = (labels + rng.integers(1, num_classes, size=labels.size)) % num_classes
    preds = np.where(rng.random(labels.size) < p_right, labels, wrong)
    np.savez(folder / "predictions.npz", preds=preds.astype(np.int64), labels=labels.astype(np.int64))

    per_class = []
    for c in range(num_classes):
        hits = sum(1 for p, y in zip(preds, labels) if y == c and p == c)
        per_class.append(100.0 * hits / TEST_PER_CLASS)
    groups = ["many" if n > 100 else "few" if n < 20 else "medium" for n in CLASS_COUNTS]
    group_mean = {g: float(np.mean([a for a, gg in zip(per_class, groups) if gg == g])) for g in ("many", "medium", "few")}
    top1 = 100.0 * float(np.mean(preds == labels))

    with open(folder / "per_class.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class_index", "class_name", "train_count", "group", "test_count", "accuracy"])
        for c in range(num_classes):
            writer.writerow([c, names[c], CLASS_COUNTS[c], groups[c], TEST_PER_CLASS, f"{per_class[c]:.4f}"])

    lines = []
    for epoch in range(1, epochs + 1):
        evaluated = epoch % evaluated_every == 0 or epoch == epochs
        factor = epoch / epochs if evaluated else None
        lines.append({
            "epoch": epoch, "lr": 0.1 / epoch, "loss": 3.0 / epoch, "loss_ce": 2.0 / epoch,
            "loss_bcl": (1.0 / epoch) if method in ("bcl", "concutmix") else None, "train_top1": 10.0 * epoch,
            **{key: (number * factor if factor is not None else None) for key, number in
               (("top1", top1), ("many", group_mean["many"]), ("medium", group_mean["medium"]),
                ("few", group_mean["few"]))}, "seconds": 1.0, "samples_per_second": 100.0,
        })
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    final = {"epoch": epochs, "top1": top1, **group_mean}
    summary = {
        "final": final, "best": dict(final, note="selected on the test set, optimistic"), "status": "completed",
        "epochs_completed": epochs, "epochs": epochs, "train_seconds": float(epochs), "world_size": 1,
        "method": method, "dataset": "synthetic", "imb": imb, "seed": seed, "preset": None, "published_top1": None,
        "error": None,
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    return {"preds": preds, "labels": labels, "per_class": per_class, "groups": group_mean, "top1": top1,
            "names": names}


@pytest.fixture
def two_runs(tmp_path):
    a = write_fake_run(tmp_path / "run_la", method="la", seed=0)
    b = write_fake_run(tmp_path / "run_ccm", method="concutmix", seed=0, accuracy_bias=0.1)
    return [tmp_path / "run_la", tmp_path / "run_ccm"], [a, b]


def test_load_run_reads_every_file(tmp_path):
    written = write_fake_run(tmp_path / "r", epochs=4, evaluated_every=2)
    run = load_run(tmp_path / "r")
    assert run.name == "r"
    assert list(run.metrics["epoch"]) == [1, 2, 3, 4]
    assert run.metrics["top1"].isna().tolist() == [True, False, True, False]  # null -> NaN
    assert run.per_class["accuracy"].round(4).tolist() == [round(a, 4) for a in written["per_class"]]
    assert run.summary["final"]["top1"] == pytest.approx(written["top1"])


def test_load_run_missing_folder_names_it(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_run(tmp_path / "absent")


def test_run_labels_name_what_differs(tmp_path):
    write_fake_run(tmp_path / "a", method="la", seed=0)
    write_fake_run(tmp_path / "b", method="la", seed=1)
    write_fake_run(tmp_path / "c", method="concutmix", seed=0)
    runs = [tmp_path / n for n in "abc"]
    assert run_labels(runs) == ["method=la, seed=0", "method=la, seed=1", "method=concutmix, seed=0"]
    assert run_labels(runs, exclude=("seed",)) == ["method=la", "method=la", "method=concutmix"]
    assert run_labels(runs[:1]) == ["a"]


def test_learning_curves_single_and_many(two_runs):
    runs, written = two_runs
    single = viz.learning_curves(runs[0])
    assert isinstance(single, Figure) and len(single.axes) == 4
    # the test top-1 line holds exactly the logged values
    top1_axis = single.axes[1]
    ydata = [list(line.get_ydata()) for line in top1_axis.get_lines()]
    logged = [written[0]["top1"] * epoch / 3 for epoch in (1, 2, 3)]  # as write_fake_run logs them (3 epochs)
    assert any(np.allclose(y, logged) for y in ydata)
    many = viz.learning_curves(runs)
    assert len(many.axes) == 2
    assert len(many.axes[0].get_lines()) == 2  # one loss line per run


def test_epoch_axes_show_whole_epochs(two_runs, tmp_path):
    runs, _ = two_runs  # three epochs: the default locator would tick 1.0, 1.25, 1.5, ...
    write_fake_run(tmp_path / "one_epoch", epochs=1)  # one point: the default would tick 0.96, 0.98, 1.0, ...
    figures = [viz.learning_curves(runs[0]), viz.learning_curves(runs), viz.learning_curves(tmp_path / "one_epoch")]
    for figure, least in zip(figures, (2, 2, 1)):
        for axis in figure.axes:
            low, high = axis.get_xlim()
            shown = [tick for tick in axis.get_xticks() if low <= tick <= high]
            assert len(shown) >= least and all(float(tick).is_integer() for tick in shown), (axis.get_title(), shown)


def test_shot_table_and_bars_values(two_runs):
    runs, written = two_runs
    table = viz.shot_table(runs, labels=["la", "ccm"])
    for label, numbers in zip(("la", "ccm"), written):
        rows = table[table["label"] == label].set_index("group")["accuracy"]
        assert rows["all"] == pytest.approx(numbers["top1"])
        for group in ("many", "medium", "few"):
            assert rows[group] == pytest.approx(numbers["groups"][group])
    fig = viz.shot_bars(runs, labels=["la", "ccm"])
    heights = sorted(round(p.get_height(), 6) for p in fig.axes[0].patches if p.get_height() > 0)
    # the numbers the fake runs were written with, not the table the bars are drawn from
    written_values = [v for numbers in written for v in (numbers["top1"], *numbers["groups"].values())]
    assert heights == sorted(round(v, 6) for v in written_values if v > 0)


def test_shot_bars_pools_seeds_and_marks_empty_group(tmp_path):
    written = [write_fake_run(tmp_path / "s0", seed=0), write_fake_run(tmp_path / "s1", seed=1)]
    for name in ("s0", "s1"):  # a dataset without few-shot classes
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        summary["final"]["few"] = None
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))
    runs = [tmp_path / "s0", tmp_path / "s1"]
    labels = run_labels(runs, exclude=("seed",))
    fig = viz.shot_bars(runs, labels=labels)
    ax = fig.axes[0]
    mean_all = (written[0]["top1"] + written[1]["top1"]) / 2  # the two seeds pooled into one bar
    assert written[0]["top1"] != written[1]["top1"]
    assert any(abs(p.get_height() - mean_all) < 1e-6 for p in ax.patches)
    assert "empty" in [t.get_text() for t in ax.texts]
    assert len([p for p in ax.patches if p.get_height() > 0]) == 3  # all, many, medium; no bar for few


def test_per_class_vs_count_log_axis_and_points(two_runs):
    runs, written = two_runs
    fig = viz.per_class_vs_count(runs[0])
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    offsets = np.concatenate([c.get_offsets() for c in ax.collections])
    assert sorted(offsets[:, 0].tolist()) == sorted(CLASS_COUNTS)
    assert sorted(np.round(offsets[:, 1], 4).tolist()) == sorted(round(a, 4) for a in written[0]["per_class"])
    assert len(viz.per_class_vs_count(runs).axes[0].collections) == 2


def test_confused_pairs_table_counts_by_loop(two_runs):
    runs, written = two_runs
    preds, labels, names = written[0]["preds"], written[0]["labels"], written[0]["names"]
    table = viz.confused_pairs_table(preds, labels, names, top=5)
    counts = {}
    for p, y in zip(preds, labels):
        if p != y:
            counts[(int(y), int(p))] = counts.get((int(y), int(p)), 0) + 1
    best = sorted(counts.values(), reverse=True)[:5]
    assert table["count"].tolist() == best
    for row in table.itertuples():
        assert counts[(row.true, row.predicted)] == row.count
        assert row.share == pytest.approx(100.0 * row.count / TEST_PER_CLASS)
        assert row.true_name == names[row.true]
    fig = viz.confused_pairs(runs, top=5)
    assert len(fig.axes) == 2
    assert len(fig.axes[0].patches) == len(table)


def test_tsne_scatter_colours_by_group():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(len(CLASS_COUNTS)), 6)
    features = rng.normal(size=(labels.size, 5)) + labels[:, None]
    points = viz.tsne_embedding(features, seed=0)
    assert points.shape == (labels.size, 2)
    fig = viz.tsne_scatter(points, labels, CLASS_COUNTS)
    sizes = {text.get_text().split(" ")[0]: len(coll.get_offsets())
             for text, coll in zip(fig.axes[0].get_legend().get_texts(), fig.axes[0].collections)}
    expected = {}
    for label in labels:
        count = CLASS_COUNTS[label]
        group = "many" if count > 100 else "few" if count < 20 else "medium"
        expected[group] = expected.get(group, 0) + 1
    assert sizes == expected


def test_to_display_image_undoes_normalisation():
    rng = np.random.default_rng(1)
    raw = rng.random((3, 4, 5)).astype(np.float32)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    normalised = (raw - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    shown = to_display_image(normalised, mean, std)
    assert shown.shape == (4, 5, 3)
    assert np.allclose(shown, raw.transpose(1, 2, 0), atol=1e-6)
    uint8 = (raw * 255).astype(np.uint8)
    assert np.allclose(to_display_image(uint8), uint8.transpose(1, 2, 0) / 255.0)


def test_mixed_panel_label_bars_and_gallery():
    image = np.zeros((3, 8, 8), dtype=np.float32)
    fig = mixed_sample_panel(image, image, image, box=(2, 3, 6, 7))
    rectangles = [p for ax in fig.axes for p in ax.patches]
    assert len(rectangles) == 2 and rectangles[0].get_width() == 4 and rectangles[0].get_height() == 4
    area = np.array([0.7, 0.3, 0, 0, 0])
    semantic = np.array([0.1, 0.2, 0.4, 0.3, 0])
    final = 0.9 * area + 0.1 * semantic
    bars = label_bars(area, semantic, final, class_names=list("abcde"), top=4, lam=0.7, rho=0.5, weight=0.1)
    ticks = [t.get_text() for t in bars.axes[2].get_xticklabels()]
    assert ticks[0] == "a" and "e" not in ticks and len(ticks) == 4
    assert sorted(round(p.get_height(), 6) for p in bars.axes[2].patches) == sorted(
        round(v, 6) for v in final[[0, 1, 2, 3]]
    )
    assert "ρ·ω = 0.10000" in bars._suptitle.get_text()
    grid = gallery(np.zeros((5, 3, 8, 8), dtype=np.float32), [str(i) for i in range(5)], ncols=3)
    assert len(grid.axes) == 6 and [ax.get_title() for ax in grid.axes[:5]] == list("01234")
    with pytest.raises(ValueError, match="titles has 2 entries"):
        gallery(np.zeros((3, 3, 8, 8)), ["a", "b"])


def test_save_figure_png_and_svg_atomically(tmp_path):
    fig = Figure()
    fig.subplots().plot([0, 1], [1, 0])
    paths = viz.save_figure(fig, tmp_path / "figs", "curve")
    assert [p.name for p in paths] == ["curve.png", "curve.svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in paths[1].read_bytes()[:2000]
    assert sorted(os.listdir(tmp_path / "figs")) == ["curve.png", "curve.svg"]  # no temporary left behind
    with pytest.raises(ValueError, match="figure name"):
        viz.save_figure(fig, tmp_path, "../escape")


@pytest.mark.integration
def test_viz_does_not_select_a_backend():
    import subprocess
    import sys

    code = "import matplotlib, ccmix.notebook.viz, sys; sys.exit(0 if 'matplotlib.pyplot' not in sys.modules else 1)"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


# --------------------------------------------------------------------------- runs the analysis cannot use


def test_usable_runs_skip_what_cannot_be_analysed_with_one_sentence_each(tmp_path):
    good = [tmp_path / "good_a", tmp_path / "good_b"]
    for index, folder in enumerate(good):
        write_fake_run(folder, seed=index)
    write_fake_run(tmp_path / "diverged")
    summary = json.loads((tmp_path / "diverged" / "summary.json").read_text())
    summary.update(status="failed", error="the loss became NaN at epoch 2")
    (tmp_path / "diverged" / "summary.json").write_text(json.dumps(summary))
    write_fake_run(tmp_path / "nan")
    summary = json.loads((tmp_path / "nan" / "summary.json").read_text())
    summary["final"]["few"] = float("nan")
    (tmp_path / "nan" / "summary.json").write_text(json.dumps(summary))  # json writes NaN
    write_fake_run(tmp_path / "no_config")
    (tmp_path / "no_config" / "config.json").unlink()
    write_fake_run(tmp_path / "other_method")
    summary = json.loads((tmp_path / "other_method" / "summary.json").read_text())
    summary["method"] = "ce"
    (tmp_path / "other_method" / "summary.json").write_text(json.dumps(summary))
    write_fake_run(tmp_path / "damaged")
    (tmp_path / "damaged" / "config.json").write_text('{"method": "la"')

    order = ["diverged", "good_a", "nan", "no_config", "good_b", "other_method", "damaged"]
    sentences = []
    records = usable_runs([tmp_path / name for name in order], report=sentences.append)
    assert [record.name for record in records] == ["good_a", "good_b"]
    assert len(sentences) == 5 and all("\n" not in s and s.startswith("skipped: run ") for s in sentences)
    assert sentences[0] == "skipped: run 'diverged' is failed: the loss became NaN at epoch 2"
    assert sentences[1] == "skipped: run 'nan' has non-finite final few in summary.json"
    assert sentences[2] == "skipped: run 'no_config' has no config.json"
    assert sentences[3] == "skipped: run 'other_method' has a summary.json that disagrees with its config.json on method"
    assert sentences[4] == "skipped: run 'damaged' has a config.json that cannot be read as JSON"
    # the figures then draw the usable runs only
    assert len(viz.shot_table(records)) == 2 * 4


def test_tsne_of_a_run_with_non_finite_features_is_refused_in_one_sentence(tmp_path, monkeypatch):
    import ccmix.train.evaluation

    write_fake_run(tmp_path / "r")
    (tmp_path / "r" / "last.pt").write_bytes(b"weights")  # only its presence is looked at before embedding
    features = np.ones((20, 4), dtype=np.float32)
    features[3, 1] = np.inf  # what the encoder of overflowing weights returns
    monkeypatch.setattr(ccmix.train.evaluation, "embed_test_set", lambda *a, **k: {"features": features,
                                                                         "labels": np.arange(20) % 8})
    with pytest.raises(UnusableRun, match="run 'r' gives non-finite test features from last.pt"):
        viz.tsne_of_run(tmp_path / "r")


# --------------------------------------------------------------------------- reproduction of the published results


def test_reproduction_bars_equal_the_table(tmp_path):
    from ccmix.config.presets import PUBLISHED_TOP1, preset

    for name, tops in (("cifar100_imb100", (50.0, 53.0, 51.5)), ("cifar10_imb100", (84.0,))):
        for seed, top1 in enumerate(tops):
            folder = tmp_path / f"{name}_seed{seed}"
            folder.mkdir()
            config = dict(preset(name).to_dict(), seed=seed, preset=name)
            (folder / "config.json").write_text(json.dumps(config))
            final = {"epoch": 200, "top1": top1, "many": None, "medium": None, "few": None}
            (folder / "summary.json").write_text(json.dumps({"status": "completed", "final": final,
                                                              "best": dict(final, top1=top1 + 1.0)}))
    results = collect_results(run_folders(tmp_path))
    table = reproduction_table(results)
    assert list(table.index) == ["cifar100_imb100", "cifar10_imb100"]
    assert table.loc["cifar100_imb100", "final_top1_mean"] == pytest.approx(np.mean([50.0, 53.0, 51.5]))
    assert table.loc["cifar100_imb100", "final_top1_std"] == pytest.approx(np.std([50.0, 53.0, 51.5], ddof=1))
    assert table.loc["cifar10_imb100", "published_top1"] == PUBLISHED_TOP1["cifar10_imb100"]

    fig = viz.reproduction(results)
    ax = fig.axes[0]
    bars = {container.get_label(): [patch.get_height() for patch in container] for container in ax.containers
            if hasattr(container, "patches")}
    assert bars["published"] == pytest.approx(list(table["published_top1"]))
    assert bars["ours, final epoch"] == pytest.approx(list(table["final_top1_mean"]))
    assert bars["ours, best epoch (selected on the evaluation set)"] == pytest.approx(list(table["best_top1_mean"]))
    assert [t.get_text().split("\n")[0] for t in ax.get_xticklabels()] == list(table.index)
    # error bars over seeds: the final bar of cifar100_imb100 spans mean ± std
    final_errors = [c for c in ax.containers if c.get_label() == "ours, final epoch"][0].errorbar
    (segments,) = [collection.get_segments() for collection in final_errors.lines[2]]
    low, high = segments[0][:, 1]
    std = table.loc["cifar100_imb100", "final_top1_std"]
    assert (high - low) == pytest.approx(2 * std)
    viz.save_figure(fig, tmp_path / "figures", "reproduction")
    assert (tmp_path / "figures" / "reproduction.png").is_file() and (tmp_path / "figures" / "reproduction.svg").is_file()

    empty = viz.reproduction(collect_results([tmp_path / "cifar10_imb100_seed0"]).assign(published_top1=None))
    assert "no completed run reproduces a published preset" in empty.axes[0].texts[0].get_text()
