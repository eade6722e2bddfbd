"""Test helper, installed as ``sitecustomize`` in a test's own folder: injects faults into a training subprocess.

The fault tests put a copy of this file, named ``sitecustomize.py``, first on the
``PYTHONPATH`` of a training subprocess, so Python imports it at start-up. The product
code knows nothing of it. Each fault is switched on by an environment variable:

* ``FAULT_SLOW_STEP_SECONDS``: every optimizer step sleeps this long first, so a test can
  send a signal while an epoch is in progress;
* ``FAULT_STEP_MARKER``: a file touched after each optimizer step (with the step count);
* ``FAULT_SAVE_ERRNO`` with ``FAULT_SAVE_MATCH``: ``torch.save`` to a file whose name contains
  the match raises ``OSError(errno)`` as a full disk (28) or read-only filesystem (30) would.
"""

import os

if any(key.startswith("FAULT_") for key in os.environ):
    import time

    import torch

    _SLOW = float(os.environ.get("FAULT_SLOW_STEP_SECONDS", "0"))
    _MARKER = os.environ.get("FAULT_STEP_MARKER")
    _steps = 0
    _real_step = torch.optim.SGD.step

    def _step(self, *args, **kwargs):
        global _steps
        if _SLOW:
            time.sleep(_SLOW)
        result = _real_step(self, *args, **kwargs)
        _steps += 1
        if _MARKER:
            with open(_MARKER, "w") as marker:
                marker.write(str(_steps))
        return result

    torch.optim.SGD.step = _step

    if os.environ.get("FAULT_SAVE_ERRNO"):
        _ERRNO = int(os.environ["FAULT_SAVE_ERRNO"])
        _MATCH = os.environ.get("FAULT_SAVE_MATCH", "")
        _real_save = torch.save

        def _failing_save(obj, f, *args, **kwargs):
            name = getattr(f, "name", f)
            if isinstance(name, int):
                name = os.readlink(f"/proc/self/fd/{name}")
            if _MATCH in os.path.basename(str(name)):
                raise OSError(_ERRNO, os.strerror(_ERRNO))
            return _real_save(obj, f, *args, **kwargs)

        torch.save = _failing_save
