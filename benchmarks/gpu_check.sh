#!/usr/bin/env bash
# GPU check sized to one 15-minute device lease, machine start included: at most BUDGET seconds of commands
# (default 690, i.e. 11.5 minutes). Every stage gets what is left of the budget and is stopped (SIGTERM, a clean
# stop at a step boundary for training) before the budget runs out; results are written as each stage ends.
#
#   OUT=results benchmarks/gpu_check.sh     on a CUDA machine
#   TINY=1 benchmarks/gpu_check.sh          the same stages, shrunk, on the CPU in about a minute
#
# Stages, in order:
#   (a) step throughput, eager vs compiled (torch.compile, CUDA graphs): concutmix ResNet-32, batch 256,
#       data excluded (benchmarks/step_seconds.py --compile both)
#   (b) one full cifar10_imb100 concutmix run (200 epochs) on the CIFAR-10 JPEG tree, pipeline=fast,
#       compile=true: final and best top-1 beside the published 86.07, training samples/s (data included);
#       it may use the budget up to the last RESERVE seconds
#   (t) the gpu-marked tests (pytest -m gpu), at most TESTS_MAX seconds
#   (c) when at least PACKED_MIN seconds remain: 4 packed runs (python -m ccmix sweep --jobs 4) of
#       PACKED_EPOCHS epochs on the same data, and their aggregate samples/s against the single run's
#
# Environment:
#   OUT          results folder (required unless TINY=1, which defaults to a temporary folder):
#                results.jsonl (one JSON line per stage, written when the stage ends: name, status, seconds and
#                its figures), env.txt, step_seconds.json, run/ (the full run's folder), packed/ (the sweep),
#                gpu_tests.log and gpu_tests.xml, and each stage's log
#   BUDGET       seconds of commands in all (default 690; TINY: 240)
#   RESERVE      seconds kept for the tests and the packed runs after the full run (default 150)
#   TESTS_MAX    longest the gpu-marked tests may take (default 90)
#   PACKED_MIN   seconds that must remain for the packed runs to start (default 90)
#   PACKED_EPOCHS  epochs of each packed run (default 4; TINY: 1)
#   EPOCHS       epochs of the full run (default 200; TINY: 1)
#   PYTHON       interpreter (default: .venv/bin/python when present, else python3)
#   DATA_ROOT    CIFAR-10 JPEG tree with train/<class>/ and test/<class>/ (default data/cifar10-jpg)
#   DATA_ARCHIVE tar.gz of that tree, extracted into DATA_ROOT when DATA_ROOT is missing; by default the
#                first that exists of data/cifar10-jpg.tar.gz and shared/data/cifar10-jpg.tar.gz inside the
#                working tree (copy the archive there so it travels with the tree) and
#                ../shared/data/cifar10-jpg.tar.gz beside it
# Wheels in .whl/ (for a machine without a package index) are installed first.
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)

TINY="${TINY:-0}"
if [ "$TINY" = "1" ]; then
  OUT="${OUT:-$(mktemp -d -t ccmix-gpu-check.XXXXXX)}"
  BUDGET="${BUDGET:-240}"
  EPOCHS="${EPOCHS:-1}"
  PACKED_EPOCHS="${PACKED_EPOCHS:-1}"
  DEVICE=cpu
  # tiny encoder, batch 16, dynamo's capture without code generation: the paths run, the figures mean nothing
  STEP_ARGS=(--device cpu --batch-size 16 --steps 1 --arch tiny --compile-backend eager)
  TRAIN_ARGS=(--set arch=tiny --set batch_size=32 --set max_steps_per_epoch=2 --set l_d_warm=0
              --set warmup_epochs=0 --set eval_interval="$EPOCHS" --set compile=false)
  PACKED_PARAMS=(--param dataset=synthetic --param batch_size=16
                 --param 'overrides={arch: tiny, max_steps_per_epoch: 2, synthetic_classes: 5, topk: 3}')
else
  : "${OUT:?set OUT to the folder for the results (or TINY=1 for a quick CPU try)}"
  BUDGET="${BUDGET:-690}"
  EPOCHS="${EPOCHS:-200}"
  PACKED_EPOCHS="${PACKED_EPOCHS:-4}"
  DEVICE=cuda
  STEP_ARGS=(--device cuda --batch-size 256 --steps 20)
  TRAIN_ARGS=(--set compile=true)
  PACKED_PARAMS=(--param dataset=folder --param data_root="__DATA_ROOT__"
                 --param 'overrides={pipeline: fast, compile: true}')
fi
RESERVE="${RESERVE:-150}"
TESTS_MAX="${TESTS_MAX:-90}"
PACKED_MIN="${PACKED_MIN:-90}"
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"

if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PWD"
fi
export PYTHONPATH="${PYTHONPATH:-$PWD}"

