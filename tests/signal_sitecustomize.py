"""Test helper, installed as ``sitecustomize`` in a test's own folder: a process signals itself at a named point.

The signal tests put a copy of this file, named ``sitecustomize.py``, first on the
``PYTHONPATH`` of a ``python -m ccmix`` subprocess, so Python imports it at start-up, before
the command line installs its handlers. The product code knows nothing of it. Switched on
by two environment variables:

* ``SIGNAL_SELF``: the signal's name, ``SIGINT`` or ``SIGTERM``;
* ``SIGNAL_POINT``: where the process sends it to itself, once:

  - ``import:<module>``: as the import of ``<module>`` begins (e.g. deep inside torch's own import);
  - ``before:<module>:<name>`` or ``after:<module>:<name>``: just before the ``SIGNAL_NTH``-th call
    (default 1) of the function or method ``<name>`` (``Class.method``) of ``<module>`` starts, or
    just after it returns.

``os.kill`` runs the process's Python handler before it returns, so the handler runs
exactly at the named point and not wherever a timer would have raced to.
"""

import os

if os.environ.get("SIGNAL_POINT"):
    import functools
    import importlib.machinery
    import signal
    import sys

    _SIGNAL = getattr(signal, os.environ["SIGNAL_SELF"])
    _KIND, _, _TARGET = os.environ["SIGNAL_POINT"].partition(":")
    _NTH = int(os.environ.get("SIGNAL_NTH", "1"))
    _fired = []

    def _fire() -> None:
        if not _fired:
            _fired.append(True)
            os.kill(os.getpid(), _SIGNAL)

    def _wrapped(function):
        calls = []

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            calls.append(True)
            due = len(calls) == _NTH
            if due and _KIND == "before":
                _fire()
            result = function(*args, **kwargs)
            if due and _KIND == "after":
                _fire()
            return result

        return wrapper

    def _patch(module, name: str) -> None:
        *owners, attribute = name.split(".")
        owner = module
        for part in owners:
            owner = getattr(owner, part)
        setattr(owner, attribute, _wrapped(getattr(owner, attribute)))

    class _SignalPoint:
        """A meta path finder: signals as ``_TARGET`` starts importing, or patches its module once executed."""

        def find_spec(self, name, path=None, target=None):
            if _KIND == "import":
                if name == _TARGET:
                    _fire()
                return None
            module_name, _, function_name = _TARGET.partition(":")
            if name != module_name:
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            real_exec = spec.loader.exec_module

            def exec_module(module):
                real_exec(module)
                _patch(module, function_name)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _SignalPoint())
