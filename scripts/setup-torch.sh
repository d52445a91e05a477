#!/usr/bin/env bash
# Installs the pinned PyTorch of the training benchmark's reference (`cargo bench --bench
# train_step`) into the ignored .deps/torch, from the package registry. For benchmarks only:
# `make test` and CI never need it. The registry's Linux wheel is the CUDA build, and it does not
# import without its CUDA libraries even on a CPU, so they come too (~4 GB on disk); the
# reference runs on the CPU. Idempotent. Prints the folder to put on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.15.0
DEPS=.deps/torch
STAMP="$DEPS/.stamp"

if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$TORCH_VERSION" ]]; then
    rm -rf "$DEPS"
    mkdir -p "$DEPS"
    log=$(mktemp)
    if ! python3 -m pip install --quiet --disable-pip-version-check --no-input \
        --target "$DEPS" "torch==$TORCH_VERSION" numpy >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "setup-torch: pip install of torch==$TORCH_VERSION failed" >&2
        exit 1
    fi
    rm -f "$log"
    echo "$TORCH_VERSION" >"$STAMP"
fi
echo "$(pwd)/$DEPS"
