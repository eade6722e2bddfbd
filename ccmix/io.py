"""Atomic file writing for run folders: a reader never sees a half-written file.

Every file is written to a temporary sibling, flushed, fsync'ed and renamed over
the target (``os.replace`` is atomic on POSIX and Windows within one folder), then
the folder itself is fsync'ed so the rename survives a power cut. A process killed
mid-write leaves the target untouched and at worst a stale temporary sibling.

Temporary files are named ``.<name>.ccmix-<host>-<pid>-<random>.tmp``: unique per
writer, and recognisable as ours. Only their writer removes them, or
:func:`remove_stale_temporaries`, which the holder of a run folder's lock calls and
which deletes only such files whose writing process is gone. Files of any other
name, including other programs' ``.*.tmp`` files, are never deleted.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
from collections.abc import Callable, Iterable
from pathlib import Path

TEMPORARY_SUFFIX = ".tmp"
_TEMPORARY_TAG = "ccmix"
# .<target name>.ccmix-<host>-<pid>-<16 hex digits>.tmp (host names may hold "-": pid and random part anchor the end)
_TEMPORARY_NAME = re.compile(
    rf"^\.(?P<target>.+)\.{_TEMPORARY_TAG}-(?P<host>.*)-(?P<pid>[0-9]+)-[0-9a-f]{{16}}{re.escape(TEMPORARY_SUFFIX)}$"
)


def _default_file_mode() -> int:
    """Return the permission bits an ordinary ``open(path, "w")`` would give (0o666 less the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


# mkstemp creates 0o600 files; run folders are shared like any other output, so use the usual mode.
_FILE_MODE = _default_file_mode()


def atomic_write(path: str | os.PathLike, write: Callable[[object], None], mode: str = "wb",
                 before_replace: Callable[[], None] | None = None) -> Path:
    """Return ``path`` after ``write(file_object)`` filled a temporary sibling that was then renamed over it.

    ``before_replace`` runs once the temporary file is complete and synced, just before the
    rename (checkpoints use it to keep the old file as previous.pt).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary, descriptor = _create_temporary(target)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(descriptor, _FILE_MODE)
        with os.fdopen(descriptor, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(temporary, target)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    fsync_folder(target.parent)
    return target


def temporary_name(target_name: str, pid: int | None = None, host: str | None = None) -> str:
    """Return a fresh temporary file name for ``target_name`` written by process ``pid`` on ``host`` (default: this one)."""
    host = (host if host is not None else socket.gethostname()).replace(os.sep, "_")
    pid = os.getpid() if pid is None else pid
    return f".{target_name}.{_TEMPORARY_TAG}-{host}-{pid}-{secrets.token_hex(8)}{TEMPORARY_SUFFIX}"


def _create_temporary(target: Path) -> tuple[str, int]:
    """Return (path, open descriptor) of a new temporary sibling of ``target``, created exclusively."""
    for _ in range(100):
        temporary = os.path.join(target.parent, temporary_name(target.name))
        try:
            return temporary, os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                                      0o600)
        except FileExistsError:  # 64 random bits collided: draw again
            continue
    raise FileExistsError(f"could not create a temporary file beside {str(target)!r}")


def fsync_folder(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (renames) to disk where the platform allows it; a no-op elsewhere."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open folders; its renames are durable already
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Return the temporary files of dead ccmix writers found in ``folder``, after deleting them.

    Only files named by :func:`temporary_name` are considered, and of those only ones
    whose writer is not a live process of this host (:func:`process_alive`, the test the
    run-folder lock also falls back on; a writer on another host cannot be asked, and the
    caller holds the folder's lock, so no other trainer writes there). A trainer killed
    with -9 is gone at once, though its DataLoader workers may outlive it: they write nothing.
    Call it only while holding the run folder's lock.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    this_host = socket.gethostname().replace(os.sep, "_")
    stale = []
    for path in folder.iterdir():
        match = _TEMPORARY_NAME.match(path.name)
        if match is None or not path.is_file():
            continue
        pid = int(match.group("pid"))
        if match.group("host") == this_host and pid != os.getpid() and process_alive(pid):
            continue  # still being written (an evaluation beside a training, say)
        stale.append(path)
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def process_alive(pid: int) -> bool:
    """Return True when a process ``pid`` runs on this host (it may belong to another user); a killed process
    that its parent has not reaped yet (a zombie) is not alive."""
    if pid <= 0:
        return False
    if os.name == "nt":  # os.kill would terminate the process there; never delete what might be live
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    except OSError:  # platforms without signal 0: assume alive, never delete a live writer's file
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """Return True when /proc says process ``pid`` has exited and awaits its parent (False where /proc is absent)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:stat.rfind(b")") + 3] == b"Z"  # the state follows the command in parentheses


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Return ``path`` after writing ``text`` (UTF-8) atomically."""
    return atomic_write(path, lambda handle: handle.write(text), mode="w")


def write_json(path: str | os.PathLike, data) -> Path:
    """Return ``path`` after writing ``data`` as indented JSON atomically."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> Path:
    """Return ``path`` after writing one JSON object a line, atomically (the whole file is replaced)."""
    return write_text(path, "".join(json.dumps(r, sort_keys=True, allow_nan=False) + "\n" for r in records))


def read_json(path: str | os.PathLike):
    """Return the parsed JSON content of ``path``."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Return the records of a JSON-lines file; an absent file gives an empty list, a damaged line a ValueError."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{os.fspath(path)!r} line {number} is not valid JSON ({error.msg})") from None
    return records
