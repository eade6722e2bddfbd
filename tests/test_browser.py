"""The notebooks in a real browser: JupyterLab 4 on a free local port, headless Chromium driven by Playwright.

The CutMix explorer is run cell by cell in the browser; then the λ slider is dragged and the
"random λ and box" button clicked, and each time the mixed image and the λ / ρ·ω line must be
redrawn by the kernel. The train notebook (synthetic, one tiny epoch) must render its figures.
No cell may show an error. Screenshots are written to tests/artifacts/browser/ (git-ignored).

Chromium is the system's (Debian's ``chromium`` package, or ``CCMIX_CHROMIUM``), launched by
path: Playwright's own browser download is not used. Without Playwright or a Chromium binary
the tests skip and say which is missing.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "browser"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
SERVER_START_S = 90
KERNEL_START_MS = 120_000
RUN_ALL_S = 300  # every cell of a notebook, on 2 busy CPU cores
REDRAW_MS = 60_000  # one widget change: the kernel recomputes the labels and redraws the figure
# JupyterLab settings for the test server: every cell rendered (no windowing), no autosave, no news toast.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
}
# The state of the open notebook, read from JupyterLab's own models (exposed with --expose-app-in-browser).
NOTEBOOK_STATE_JS = """(path) => {
  if (!window.jupyterapp) { return null; }
  const panel = Array.from(window.jupyterapp.shell.widgets('main')).find(w => w.context && w.context.path === path);
  if (!panel || !panel.content || !panel.content.model || !panel.sessionContext) { return null; }
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  const state = {status: kernel ? kernel.status : 'none', counts: [], errors: [], images: 0};
  for (const cell of panel.content.model.cells) {
    if (cell.type !== 'code') { continue; }
    state.counts.push(cell.executionCount);
    for (let i = 0; i < cell.outputs.length; i++) {
      const output = cell.outputs.get(i);
      if (output.type === 'error') { state.errors.push(output.toJSON().ename + ': ' + output.toJSON().evalue); }
      if (output.data && output.data['image/png']) { state.images += 1; }
    }
  }
  return state;
}"""


def find_chromium() -> str | None:
    """Return the path of a Chromium binary: $CCMIX_CHROMIUM, else the first of CHROMIUM_NAMES on PATH."""
    configured = os.environ.get("CCMIX_CHROMIUM")
    if configured:
        return configured if Path(configured).is_file() else None
    return next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def parameterized_copy(name: str, folder: Path, parameters: dict) -> Path:
    """Return a copy of notebooks/<name> in ``folder`` with ``parameters`` injected as papermill would."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = parameterize_notebook(load_notebook_node(str(NOTEBOOKS / name)), parameters)
    path = folder / name
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def chromium_path() -> str:
    pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install -e '.[test]')")
    path = find_chromium()
    if path is None:
        pytest.skip("no Chromium binary: install Debian's chromium package (apt-get install chromium) "
                    "or set CCMIX_CHROMIUM to a Chromium or Chrome executable")
    return path


@pytest.fixture(scope="module")
def lab(chromium_path, tmp_path_factory):
    """Yield (base URL, token, notebook folder) of a JupyterLab server started for these tests, then stop it."""
    root = tmp_path_factory.mktemp("lab")
    notebooks, settings = root / "notebooks", root / "settings"
    notebooks.mkdir()
    for name, values in LAB_SETTINGS.items():
        plugin, file_name = name.rsplit("/", 1)
        (settings / plugin).mkdir(parents=True, exist_ok=True)
        (settings / plugin / file_name).write_text(json.dumps(values))
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(root / "runtime"), JUPYTER_CONFIG_DIR=str(root / "config"),
               PYTHONUNBUFFERED="1")
    log = open(root / "lab.log", "w")  # noqa: SIM115 - closed after the server stops
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--expose-app-in-browser", "--allow-root",
         "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={notebooks}",
         f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={root / 'workspaces'}"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=notebooks,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not start on port {port}; its log:\n{(root / 'lab.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield base, token, notebooks
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@pytest.fixture(scope="module")
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"\nbrowser screenshots: {ARTIFACTS}")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_path, headless=True,
                                              args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield chromium
        finally:
            chromium.close()


