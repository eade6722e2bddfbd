"""The notebooks: committed clean, parameter cells in sync with ccmix.experiments.notebook_params, and each one executed
headless under papermill (kernel python3) on the synthetic dataset with tiny settings.

The kernel tests train one-step runs, so the file takes a few minutes on 2 CPU cores; they share one
trained run folder (module fixtures)."""

from __future__ import annotations

import ast
import json
import statistics
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from ccmix.experiments.notebook_params import NOTEBOOK_PARAMETERS
from ccmix.experiments.train_params import resolve_train_parameters

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
NOTEBOOK_NAMES = {"train": "train.ipynb", "explore_cutmix": "explore_cutmix.ipynb", "analyze": "analyze.ipynb",
                  "sweep": "sweep.ipynb", "ablate": "ablate.ipynb"}
TINY_OVERRIDES = {"batch_size": 16, "num_workers": 0, "max_steps_per_epoch": 1}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CELL_TIMEOUT_S = 300  # a cell that hangs fails the test with its name instead of stalling the suite


def code_cells(nb):
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def execute(name: str, output: Path, parameters: dict, cwd: Path = NOTEBOOKS):
    """Run a notebook under papermill with the python3 kernel; return the executed notebook."""
    import papermill

    papermill.execute_notebook(str(NOTEBOOKS / name), str(output), parameters=parameters, kernel_name="python3",
                               cwd=str(cwd), progress_bar=False, execution_timeout=CELL_TIMEOUT_S)
    return nbformat.read(output, as_version=4)


def error_outputs(nb) -> list:
    return [o for cell in code_cells(nb) for o in cell.get("outputs", []) if o.output_type == "error"]


def text_of(nb) -> str:
    parts = []
    for cell in code_cells(nb):
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                parts.append(output.text)
            elif "data" in output and "text/plain" in output.data:
                parts.append(output.data["text/plain"])
    return "\n".join(parts)


def image_count(nb) -> int:
    return sum("image/png" in o.get("data", {}) for cell in code_cells(nb) for o in cell.get("outputs", []))


def assert_figures(folder: Path, names: list[str]) -> None:
    for name in names:
        png, svg = folder / f"{name}.png", folder / f"{name}.svg"
        assert png.read_bytes().startswith(PNG_MAGIC), png
        assert b"<svg" in svg.read_bytes()[:2000], svg


# --------------------------------------------------------------------------- static checks (no kernel)


@pytest.mark.parametrize("notebook", sorted(NOTEBOOK_NAMES))
def test_notebook_is_committed_clean_with_its_parameters_cell(notebook):
    nb = nbformat.read(NOTEBOOKS / NOTEBOOK_NAMES[notebook], as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    cells = code_cells(nb)
    assert all(cell.execution_count is None and cell.outputs == [] for cell in cells)
    first, second = cells[0], cells[1]
    assert first.metadata.get("tags") == ["parameters"]
    assigned = {}
    for node in ast.parse(first.source).body:
        assert isinstance(node, ast.Assign), "the parameters cell holds assignments only"
        assigned[node.targets[0].id] = ast.literal_eval(node.value)
    assert assigned == NOTEBOOK_PARAMETERS[notebook]
    assert f'check_notebook_parameters(globals(), notebook="{notebook}")' in second.source


@pytest.mark.integration
def test_notebooks_pass_ruff():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "notebooks"], cwd=REPO, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- executed notebooks


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """train.ipynb run headless from the repository root on synthetic data, one epoch of one step."""
    folder = tmp_path_factory.mktemp("train")
    parameters = {"dataset": "synthetic", "epochs": 1, "overrides": TINY_OVERRIDES, "out_dir": str(folder / "run"),
                  "figures_dir": str(folder / "figures")}
    nb = execute("train.ipynb", folder / "train.ipynb", parameters, cwd=REPO)
    return {"nb": nb, "run": folder / "run", "figures": folder / "figures", "parameters": parameters}


@pytest.fixture(scope="module")
def second_seed(trained, tmp_path_factory):
    """The same setting as ``trained`` with seed 1, trained directly with ccmix.train.fit.fit."""
    from ccmix.train.fit import fit

    params = {k: v for k, v in trained["parameters"].items() if k not in ("out_dir", "figures_dir")}
    run = resolve_train_parameters(**params, seed=1)
    out = tmp_path_factory.mktemp("seed1") / "run_seed1"
    fit(run.config.replace(progress=False), out)
    return out


