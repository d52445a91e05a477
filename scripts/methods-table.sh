#!/usr/bin/env bash
# The README's methods table: every `lopper compress --method` and the plain baseline (l1 +
# distillation) at the same total epoch budget (sparse training and recovery together), each
# run's report kept, each final model also evaluated on the lossless CIFAR-10 subset.
#
#   scripts/methods-table.sh r20     # ResNet-20, CIFAR-10 JPEG train split, FLOPs x0.5
#   scripts/methods-table.sh mnist   # mnist-8, MNIST, FLOPs x0.3
#   scripts/methods-table.sh r56     # ResNet-56, FLOPs x0.5, baseline and the best method
#
# Settings by environment: EPOCHS, LIMIT (training samples per epoch), METHODS, OUT, EXTRA
# (more flags for every run), TAG (a suffix for the output names). A method
# name may carry a variant: slimming-scratch (--from-scratch); plain-width (--drop-blocks 0:
# the baseline by width alone, as the README's tables measured it); adapruner-fair and
# mending-fair spend one epoch of the budget on their candidates' brief training (one epoch's
# steps shared among the candidates) and the rest on recovery, so that every row trains on
# the same number of samples.
# Needs a release build and `make setup`. Then `python3 scripts/methods-table.py OUT` prints
# the markdown rows.
set -euo pipefail
cd "$(dirname "$0")/.."
LOPPER=${LOPPER:-target/release/lopper}
SHARED=${SHARED:-../shared}
OUT=${OUT:-target/methods-table}
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$(scripts/setup-test-env.sh)}
mkdir -p "$OUT"
case "${1:-r20}" in
  r20|r56)
    if [ "$1" = r20 ]; then model=resnet20_cifar10.bn.onnx; else model=resnet56_cifar10.bn.onnx; fi
    data=(--data "images:$SHARED/data/cifar10/cifar10-jpeg.zip" --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225)
    target=flops=0.5
    lossless=(--data "npz:$SHARED/data/cifar10/lossless-subset.npz" --split test --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225)
    default_epochs=5
    train_size=50000 ;;
  mnist)
    model=mnist-8.onnx
    data=(--data "mnist:$SHARED/data/mnist" --scale 0.00392156862745098 --no-augment)
    target=flops=0.3
    lossless=()
    default_epochs=3
    train_size=60000 ;;
  *) echo "usage: $0 r20|mnist|r56" >&2; exit 2 ;;
esac
EPOCHS=${EPOCHS:-$default_epochs}
METHODS=${METHODS:-"plain masksparsity slimming adapruner epruner slimming-scratch"}
limit=()
[ -n "${LIMIT:-}" ] && limit=(--limit "$LIMIT")
epoch_steps=$(( ${LIMIT:-$train_size} / 128 ))
# EXTRA: more flags for every run (word-split), TAG: a suffix for the output names.
read -ra more <<< "${EXTRA:-}"
for m in $METHODS; do
  name="$1-$m${TAG:-}"
  method=${m%%-*}
  epochs=$EPOCHS
  extra=(--target "$target" "${more[@]}")
  case "$m" in
    slimming-scratch) extra+=(--from-scratch) ;;
    plain-width) extra+=(--drop-blocks 0) ;;
    adapruner-fair) epochs=$((EPOCHS - 1)); extra+=(--inherit-steps $((epoch_steps / 4))) ;;
    mending-fair) epochs=$((EPOCHS - 1)); extra+=(--mend-evaluations 5 --inherit-steps $((epoch_steps / 5))) ;;
  esac
  start=$(date +%s)
  "$LOPPER" compress "$SHARED/models/pretrained/$model" "${data[@]}" --method "$method" \
    --epochs "$epochs" "${limit[@]}" "${extra[@]}" --report "$OUT/$name.json" \
    -o "$OUT/$name.onnx" > "$OUT/$name.txt" 2> "$OUT/$name.log" \
    || { echo "$name failed: $(tail -1 "$OUT/$name.log")"; continue; }
  echo "$(( $(date +%s) - start ))" > "$OUT/$name.wall"
  if [ ${#lossless[@]} -gt 0 ]; then
    "$LOPPER" eval "$OUT/$name.onnx" "${lossless[@]}" --json > "$OUT/$name.lossless.json"
  fi
  echo "$name done in $(cat "$OUT/$name.wall") s"
done
