#!/usr/bin/env bash
# The README's panning rows: ResNet-20 pruned at initialisation and trained for the same epoch
# budget (CIFAR-10 JPEG train split), its weight masks chosen by the panning agent, by magnitude
# alone and at random, at 90% and 95% weight sparsity; and the channel variant at FLOPs x0.5.
# Each run's report is kept and its final model also evaluated on the lossless subset.
#
#   scripts/panning-table.sh            # then: python3 scripts/methods-table.py OUT
#
# Settings by environment: EPOCHS (5), LIMIT (training samples per epoch, 10000), SPARSITIES
# ("0.9 0.95"), RUNS ("agent magnitude random agent-fair channel"), OUT. `agent-fair` spends
# one epoch of the budget on the agent's pulls (one epoch's steps shared among 12 pulls) and
# the rest on training, so that it trains on as many samples as the baselines.
# Needs a release build and `make setup`.
set -euo pipefail
cd "$(dirname "$0")/.."
LOPPER=${LOPPER:-target/release/lopper}
SHARED=${SHARED:-../shared}
OUT=${OUT:-target/panning-table}
EPOCHS=${EPOCHS:-5}
LIMIT=${LIMIT:-10000}
SPARSITIES=${SPARSITIES:-"0.9 0.95"}
RUNS=${RUNS:-"agent magnitude random agent-fair channel"}
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$(scripts/setup-test-env.sh)}
mkdir -p "$OUT"
norm=(--mean 0.485,0.456,0.406 --std 0.229,0.224,0.225)
data=(--data "images:$SHARED/data/cifar10/cifar10-jpeg.zip" "${norm[@]}")
lossless=(--data "npz:$SHARED/data/cifar10/lossless-subset.npz" --split test "${norm[@]}")
steps=$(( LIMIT / 128 ))
one() { # name, then the run's own flags
  local name=$1; shift
  local start; start=$(date +%s)
  "$LOPPER" compress "$SHARED/models/pretrained/resnet20_cifar10.bn.onnx" "${data[@]}" \
    --method panning --limit "$LIMIT" "$@" --report "$OUT/$name.json" -o "$OUT/$name.onnx" \
    > "$OUT/$name.txt" 2> "$OUT/$name.log" \
    || { echo "$name failed: $(tail -1 "$OUT/$name.log")"; return; }
  echo "$(( $(date +%s) - start ))" > "$OUT/$name.wall"
  "$LOPPER" eval "$OUT/$name.onnx" "${lossless[@]}" --json > "$OUT/$name.lossless.json"
  echo "$name done in $(cat "$OUT/$name.wall") s"
}
for run in $RUNS; do
  if [ "$run" = channel ]; then
    one r20-panning-channel --granularity channel --target flops=0.5 --epochs "$EPOCHS"
    continue
  fi
  for s in $SPARSITIES; do
    case "$run" in
      agent) one "r20-panning-$s" --weight-sparsity "$s" --epochs "$EPOCHS" ;;
      agent-fair) one "r20-panning-fair-$s" --weight-sparsity "$s" --epochs $((EPOCHS - 1)) \
        --mend-evaluations 12 --inherit-steps $((steps / 12)) ;;
      *) one "r20-$run-$s" --weight-sparsity "$s" --pan-index "$run" --epochs "$EPOCHS" ;;
    esac
  done
done
