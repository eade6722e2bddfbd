#!/usr/bin/env bash
# GPU check: at most 420 seconds of commands in all, each stage with its own budget (see benchmarks/gpu_check.py,
# whose header lists the stages, the files written, the exit statuses and the environment variables).
#
#   OUT=results benchmarks/gpu_check.sh     on a CUDA machine; needs data/cifar10-jpg.tar.gz (or data/cifar10-jpg/)
#   TINY=1 benchmarks/gpu_check.sh          the same stages, shrunk, on a CPU; needs no data
#   GPU_CHECK_FAIL_STAGE=<stage> ...        that stage's command becomes `false`: the check must then exit 1 and
#                                           gpu_check.json must name the stage and why it failed
#
# This wrapper only picks the interpreter: PYTHON when set, else .venv/bin/python when present, else python3.
# Wheels in .whl/ (for a machine without a package index) are installed first, into a temporary folder.
set -euo pipefail
if [ -n "${OUT:-}" ]; then OUT=$(realpath -m "$OUT"); export OUT; fi  # relative to where the check was started
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if compgen -G ".whl/*.whl" > /dev/null; then
  site=$(mktemp -d -t ccmix-wheels.XXXXXX)
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHON
exec "$PYTHON" benchmarks/gpu_check.py "$@"
