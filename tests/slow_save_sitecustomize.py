"""Test helper, installed as ``sitecustomize`` in a test's own folder: stops a training process at a known point.

The reliability tests put a copy of this file, named ``sitecustomize.py``, first on the
``PYTHONPATH`` of a training subprocess, so Python imports it at start-up. Two hooks, each
switched on by environment variables; the product code knows nothing of them.

* ``SLOW_SAVE_MATCH``: wraps ``torch.save``; the ``SLOW_SAVE_NTH``-th save whose target
  file name contains ``SLOW_SAVE_MATCH`` writes the first half of its bytes, flushes them,
  writes the target's name to ``SLOW_SAVE_MARKER`` and sleeps, so the test can kill the
  process while the checkpoint is being written.
* ``PAUSE_AFTER_REPLACE``: wraps ``os.replace`` and ``os.rename``; right after the
  ``PAUSE_AFTER_NTH``-th rename onto a file named exactly ``PAUSE_AFTER_REPLACE`` (the
  moment that file is complete), writes its name to ``PAUSE_MARKER`` and sleeps, so the
  test kills the process at that point and not at whatever point it has raced on to.
* ``PAUSE_AT_STEP``: wraps ``torch.optim.SGD.step``; right after the ``PAUSE_AT_STEP``-th
  optimizer step (its DataLoader workers busy with the next batches), writes ``PAUSE_MARKER``
  and sleeps: a kill lands in the middle of an epoch.
* ``PAUSE_IN_EVALUATION``: wraps ``DataLoader.__iter__``; once the ``PAUSE_IN_EVALUATION``-th
  loader iterated without gradients (an evaluation: prediction runs under ``torch.no_grad``)
  has started its workers, writes ``PAUSE_MARKER`` and sleeps: a kill lands during evaluation.
"""

import os

if os.environ.get("PAUSE_AFTER_REPLACE"):
    import time

    _PAUSE_NAME = os.environ["PAUSE_AFTER_REPLACE"]
    _PAUSE_NTH = int(os.environ.get("PAUSE_AFTER_NTH", "1"))
    _PAUSE_MARKER = os.environ["PAUSE_MARKER"]
    _renames = 0

    def _pausing(real):
        def rename(source, target, *args, **kwargs):
            global _renames
            result = real(source, target, *args, **kwargs)
            if os.path.basename(os.fsdecode(target)) == _PAUSE_NAME:
                _renames += 1
                if _renames == _PAUSE_NTH:
                    with open(_PAUSE_MARKER, "w") as marker:
                        marker.write(_PAUSE_NAME)
                    time.sleep(600)
            return result

        return rename

    os.replace = _pausing(os.replace)
    os.rename = _pausing(os.rename)

if os.environ.get("SLOW_SAVE_MATCH"):
    import io
    import time

    import torch

    _MATCH = os.environ["SLOW_SAVE_MATCH"]
    _NTH = int(os.environ.get("SLOW_SAVE_NTH", "1"))
    _MARKER = os.environ["SLOW_SAVE_MARKER"]
    _real_save = torch.save
    _seen = 0

    def _target_name(f) -> str:
        name = getattr(f, "name", f)
        if isinstance(name, int):  # a file opened from a descriptor: ask the kernel for its path
            name = os.readlink(f"/proc/self/fd/{name}")
        return os.path.basename(str(name))

    def _slow_save(obj, f, *args, **kwargs):
        global _seen
        name = _target_name(f)
        if _MATCH in name:
            _seen += 1
            if _seen == _NTH:
                buffer = io.BytesIO()
                _real_save(obj, buffer, *args, **kwargs)
                data = buffer.getvalue()
                f.write(data[: len(data) // 2])
                f.flush()
                with open(_MARKER, "w") as marker:
                    marker.write(name)
                time.sleep(600)
        return _real_save(obj, f, *args, **kwargs)

    torch.save = _slow_save

if os.environ.get("PAUSE_AT_STEP") or os.environ.get("PAUSE_IN_EVALUATION"):
    import time

    import torch

    _PAUSE_MARKER = os.environ["PAUSE_MARKER"]
    _counts = {"step": 0, "evaluation": 0}

    def _pause_at(kind: str, nth: str | None) -> None:
        _counts[kind] += 1
        if nth and _counts[kind] == int(nth):
            with open(_PAUSE_MARKER, "w") as marker:
                marker.write(kind)
            time.sleep(600)

    _real_step = torch.optim.SGD.step

    def _pausing_step(self, *args, **kwargs):
        result = _real_step(self, *args, **kwargs)
        _pause_at("step", os.environ.get("PAUSE_AT_STEP"))
        return result

    _real_iter = torch.utils.data.DataLoader.__iter__

    def _pausing_iter(self):
        iterator = _real_iter(self)
        if not torch.is_grad_enabled():
            _pause_at("evaluation", os.environ.get("PAUSE_IN_EVALUATION"))
        return iterator

    torch.optim.SGD.step = _pausing_step
    torch.utils.data.DataLoader.__iter__ = _pausing_iter