left() { echo $(( BUDGET - ($(date +%s) - START) )); }
# record NAME STATUS SECONDS [JSON object of figures]: one line of results.jsonl
record() {
  "$PYTHON" - "$RESULTS" "$1" "$2" "$3" "${4:-{\}}" <<'PY'
import json, sys
path, name, status, seconds, figures = sys.argv[1:6]
line = {"stage": name, "status": int(status), "seconds": round(float(seconds), 1), **json.loads(figures or "{}")}
with open(path, "a") as handle:
    handle.write(json.dumps(line) + "\n")
print("gpu_check:", json.dumps(line), flush=True)
PY
}
# stage NAME LIMIT LOG COMMAND...: run COMMAND for at most LIMIT seconds (SIGTERM, then SIGKILL 20 s later);
# sets STATUS (124: stopped at the limit) and SECONDS_TAKEN
stage() {
  local name=$1 limit=$2 log=$3
  shift 3
  local started
  started=$(date +%s.%N)
  echo "gpu_check: $name for at most ${limit}s ($(left)s of the budget left)"
  timeout --signal=TERM --kill-after=20 "$limit" "$@" > "$log" 2>&1
  STATUS=$?
  SECONDS_TAKEN=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
}
# at_most A B: the smaller of A and B
at_most() { if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi; }

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "tiny: $TINY  device: $DEVICE  epochs: $EPOCHS  budget: ${BUDGET}s"
  "$PYTHON" -c "import sys, torch, torchvision; print('python', sys.version.split()[0], 'torch', torch.__version__, \
'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available(), 'threads', torch.get_num_threads())"
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  nproc
} > "$OUT/env.txt" 2>&1

DATA_ROOT="${DATA_ROOT:-data/cifar10-jpg}"
if [ -z "${DATA_ARCHIVE:-}" ]; then
  for candidate in data/cifar10-jpg.tar.gz shared/data/cifar10-jpg.tar.gz ../shared/data/cifar10-jpg.tar.gz; do
    if [ -f "$candidate" ]; then DATA_ARCHIVE=$candidate; break; fi
  done
fi
if [ ! -d "$DATA_ROOT/train" ] && [ -n "${DATA_ARCHIVE:-}" ]; then
  mkdir -p "$DATA_ROOT"
  tar xzf "$DATA_ARCHIVE" -C "$DATA_ROOT"
fi
HAVE_DATA=1
if [ ! -d "$DATA_ROOT/train" ] || [ ! -d "$DATA_ROOT/test" ]; then
  HAVE_DATA=0
  echo "gpu_check: no CIFAR-10 JPEG tree at $DATA_ROOT (train/<class>/, test/<class>/) and no archive to extract;" \
       "the full and the packed runs are skipped" >&2
fi

# (a) eager vs compiled step throughput
stage step_throughput "$(at_most 240 $(( $(left) - RESERVE )))" "$OUT/step_seconds.log" \
  "$PYTHON" benchmarks/step_seconds.py --methods concutmix --compile both "${STEP_ARGS[@]}"
tail -n 1 "$OUT/step_seconds.log" > "$OUT/step_seconds.json"
FIGURES=$("$PYTHON" - "$OUT/step_seconds.json" <<'PY'
import json, sys
try:
    data = json.loads(open(sys.argv[1]).read())
except ValueError:
    print("{}")
    raise SystemExit
compiled = data.get("compiled", {})
eager_rate = data["samples_per_second"]["concutmix"]
compiled_rate = compiled.get("samples_per_second", {}).get("concutmix")
print(json.dumps({"device": data["device"], "torch": data["torch"], "batch_size": data["batch_size"],
                  "eager_samples_per_second": eager_rate, "compiled_samples_per_second": compiled_rate,
                  "compile_speedup": round(compiled_rate / eager_rate, 2) if compiled_rate else None,
                  "compile_seconds": compiled.get("compile_seconds", {}).get("concutmix")}))
PY
)
record step_throughput "$STATUS" "$SECONDS_TAKEN" "$FIGURES"

# summarise RUN_DIR: final and best top-1 beside the published number, samples/s after the first epoch
run_figures() {
  "$PYTHON" - "$1" <<'PY'
import json, statistics, sys
from pathlib import Path
from ccmix.config.fields import PUBLISHED_TOP1
run = Path(sys.argv[1])
figures = {"published_top1": PUBLISHED_TOP1.get("cifar10_imb100")}
if (run / "summary.json").is_file():
    summary = json.loads((run / "summary.json").read_text())
    figures.update(run_status=summary.get("status"), epochs_completed=summary.get("epochs_completed"),
                   final_top1=(summary.get("final") or {}).get("top1"), best_top1=(summary.get("best") or {}).get("top1"),
                   best_epoch=(summary.get("best") or {}).get("epoch"), train_seconds=summary.get("train_seconds"))
records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] \
    if (run / "metrics.jsonl").is_file() else []