def open_and_run_all(browser, lab, name: str, parameters: dict, before_run: str | None = None):
    """Open a parameterized copy of notebooks/<name> in JupyterLab, run every cell, return (page, state);
    ``before_run``: JavaScript evaluated in the page once the kernel is idle, before the cells run."""
    base, token, folder = lab
    parameterized_copy(name, folder, parameters)
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    # a workspace of its own, reset: only this notebook is open
    page.goto(f"{base}/lab/workspaces/{Path(name).stem}/tree/{name}?token={token}&reset")
    page.wait_for_function(f"(path) => {{ const s = ({NOTEBOOK_STATE_JS})(path); return s && s.status === 'idle'; }}",
                           arg=name, timeout=KERNEL_START_MS)
    if before_run is not None:
        page.evaluate(before_run)
    page.evaluate("""async (path) => {
      const app = window.jupyterapp;
      const panel = Array.from(app.shell.widgets('main')).find(w => w.context && w.context.path === path);
      app.shell.activateById(panel.id);
      await app.commands.execute('notebook:run-all-cells');
    }""", name)
    deadline = time.monotonic() + RUN_ALL_S
    while True:
        state = page.evaluate(NOTEBOOK_STATE_JS, name)
        finished = state["status"] == "idle" and all(count is not None for count in state["counts"])
        if finished or state["errors"] or time.monotonic() > deadline:
            break
        page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / f"{Path(name).stem}-run-all.png"), full_page=True)
    assert state["errors"] == [], f"{name}: a cell shows an error: {state['errors']}"
    assert finished, f"{name}: not every cell ran within {RUN_ALL_S} s (execution counts {state['counts']})"
    return page, state


def mixed_view(page) -> tuple[str, str]:
    """Return (the λ / ρ·ω line, the data URL of the mixed-image figure) the explorer shows now."""
    numbers = page.locator(".widget-html", has_text="ρ·ω").first.inner_text()
    image = page.locator(".widget-output img").first.get_attribute("src")
    return numbers, image


def wait_for_redraw(page, before: tuple[str, str]) -> tuple[str, str]:
    """Wait until both the numbers line and the figure differ from ``before``; return the new pair."""
    page.wait_for_function(
        """([numbers, image]) => {
          const html = Array.from(document.querySelectorAll('.widget-html')).find(e => e.innerText.includes('ρ·ω'));
          const img = document.querySelector('.widget-output img');
          return html && img && html.innerText !== numbers && img.getAttribute('src') !== image;
        }""",
        arg=list(before), timeout=REDRAW_MS,
    )
    return mixed_view(page)


def number(name: str, line: str) -> float:
    return float(re.search(rf"{name} = ([0-9.]+)", line).group(1))


def test_explorer_widgets_redraw_the_mixed_image_and_its_labels(browser, lab, tmp_path):
    page, state = open_and_run_all(browser, lab, "explore_cutmix.ipynb", {"figures_dir": str(tmp_path / "figures")})
    try:
        assert state["images"] >= 4  # the static figures: default view, omega 1, stream draw, gallery
        widget_area = page.locator(".widget-vbox").first
        widget_area.scroll_into_view_if_needed()
        before = mixed_view(page)
        assert before[1].startswith("data:image/png;base64,")

        handle = page.locator(".widget-slider", has_text="λ (target)").locator(".noUi-handle").first
        box = handle.bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.down()
        page.mouse.move(box["x"] - 60, box["y"] + box["height"] / 2, steps=8)
        page.mouse.up()
        after_slider = wait_for_redraw(page, before)
        widget_area.screenshot(path=str(ARTIFACTS / "explorer-after-slider.png"))
        assert number("λ", after_slider[0]) != number("λ", before[0])
        assert number("ρ·ω", after_slider[0]) != number("ρ·ω", before[0])

        page.get_by_role("button", name="random λ and box").click()
        after_button = wait_for_redraw(page, after_slider)
        widget_area.screenshot(path=str(ARTIFACTS / "explorer-after-draw-button.png"))
        assert number("λ", after_button[0]) != number("λ", after_slider[0])

        errors = page.locator(".widget-output [data-mime-type='application/vnd.jupyter.stderr']")
        assert errors.count() == 0, errors.first.inner_text()
        assert page.evaluate(NOTEBOOK_STATE_JS, "explore_cutmix.ipynb")["errors"] == []
    finally:
        page.close()


