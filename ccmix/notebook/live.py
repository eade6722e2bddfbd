"""Live learning curves in a notebook: test top-1 (overall, many / medium / few) and the training loss,
redrawn after each epoch while the run trains.

A long-tailed run (Pan et al., "Enhanced Long-Tailed Recognition with Contrastive CutMix
Augmentation", IEEE TIP 2024) is judged by its few-shot classes as much as by its overall
top-1, so both are drawn as the epochs come. :class:`LiveCurves` is handed to
``ccmix.experiments.train_params.train`` (or ``ccmix.train.fit.fit``) as an ``on_epoch`` callable:
it shows one PNG in a display that each epoch replaces (IPython's ``display_id``). The last
epoch's figure stays in the cell's output, so a notebook executed headless (papermill) keeps it as
a static figure. The PNG goes without a text form, so papermill's ``--log-output`` logs no line for it.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterable

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ccmix.notebook.viz import GROUP_COLORS
from ccmix.train.run_folder import RunFolder

# (metrics.jsonl field, legend label, colour) of each panel's lines
TOP1_LINES = (("top1", "all classes", "black"), ("many", "many", GROUP_COLORS["many"]),
              ("medium", "medium", GROUP_COLORS["medium"]), ("few", "few", GROUP_COLORS["few"]))
LOSS_LINES = (("loss", "total", "C0"), ("loss_ce", "CE", "C2"), ("loss_bcl", "BCL", "C4"))
DPI = 80  # one PNG per epoch travels to the browser: small enough to be cheap, large enough to read


def live_figure(records: Iterable[dict], epochs: int) -> Figure:
    """Return the test top-1 (%) and training-loss curves of metrics.jsonl ``records`` (epoch 1-based) over an
    x axis of the run's ``epochs``; epochs without a value (not evaluated, an empty group) are skipped."""
    records = sorted(records, key=lambda record: record["epoch"])
    fig = Figure(figsize=(11, 3.6), dpi=DPI, layout="constrained")
    ax_top1, ax_loss = fig.subplots(1, 2)
    for ax, lines in ((ax_top1, TOP1_LINES), (ax_loss, LOSS_LINES)):
        for column, label, color in lines:
            points = [(r["epoch"], r[column]) for r in records if r.get(column) is not None]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o" if len(points) <= 30 else None, markersize=3, color=color, label=label)
        ax.set_xlim(0.5, max(epochs, 1) + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.lines:
            ax.legend(fontsize="small", loc="best")
    done = records[-1]["epoch"] if records else 0
    ax_top1.set(title=f"test top-1, epoch {done}/{epochs}", xlabel="epoch", ylabel="top-1 (%)")
    ax_loss.set(title="training loss", xlabel="epoch", ylabel="loss")
    return fig


def figure_png(fig: Figure) -> bytes:
    """Return ``fig`` rendered as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


class LiveCurves:
    """The curves of one run, redrawn in the notebook after each epoch: ``train(run, on_epoch=[curves.update])``.

    ``history``: records the run folder holds already (a resumed run), drawn with the new ones.
    Outside IPython nothing is displayed; :meth:`figure` still returns the curves.
    """

    def __init__(self, epochs: int, history: Iterable[dict] = ()):
        self.epochs = epochs
        self.records: dict[int, dict] = {record["epoch"]: record for record in history}
        self.redraws = 0
        self._handle = None

    @classmethod
    def of_run(cls, run_dir: str | os.PathLike, epochs: int) -> LiveCurves:
        """Return the curves of the run folder ``run_dir``, starting from the epochs its metrics.jsonl holds."""
        return cls(epochs, history=RunFolder(run_dir, writer=False).read_metrics())

    def figure(self) -> Figure:
        """Return the curves of the epochs recorded so far."""
        return live_figure(self.records.values(), self.epochs)

    def update(self, record: dict) -> None:
        """Add one epoch's metrics.jsonl record and redraw the figure in place."""
        self.records[record["epoch"]] = dict(record)
        ipython = sys.modules.get("IPython")
        if ipython is None or ipython.get_ipython() is None:
            return
        from IPython.display import display

        bundle = {"image/png": figure_png(self.figure())}
        if self._handle is None:
            self._handle = display(bundle, raw=True, display_id=True)
        else:
            self._handle.update(bundle, raw=True)
        self.redraws += 1


__all__ = ["LiveCurves", "figure_png", "live_figure"]
