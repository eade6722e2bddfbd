"""Whether a run's progress bars are shown: to someone watching, yes; in a notebook executed headless, no.

``tqdm.auto`` draws ipywidgets bars inside any Jupyter kernel. A notebook executed headless
(papermill, ``jupyter nbconvert --execute``, nbclient) has no front end to draw them, so the saved
notebook and papermill's ``--log-output`` keep each bar's first text frame (``training: 0%| 0/2``)
although the run completed. Such a kernel is recognised by the request it is running: nbclient sends
every cell with ``allow_stdin`` false, as it cannot answer ``input()``, which JupyterLab, Notebook
and VS Code never do. There the bars are left out; the run's header and epoch lines, plain text, stay.
"""

from __future__ import annotations

import sys


def headless_kernel() -> bool:
    """True inside a Jupyter kernel running a cell for a client that takes no input (papermill, nbclient)."""
    ipython = sys.modules.get("IPython")  # never imported by a run outside IPython: not a kernel
    shell = ipython.get_ipython() if ipython is not None else None
    kernel = getattr(shell, "kernel", None)
    if kernel is None or not hasattr(kernel, "get_parent"):
        return False  # plain Python, IPython in a terminal, or a kernel without the request at hand
    request = kernel.get_parent("shell") or {}
    return (request.get("content") or {}).get("allow_stdin") is False


def show_bars(progress: bool, is_main: bool = True) -> bool:
    """True when progress bars are drawn: ``progress`` asked for, this is rank 0, and a front end can draw them."""
    return bool(progress) and is_main and not headless_kernel()


__all__ = ["headless_kernel", "show_bars"]
