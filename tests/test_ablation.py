"""Ablation grids and their statistics: --grid on every launcher, per-point mean/sd/95 % CI over seeds, differences
to a baseline point (paired and Welch), verdicts, one-seed handling, the report command and bad input.

The statistics are recomputed here from the raw numbers with the standard library and a table of t quantiles, not
with the code under test."""

from __future__ import annotations

import itertools
import json
import math
import statistics
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

from ccmix.cli import main as cli_main
from ccmix.config.rules import ConfigError
from ccmix.experiments import ablation, sweep
from ccmix.experiments.plan import plan_sweep
from ccmix.experiments.train_params import resolve_train_parameters

# two-sided 95 % Student t quantiles t(0.975, dof) from a printed table
T975 = {1: 12.706204736, 2: 4.302652730, 3: 3.182446305, 4: 2.776445105}
TINY = {"dataset": "synthetic", "epochs": 1,
        "overrides": {"batch_size": 16, "num_workers": 0, "max_steps_per_epoch": 1, "progress": False}}
METRICS = ablation.ABLATION_METRICS


def accuracy(omega: float, topk: int, seed: int, metric: str) -> float:
    """Made-up accuracies with a seed effect that is not linear (so sds and paired differences are not trivial)."""
    offset = METRICS.index(metric)
    return 40.0 + 30.0 * omega + topk + offset + 0.7 * seed + 0.31 * seed * seed * (1 + omega) + 0.05 * topk * seed


def grid_frame(seeds_of=lambda omega, topk: (0, 1, 2)) -> pd.DataFrame:
    rows = []
    for omega, topk in itertools.product((0.0, 0.1), (1, 3)):
        for seed in seeds_of(omega, topk):
            row = {"run": f"o{omega}_k{topk}_s{seed}", "status": "completed", "method": "concutmix", "imb": 100.0,
                   "dataset": "synthetic", "omega": omega, "topk": topk, "seed": seed, "preset": None}
            row.update({metric: accuracy(omega, topk, seed, metric) for metric in METRICS})
            rows.append(row)
    rows.append(dict(rows[0], run="failed", status="failed", final_top1=0.0))  # never counted
    return pd.DataFrame(rows)


def half_width(values: list[float]) -> float:
    return T975[len(values) - 1] * statistics.stdev(values) / math.sqrt(len(values))


# --------------------------------------------------------------------------- statistics (fast)


def test_seed_table_mean_sd_and_ci_per_grid_point():
    table = ablation.seed_table(grid_frame())
    assert table.attrs["keys"] == ["method", "imb", "topk", "omega"] and len(table) == 4
    for _, row in table.iterrows():
        assert row["runs"] == 3 and row["seeds"] == "0,1,2"
        for metric in METRICS:
            values = [accuracy(row["omega"], row["topk"], seed, metric) for seed in (0, 1, 2)]
            assert row[f"{metric}_n"] == 3
            assert row[f"{metric}_mean"] == pytest.approx(statistics.mean(values), abs=1e-6)
            assert row[f"{metric}_sd"] == pytest.approx(statistics.stdev(values), abs=1e-6)
            assert row[f"{metric}_ci"] == pytest.approx(half_width(values), abs=1e-6)


def test_baseline_differences_are_paired_when_the_seeds_match():
    table = ablation.baseline_table(grid_frame(), "omega", 0.0)
    assert len(table) == 2 and set(table["topk"]) == {1, 3} and set(table["baseline"]) == {"omega=0.0"}
    for _, row in table.iterrows():
        for metric in METRICS:
            differences = [accuracy(0.1, row["topk"], s, metric) - accuracy(0.0, row["topk"], s, metric)
                           for s in (0, 1, 2)]
            assert row[f"{metric}_test"] == "paired" and row[f"{metric}_dof"] == 2
            assert row[f"{metric}_diff"] == pytest.approx(statistics.mean(differences), abs=1e-6)
            assert row[f"{metric}_ci"] == pytest.approx(half_width(differences), abs=1e-6)
            diff, ci = statistics.mean(differences), half_width(differences)
            assert row[f"{metric}_verdict"] == (f"{diff:+.2f} ± {ci:.2f} points, "
                                                f"{'outside' if abs(diff) > ci else 'within'} seed noise")


