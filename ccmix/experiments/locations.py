"""Where things are: the repository root, its notebooks folder, and relative paths made absolute.

The notebooks and sweeps of this workbench for Contrastive CutMix (Pan et al.,
"Enhanced Long-Tailed Recognition with Contrastive CutMix Augmentation", IEEE TIP
2024) take ``data_root`` and ``out_dir`` from the repository root and figure and run
folders from the notebooks folder, whatever directory a kernel was started in. Every
name here is also importable from :mod:`ccmix.experiments.notebook_params`.
"""

from __future__ import annotations

import os
from pathlib import Path


def find_repo_root(start: str | os.PathLike | None = None) -> Path:
    """Return the repository root: the nearest folder at or above ``start`` (default: the working dir) holding
    ``pyproject.toml`` and ``ccmix/``, else the checkout the imported package lives in, else ``start`` itself."""
    here = Path(start if start is not None else os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if _is_repo_root(folder):
            return folder
    package_checkout = Path(__file__).resolve().parents[2]
    if _is_repo_root(package_checkout):
        return package_checkout
    return here


def _is_repo_root(folder: Path) -> bool:
    return (folder / "pyproject.toml").is_file() and (folder / "ccmix" / "__init__.py").is_file()


def notebooks_dir(repo_root: str | os.PathLike | None = None) -> Path:
    """Return the folder the notebooks live in (``<repo root>/notebooks``)."""
    return Path(repo_root) / "notebooks" if repo_root is not None else find_repo_root() / "notebooks"


def resolve_path(path: str | os.PathLike, base: str | os.PathLike) -> Path:
    """Return ``path`` made absolute: unchanged when absolute, else taken from ``base``; ``~`` is expanded."""
    expanded = Path(os.path.expanduser(os.fspath(path)))
    return expanded if expanded.is_absolute() else (Path(base) / expanded).resolve()
