#!/usr/bin/env bash
# What a latency target buys over a FLOPs target (issue 14): every model pruned with the default
# options to `--target latency=0.5` (per-layer latency table, ONNX Runtime, 2 threads, batch
# $BATCH) and to `--target flops=F` for F in $FLOPS, all timed interleaved against the original
# in one `lopper bench` run. The FLOPs-only allocation's measured latency is interpolated
# linearly in F to find F*, the FLOPs it keeps at the latency copy's measured latency; the gain
# is the latency copy's FLOPs over F* (above 1: the latency model keeps more FLOPs at the same
# measured speed).
#
#   scripts/flops-at-latency.sh         # needs a release build and `make setup`
#
# ResNet-50 is the generated one of `cargo bench --bench prune` (target/bench-fixtures); the row
# is skipped when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
LOPPER=${LOPPER:-target/release/lopper}
SHARED=${SHARED:-../shared}
BATCH=${BATCH:-1}
OUT=${OUT:-target/flops-at-latency$([ "$BATCH" = 1 ] || echo "-b$BATCH")}
FLOPS=${FLOPS:-"0.40 0.44 0.48 0.52 0.56"}
MODELS=${MODELS:-"target/bench-fixtures/resnet50.onnx $SHARED/models/zoo/mobilenet_v2.bn.onnx $SHARED/models/zoo/efficientnet_b0.bn.onnx $SHARED/models/zoo/regnet_x_400mf.bn.onnx $SHARED/models/pretrained/resnet56_cifar10.bn.onnx"}
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$(scripts/setup-test-env.sh)}
mkdir -p "$OUT"
echo "| model | batch | latency=0.5: FLOPs × / latency × | flops=F: F (FLOPs ×) → latency × | F* at the same latency | gain |"
echo "| --- | ---: | --- | --- | ---: | ---: |"
for src in $MODELS; do
  [ -f "$src" ] || { echo "skipping $src (missing)" >&2; continue; }
  name=$(basename "$src" .onnx)
  rm -f "$OUT/$name.table.json"
  "$LOPPER" prune "$src" -o "$OUT/$name.lat.onnx" --target latency=0.5 --threads 2 \
    --latency-batch "$BATCH" --latency-table "$OUT/$name.table.json" --table none >"$OUT/$name.lat.log" 2>&1
  files=("$OUT/$name.lat.onnx")
  for f in $FLOPS; do
    "$LOPPER" prune "$src" -o "$OUT/$name.f$f.onnx" --target "flops=$f" --table none >/dev/null 2>&1
    files+=("$OUT/$name.f$f.onnx")
  done
  "$LOPPER" bench "$src" "${files[@]}" --backend ort --threads 2 --batch-size "$BATCH" \
    --precision 0.01 --csv >"$OUT/$name.bench.csv"
  python3 - "$name" "$BATCH" "$OUT/$name.bench.csv" <<'EOF'
import csv, sys
name, batch, path = sys.argv[1:]
rows = list(csv.DictReader(open(path)))
o, lat, flops = rows[0], rows[1], rows[2:]
ratio = lambda r: float(r["median_ms"]) / float(o["median_ms"])
target = ratio(lat)
points = sorted((float(r["flops_ratio"]), ratio(r)) for r in flops)
star = None
for (f0, l0), (f1, l1) in zip(points, points[1:]):
    if min(l0, l1) <= target <= max(l0, l1) and l0 != l1:
        star = f0 + (target - l0) * (f1 - f0) / (l1 - l0)
        break
curve = ", ".join("%.3f → %.3f" % p for p in points)
gain = "%.2f" % (float(lat["flops_ratio"]) / star) if star else "outside the sampled range"
print("| %s | %s | %.3f / %.3f | %s | %s | %s |" % (
    name, batch, float(lat["flops_ratio"]), target, curve, "%.3f" % star if star else "-", gain))
EOF
done
