"""DataLoader worker processes that end, silently, with the process that started them.

A worker forked by the trainer outlives a trainer killed with SIGKILL: it keeps the
descriptors it inherited open, then finds its queue gone and prints a
``ConnectionResetError`` traceback. On Linux the kernel can signal a process when its
parent dies (``prctl(PR_SET_PDEATHSIG)``); ``EndWithParent`` asks for SIGKILL, so the
workers go at once and say nothing. Elsewhere it does nothing, and the workers end as
DataLoader's own watchdog finds the parent gone.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def end_with_parent(parent_pid: int) -> bool:
    """Ask the kernel to SIGKILL this process when its parent dies; return True when asked (Linux only).

    The request belongs to the parent *thread* that started this process: the DataLoader
    iterator must be created by a thread that lives as long as the loader (the main thread
    in ccmix). ``parent_pid`` closes the race of a parent that died before the request.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):  # no C library or no prctl: keep the default behaviour
        return False
    if os.getppid() != parent_pid:  # the parent is already gone: end as the request would have
        os.kill(os.getpid(), signal.SIGKILL)
    return True


class EndWithParent:
    """A DataLoader ``worker_init_fn``: each worker ends (SIGKILL) when the process that built this object dies.

    ``then``, when given, is an existing ``worker_init_fn(worker_id)`` called afterwards, so the
    two compose. Build it in the process that creates the DataLoader (it records that pid).
    """

    def __init__(self, then: Callable[[int], None] | None = None):
        self.parent_pid = os.getpid()
        self.then = then

    def __call__(self, worker_id: int) -> None:
        end_with_parent(self.parent_pid)
        if self.then is not None:
            self.then(worker_id)


__all__ = ["PR_SET_PDEATHSIG", "end_with_parent", "EndWithParent"]
