"""Tests of ccmix.experiments.sweep: the grid, the launchers (local packed processes, SLURM through submitit's local
executor, papermill), honest reuse of run folders, results.csv beside the published numbers, the mean ± std
table and the command line. The papermill tests replace papermill by an executor that writes a run folder;
the integration tests train tiny synthetic runs for real."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pandas as pd
import pytest

from ccmix.config.presets import PUBLISHED_SHOT_TOP1, PUBLISHED_TOP1, preset
from ccmix.config.rules import ConfigError
from ccmix.experiments import sweep
from ccmix.experiments.plan import REPLACED_DIR, grid_points, plan_sweep, reuse_differences
from ccmix.experiments.results import collect_results, format_mean_std, reproduction_table, run_folders, summarize_runs
from ccmix.experiments.train_params import resolve_train_parameters

REPO = Path(__file__).resolve().parents[1]
BASE = {"dataset": "synthetic", "epochs": 1, "overrides": {"batch_size": 16, "num_workers": 0, "max_steps_per_epoch": 1}}
# real trainings: two steps of one epoch, no progress bars in the logs
TINY = {"dataset": "synthetic", "epochs": 1,
        "overrides": {"batch_size": 16, "num_workers": 0, "max_steps_per_epoch": 2, "progress": False}}


def fake_top1(method: str, seed: int) -> float:
    return 40.0 + 5.0 * (method == "concutmix") + 1.5 * seed


def write_run(out: Path, config: dict, top1: float, status: str = "completed", best_top1: float | None = None) -> None:
    """Write the config.json and summary.json a finished run leaves."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config))
    result = {"epoch": config["epochs"], "top1": top1, "many": None, "medium": top1 + 1, "few": top1 - 1}
    best = dict(result, top1=best_top1 if best_top1 is not None else top1)
    (out / "summary.json").write_text(json.dumps({
        "status": status, "final": result, "best": dict(best, note="selected on the test set, optimistic"),
        "epochs_completed": config["epochs"], "epochs": config["epochs"], "method": config["method"],
        "seed": config["seed"], "error": None if status == "completed" else "loss is NaN", "train_seconds": 1.0,
    }))


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
        write_run(Path(parameters["out_dir"]), dict(run.config.to_dict(), preset=None),
                  fake_top1(parameters["method"], parameters["seed"]))


def papermill_sweep(*args, **kwargs):
    return sweep.run_sweep(*args, launcher="papermill", progress=False, **kwargs)


def test_grid_points_in_order_without_repeats():
    points = grid_points(["la", "concutmix", "la"], [100], [0, 1])
    assert points == [{"method": m, "imb": 100, "seed": s} for m in ("la", "concutmix") for s in (0, 1)]
    with pytest.raises(ConfigError, match="methods='la' is not accepted"):
        grid_points("la", [100], [0])


def test_planned_command_trains_the_planned_config(tmp_path):
    """The local and SLURM launchers run `python -m ccmix train`; its arguments must rebuild the same config."""
    from ccmix.config.validation import parse_set_arguments, resolve
    from ccmix.experiments.commands import build_parser

    for method, base in (("la", TINY), ("concutmix", {"dataset": "cifar100"})):
        (run,) = plan_sweep([method], [100], [3], base, tmp_path)
        command = run.command(python="python")
        assert command[:4] == ["python", "-m", "ccmix", "train"]
        args = build_parser().parse_args(command[3:])
        assert Path(args.out) == tmp_path / run.name
        assert resolve(args.preset, parse_set_arguments(args.set or [])) == run.config
    assert run.preset == "cifar100_imb100" and "--preset" in command  # the preset is recorded by the run


def test_sweep_runs_each_point_once_and_collects_results(tmp_path):
    executor = FakeExecutor()
    table = papermill_sweep(["la", "concutmix"], [100], [0, 1], base_params=BASE, runs_dir=tmp_path, kernel="python3",
                            execute=executor)
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
    second = papermill_sweep(["la", "concutmix"], [100], [0, 1], base_params=BASE, runs_dir=tmp_path, execute=again)
    assert again.calls == [] and second.attrs["executed"] == [] and sorted(second.attrs["skipped"]) == names
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("summary.json")} == before
    assert len(pd.read_csv(tmp_path / "results.csv")) == 4


