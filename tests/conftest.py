"""Shared pytest fixtures.

The shared CIFAR-10 JPEG tree (``shared/data/cifar10-jpg.tar.gz`` beside the repository)
is extracted once into the git-ignored ``data/cifar10-jpg`` folder of the repository,
guarded by a lock file and a marker, and reused by later test runs.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
CIFAR10_JPG_ARCHIVE = SHARED_DIR / "data" / "cifar10-jpg.tar.gz"
CIFAR10_JPG_CACHE = REPO_ROOT / "data" / "cifar10-jpg"


def _archive_stamp(archive: Path) -> str:
    stat = archive.stat()
    return f"{archive.name} {stat.st_size} {int(stat.st_mtime)}"


def extract_once(archive: Path, target: Path) -> Path:
    """Return ``target`` holding the extracted ``archive``; extracts only when the marker is missing or stale."""
    marker = target / ".extracted"
    stamp = _archive_stamp(archive)
    if marker.is_file() and marker.read_text() == stamp:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{target.name}.lock"
    with open(lock_path, "w") as lock:
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)  # another test process may be extracting the same archive
        except ImportError:  # no fcntl (Windows): extraction is still atomic through the rename below
            pass
        if marker.is_file() and marker.read_text() == stamp:
            return target
        partial = target.parent / f".{target.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)
        partial.mkdir()
        tar = shutil.which("tar")
        if tar:  # several times faster than the tarfile module on 60,000 small files
            subprocess.run([tar, "-xzf", str(archive), "-C", str(partial)], check=True)
        else:
            with tarfile.open(archive) as bundle:
                bundle.extractall(partial, filter="data")
        partial.rename(target)
        marker.write_text(stamp)
    return target


@pytest.fixture(scope="session")
def cifar10_jpg_root() -> Path:
    """Return the folder holding the shared CIFAR-10 JPEG tree (train/<class>/, test/<class>/); skip when absent."""
    if not CIFAR10_JPG_ARCHIVE.is_file():
        pytest.skip(f"shared CIFAR-10 JPEG archive not found beside the repository ({CIFAR10_JPG_ARCHIVE.name})")
    return extract_once(CIFAR10_JPG_ARCHIVE, CIFAR10_JPG_CACHE)


@pytest.fixture
def started() -> list[subprocess.Popen]:
    """Return a list for the test's background processes; any still running at teardown is killed."""
    processes: list[subprocess.Popen] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=60)


@pytest.fixture
def one_torch_thread():
    """Run the test with one torch thread, then restore the count: tiny models gain nothing from more, lose much
    when the two cores are shared with other processes, and their results then do not depend on the count."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