@pytest.mark.integration
def test_train_notebook_trains_and_writes_its_files(trained):
    nb, run, figures = trained["nb"], trained["run"], trained["figures"]
    assert error_outputs(nb) == []
    for name in ("config.json", "metrics.jsonl", "per_class.csv", "summary.json", "predictions.npz", "last.pt"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_completed"] == 1
    config = json.loads((run / "config.json").read_text())
    assert (config["dataset"], config["method"], config["epochs"], config["topk"]) == ("synthetic", "concutmix", 1, 3)
    assert_figures(figures, ["learning_curves", "shot_bars", "per_class_vs_count"])
    assert image_count(nb) >= 3
    text = text_of(nb)
    assert f"final top-1 {summary['final']['top1']:.2f}" in text
    assert "selected on the test set, optimistic" in text
    assert "no published preset for synthetic at imb 100; starting from cifar10_imb100" in text


@pytest.mark.integration
@pytest.mark.parametrize("parameters, ename, sentence", [
    ({"epoch": 5}, "ConfigError",
     "parameter 'epoch' is not a parameter of the train notebook (did you mean epochs?); accepted: preset, "),
    ({"dataset": "synthetic", "imb": "abc"}, "ConfigError",
     "parameter imb='abc' is not accepted; imb is N_max / N_min and must be a number >= 1"),
])
def test_bad_train_parameters_stop_in_the_second_cell(tmp_path, parameters, ename, sentence):
    import papermill

    output = tmp_path / "bad.ipynb"
    with pytest.raises(papermill.PapermillExecutionError) as error:
        execute("train.ipynb", output, {**parameters, "out_dir": str(tmp_path / "run")})
    assert error.value.ename == ename
    assert error.value.evalue.startswith(sentence)
    nb = nbformat.read(output, as_version=4)
    failing = [cell for cell in code_cells(nb) if any(o.output_type == "error" for o in cell.outputs)]
    assert [cell.id for cell in failing] == ["check-parameters"]  # the second code cell (papermill's comes between)
    failed = failing[0]
    later = code_cells(nb)[code_cells(nb).index(failed) + 1:]
    assert later and all(cell.execution_count is None for cell in later)
    assert not (tmp_path / "run").exists()


@pytest.mark.integration
def test_explorer_notebook_with_the_trained_checkpoint(trained, tmp_path):
    checkpoint = trained["run"] / "last.pt"
    nb = execute("explore_cutmix.ipynb", tmp_path / "explore.ipynb",
                 {"checkpoint": str(checkpoint), "figures_dir": str(tmp_path / "figures")})
    assert error_outputs(nb) == []
    assert_figures(tmp_path / "figures", ["explorer_default", "explorer_omega1", "explorer_stream_draw",
                                          "explorer_gallery"])
    assert (tmp_path / "figures" / "explorer.png").read_bytes().startswith(PNG_MAGIC)  # the live view
    text = text_of(nb)
    assert f"semantic labels come from the model in {checkpoint}" in text
    assert "ρ·ω = " in text
    assert image_count(nb) >= 4
    widget_views = [o for cell in code_cells(nb) for o in cell.outputs
                    if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widget_views  # the explorer's widget tree was displayed


@pytest.mark.integration
def test_analyze_notebook_on_two_runs(trained, second_seed, tmp_path):
    import shutil

    runs = [str(trained["run"]), str(second_seed)]
    # a run that diverged: its folder keeps last.pt of the last good epoch and a failed summary
    diverged = tmp_path / "diverged"
    shutil.copytree(second_seed, diverged)
    summary = json.loads((diverged / "summary.json").read_text())
    summary.update(status="failed", error="the loss became NaN at epoch 1, step 1")
    (diverged / "summary.json").write_text(json.dumps(summary))
    nb = execute("analyze.ipynb", tmp_path / "analyze.ipynb",
                 {"run_dirs": [runs[0], str(diverged), runs[1]], "figures_dir": str(tmp_path / "figures"),
                  "tsne_max_items": 100})
    assert error_outputs(nb) == []
    assert "skipped: run 'diverged' is failed: the loss became NaN at epoch 1, step 1" in text_of(nb)
    assert_figures(tmp_path / "figures", [
        "analyze_per_class_vs_count", "analyze_shot_bars", "analyze_learning_curves", "analyze_confused_pairs",
        f"analyze_tsne_{trained['run'].name}", f"analyze_tsne_{second_seed.name}", "analyze_reproduction",
    ])
    assert not (tmp_path / "figures" / "analyze_tsne_diverged.png").exists()
    finals = [json.loads((Path(r) / "summary.json").read_text())["final"]["top1"] for r in runs]
    expected = f"{statistics.mean(finals):.2f} ± {statistics.stdev(finals):.2f}"
    assert expected in text_of(nb)  # the two seeds of one setting, as mean ± std


@pytest.mark.integration
def test_sweep_notebook_skips_completed_runs_and_tabulates(tmp_path):
    runs = tmp_path / "runs"
    base = {"dataset": "synthetic"}
    for method, top1 in (("la", 30.0), ("concutmix", 36.0)):
        run = resolve_train_parameters(**base, method=method, imb=100, seed=0)
        folder = runs / run.run_name
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps(dict(run.config.to_dict(), preset=None)))
        result = {"epoch": 1, "top1": top1, "many": None, "medium": top1, "few": top1}
        (folder / "summary.json").write_text(json.dumps({"status": "completed", "final": result, "best": result,
                                                          "epochs_completed": 1, "epochs": 1}))
    nb = execute("sweep.ipynb", tmp_path / "sweep.ipynb", {"methods": ["la", "concutmix"], "imbs": [100], "seeds": [0],
                                                           "base_params": base, "runs_dir": str(runs)})
    assert error_outputs(nb) == []
    text = text_of(nb)
    assert "0 trained, 2 skipped, 0 failed" in text
    assert (runs / "results.csv").read_text().count("\n") == 3  # header and two runs
    assert "36.00" in text and "30.00" in text


# --------------------------------------------------------------------------- headless, as `make train` runs it


def papermill_train(output: Path, *arguments: str) -> subprocess.CompletedProcess:
    """Run train.ipynb with the papermill command line as `make train` does (--log-output); return the process."""
    command = [sys.executable, "-m", "papermill", "--kernel", "python3", "--log-output", "--no-progress-bar",
               str(NOTEBOOKS / "train.ipynb"), str(output), *arguments]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=2 * CELL_TIMEOUT_S)