def test_a_failed_point_does_not_stop_the_others(tmp_path, capsys):
    executor = FakeExecutor(fail_methods={"la"})
    table = papermill_sweep(["la", "concutmix"], [100], [0], base_params=BASE, runs_dir=tmp_path, execute=executor)
    assert table.attrs["failed"] == ["synthetic_la_imb100_seed0"]
    assert table.attrs["executed"] == ["synthetic_concutmix_imb100_seed0"]
    assert "synthetic_la_imb100_seed0: failed: ConfigError: something clear" in capsys.readouterr().out
    assert len(pd.read_csv(tmp_path / "results.csv")) == 1


@pytest.mark.parametrize("kwargs, message", [
    ({"base_params": {"method": "la"}}, "base_params sets 'method'"),
    ({"base_params": {"out_dir": "x"}}, "base_params sets 'out_dir'"),
    ({"base_params": {"epoch": 3}}, "parameter 'epoch' is not a parameter of the train notebook"),
    ({"base_params": {"dataset": "mnist"}}, "dataset='mnist' is not accepted"),
    ({"launcher": "ssh"}, "launcher='ssh' is not accepted; choose one of: local, slurm, papermill"),
    ({"jobs": 0}, "jobs=0 is not accepted; it must be an integer >= 1"),
    ({"jobs": 2, "launcher": "papermill"}, "jobs=2 is not accepted with launcher 'papermill'"),
    ({"launcher": "slurm", "slurm": {"partion": "gpu"}}, "SLURM option 'partion' is not accepted"),
    ({"launcher": "slurm", "slurm": {"time_min": 0}}, "SLURM option time_min=0 is not accepted"),
    ({"launcher": "slurm", "slurm": {"cluster": "pbs"}}, "SLURM option cluster='pbs' is not accepted"),
    ({"slurm": {"partition": "gpu"}}, "SLURM options need launcher 'slurm'"),
])
def test_bad_sweep_input_fails_before_anything_runs(tmp_path, kwargs, message):
    executor = FakeExecutor()
    kwargs = {"launcher": "papermill", **kwargs}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        sweep.run_sweep(["la"], [100], [0], runs_dir=tmp_path, execute=executor, **kwargs)
    assert executor.calls == [] and not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- honest reuse


def test_a_folder_of_another_recipe_is_refused_then_redone_on_request(tmp_path):
    (run,) = plan_sweep(["la"], [100], [0], BASE, tmp_path)
    write_run(run.out_dir, dict(run.config.to_dict(), epochs=3, lr=0.5, preset=None), 77.0)
    executor = FakeExecutor()
    with pytest.raises(ConfigError) as refused:
        papermill_sweep(["la"], [100], [0], base_params=BASE, runs_dir=tmp_path, execute=executor)
    message = str(refused.value)
    assert repr(str(run.out_dir)) in message and "--redo-mismatched" in message and "\n" not in message
    assert "epochs (saved 3, requested 1)" in message and "lr (saved 0.5, requested 0.15)" in message
    assert executor.calls == [] and json.loads((run.out_dir / "summary.json").read_text())["final"]["top1"] == 77.0

    table = papermill_sweep(["la"], [100], [0], base_params=BASE, runs_dir=tmp_path, execute=executor,
                            redo_mismatched=True)
    assert table.attrs["executed"] == [run.name] and len(executor.calls) == 1
    (moved,) = (tmp_path / REPLACED_DIR).iterdir()  # the old run is kept, out of results.csv
    assert json.loads((moved / "summary.json").read_text())["final"]["top1"] == 77.0
    assert json.loads((moved / "config.json").read_text())["epochs"] == 3
    assert json.loads((run.out_dir / "config.json").read_text())["epochs"] == 1
    results = pd.read_csv(tmp_path / "results.csv")
    assert list(results["final_top1"]) == [fake_top1("la", 0)]


def test_reuse_compares_the_seed_but_not_where_a_run_went(tmp_path):
    (run,) = plan_sweep(["la"], [100], [0], BASE, tmp_path)
    write_run(run.out_dir, dict(run.config.to_dict(), seed=5, preset=None), 50.0)
    assert reuse_differences(run) == ["seed (saved 5, requested 0)"]
    # another data_root, device or worker count is the same run: it is skipped, not retrained
    write_run(run.out_dir, dict(run.config.to_dict(), data_root="/elsewhere", device="cpu", num_workers=7,
                                preset=None), 50.0)
    assert reuse_differences(run) == []
    executor = FakeExecutor()
    table = papermill_sweep(["la"], [100], [0], base_params=BASE, runs_dir=tmp_path, execute=executor)
    assert executor.calls == [] and table.attrs["skipped"] == [run.name]


# --------------------------------------------------------------------------- results beside the paper


