#!/usr/bin/env bash
# Same-run timing of the demo's largest stage in two checkouts: `qgnet-train fss` with the
# demo's QGNet settings (60 steps, one thread), alternated OTHER, THIS, OTHER, THIS.
# Each checkout needs its own `make demo` first (its cache/ and runs/demo/prior).
#
#   bash bench/demo_train_time.sh /path/to/other/checkout [ROUNDS]
#
# Prints one line per run: wall and user/sys CPU seconds (GNU time). Logs in $WORK.
set -euo pipefail
OTHER=${1:?usage: bench/demo_train_time.sh OTHER_CHECKOUT [ROUNDS]}
ROUNDS=${2:-2}
THIS=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$THIS/.venv/bin/python}
WORK=${WORK:-$(mktemp -d)}
for round in $(seq 1 "$ROUNDS"); do
  for tree in "$OTHER" "$THIS"; do
    out="$WORK/$(basename "$tree")-$round"
    rm -rf "$out"
    (cd "$tree" && /usr/bin/time -o "$out.time" -f "%e s wall, %U s user, %S s sys" \
      env PYTHONPATH="$tree" OMP_NUM_THREADS=1 "$PY" -m cli.train fss --dataset demo --fold 0 \
      --shot 1 --backbone efficientnet_lite0 --weights imagenet \
      --prior runs/demo/prior/prior_extractor.pt --max-steps 60 --val-episodes 0 --workers 1 \
      --threads 1 --log-every 10 --no-progress --out "$out" --cache-dir cache > "$out.log" 2>&1) \
      || { echo "$tree round $round failed; see $out.log"; exit 1; }
    echo "$tree round $round: $(cat "$out.time")"
  done
done