def test_train_notebook_renders_its_figures(browser, lab, tmp_path):
    parameters = {"dataset": "synthetic", "epochs": 1, "out_dir": str(tmp_path / "run"),
                  "figures_dir": str(tmp_path / "figures"),
                  "overrides": {"batch_size": 16, "num_workers": 0, "max_steps_per_epoch": 1}}
    page, state = open_and_run_all(browser, lab, "train.ipynb", parameters)
    try:
        assert state["images"] >= 3  # learning curves, many/medium/few, per-class accuracy
        figures = page.locator(".jp-OutputArea-output img")
        assert figures.count() >= 3
        for index in range(figures.count()):
            figure = figures.nth(index)
            figure.scroll_into_view_if_needed()
            assert figure.evaluate("img => img.complete && img.naturalWidth > 100 && img.naturalHeight > 100")
        figures.last.screenshot(path=str(ARTIFACTS / "train-last-figure.png"))
        assert page.locator(".jp-OutputArea-output", has_text="status completed").count() >= 1

        # re-run the learning-curves cell from the keyboard: it is redrawn from the run folder
        cell = page.locator(".jp-CodeCell", has_text="viz.learning_curves(record)")
        prompt = cell.locator(".jp-InputPrompt").first
        before = prompt.inner_text()
        cell.locator(".jp-InputArea-prompt").first.click()
        page.keyboard.press("Control+Enter")
        page.wait_for_function("([element, before]) => element.innerText !== before && !element.innerText.includes('*')",
                               arg=[prompt.element_handle(), before], timeout=REDRAW_MS)
        redrawn = cell.locator(".jp-OutputArea-output img").first
        redrawn.wait_for(timeout=REDRAW_MS)
        assert redrawn.evaluate("img => img.complete && img.naturalWidth > 100")
        redrawn.screenshot(path=str(ARTIFACTS / "train-learning-curves-rerun.png"))
        assert page.evaluate(NOTEBOOK_STATE_JS, "train.ipynb")["errors"] == []
    finally:
        page.close()


# Records every figure the live-curves cell shows, as the page changes.
WATCH_LIVE_CURVES_JS = """() => {
  window.liveSources = [];
  const look = () => {
    const cell = Array.from(document.querySelectorAll('.jp-CodeCell')).find(
      c => c.querySelector('.jp-InputArea') && c.querySelector('.jp-InputArea').innerText.includes('LiveCurves.of_run'));
    if (!cell) { return; }
    const image = cell.querySelector('.jp-OutputArea-output img');
    const source = image && image.getAttribute('src');
    if (source && window.liveSources[window.liveSources.length - 1] !== source) { window.liveSources.push(source); }
  };
  new MutationObserver(look).observe(document.body, {subtree: true, childList: true, attributes: true,
                                                     attributeFilter: ['src']});
}"""


def test_train_notebook_redraws_its_live_curves_after_each_epoch(browser, lab, tmp_path):
    # a few steps an epoch, so each epoch's figure stays on the page a while
    parameters = {"dataset": "synthetic", "epochs": 2, "out_dir": str(tmp_path / "run"),
                  "figures_dir": str(tmp_path / "figures"),
                  "overrides": {"batch_size": 16, "num_workers": 0, "max_steps_per_epoch": 4}}
    page, _ = open_and_run_all(browser, lab, "train.ipynb", parameters, before_run=WATCH_LIVE_CURVES_JS)
    try:
        sources = page.evaluate("window.liveSources")
        assert len(sources) == 2, f"the live figure was drawn {len(sources)} times for 2 epochs"
        assert sources[0] != sources[1] and all(s.startswith("data:image/png;base64,") for s in sources)
        cell = page.locator(".jp-CodeCell", has_text="LiveCurves.of_run")
        figure = cell.locator(".jp-OutputArea-output img")
        assert figure.count() == 1 and figure.first.get_attribute("src") == sources[1]  # the last epoch's stays
        assert figure.first.evaluate("img => img.complete && img.naturalWidth > 100 && img.naturalHeight > 100")
        figure.first.screenshot(path=str(ARTIFACTS / "train-live-curves.png"))
        bars = page.evaluate("""(path) => {
          const panel = Array.from(window.jupyterapp.shell.widgets('main')).find(w => w.context && w.context.path === path);
          const cell = Array.from(panel.content.model.cells).find(c => c.sharedModel.getSource().includes('LiveCurves.of_run'));
          let count = 0;
          for (let i = 0; i < cell.outputs.length; i++) {
            const data = cell.outputs.get(i).data;
            if (data && data['application/vnd.jupyter.widget-view+json']) { count += 1; }
          }
          return count;
        }""", "train.ipynb")
        assert bars >= 1  # interactively, the progress bars are drawn (the epochs' bar stays)
    finally:
        page.close()
