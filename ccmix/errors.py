"""Faults as sentences: one place that turns what can go wrong in a run into one line for the user.

Training Contrastive CutMix (Pan et al., "Enhanced Long-Tailed Recognition with
Contrastive CutMix Augmentation", IEEE TIP 2024; see ``docs/method.md``) touches the
disk, the data and the memory of the machine for hours. When one of them fails, the
user gets a sentence saying what failed, where, and what to do, and the run folder's
``summary.json`` records the same sentence with ``"status": "failed"``. Errors that are
not recognised here are programming errors: they keep their traceback.

Errors raised inside DataLoader worker processes reach the main process re-raised with
the worker's traceback folded into the message; :func:`failure_sentence` recovers the
original sentence from it (so an unreadable image is named, whichever process read it).
"""

from __future__ import annotations

import errno
import os
import re


class ShownAsSentence:
    """Mixin for errors whose message is the whole story: IPython and Jupyter show ``error: <sentence>`` for
    them instead of a traceback (through IPython's ``_render_traceback_`` hook); plain Python is unchanged."""

    def _render_traceback_(self) -> list[str]:
        return [f"error: {self}"]


class RunFailed(ShownAsSentence, RuntimeError):
    """A run stopped on a recognised fault (disk, memory); the message is the sentence for the user."""


class DataError(ShownAsSentence, ValueError):
    """A data file or folder that cannot be used; the message names it (also when a DataLoader worker read it)."""


_WORKER_PREFIX = re.compile(r"^Caught (\w+) in DataLoader worker process \d+\.")


def original_message(error: BaseException) -> str:
    """Return ``str(error)``, or for an error re-raised from a DataLoader worker the worker's own message."""
    text = str(error)
    if not _WORKER_PREFIX.match(text):
        return text
    name = _WORKER_PREFIX.match(text).group(1)
    lines = [line for line in text.splitlines() if line.strip()]
    # the last "<module.>Type: message" line of the worker's traceback
    last_line = re.compile(rf"^(?:[\w.]+\.)?{re.escape(name)}: ")
    for index in range(len(lines) - 1, -1, -1):
        found = last_line.match(lines[index])
        if found:
            return " ".join([lines[index][found.end():], *(line.strip() for line in lines[index + 1:])])
    return lines[-1].strip() if lines else text


def _where(error: OSError) -> str:
    return f" {error.filename!r}" if error.filename else ""


def os_error_sentence(error: OSError, folder: str | os.PathLike | None = None) -> str | None:
    """Return the sentence of a disk error (full, read-only, no permission, quota), or None for other OSErrors."""
    where = _where(error) or (f" {os.fspath(folder)!r}" if folder is not None else "")
    advice = "use another --out (out_dir)" if folder is not None else "use another folder"
    if error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        what = "full" if error.errno == errno.ENOSPC else "over its quota"
        return f"the disk is {what}: writing{where} failed ({error.strerror}); free some space or {advice}"
    if error.errno == errno.EROFS:
        return f"the folder{where} is on a read-only filesystem ({error.strerror}); {advice}"
    if error.errno in (errno.EACCES, errno.EPERM):
        return f"no permission to write{where} ({error.strerror}); fix its permissions or {advice}"
    return None


def failure_sentence(error: BaseException, folder: str | os.PathLike | None = None) -> str | None:
    """Return one sentence describing ``error`` for the user, or None when it is not a recognised fault.

    Recognised: disk errors (full, quota, read-only, permission), host and GPU out of memory,
    killed DataLoader workers, and data errors (ValueError, FileNotFoundError, OSError naming a
    file), including those raised inside DataLoader workers. ``folder`` is the run folder,
    named when the error itself names no file.
    """
    import torch

    if isinstance(error, torch.cuda.OutOfMemoryError) or "CUDA out of memory" in str(error):
        return ("the GPU ran out of memory; lower batch_size (keeping the global batch with grad_accum_steps), "
                "or use a smaller arch or feat_dim")
    if isinstance(error, MemoryError) or "DefaultCPUAllocator: can't allocate memory" in str(error):
        return ("the machine ran out of memory (RAM); lower batch_size or num_workers, or use the classic "
                "pipeline, which does not hold the whole training set in memory")
    message = original_message(error)
    if isinstance(error, RuntimeError) and re.search(r"DataLoader worker \(pid[^)]*\) (is killed|exited)", message):
        return (f"a DataLoader worker process died ({message.split(';')[0].strip()}); this is most often the "
                "machine running out of memory: lower num_workers or batch_size")
    if isinstance(error, OSError):
        sentence = os_error_sentence(error, folder)
        if sentence is not None:
            return sentence
    if isinstance(error, (ValueError, FileNotFoundError, OSError)) or _WORKER_PREFIX.match(str(error)):
        return message if "\n" not in message else message.splitlines()[-1]
    return None


def as_user_error(error: BaseException, folder: str | os.PathLike | None = None) -> BaseException | None:
    """Return the exception to show the user instead of ``error`` (its message the sentence), or None when
    ``error`` is not a recognised fault.

    Data errors stay ValueError (a worker's error is unwrapped to the worker's sentence);
    disk and memory faults become :class:`RunFailed`.
    """
    sentence = failure_sentence(error, folder)
    if sentence is None:
        return None
    if isinstance(error, (ValueError, FileNotFoundError)):  # data: a missing file, an unreadable image
        return error if isinstance(error, ShownAsSentence) and str(error) == sentence else DataError(sentence)
    return RunFailed(sentence)


__all__ = ["ShownAsSentence", "RunFailed", "DataError", "original_message", "os_error_sentence", "failure_sentence", "as_user_error"]