def test_results_carry_the_published_numbers_and_our_gap(tmp_path):
    reproduced = dict(preset("cifar100_imb100").to_dict(), preset="cifar100_imb100")
    finals = {0: 50.0, 1: 52.0, 2: 51.0}
    for seed, top1 in finals.items():
        write_run(tmp_path / f"c100_seed{seed}", dict(reproduced, seed=seed), top1, best_top1=top1 + 2)
    write_run(tmp_path / "c100_short", dict(reproduced, epochs=5, seed=0), 20.0)  # changed recipe: not comparable
    results = collect_results(run_folders(tmp_path))
    rows = results.set_index("run")
    published = PUBLISHED_TOP1["cifar100_imb100"]
    shots = PUBLISHED_SHOT_TOP1["cifar100_imb100"]
    for seed, top1 in finals.items():
        row = rows.loc[f"c100_seed{seed}"]
        assert row["published_top1"] == published and row["gap_final_top1"] == pytest.approx(top1 - published)
        assert (row["published_many"], row["published_medium"], row["published_few"]) == (63.8, 50.5, 43.8)
        assert (shots["many"], shots["medium"], shots["few"]) == (63.8, 50.5, 43.8)
        assert row["gap_best_top1"] == pytest.approx(top1 + 2 - published)
    assert rows.loc["c100_short"][["published_top1", "gap_final_top1"]].isna().all()

    table = summarize_runs(results)
    full = table[table["runs"] == 3].iloc[0]
    assert full["published_top1"] == published
    assert full["gap_final_top1_mean"] == pytest.approx(statistics.mean(finals.values()) - published)
    assert full["gap_best_top1_mean"] == pytest.approx(statistics.mean(finals.values()) + 2 - published)
    shown = format_mean_std(table)
    row = shown[shown["runs"] == 3].iloc[0]
    gap = statistics.mean(finals.values()) - published
    assert row["published top1"] == f"{published:.2f}" and row["published many / medium / few"] == "63.8 / 50.5 / 43.8"
    assert row["final − published"] == f"{gap:+.2f} ± {statistics.stdev(finals.values()):.2f}"
    assert shown[shown["runs"] == 1].iloc[0]["published top1"] == "–"

    reproduction = reproduction_table(results)
    assert list(reproduction.index) == ["cifar100_imb100"] and reproduction.loc["cifar100_imb100", "runs"] == 3
    assert reproduction.loc["cifar100_imb100", "gap_final_top1"] == pytest.approx(gap)


def test_summarize_keeps_settings_apart_and_skips_failed_runs():
    rows = [
        {"run": f"r{i}", "status": status, "method": method, "imb": imb, "seed": seed, "epochs": 1,
         "final_top1": top1, "best_top1": top1 + 1, "final_many": None, "final_medium": 1.0, "final_few": 2.0}
        for i, (status, method, imb, seed, top1) in enumerate([
            ("completed", "la", 100.0, 0, 10.0), ("completed", "la", 100.0, 1, 14.0),
            ("completed", "la", 50.0, 0, 20.0), ("failed", "la", 50.0, 1, 99.0),
        ])
    ]
    table = summarize_runs(pd.DataFrame(rows))
    assert list(table.index) == [("la", 100.0), ("la", 50.0)]
    assert table.loc[("la", 100.0), "final_top1_mean"] == pytest.approx(12.0)
    assert table.loc[("la", 100.0), "final_top1_std"] == pytest.approx(statistics.stdev([10.0, 14.0]))
    assert table.loc[("la", 50.0), "runs"] == 1 and pd.isna(table.loc[("la", 50.0), "final_top1_std"])
    shown = format_mean_std(table)
    assert shown.loc[("la", 100.0), "final top1"] == f"12.00 ± {statistics.stdev([10.0, 14.0]):.2f}"
    assert shown.loc[("la", 50.0), "final top1"] == "20.00"
    assert shown.loc[("la", 100.0), "final many"] == "–"
    assert "published top1" not in shown  # nothing published for these settings


# --------------------------------------------------------------------------- local packed runs


def test_gpus_are_handed_out_round_robin_to_the_least_busy():
    from ccmix.experiments.local import gpu_groups, pick_group, visible_gpus

    assert gpu_groups(["0", "1", "2", "3"], 2) == [("0", "1"), ("2", "3")]
    assert gpu_groups(["0", "1", "2"], 2) == [("0", "1")] and gpu_groups([], 1) == []
    assert [pick_group([0, 0, 0], last) for last in (-1, 0, 1, 2)] == [0, 1, 2, 0]
    assert pick_group([1, 0, 1], 1) == 1  # the idle GPU, even if it was used last
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2, 5"}) == ["2", "5"] and visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []


