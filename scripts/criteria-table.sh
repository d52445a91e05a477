#!/usr/bin/env bash
# Prunes the pretrained CIFAR-10 ResNet-56 to half its MACs with each criterion (no
# fine-tuning) and prints a Markdown table of top-1 accuracy on the lossless test subset.
# Usage: scripts/criteria-table.sh [LOPPER_BINARY]   (default: target/release/lopper)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/lopper}
shared=../shared
model=$shared/models/pretrained/resnet56_cifar10.bn.onnx
data="npz:$shared/data/cifar10/lossless-subset.npz"
norm=(--mean 0.485,0.456,0.406 --std 0.229,0.224,0.225)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
acc() { "$bin" eval "$1" --data "$data" --split test "${norm[@]}" --json |
    python3 -c 'import json,sys; a=json.load(sys.stdin)["accuracy"]["top1"]; print("%.1f" % (100*a))'; }
echo "| criterion | MACs kept | params kept | top-1 (lossless x_test, 1000) | prune time |"
echo "|---|---:|---:|---:|---:|"
echo "| (unpruned) | 1.000 | 1.000 | $(acc "$model")% | |"
for c in l1 l2 bn-scale fpgm lamp random activation epruner; do
    extra=()
    [ "$c" = activation ] && extra=(--data "$data" --split train "${norm[@]}" --calibration-samples 512)
    start=$(date +%s.%N)
    "$bin" prune "$model" -o "$out/$c.onnx" --criterion "$c" --target flops=0.5 \
        --report "$out/$c.json" --table none "${extra[@]}" >/dev/null
    secs=$(python3 -c "import time; print(f'{time.time()-$start:.2f}')")
    ratios=$(python3 -c "import json; r=json.load(open('$out/$c.json')); print(f\"{r['macs'][1]/r['macs'][0]:.3f} | {r['params'][1]/r['params'][0]:.3f}\")")
    echo "| $c | $ratios | $(acc "$out/$c.onnx")% | ${secs} s |"
done
