#!/usr/bin/env bash
# The README's latency table: every model pruned to half its FLOPs by width alone with
# `--round-to auto` and with exact widths (`--round-to 1`), both `--drop-blocks 0`, and with the
# default options (whole residual branches dropped first: `--drop-blocks $DROP`, default 0.75,
# and `--round-to auto`), then the original and the pruned copies timed interleaved in one `lopper bench` run per runtime (ONNX Runtime on 2 threads at
# batch 1 and 32, tract at batch 1), and the same files timed again by an independent ONNX
# Runtime harness in Python (scripts/ort-latency.py) as a cross-check.
#
#   scripts/latency-table.sh            # needs a release build and `make setup`
#
# Prints one markdown row per model and runtime: FLOPs ratio and latency ratio (median / the
# original's) of each pruned copy, and the independent harness's ratios at batch 1.
set -euo pipefail
cd "$(dirname "$0")/.."
LOPPER=${LOPPER:-target/release/lopper}
SHARED=${SHARED:-../shared}
OUT=${OUT:-target/latency-table}
DROP=${DROP:-0.75}
MODELS=${MODELS:-"zoo/mobilenet_v2.bn.onnx zoo/efficientnet_b0.bn.onnx zoo/regnet_x_400mf.bn.onnx pretrained/resnet56_cifar10.bn.onnx"}
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$(scripts/setup-test-env.sh)}
export PYTHONPATH="$PWD/.deps/python${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
echo "| model | runtime | batch | FLOPs × (auto / exact / drop) | latency × width, auto | latency × width, exact | latency × drop $DROP + auto | noise | python ORT × auto / exact / drop |"
echo "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | --- |"
for m in $MODELS; do
  name=$(basename "$m" .onnx)
  src="$SHARED/models/$m"
  "$LOPPER" prune "$src" -o "$OUT/$name.auto.onnx" --target flops=0.5 --drop-blocks 0 --table none >/dev/null
  "$LOPPER" prune "$src" -o "$OUT/$name.exact.onnx" --target flops=0.5 --round-to 1 --drop-blocks 0 --table none >/dev/null
  "$LOPPER" prune "$src" -o "$OUT/$name.drop.onnx" --target flops=0.5 --drop-blocks "$DROP" --table none >/dev/null
  indep=$(python3 scripts/ort-latency.py "$src" "$OUT/$name.auto.onnx" "$OUT/$name.exact.onnx" "$OUT/$name.drop.onnx")
  for cfg in "ort 1" "ort 32" "tract 1"; do
    set -- $cfg
    csv=$("$LOPPER" bench "$src" "$OUT/$name.auto.onnx" "$OUT/$name.exact.onnx" "$OUT/$name.drop.onnx" \
      --backend "$1" --threads 2 --batch-size "$2" --csv)
    echo "$csv" | python3 -c '
import csv, sys
rows = list(csv.DictReader(sys.stdin))
o, a, e, d = rows
lat = lambda r: float(r["median_ms"]) / float(o["median_ms"])
noise = max(float(r["noise"]) for r in rows)
print("| %s | %s | %s | %.3f / %.3f / %.3f | %.3f | %.3f | %.3f | %.1f%% | %s |" % (
    sys.argv[1], o["backend"], o["batch"], float(a["flops_ratio"]), float(e["flops_ratio"]),
    float(d["flops_ratio"]), lat(a), lat(e), lat(d), noise * 100, sys.argv[2] if o["backend"] == "ort" and o["batch"] == "1" else ""))
' "$name" "$indep"
  done
done
