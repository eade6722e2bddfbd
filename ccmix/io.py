"""Atomic file writing for run folders: a reader never sees a half-written file.

Every file is written to a temporary sibling, flushed, fsync'ed and renamed over
the target (``os.replace`` is atomic on POSIX and Windows within one folder), then
the folder itself is fsync'ed so the rename survives a power cut. A process killed
mid-write leaves the target untouched and at worst a stale ``.<name>.*.tmp``
sibling, which :func:`remove_stale_temporaries` clears.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

TEMPORARY_SUFFIX = ".tmp"


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
    descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMPORARY_SUFFIX, dir=target.parent)
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
    """Return the ``.<name>.*.tmp`` files left in ``folder`` by a killed writer, after deleting them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(TEMPORARY_SUFFIX) and p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


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