def test_baseline_differences_are_welch_when_the_seeds_differ():
    results = grid_frame(seeds_of=lambda omega, topk: (0, 1, 2) if omega == 0.0 else (3, 4, 5, 6))
    table = ablation.baseline_table(results, "omega", 0.0)
    for _, row in table.iterrows():
        point = [accuracy(0.1, row["topk"], s, "final_top1") for s in (3, 4, 5, 6)]
        base = [accuracy(0.0, row["topk"], s, "final_top1") for s in (0, 1, 2)]
        va, vb = statistics.variance(point) / 4, statistics.variance(base) / 3
        dof = (va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 2)
        ci = stats.t.ppf(0.975, dof) * math.sqrt(va + vb)
        assert row["final_top1_test"] == "Welch"
        assert row["final_top1_dof"] == pytest.approx(dof, abs=1e-6)
        assert row["final_top1_diff"] == pytest.approx(statistics.mean(point) - statistics.mean(base), abs=1e-6)
        assert row["final_top1_ci"] == pytest.approx(ci, abs=1e-6)


def test_verdicts_in_words():
    assert ablation.verdict(1.2, 0.8, digits=1) == "+1.2 ± 0.8 points, outside seed noise"
    assert ablation.verdict(-0.5, 0.8, digits=1) == "-0.5 ± 0.8 points, within seed noise"
    assert ablation.verdict(0.9, float("nan"), digits=1) == f"+0.9 points; {ablation.NO_SPREAD}"


def test_one_seed_gives_no_interval_and_no_verdict():
    results = grid_frame(seeds_of=lambda omega, topk: (0,))
    table = ablation.seed_table(results)
    assert table["final_top1_ci"].isna().all() and table["final_top1_sd"].isna().all()
    assert all(cell.endswith("(n=1, no CI)") for cell in ablation.format_seed_table(table)["final top1"])
    differences = ablation.baseline_table(results, "omega", 0.0)
    assert differences["final_top1_ci"].isna().all()
    assert all(v.endswith(ablation.NO_SPREAD) and "seed noise" not in v for v in differences["final_top1_verdict"])
    # one seed on one side only: Welch cannot estimate that side's spread either
    uneven = ablation.baseline_table(grid_frame(seeds_of=lambda o, k: (0,) if o else (0, 1, 2)), "omega", 0.0)
    assert uneven["final_top1_ci"].isna().all() and (uneven["final_top1_test"] == "Welch").all()


# --------------------------------------------------------------------------- grids and input (fast)


def test_grid_points_become_runs_with_the_values_in_their_names(tmp_path):
    from ccmix.config.validation import parse_set_arguments, resolve
    from ccmix.experiments.commands import build_parser

    plan = plan_sweep(["concutmix"], [100], [0, 1], TINY, tmp_path, grid={"omega": [0, 0.1], "topk": [1, 3]})
    assert len(plan) == 8 and len({run.name for run in plan}) == 8
    for run in plan:
        config = run.config
        assert run.name == f"synthetic_concutmix_imb100_omega{config.omega}_topk{config.topk}_seed{config.seed}"
        assert config.batch_size == 16  # the shared overrides stay
        # local and SLURM launchers train from these arguments; papermill from the notebook parameters
        args = build_parser().parse_args(run.command(python="python")[3:])
        assert resolve(args.preset, parse_set_arguments(args.set or [])) == config
        notebook = resolve_train_parameters(**{k: v for k, v in run.params.items() if k != "out_dir"})
        assert notebook.config == config
    assert {(run.config.omega, run.config.topk, run.config.seed) for run in plan} == set(
        itertools.product((0.0, 0.1), (1, 3), (0, 1)))


