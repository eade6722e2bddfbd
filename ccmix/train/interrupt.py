"""Clean interruption of training: SIGINT and SIGTERM stop a run at the next step boundary.

A run of Contrastive CutMix (Pan et al., "Enhanced Long-Tailed Recognition with
Contrastive CutMix Augmentation", IEEE TIP 2024; see ``docs/method.md``) can be stopped
by Ctrl-C, ``kill``, a notebook's interrupt button or a cluster scheduler's preemption
(SLURM sends SIGTERM, then SIGKILL after its grace time). While :func:`stop_requests`
is active, the first SIGINT or SIGTERM only records a request; the training loop calls
:func:`check_step_boundary` between steps and raises :class:`TrainingInterrupted` there.
The epoch in progress is dropped: last.pt keeps the last complete epoch, which is what
re-running the same command resumes from. A second Ctrl-C stops at once.

Under several processes every rank must stop at the same step, or one would wait in a
collective for the others forever: the ranks agree on the request at each step
boundary through a small all-reduce on the CPU (a gloo group), which never waits for
the GPU.
"""

from __future__ import annotations

import contextlib
import signal
import threading

from ccmix.errors import ShownAsSentence

STOP_SIGNALS = ("SIGINT", "SIGTERM")


class Interrupted(ShownAsSentence, KeyboardInterrupt):
    """A stop on SIGINT or SIGTERM, shown as ``interrupted: <sentence>``; ``exit_status`` is 128 + the signal number."""

    default_message = "the command was interrupted"

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.signal_number = signal_number
        self.exit_status = 128 + signal_number

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else self.default_message

    def _render_traceback_(self) -> list[str]:
        return [f"interrupted: {self}"]


class TrainingInterrupted(Interrupted):
    """Training stopped at a step boundary on SIGINT or SIGTERM."""

    default_message = "training was interrupted"


class StopRequests:
    """The stop requests received while training: ``signal_number`` is the first one's, or None."""

    def __init__(self):
        self.signal_number: int | None = None
        self._group = None  # CPU process group the ranks agree through (distributed runs only)

    def request(self, signal_number: int) -> None:
        """Record a stop request (what the signal handler does); a second SIGINT stops at once."""
        if self.signal_number is not None and signal_number == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signal_number is None:
            self.signal_number = signal_number

    def agreed_signal(self, context) -> int | None:
        """Return the signal number that stops every rank now, or None to go on (an all-reduce when distributed)."""
        if context is None or not getattr(context, "enabled", False):
            return self.signal_number
        import torch  # here, not at the top: a sweep's process uses this module without torch
        import torch.distributed as dist

        if self._group is None:
            self._group = dist.new_group(backend="gloo")
        value = torch.tensor([self.signal_number or 0], dtype=torch.int64)
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self._group)
        return int(value[0]) or None


_ACTIVE: list[StopRequests] = []


def active() -> StopRequests | None:
    """Return the stop requests of the innermost :func:`stop_requests` block, or None outside one."""
    return _ACTIVE[-1] if _ACTIVE else None


@contextlib.contextmanager
def stop_signals_to(request):
    """Call ``request(signal_number)`` on SIGINT and SIGTERM while the block runs; the old handlers come back after.

    Yields True when the handlers are installed, False outside the main thread (signals
    cannot be handled there) or where the interpreter does not allow it.
    """
    previous = {}
    try:  # installed inside the try: a signal between two installations still restores the first
        if threading.current_thread() is threading.main_thread():
            for name in STOP_SIGNALS:
                number = getattr(signal, name, None)
                if number is None:
                    continue
                try:
                    previous[number] = signal.signal(number, lambda signum, frame: request(signum))
                except (ValueError, OSError):  # an embedded interpreter that does not allow it
                    continue
        yield bool(previous)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)


@contextlib.contextmanager
def stop_requests():
    """Yield a StopRequests that SIGINT and SIGTERM feed while the block runs; the old handlers come back after.

    Outside the main thread (signals cannot be handled there) nothing is installed and
    the requests stay empty.
    """
    requests = StopRequests()
    with stop_signals_to(requests.request):
        _ACTIVE.append(requests)
        try:
            yield requests
        finally:
            _ACTIVE.remove(requests)


def check_step_boundary(context=None, epoch: int | None = None, step: int | None = None) -> None:
    """Raise TrainingInterrupted when a stop was requested (on any rank); a no-op outside :func:`stop_requests`.

    ``epoch`` and ``step`` (1-based) only make the message precise.
    """
    requests = active()
    if requests is None:
        return
    number = requests.agreed_signal(context)
    if number is None:
        return
    requests.signal_number = number
    where = f" during epoch {epoch}" if epoch is not None else ""
    where += f" before step {step}" if step is not None and epoch is not None else ""
    raise TrainingInterrupted(f"training was interrupted by {signal.Signals(number).name}{where}", number)


__all__ = ["Interrupted", "TrainingInterrupted", "StopRequests", "stop_requests", "stop_signals_to", "active", "check_step_boundary"]
