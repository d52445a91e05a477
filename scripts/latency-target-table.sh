#!/usr/bin/env bash
# The README's latency-target table (issue 14): every model pruned with the default options
# to `--target flops=0.5` and to `--target latency=0.5` (ONNX Runtime, 2 threads, batch 1),
# the latter three times, each with a fresh latency table, then once more with the third run's
# table pinned (the same bytes expected). The original and the pruned copies are timed
# interleaved in one `lopper bench` run, and again by the independent ONNX Runtime harness
# in Python (scripts/ort-latency.py).
#
#   scripts/latency-target-table.sh     # needs a release build and `make setup`
#   BACKEND=tract scripts/latency-target-table.sh   # the same on tract (no Python column)
#   BATCH=32 scripts/latency-target-table.sh        # latency targets and timing at batch 32
#                                                   # (--latency-batch; no Python column)
#   LATENCY_FLAGS="--latency-search table" scripts/latency-target-table.sh   # other options
#                                                   # for the latency targets
#
# ResNet-50 is the generated one of `cargo bench --bench prune` (target/bench-fixtures), made
# by that bench; the row is skipped when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
LOPPER=${LOPPER:-target/release/lopper}
SHARED=${SHARED:-../shared}
OUT=${OUT:-target/latency-target-table$([ "${BATCH:-1}" = 1 ] || echo "-b$BATCH")}
BACKEND=${BACKEND:-ort}
BATCH=${BATCH:-1}
LATENCY_FLAGS=${LATENCY_FLAGS:-}
MODELS=${MODELS:-"target/bench-fixtures/resnet50.onnx $SHARED/models/zoo/mobilenet_v2.bn.onnx $SHARED/models/zoo/efficientnet_b0.bn.onnx $SHARED/models/zoo/regnet_x_400mf.bn.onnx $SHARED/models/pretrained/resnet56_cifar10.bn.onnx"}
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$(scripts/setup-test-env.sh)}
export PYTHONPATH="$PWD/.deps/python${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
echo "| model | FLOPs × (flops=0.5) | latency × (flops=0.5) | FLOPs × (latency=0.5) | latency × (latency=0.5), 3 runs | table + prune, s | pinned table: same bytes | Python ORT × (flops / latency) |"
echo "| --- | ---: | ---: | ---: | --- | ---: | --- | --- |"
for src in $MODELS; do
  [ -f "$src" ] || { echo "skipping $src (missing)" >&2; continue; }
  name=$(basename "$src" .onnx)
  "$LOPPER" prune "$src" -o "$OUT/$name.flops.onnx" --target flops=0.5 --table none >/dev/null 2>&1
  secs=()
  for run in 1 2 3; do
    rm -f "$OUT/$name.table.json"
    start=$(date +%s.%N)
    "$LOPPER" prune "$src" -o "$OUT/$name.lat$run.onnx" --target latency=0.5 --threads 2 \
      --latency-batch "$BATCH" --backend "$BACKEND" --latency-table "$OUT/$name.table.json" --table none $LATENCY_FLAGS >"$OUT/$name.lat$run.log" 2>&1 \
      || { echo "| $name | $(tail -1 "$OUT/$name.lat$run.log") |"; continue 2; }
    secs+=("$(python3 -c "import sys; print('%.1f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$start" "$(date +%s.%N)")")
  done
  "$LOPPER" prune "$src" -o "$OUT/$name.pinned.onnx" --target latency=0.5 --threads 2 \
    --latency-batch "$BATCH" --backend "$BACKEND" --latency-table "$OUT/$name.table.json" --table none $LATENCY_FLAGS >/dev/null 2>&1
  same=$(cmp -s "$OUT/$name.lat3.onnx" "$OUT/$name.pinned.onnx" && echo yes || echo no)
  indep=""
  if [ "$BACKEND" = ort ] && [ "$BATCH" = 1 ]; then
    indep=$(python3 scripts/ort-latency.py "$src" "$OUT/$name.flops.onnx" "$OUT/$name.lat1.onnx")
  fi
  csv=$("$LOPPER" bench "$src" "$OUT/$name.flops.onnx" "$OUT/$name.lat1.onnx" "$OUT/$name.lat2.onnx" \
    "$OUT/$name.lat3.onnx" --backend "$BACKEND" --threads 2 --batch-size "$BATCH" --precision 0.01 --csv)
  echo "$csv" | python3 -c '
import csv, sys
rows = list(csv.DictReader(sys.stdin))
o, f, l1, l2, l3 = rows
lat = lambda r: float(r["median_ms"]) / float(o["median_ms"])
print("| %s | %.3f | %.3f | %.3f | %.3f / %.3f / %.3f | %s | %s | %s |" % (
    sys.argv[1], float(f["flops_ratio"]), lat(f), float(l1["flops_ratio"]),
    lat(l1), lat(l2), lat(l3), sys.argv[2], sys.argv[3], sys.argv[4]))
' "$name" "$(IFS=/; echo "${secs[*]}")" "$same" "$indep"
done
