#!/usr/bin/env bash
# A benchmark harness calling lopper: times the shipped ResNet-20 against its pruned copy
# (built by this folder's Makefile) interleaved in one run, and reads the JSON report.
#
#   examples/bench.sh [LOPPER]
set -euo pipefail
cd "$(dirname "$0")"
LOPPER=${1:-"cargo run --release --quiet --manifest-path ../Cargo.toml --"}
OUT=${OUT:-build}
make --no-print-directory LOPPER="$LOPPER" OUT="$OUT" >/dev/null
$LOPPER bench ../fixtures/models/resnet20_cifar10.bn.onnx "$OUT/resnet20.pruned.onnx" --json \
  | python3 -c '
import json, sys
r = json.load(sys.stdin)
o, p = r["models"]
lo, hi = p["speedup_ci"]
print("%s on %s: pruned %.3f ms vs %.3f ms, %.2fx faster (95%%: %.2f-%.2f), FLOPs x%.3f"
      % (r["backend"], r["device"], p["latency"]["median"] * 1e3, o["latency"]["median"] * 1e3,
         p["speedup"], lo, hi, p["flops_ratio"]))
'