@pytest.mark.integration
def test_ablate_notebook_trains_a_grid_and_draws_its_intervals(tmp_path):
    """One field x two values x two seeds, one step each, trained by the local launcher two at a time."""
    runs, figures = tmp_path / "runs", tmp_path / "figures"
    nb = execute("ablate.ipynb", tmp_path / "ablate.ipynb", {
        "grid": {"omega": [0.0, 0.1]}, "seeds": [0, 1], "dataset": "synthetic", "epochs": 1, "jobs": 2,
        "overrides": {**TINY_OVERRIDES, "progress": False}, "baseline": {"omega": 0}, "runs_dir": str(runs),
        "figures_dir": str(figures)})
    assert error_outputs(nb) == []
    summaries = [json.loads(p.read_text()) for p in runs.glob("*/summary.json")]
    assert len(summaries) == 4 and all(s["status"] == "completed" for s in summaries)
    text = text_of(nb)
    assert "difference to omega=0.0" in text and "seed noise" in text
    assert_figures(figures, ["ablation_ci"])
    recorded = any('"semantic_' in p.read_text() for p in runs.glob("*/metrics.jsonl"))
    if recorded:  # runs that record the semantic-label statistics get their figure, others say they have none
        assert_figures(figures, ["ablation_semantic"])
    else:
        assert "records semantic_* statistics" in text
    assert image_count(nb) == 1 + recorded


@pytest.mark.integration
def test_headless_run_logs_each_epoch_once_without_bars_and_keeps_the_last_live_figure(tmp_path):
    from ccmix.notebook.live import figure_png, live_figure

    run = tmp_path / "run"
    result = papermill_train(tmp_path / "train.ipynb", "-p", "dataset", "synthetic", "-p", "epochs", "2",
                             "-p", "out_dir", str(run), "-p", "figures_dir", str(tmp_path / "figures"),
                             "-y", f"overrides: {json.dumps(TINY_OVERRIDES)}")
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    nb = nbformat.read(tmp_path / "train.ipynb", as_version=4)
    for text in (log, text_of(nb)):
        epoch_lines = [line for line in text.splitlines() if line.startswith("epoch ")]
        assert [line.split("  ")[0] for line in epoch_lines] == ["epoch 1/2", "epoch 2/2"]
        assert "0%|" not in text and "it/s]" not in text  # no progress bar frozen at its first frame
        assert text.count("final top-1 ") == 1
    widget_views = [o for cell in code_cells(nb) for o in cell.outputs
                    if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widget_views == []
    training = next(cell for cell in code_cells(nb) if "LiveCurves" in cell.source)
    figures = [o.data["image/png"] for o in training.outputs if "image/png" in o.get("data", {})]
    assert len(figures) == 1  # one display, replaced after each epoch
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    import base64

    assert base64.b64decode(figures[0]) == figure_png(live_figure(records, 2))  # the curves after the last epoch


@pytest.mark.integration
def test_headless_run_with_a_bad_parameter_ends_with_its_sentence_alone(tmp_path):
    sentence = "parameter imb=-5 is not accepted; imb is N_max / N_min and must be a number >= 1"
    result = papermill_train(tmp_path / "bad.ipynb", "-p", "dataset", "synthetic", "-p", "imb", "-5",
                             "-p", "out_dir", str(tmp_path / "run"))
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert log.count(sentence) == 1, log[-3000:]
    assert str(REPO / "ccmix") not in log and "train_params.py" not in log  # no traceback through the package
    nb = nbformat.read(tmp_path / "bad.ipynb", as_version=4)
    (error,) = error_outputs(nb)
    assert len(error.traceback) == 1 and error.traceback[0].startswith(f"error: {sentence}")
    assert not (tmp_path / "run").exists()