steady = records[1:] or records  # epoch 1 compiles and records the CUDA graphs: left out when there are others
rates = [r["samples_per_second"] for r in steady if r.get("samples_per_second")]
if rates:
    figures["train_samples_per_second"] = round(statistics.median(rates), 1)
    figures["epoch_seconds"] = round(statistics.median(r["seconds"] for r in steady), 2)
if records and figures.get("final_top1") is None:
    figures["last_top1"] = next((r["top1"] for r in reversed(records) if r.get("top1") is not None), None)
print(json.dumps(figures))
PY
}

# (b) the full cifar10_imb100 concutmix run
if [ "$HAVE_DATA" = "1" ] && [ $(( $(left) - RESERVE )) -lt 30 ]; then
  record full_run 2 0 "{\"skipped\": \"$(left) s left\"}"
elif [ "$HAVE_DATA" = "1" ]; then
  stage full_run "$(( $(left) - RESERVE ))" "$OUT/train.log" \
    "$PYTHON" -m ccmix train --preset cifar10_imb100 --set dataset=folder --set data_root="$DATA_ROOT" \
      --set pipeline=fast --set device="$DEVICE" --set epochs="$EPOCHS" --set progress=false "${TRAIN_ARGS[@]}" \
      --out "$OUT/run"
  record full_run "$STATUS" "$SECONDS_TAKEN" "$(run_figures "$OUT/run")"
else
  record full_run 2 0 '{"skipped": "no CIFAR-10 JPEG tree"}'
fi

# (t) the gpu-marked tests (skipped, each with its reason, without CUDA)
limit=$(at_most "$(left)" "$TESTS_MAX")
if [ "$limit" -gt 10 ]; then
  # only the files that hold gpu-marked tests: collecting the whole suite would take a minute of its own
  mapfile -t GPU_TEST_FILES < <(grep -l "mark.gpu" tests/test_*.py)
  stage gpu_tests "$limit" "$OUT/gpu_tests.log" "$PYTHON" -m pytest -m gpu -p no:cacheprovider -q \
    --junitxml="$OUT/gpu_tests.xml" "${GPU_TEST_FILES[@]}"
  record gpu_tests "$STATUS" "$SECONDS_TAKEN" "{\"summary\": $("$PYTHON" -c 'import json, sys
lines = [l for l in open(sys.argv[1]).read().splitlines() if l.strip()]
print(json.dumps(lines[-1] if lines else ""))' "$OUT/gpu_tests.log")}"
else
  record gpu_tests 2 0 '{"skipped": "no time left"}'
fi

# (c) 4 packed runs on one device, when the sweep has --jobs and time remains
if ! "$PYTHON" -m ccmix sweep --help 2> /dev/null | grep -q -- "--jobs"; then
  record packed_runs 2 0 '{"skipped": "python -m ccmix sweep has no --jobs option here"}'
elif [ "$HAVE_DATA" != "1" ] && [ "$TINY" != "1" ]; then
  record packed_runs 2 0 '{"skipped": "no CIFAR-10 JPEG tree"}'
elif [ "$(left)" -lt "$PACKED_MIN" ]; then
  record packed_runs 2 0 "{\"skipped\": \"$(left) s left, fewer than PACKED_MIN=$PACKED_MIN\"}"
else
  PACKED_PARAMS=("${PACKED_PARAMS[@]/__DATA_ROOT__/$DATA_ROOT}")
  stage packed_runs "$(( $(left) - 10 ))" "$OUT/packed.log" \
    "$PYTHON" -m ccmix sweep --methods concutmix --imbs 100 --seeds 0,1,2,3 --jobs 4 --runs-dir "$OUT/packed" \
      --param epochs="$PACKED_EPOCHS" --param device="$DEVICE" "${PACKED_PARAMS[@]}"
  FIGURES=$("$PYTHON" - "$OUT/packed" "$RESULTS" <<'PY'
import json, sys
from pathlib import Path
runs = sorted(p for p in Path(sys.argv[1]).iterdir() if (p / "metrics.jsonl").is_file()) \
    if Path(sys.argv[1]).is_dir() else []
rates = []
for run in runs:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steady = [r["samples_per_second"] for r in records[1:] if r.get("samples_per_second")] or \
        [r["samples_per_second"] for r in records if r.get("samples_per_second")]
    if steady:
        rates.append(sum(steady) / len(steady))
single = None
for line in open(sys.argv[2]):
    stage = json.loads(line)
    if stage["stage"] == "full_run":
        single = stage.get("train_samples_per_second")
aggregate = round(sum(rates), 1) if rates else None
print(json.dumps({"runs": len(runs), "runs_with_throughput": len(rates), "aggregate_samples_per_second": aggregate,
                  "single_run_samples_per_second": single,
                  "packing_gain": round(aggregate / single, 2) if aggregate and single else None}))
PY
)
  record packed_runs "$STATUS" "$SECONDS_TAKEN" "$FIGURES"
fi

echo "gpu_check: $(( $(date +%s) - START ))s of ${BUDGET}s used; results in $OUT (results.jsonl)"
