"""Tests of ccmix.sweep: the grid, skipping completed runs, results.csv, the mean ± std table and the command
line. The fast tests replace papermill by an executor that writes a run folder; the slow one runs
train.ipynb for real."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pandas as pd
import pytest

from ccmix import sweep
from ccmix.config import ConfigError
from ccmix.notebook_params import resolve_train_parameters

REPO = Path(__file__).resolve().parents[1]
BASE = {"dataset": "synthetic", "epochs": 1, "overrides": {"batch_size": 16, "num_workers": 0, "max_steps_per_epoch": 1}}


def fake_top1(method: str, seed: int) -> float:
    return 40.0 + 5.0 * (method == "concutmix") + 1.5 * seed


class FakeExecutor:
    """Stands in for papermill.execute_notebook: writes the run folder train.ipynb would write."""

    def __init__(self, fail_methods=()):
        self.calls = []
        self.fail_methods = set(fail_methods)

    def __call__(self, *, input_path, output_path, parameters, kernel_name, cwd, progress_bar, log_output):
        self.calls.append(dict(parameters, kernel_name=kernel_name, input_path=input_path, cwd=cwd))
        Path(output_path).write_text("{}")
        if parameters["method"] in self.fail_methods:
            raise RuntimeError("the notebook failed\nConfigError: something clear")
        params = {k: v for k, v in parameters.items() if k != "out_dir"}
        run = resolve_train_parameters(**params)
        out = Path(parameters["out_dir"])
        out.mkdir(parents=True)
        (out / "config.json").write_text(json.dumps(dict(run.config.to_dict(), preset=None)))
        top1 = fake_top1(parameters["method"], parameters["seed"])
        result = {"epoch": 1, "top1": top1, "many": None, "medium": top1 + 1, "few": top1 - 1}
        (out / "summary.json").write_text(json.dumps({
            "status": "completed", "final": result, "best": dict(result, note="selected on the test set, optimistic"),
            "epochs_completed": 1, "epochs": 1, "method": parameters["method"], "seed": parameters["seed"],
            "published_top1": None, "error": None, "train_seconds": 1.0,
        }))


def test_grid_points_in_order_without_repeats():
    points = sweep.grid_points(["la", "concutmix", "la"], [100], [0, 1])
    assert points == [{"method": m, "imb": 100, "seed": s} for m in ("la", "concutmix") for s in (0, 1)]
    with pytest.raises(ConfigError, match="methods='la' is not accepted"):
        sweep.grid_points("la", [100], [0])


def test_sweep_runs_each_point_once_and_collects_results(tmp_path):
    executor = FakeExecutor()
    table = sweep.run_sweep(["la", "concutmix"], [100], [0, 1], base_params=BASE, runs_dir=tmp_path, kernel="python3",
                            execute=executor, progress=False)
    assert len(executor.calls) == 4 and {c["kernel_name"] for c in executor.calls} == {"python3"}
    assert all(Path(c["input_path"]) == REPO / "notebooks" / "train.ipynb" for c in executor.calls)
    names = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert names == [f"synthetic_{m}_imb100_seed{s}" for m in ("concutmix", "la") for s in (0, 1)]
    assert all((tmp_path / f"{name}.ipynb").is_file() for name in names)  # executed notebooks are kept
    results = pd.read_csv(tmp_path / "results.csv")
    assert len(results) == 4 and set(results["run"]) == set(names)
    for row in results.itertuples():
        assert row.final_top1 == pytest.approx(fake_top1(row.method, row.seed))
    # mean ± std over the two seeds of each method, computed here from the definition
    for method in ("la", "concutmix"):
        values = [fake_top1(method, seed) for seed in (0, 1)]
        row = table.xs(method, level="method").iloc[0]
        assert row["final_top1_mean"] == pytest.approx(statistics.mean(values))
        assert row["final_top1_std"] == pytest.approx(statistics.stdev(values))
        assert row["runs"] == 2 and row["seeds"] == "0,1"
    assert sorted(table.attrs["executed"]) == names and table.attrs["skipped"] == []

    again = FakeExecutor()
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("summary.json")}
    second = sweep.run_sweep(["la", "concutmix"], [100], [0, 1], base_params=BASE, runs_dir=tmp_path,
                             execute=again, progress=False)
    assert again.calls == [] and second.attrs["executed"] == [] and sorted(second.attrs["skipped"]) == names
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("summary.json")} == before
    assert len(pd.read_csv(tmp_path / "results.csv")) == 4


def test_a_failed_point_does_not_stop_the_others(tmp_path, capsys):
    executor = FakeExecutor(fail_methods={"la"})
    table = sweep.run_sweep(["la", "concutmix"], [100], [0], base_params=BASE, runs_dir=tmp_path, execute=executor,
                            progress=False)
    assert table.attrs["failed"] == ["synthetic_la_imb100_seed0"]
    assert table.attrs["executed"] == ["synthetic_concutmix_imb100_seed0"]
    assert "ConfigError: something clear" in capsys.readouterr().out
    assert len(pd.read_csv(tmp_path / "results.csv")) == 1


@pytest.mark.parametrize("base, message", [
    ({"method": "la"}, "base_params sets 'method'"),
    ({"out_dir": "x"}, "base_params sets 'out_dir'"),
    ({"epoch": 3}, "parameter 'epoch' is not a parameter of the train notebook"),
    ({"dataset": "mnist"}, "parameter dataset='mnist' is not accepted"),
])
def test_bad_sweep_input_fails_before_anything_runs(tmp_path, base, message):
    executor = FakeExecutor()
    with pytest.raises(ConfigError, match=message):
        sweep.run_sweep(["la"], [100], [0], base_params=base, runs_dir=tmp_path, execute=executor)
    assert executor.calls == []


def test_summarize_keeps_settings_apart_and_skips_failed_runs():
    rows = [
        {"run": f"r{i}", "status": status, "method": method, "imb": imb, "seed": seed, "epochs": 1,
         "final_top1": top1, "best_top1": top1 + 1, "final_many": None, "final_medium": 1.0, "final_few": 2.0}
        for i, (status, method, imb, seed, top1) in enumerate([
            ("completed", "la", 100.0, 0, 10.0), ("completed", "la", 100.0, 1, 14.0),
            ("completed", "la", 50.0, 0, 20.0), ("failed", "la", 50.0, 1, 99.0),
        ])
    ]
    table = sweep.summarize_runs(pd.DataFrame(rows))
    assert list(table.index) == [("la", 100.0), ("la", 50.0)]
    assert table.loc[("la", 100.0), "final_top1_mean"] == pytest.approx(12.0)
    assert table.loc[("la", 100.0), "final_top1_std"] == pytest.approx(statistics.stdev([10.0, 14.0]))
    assert table.loc[("la", 50.0), "runs"] == 1 and pd.isna(table.loc[("la", 50.0), "final_top1_std"])
    shown = sweep.format_mean_std(table)
    assert shown.loc[("la", 100.0), "final top1"] == f"12.00 ± {statistics.stdev([10.0, 14.0]):.2f}"
    assert shown.loc[("la", 50.0), "final top1"] == "20.00"
    assert shown.loc[("la", 100.0), "final many"] == "–"


def test_command_line(tmp_path, monkeypatch, capsys):
    executor = FakeExecutor()
    monkeypatch.setattr(sweep, "_default_executor", executor)
    code = sweep.main(["--methods", "la,concutmix", "--imbs", "100", "--seeds", "0", "--param", "dataset=synthetic",
                       "--param", "epochs=1", "--param", "overrides={batch_size: 16, num_workers: 0}",
                       "--runs-dir", str(tmp_path)])
    assert code == 0 and len(executor.calls) == 2
    assert executor.calls[0]["overrides"] == {"batch_size": 16, "num_workers": 0} and executor.calls[0]["imb"] == 100
    assert len(pd.read_csv(tmp_path / "results.csv")) == 2
    assert sweep.main(["--imbs", "abc", "--runs-dir", str(tmp_path)]) == 2
    assert "--imbs 'abc' is not accepted" in capsys.readouterr().err
    assert sweep.main(["--param", "epoch=1", "--runs-dir", str(tmp_path)]) == 2


@pytest.mark.slow
def test_real_sweep_trains_four_runs_then_nothing(tmp_path):
    """2 methods x 1 imb x 2 seeds through papermill on the synthetic data (about a minute per run on 2 cores)."""
    base = {**BASE, "figures_dir": str(tmp_path / "figures")}
    first = sweep.run_sweep(["la", "ce"], [100], [0, 1], base_params=base, runs_dir=tmp_path / "runs",
                            kernel="python3", progress=False)
    runs = sorted(p for p in (tmp_path / "runs").iterdir() if p.is_dir())
    assert len(runs) == 4 and len(first.attrs["executed"]) == 4 and first.attrs["failed"] == []
    for run in runs:
        assert json.loads((run / "summary.json").read_text())["status"] == "completed"
        assert (tmp_path / "runs" / f"{run.name}.ipynb").is_file()
    assert len(pd.read_csv(tmp_path / "runs" / "results.csv")) == 4
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("*") if p.is_file() and p.suffix != ".csv"}
    second = sweep.run_sweep(["la", "ce"], [100], [0, 1], base_params=base, runs_dir=tmp_path / "runs",
                             kernel="python3", progress=False)
    assert second.attrs["executed"] == [] and len(second.attrs["skipped"]) == 4
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