def test_failure_sentence_reads_the_cli_error_or_the_traceback():
    from ccmix.experiments.local import failure_sentence

    assert failure_sentence("training\r 50%\nerror: batch_size=3 is bad\n", "x") == "batch_size=3 is bad"
    traceback = "Traceback (most recent call last):\n  File ...\nccmix.engine.TrainingDiverged: loss is NaN at step 3\n"
    assert failure_sentence(traceback, "x") == "TrainingDiverged: loss is NaN at step 3"
    assert failure_sentence("", "exit status 9") == "exit status 9"


@pytest.mark.integration
def test_packed_runs_train_at_once_on_the_visible_gpus(tmp_path, monkeypatch, capsys):
    """Two tiny runs with --jobs 2: both complete, results.csv has both rows, and the runs' own files show that
    they trained at the same time. Two visible GPUs (ids only: this machine trains on the CPU) get one run each."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    table = sweep.run_sweep(["la", "ce"], [100], [0], base_params=TINY, runs_dir=tmp_path, jobs=2)
    names = ["synthetic_la_imb100_seed0", "synthetic_ce_imb100_seed0"]
    assert sorted(table.attrs["executed"]) == sorted(names) and table.attrs["failed"] == []
    results = pd.read_csv(tmp_path / "results.csv")
    assert sorted(results["run"]) == sorted(names) and set(results["status"]) == {"completed"}
    # config.json is the first file a run writes once its data is loaded, summary.json its last
    spans = [((tmp_path / n / "config.json").stat().st_mtime, (tmp_path / n / "summary.json").stat().st_mtime)
             for n in names]
    (start_a, end_a), (start_b, end_b) = spans
    assert start_a < end_b and start_b < end_a, f"the runs' lifetimes do not overlap: {spans}"
    headers = sorted((tmp_path / n / "launch.log").read_text().splitlines()[0].rsplit("# on ", 1)[1] for n in names)
    assert headers == ["GPU 0", "GPU 1"]
    assert "2 trained, 0 skipped, 0 failed" in capsys.readouterr().out


@pytest.mark.integration
def test_packed_failures_are_reported_one_line_each_and_set_the_exit_status(tmp_path, capsys):
    """A folder dataset whose class folders hold no image passes the checks before launch and fails in each
    training process; both runs are tried, each failure is one line naming the run and the sentence."""
    data = tmp_path / "data"
    for split in ("train", "test"):
        for name in ("a", "b"):
            (data / split / name).mkdir(parents=True)
    code = sweep.main(["--methods", "la,ce", "--imbs", "10", "--seeds", "0", "--jobs", "1", "--param", "dataset=folder",
                       "--param", f"data_root={data}", "--param", "epochs=1", "--runs-dir", str(tmp_path / "runs")])
    assert code == 1
    lines = [line for line in capsys.readouterr().out.splitlines() if ": failed: " in line]
    assert len(lines) == 2, lines
    for line, method in zip(lines, ("la", "ce")):
        assert line.startswith(f"folder_{method}_imb10_seed0: failed: class folder ")
        assert "holds no image files" in line and "launch.log" in line


# --------------------------------------------------------------------------- SLURM through submitit


def test_requeue_hook_resubmits_the_same_training():
    from ccmix.experiments.slurm import RequeueingTraining

    task = RequeueingTraining()
    arguments = ["train", "--set", "epochs=1", "--out", "/runs/a"]
    delayed = task.checkpoint(arguments)
    assert delayed.function is task and delayed.args == (arguments,) and delayed.kwargs == {}


def test_slurm_options_reach_the_executor(tmp_path, monkeypatch):
    from ccmix.experiments.slurm import check_cluster, executor_for, slurm_options

    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no srun here
    with pytest.raises(ConfigError, match="launcher 'slurm' is not accepted here: SLURM's srun is not on the PATH"):
        check_cluster(slurm_options({}))
    # a login node: submitit finds srun on the PATH (never called here, only looked up)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    check_cluster(slurm_options({}))
    options = slurm_options({"partition": "gpu", "gpus_per_run": 2, "time_min": 90, "array_parallelism": 4,
                             "setup": ["module load cuda"], "extra": {"slurm_account": "lab"}})
    executor = executor_for(options, tmp_path)
    parameters = executor._executor.parameters
    assert parameters["partition"] == "gpu" and parameters["time"] == 90 and parameters["gpus_per_node"] == 2
    assert parameters["ntasks_per_node"] == 2 and parameters["array_parallelism"] == 4
    assert parameters["setup"] == ["module load cuda"] and parameters["account"] == "lab"
    with pytest.raises(ConfigError, match="not accepted by submitit"):
        executor_for(slurm_options({"extra": {"slurm_nonsense": 1}}), tmp_path)


@pytest.mark.integration
def test_slurm_launcher_on_submitits_local_executor(tmp_path, capsys):
    """The job array runs on this machine through submitit's LocalExecutor: both runs complete and are gathered;
    run again, both are skipped."""
    options = {"cluster": "local", "gpus_per_run": 0, "time_min": 10, "poll_seconds": 0.5}
    table = sweep.run_sweep(["la", "ce"], [100], [0], base_params=TINY, runs_dir=tmp_path, launcher="slurm",
                            slurm=options)
    names = sorted(["synthetic_la_imb100_seed0", "synthetic_ce_imb100_seed0"])
    assert sorted(table.attrs["executed"]) == names and table.attrs["failed"] == []
    results = pd.read_csv(tmp_path / "results.csv")
    assert sorted(results["run"]) == names and set(results["status"]) == {"completed"}
    assert list((tmp_path / "slurm").iterdir())  # submitit's logs, one folder a task
    out = capsys.readouterr().out
    assert out.count(": training on job ") == 2 and "2 trained, 0 skipped, 0 failed" in out
    again = sweep.run_sweep(["la", "ce"], [100], [0], base_params=TINY, runs_dir=tmp_path, launcher="slurm",
                            slurm=options)
    assert sorted(again.attrs["skipped"]) == names and again.attrs["executed"] == []


# --------------------------------------------------------------------------- command line


def test_command_line(tmp_path, monkeypatch, capsys):
    executor = FakeExecutor()
    monkeypatch.setattr(sweep, "_default_executor", executor)
    code = sweep.main(["--methods", "la,concutmix", "--imbs", "100", "--seeds", "0", "--param", "dataset=synthetic",
                       "--param", "epochs=1", "--param", "overrides={batch_size: 16, num_workers: 0}",
                       "--runs-dir", str(tmp_path), "--launcher", "papermill"])
    assert code == 0 and len(executor.calls) == 2
    assert executor.calls[0]["overrides"] == {"batch_size": 16, "num_workers": 0} and executor.calls[0]["imb"] == 100
    assert len(pd.read_csv(tmp_path / "results.csv")) == 2
    assert sweep.main(["--imbs", "abc", "--runs-dir", str(tmp_path)]) == 2
    assert "--imbs 'abc' is not accepted" in capsys.readouterr().err
    assert sweep.main(["--param", "epoch=1", "--runs-dir", str(tmp_path)]) == 2
    assert sweep.main(["--launcher", "slurm", "--slurm", "gpus=2", "--runs-dir", str(tmp_path)]) == 2
    assert "SLURM option 'gpus' is not accepted" in capsys.readouterr().err


def test_command_line_slurm_flags_become_options():
    args = sweep.build_parser().parse_args(["--launcher", "slurm", "--partition", "gpu", "--gpus-per-run", "2",
                                            "--time-min", "60", "--no-requeue", "--slurm", "mem_gb=32"])
    assert sweep._slurm_arguments(args) == {"partition": "gpu", "gpus_per_run": 2, "time_min": 60, "requeue": False,
                                            "mem_gb": 32}


@pytest.mark.slow
def test_real_papermill_sweep_trains_four_runs_then_nothing(tmp_path):
    """2 methods x 1 imb x 2 seeds through papermill on the synthetic data (about a minute per run on 2 cores)."""
    base = {**BASE, "figures_dir": str(tmp_path / "figures")}
    first = sweep.run_sweep(["la", "ce"], [100], [0, 1], base_params=base, runs_dir=tmp_path / "runs",
                            launcher="papermill", kernel="python3", progress=False)
    runs = sorted(p for p in (tmp_path / "runs").iterdir() if p.is_dir())
    assert len(runs) == 4 and len(first.attrs["executed"]) == 4 and first.attrs["failed"] == []
    for run in runs:
        assert json.loads((run / "summary.json").read_text())["status"] == "completed"
        assert (tmp_path / "runs" / f"{run.name}.ipynb").is_file()
    assert len(pd.read_csv(tmp_path / "runs" / "results.csv")) == 4
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("*") if p.is_file() and p.suffix != ".csv"}
    second = sweep.run_sweep(["la", "ce"], [100], [0, 1], base_params=base, runs_dir=tmp_path / "runs",
                             launcher="papermill", kernel="python3", progress=False)
    assert second.attrs["executed"] == [] and len(second.attrs["skipped"]) == 4
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

