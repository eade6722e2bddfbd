"""One trainer per run folder: an operating-system lock on ``<run folder>/.ccmix.lock``.

A training run of Contrastive CutMix (Pan et al., "Enhanced Long-Tailed Recognition
with Contrastive CutMix Augmentation", IEEE TIP 2024; see ``docs/method.md``) owns
its run folder while it trains: it takes an exclusive ``flock`` on the lock file
before it touches anything else in the folder, and writes its pid, host and start
time into it. A second trainer on the same folder is refused with a sentence naming
the holder.

The lock belongs to the open file, not to the file's existence: the kernel releases
it when the holder exits, however it exits (``kill -9`` included), so a lock file left
behind by a dead process is simply taken over. The file itself is never deleted
(deleting it would let two processes lock two different files of the same name).
On network filesystems ``flock`` works where the filesystem supports it (Linux NFSv4,
Lustre and GPFS with their usual mount options).
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from pathlib import Path

from ccmix.config import ConfigError
from ccmix.errors import ShownAsSentence

LOCK_NAME = ".ccmix.lock"

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


class RunFolderBusy(ShownAsSentence, ConfigError):
    """Another live process holds the run folder; the message names it."""


def _try_lock(descriptor: int) -> bool:
    """Return True when the exclusive lock on ``descriptor`` was taken, False when another process holds it."""
    if fcntl is not None:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as error:  # ENOLCK and friends: a filesystem without locks
            warnings.warn(f"the run folder's filesystem does not support file locks ({error.strerror}); "
                          "nothing stops a second trainer from writing into it", UserWarning, stacklevel=3)
        return True
    import msvcrt

    try:
        msvcrt.locking(descriptor, msvcrt.LK_NBLCK, 1)
    except OSError:
        return False
    return True


def _unlock(descriptor: int) -> None:
    if fcntl is not None:
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        return
    import msvcrt

    os.lseek(descriptor, 0, os.SEEK_SET)
    msvcrt.locking(descriptor, msvcrt.LK_UNLCK, 1)


def read_holder(path: str | os.PathLike) -> dict:
    """Return what the lock file at ``path`` says about its holder (pid, host, started, command), {} if unreadable."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.loads(handle.read() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe_holder(holder: dict) -> str:
    """Return a phrase such as ``process 1234 on host node7 (since 2026-01-02 10:00:00)``."""
    if not holder.get("pid"):
        return "another process"
    since = f" (since {holder['started']})" if holder.get("started") else ""
    return f"process {holder['pid']} on host {holder.get('host', '?')}{since}"


class RunFolderLock:
    """The exclusive lock of one run folder; ``acquire()`` takes it, ``release()`` (or exiting ``with``) frees it."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._descriptor: int | None = None

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._descriptor is not None

    def acquire(self) -> RunFolderLock:
        """Return self once the lock is held; RunFolderBusy naming the holder when another live process has it."""
        if self._descriptor is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        if not _try_lock(descriptor):
            os.close(descriptor)
            holder = read_holder(self.path)
            if not holder:  # the holder has just taken the lock and not written its name yet
                time.sleep(0.2)
                holder = read_holder(self.path)
            raise RunFolderBusy(
                f"run folder {str(self.folder)!r} is in use by {describe_holder(holder)}, which is training into "
                "it; wait for it to finish (re-running the same command then resumes or reports the result), "
                "or use another --out"
            )
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n"
        os.ftruncate(descriptor, 0)
        os.lseek(descriptor, 0, os.SEEK_SET)
        os.write(descriptor, record.encode())
        os.fsync(descriptor)
        self._descriptor = descriptor
        return self

    def release(self) -> None:
        """Free the lock (the file stays: see the module docstring)."""
        if self._descriptor is None:
            return
        descriptor, self._descriptor = self._descriptor, None
        try:
            _unlock(descriptor)
        finally:
            os.close(descriptor)

    def __enter__(self) -> RunFolderLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


__all__ = ["LOCK_NAME", "RunFolderBusy", "RunFolderLock", "read_holder", "describe_holder"]
