#!/usr/bin/env bash
# GPU check of the fast data pipeline: `python -m ccmix bench` on the GPU, then a full cifar10_imb100
# ConCutMix training on the CIFAR-10 JPEG tree with pipeline=fast. Works offline.
#
#   benchmarks/gpu_check.sh              full check (CUDA, 200 epochs); results in $OUT
#   TINY=1 benchmarks/gpu_check.sh       a few CPU steps to try the script (OUT defaults to a temp dir)
#
# Environment:
#   OUT       folder for the results (required unless TINY=1): bench.json (python -m ccmix bench),
#             data_pipelines.json (classic vs fast on the JPEG tree, operator counts), summary.json,
#             timings.json (wall times and exit codes), env.txt, the run folder run/ and the logs
#   EPOCHS    override the number of epochs (default 200, TINY: 2)
#   PYTHON    interpreter (default: .venv/bin/python when present, else python3)
#   DATA_ROOT CIFAR-10 JPEG tree with train/<class>/ and test/<class>/ (default data/cifar10-jpg)
#   DATA_ARCHIVE  tar.gz of that tree, extracted into DATA_ROOT when DATA_ROOT is missing
#             (default ../shared/data/cifar10-jpg.tar.gz)
# Wheels in .whl/ (e.g. kornia for a machine without a package index) are installed first.
set -euo pipefail
cd "$(dirname "$0")/.."

TINY="${TINY:-0}"
if [ "$TINY" = "1" ]; then
  OUT="${OUT:-$(mktemp -d -t ccmix-gpu-check.XXXXXX)}"
  EPOCHS="${EPOCHS:-2}"
  DEVICE=cpu
  BENCH_ARGS=(--quick --device cpu)
  TRAIN_ARGS=(--set max_steps_per_epoch=2 --set l_d_warm=1 --set warmup_epochs=0 --set eval_interval="$EPOCHS")
else
  : "${OUT:?set OUT to the folder for the results (or TINY=1 for a quick CPU try)}"
  EPOCHS="${EPOCHS:-200}"
  DEVICE=cuda
  BENCH_ARGS=(--device cuda)
  TRAIN_ARGS=()
fi
mkdir -p "$OUT"

if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PWD"
fi
export PYTHONPATH="${PYTHONPATH:-$PWD}"

DATA_ROOT="${DATA_ROOT:-data/cifar10-jpg}"
DATA_ARCHIVE="${DATA_ARCHIVE:-../shared/data/cifar10-jpg.tar.gz}"
if [ ! -d "$DATA_ROOT/train" ] && [ -f "$DATA_ARCHIVE" ]; then
  mkdir -p "$DATA_ROOT"
  tar xzf "$DATA_ARCHIVE" -C "$DATA_ROOT"
fi
if [ ! -d "$DATA_ROOT/train" ] || [ ! -d "$DATA_ROOT/test" ]; then
  echo "gpu_check: $DATA_ROOT must hold the CIFAR-10 JPEG tree (train/<class>/, test/<class>/)" >&2
  exit 2
fi

now() { date +%s.%N; }
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "tiny: $TINY  device: $DEVICE  epochs: $EPOCHS"
  "$PYTHON" -c "import sys, torch, torchvision; print('python', sys.version.split()[0], 'torch', torch.__version__, \
'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available(), 'threads', torch.get_num_threads())"
  "$PYTHON" -c "import kornia; print('kornia', kornia.__version__)" 2>/dev/null || echo "kornia: not installed"
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  true
} > "$OUT/env.txt" 2>&1

bench_status=0
bench_start=$(now)
"$PYTHON" -m ccmix bench "${BENCH_ARGS[@]}" > "$OUT/bench.log" 2>&1 || bench_status=$?
bench_end=$(now)
# the bench prints one JSON line: keep the last line that parses as JSON
"$PYTHON" - "$OUT/bench.log" "$OUT/bench.json" <<'PY' || true
import json, sys
lines = open(sys.argv[1]).read().splitlines()
for line in reversed(lines):
    try:
        data = json.loads(line)
    except ValueError:
        continue
    json.dump(data, open(sys.argv[2], "w"), indent=2)
    break
PY

# the data-pipeline half on the JPEG tree itself: classic (DataLoader workers) vs fast, and operator counts
data_status=0
data_start=$(now)
"$PYTHON" - "$DATA_ROOT" "$DEVICE" "$TINY" > "$OUT/data_pipelines.json" 2> "$OUT/data_pipelines.log" <<'PY' || data_status=$?
import json, sys

from ccmix.bench import count_augment_ops, measure_data_pipelines
from ccmix.config import preset

root, device, tiny = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
config = preset("cifar10_imb100").replace(dataset="folder", data_root=root)
result = measure_data_pipelines(config, device, batches=3 if tiny else 30, warmup=1 if tiny else 5,
                                rounds=1 if tiny else 2)
result["augment_ops"] = {str(size): count_augment_ops(size, device) for size in (64, 512)}
print(json.dumps(result, indent=2))
PY
data_end=$(now)

train_status=0
train_start=$(now)
"$PYTHON" -m ccmix train --preset cifar10_imb100 --set dataset=folder --set data_root="$DATA_ROOT" \
  --set pipeline=fast --set device="$DEVICE" --set epochs="$EPOCHS" --set progress=false "${TRAIN_ARGS[@]}" \
  --out "$OUT/run" > "$OUT/train.log" 2>&1 || train_status=$?
train_end=$(now)
if [ -f "$OUT/run/summary.json" ]; then cp "$OUT/run/summary.json" "$OUT/summary.json"; fi

"$PYTHON" - "$OUT/timings.json" <<PY
import json, sys
timings = {
    "tiny": "$TINY" == "1", "device": "$DEVICE", "epochs": int("$EPOCHS"),
    "bench_seconds": round($bench_end - $bench_start, 3), "bench_status": $bench_status,
    "data_pipelines_seconds": round($data_end - $data_start, 3), "data_pipelines_status": $data_status,
    "train_seconds": round($train_end - $train_start, 3), "train_status": $train_status,
}
json.dump(timings, open(sys.argv[1], "w"), indent=2)
print(json.dumps(timings))
PY
echo "gpu_check: results in $OUT"
[ "$bench_status" -eq 0 ] && [ "$data_status" -eq 0 ] && [ "$train_status" -eq 0 ]