@pytest.mark.parametrize("argv, sentence", [
    (["--grid", "omegaa=0,1"], "--grid field 'omegaa' is not a config field (did you mean omega?)"),
    (["--grid", "omega=0,abc"], "--grid omega='abc' does not parse; omega must be a number >= 0"),
    (["--grid", "topk=0,3"], "--grid topk=0 is not accepted; topk must be an integer >= 1"),
    (["--grid", "device=cpu,cuda"], "--grid field 'device' is not accepted; it is a runtime field"),
    (["--grid", "seed=0,1"], "--grid field 'seed' is not accepted; the sweep varies seed itself: use --seeds"),
    (["--grid", "omega"], "--grid 'omega' is not of the form field=value1,value2,..."),
    (["--grid", "omega=0,0.1", "--baseline", "omega=0.5"],
     "--baseline omega=0.5 is not accepted; no planned run has omega=0.5 (the runs have: 0.0, 0.1)"),
])
def test_bad_grid_is_refused_in_one_sentence_before_anything_runs(tmp_path, capsys, argv, sentence):
    runs = tmp_path / "runs"
    code = sweep.main(["--methods", "concutmix", "--seeds", "0", "--param", "dataset=synthetic", "--runs-dir",
                       str(runs), *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: {sentence}") and err.count("\n") == 1
    assert not runs.exists()


def test_grid_reaches_the_papermill_launcher(tmp_path):
    calls = []

    def execute(*, input_path, output_path, parameters, **_):
        calls.append(parameters)
        Path(output_path).write_text("{}")
        run = resolve_train_parameters(**{k: v for k, v in parameters.items() if k != "out_dir"})
        write_run(Path(parameters["out_dir"]), run.config.to_dict(), 10.0 + 100 * run.config.omega + run.config.seed)

    table = sweep.run_sweep(["concutmix"], [100], [0, 1], base_params=TINY, runs_dir=tmp_path, launcher="papermill",
                            progress=False, execute=execute, grid={"omega": [0.0, 0.1]})
    assert sorted(c["overrides"]["omega"] for c in calls) == [0.0, 0.0, 0.1, 0.1]
    assert len(table.attrs["executed"]) == 4
    results = pd.read_csv(tmp_path / "results.csv")
    assert sorted(results["omega"]) == [0.0, 0.0, 0.1, 0.1]


# --------------------------------------------------------------------------- the report command (fast)


def write_run(out: Path, config: dict, top1: float) -> None:
    """Write the config.json and summary.json of a completed run."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config))
    result = {"epoch": 1, "top1": top1, "many": top1 + 2, "medium": top1, "few": top1 - 2}
    (out / "summary.json").write_text(json.dumps({"status": "completed", "final": result, "best": result,
                                                  "epochs_completed": 1, "epochs": 1}))


def test_report_command_prints_intervals_and_differences(tmp_path, capsys):
    base = resolve_train_parameters(**TINY).config
    tops = {}
    for omega, seed in itertools.product((0.0, 0.1), (0, 1, 2)):
        tops[omega, seed] = 50.0 + 40 * omega + seed * (1 + 3 * omega)
        write_run(tmp_path / f"omega{omega}_seed{seed}", base.replace(omega=omega, seed=seed).to_dict(),
                  tops[omega, seed])
    assert cli_main(["report", "--runs-dir", str(tmp_path), "--baseline", "omega=0"]) == 0
    out = capsys.readouterr().out
    values = [tops[0.1, s] for s in (0, 1, 2)]
    assert f"{statistics.mean(values):.2f} ± {half_width(values):.2f} (sd {statistics.stdev(values):.2f})" in out
    differences = [tops[0.1, s] - tops[0.0, s] for s in (0, 1, 2)]
    diff, ci = statistics.mean(differences), half_width(differences)
    assert f"{diff:+.2f} ± {ci:.2f} points, {'outside' if diff > ci else 'within'} seed noise" in out
    assert cli_main(["report", "--runs-dir", str(tmp_path), "--baseline", "omega=0.3"]) == 2
    assert cli_main(["report", "--runs-dir", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: --baseline omega=0.3 is not accepted; no completed run has omega=0.3")
    assert err[1].startswith("error: --runs-dir ") and len(err) == 2


def test_baseline_value_not_among_the_runs_is_one_sentence():
    with pytest.raises(ConfigError, match=r"^--baseline topk=2 is not accepted; no completed run has topk=2 "):
        ablation.parse_baseline("topk=2", grid_frame())


# --------------------------------------------------------------------------- a real grid (integration)


@pytest.mark.integration
def test_two_by_two_grid_over_two_seeds_trains_eight_runs_then_reuses_them(tmp_path, capsys):
    argv = ["--methods", "concutmix", "--imbs", "100", "--seeds", "0,1", "--grid", "omega=0,0.1", "--grid", "topk=1,3",
            "--param", "dataset=synthetic", "--param", "epochs=1", "--param",
            "overrides={batch_size: 16, num_workers: 0, max_steps_per_epoch: 1, progress: false}",
            "--runs-dir", str(tmp_path), "--jobs", "2", "--baseline", "omega=0"]
    assert sweep.main(argv) == 0
    out = capsys.readouterr().out
    results = pd.read_csv(tmp_path / "results.csv")
    assert len(results) == 8 and (results["status"] == "completed").all()
    assert sorted(zip(results["omega"], results["topk"], results["seed"])) == sorted(
        itertools.product((0.0, 0.1), (1, 3), (0, 1)))
    assert "mean ± 95% CI half-width over seeds" in out and "difference to omega=0.0" in out
    assert out.count("points, within seed noise") + out.count("points, outside seed noise") >= 2
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("summary.json")}
    assert sweep.main(argv) == 0
    assert "0 trained, 8 skipped, 0 failed" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("summary.json")} == stamps


# --------------------------------------------------------------------------- figures (fast)


def test_figures_draw_intervals_and_whichever_semantic_statistics_exist(tmp_path):
    import numpy as np

    from ccmix.notebook.viz_ablation import ablation_figure, point_labels, semantic_figure, semantic_keys

    table = ablation.seed_table(grid_frame(seeds_of=lambda omega, topk: (0, 1) if topk == 1 else (0,)))
    assert point_labels(table) == ["topk=1, omega=0", "topk=3, omega=0", "topk=1, omega=0.1", "topk=3, omega=0.1"]
    fig = ablation_figure(table)
    overall = fig.axes[0]
    assert [ax.get_title() for ax in fig.axes[:4]] == ["overall", "many", "medium", "few"]
    bars = overall.containers[0]  # the errorbar of the two points with two seeds
    x = bars.lines[0].get_xdata()
    assert np.allclose(sorted(x), sorted(table.loc[table["topk"] == 1, "final_top1_mean"]))
    runs = []
    for index, keys in enumerate(({"semantic_rho_omega": 0.001}, {"semantic_rho_omega": 0.002, "semantic_flip": 0.1},
                                  {})):
        run = tmp_path / f"run{index}"
        run.mkdir()
        lines = [json.dumps({"epoch": epoch, "top1": 10.0, **keys}) for epoch in (1, 2)]
        (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        runs.append(run)
    assert semantic_keys(runs) == ["semantic_flip", "semantic_rho_omega"]
    figure = semantic_figure(runs, labels=["a", "b", "b"])
    assert [ax.get_title() for ax in figure.axes[:2]] == ["flip", "rho omega"]
    assert len(figure.axes[1].lines) >= 2  # one line per run recording it
    assert semantic_figure(runs[2:]) is None
