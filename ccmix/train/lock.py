"""One trainer per run folder: an operating-system lock on ``<run folder>/.ccmix.lock``.

A training run of Contrastive CutMix (Pan et al., "Enhanced Long-Tailed Recognition
with Contrastive CutMix Augmentation", IEEE TIP 2024; see ``docs/method.md``) owns
its run folder while it trains: it takes an exclusive lock on the lock file before it
touches anything else in the folder, and writes its pid, host, start time and command
into it through its own descriptor. A second trainer on the same folder is refused
with a sentence naming the holder.

The lock is a POSIX record lock (``fcntl.lockf``), chosen because it belongs to the
process alone: a forked child (a DataLoader worker) does not inherit it, and the kernel
releases it the moment the holder dies, however it dies (``kill -9`` included), even
while orphaned workers still hold copies of the descriptor. (``flock`` belongs to the
open file description that fork shares, so such workers kept a killed trainer's folder
locked for seconds.) Its one trap: a process drops its POSIX locks on a file when it
closes *any* descriptor of that file. So nothing in the holding process opens the lock
file: the locks this process holds are kept in a registry, and every reader here
(:func:`live_holder`) answers from it. Readers in other processes
learn whether a run is alive without taking the lock (``F_GETLK`` reports a conflicting
lock and its owner's pid), so a reader never makes a starting trainer be refused.

The file itself is never deleted (deleting it would let two processes lock two different
files of the same name), so a lock file left behind by a dead process is simply taken
over. POSIX locks work on network filesystems that support locking (NFS through its lock
manager, Lustre and GPFS with their usual mount options); where a filesystem has none
the run trains with a warning, and readers judge liveness by the recorded pid instead.
Without ``fcntl`` (Windows) a byte-range ``msvcrt`` lock stands in, and a reader tests
it by taking and at once freeing it.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import socket
import struct
import sys
import threading
import time
import warnings
from pathlib import Path

from ccmix.config.rules import ConfigError
from ccmix.errors import ShownAsSentence
from ccmix.io import process_alive

LOCK_NAME = ".ccmix.lock"

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

# struct flock as the C library lays it out (off_t 64-bit: Python is built with large-file support)
if sys.platform.startswith(("darwin", "freebsd", "openbsd", "netbsd", "dragonfly")):
    _FLOCK_FORMAT, _FLOCK_FIELDS = "qqihh", ("start", "len", "pid", "type", "whence")
else:  # Linux and the other System V layouts
    _FLOCK_FORMAT, _FLOCK_FIELDS = "hhqqi", ("type", "whence", "start", "len", "pid")
_RECORD_BYTES = 65536  # far more than a holder record takes


class RunFolderBusy(ShownAsSentence, ConfigError):
    """Another live process holds the run folder; the message names it."""


# --------------------------------------------------------------------------- operating-system primitives


def _take(descriptor: int) -> bool:
    """Return True when the exclusive lock on ``descriptor``'s file was taken, False when another process has it."""
    if fcntl is not None:
        try:
            fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the whole file, however long it grows
        except OSError as error:
            if error.errno in (errno.EACCES, errno.EAGAIN):
                return False
            # ENOLCK and friends: a filesystem without locks
            warnings.warn(f"the run folder's filesystem does not support file locks ({error.strerror}); "
                          "nothing stops a second trainer from writing into it", UserWarning, stacklevel=4)
        return True
    import msvcrt

    try:
        os.lseek(descriptor, 0, os.SEEK_SET)
        msvcrt.locking(descriptor, msvcrt.LK_NBLCK, 1)
    except OSError:
        return False
    return True


def _free(descriptor: int) -> None:
    if fcntl is not None:
        fcntl.lockf(descriptor, fcntl.LOCK_UN)
        return
    import msvcrt

    os.lseek(descriptor, 0, os.SEEK_SET)
    msvcrt.locking(descriptor, msvcrt.LK_UNLCK, 1)


def _owner(descriptor: int) -> int | None:
    """Return the pid of the process locking ``descriptor``'s file (0 when the system does not say), None when
    no process does; takes no lock (OSError where the filesystem cannot tell)."""
    if fcntl is None:  # msvcrt has no query: take and at once free the lock
        if not _take(descriptor):
            return 0
        _free(descriptor)
        return None
    query = dict(type=fcntl.F_WRLCK, whence=os.SEEK_SET, start=0, len=0, pid=0)
    packed = struct.pack(_FLOCK_FORMAT, *(query[name] for name in _FLOCK_FIELDS))
    answer = dict(zip(_FLOCK_FIELDS, struct.unpack(_FLOCK_FORMAT, fcntl.fcntl(descriptor, fcntl.F_GETLK, packed))))
    return None if answer["type"] == fcntl.F_UNLCK else max(int(answer["pid"]), 0)


def _read_record(descriptor: int) -> dict:
    """Return the holder record stored in the lock file open as ``descriptor``, {} when empty or unreadable."""
    try:
        os.lseek(descriptor, 0, os.SEEK_SET)
        data = json.loads(os.read(descriptor, _RECORD_BYTES).decode("utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_record(descriptor: int, record: dict) -> None:
    os.ftruncate(descriptor, 0)
    os.lseek(descriptor, 0, os.SEEK_SET)
    os.write(descriptor, (json.dumps(record) + "\n").encode())
    os.fsync(descriptor)


def _this_host() -> str:
    return socket.gethostname()


# --------------------------------------------------------------------------- the locks this process holds

_held: dict[tuple[int, int], RunFolderLock] = {}  # (device, inode) of a lock file -> its lock held here
_held_guard = threading.Lock()  # also keeps a reader here from opening a file another thread is locking


def _forget_after_fork() -> None:
    """In a forked child: it inherited no POSIX lock, so it holds nothing (and the guard starts free)."""
    global _held_guard
    _held.clear()
    _held_guard = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def _file_key(path: Path) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


def _held_here(path: Path) -> RunFolderLock | None:
    """Return the lock this process holds on the lock file ``path``, None when it holds none."""
    key = _file_key(path)
    lock = _held.get(key) if key is not None else None
    return lock if lock is not None and lock.held else None


def _holder(descriptor: int, owner: int) -> dict:
    """Return the record of the holder whose pid the kernel reported as ``owner`` (0: not reported)."""
    record = _read_record(descriptor)
    if owner and record.get("pid") != owner and record.get("host", _this_host()) == _this_host():
        record = {"pid": owner, "host": _this_host()}  # taken an instant ago; its record is not written yet
    return record


def live_holder(folder: str | os.PathLike) -> dict | None:
    """Return the record (pid, host, started, command) of the live process holding ``folder``'s lock, None
    when no process holds it: the one test of whether a run folder's training is alive.

    Takes no lock, so it never makes a starting trainer be refused; in the holding process it
    answers from memory. Where the filesystem cannot say (no lock support), a holder recorded
    on this host counts as alive while its process exists; an unreadable folder gives {}.
    """
    path = Path(folder) / LOCK_NAME
    with _held_guard:
        mine = _held_here(path)
        if mine is not None:
            return dict(mine.record)
        try:
            descriptor = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        except OSError:
            return {}
        try:
            try:
                owner = _owner(descriptor)
            except OSError:  # no lock support here: judge by the recorded process
                record = _read_record(descriptor)
                recorded_here = record.get("host") == _this_host() and isinstance(record.get("pid"), int)
                return None if recorded_here and not process_alive(record["pid"]) else record
            return None if owner is None else _holder(descriptor, owner)
        finally:
            os.close(descriptor)


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
        self.record: dict = {}  # what the lock file says while held: pid, host, started, command
        self._descriptor: int | None = None
        self._owner_pid: int | None = None
        self._key: tuple[int, int] | None = None

    @property
    def held(self) -> bool:
        """True while this object holds the lock (never in a forked child: it inherits no POSIX lock)."""
        return self._descriptor is not None and self._owner_pid == os.getpid()

    def _busy(self, holder: dict) -> RunFolderBusy:
        return RunFolderBusy(
            f"run folder {str(self.folder)!r} is in use by {describe_holder(holder)}, which is training into "
            "it; wait for it to finish (re-running the same command then resumes or reports the result), "
            "or use another --out"
        )

    def acquire(self) -> RunFolderLock:
        """Return self once the lock is held; RunFolderBusy naming the holder when another live owner has it
        (another process, or another lock object of this process)."""
        if self.held:
            return self
        with _held_guard:
            mine = _held_here(self.path)
            if mine is not None:  # opening the file here would drop that lock: refuse without touching it
                raise self._busy(mine.record)
            self.folder.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)  # not inherited by exec'd programs
            try:
                self._take_or_refuse(descriptor)
                self.record = {"pid": os.getpid(), "host": _this_host(),
                               "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": _command()}
                _write_record(descriptor, self.record)
            except BaseException:
                os.close(descriptor)
                raise
            self._descriptor, self._owner_pid = descriptor, os.getpid()
            status = os.fstat(descriptor)
            self._key = (status.st_dev, status.st_ino)
            _held[self._key] = self
        return self

    def _take_or_refuse(self, descriptor: int) -> None:
        for _ in range(3):  # the holder may let go between the attempt and the question: try again then
            if _take(descriptor):
                return
            try:
                owner = _owner(descriptor)
            except OSError:
                owner = 0
            if owner is not None:
                raise self._busy(_holder(descriptor, owner))
        raise self._busy({})

    def release(self) -> None:
        """Free the lock (the file stays: see the module docstring)."""
        if self._descriptor is None:
            return
        with _held_guard:
            descriptor, self._descriptor = self._descriptor, None
            if _held.get(self._key) is self:
                del _held[self._key]
            try:
                if self._owner_pid == os.getpid():  # a forked child's copy holds nothing to free
                    _free(descriptor)
            finally:
                os.close(descriptor)

    def __enter__(self) -> RunFolderLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


def _command() -> str:
    """Return the command line of this process, as a shell would take it."""
    return shlex.join(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])


__all__ = ["LOCK_NAME", "RunFolderBusy", "RunFolderLock", "live_holder", "describe_holder"]
