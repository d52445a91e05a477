#!/usr/bin/env bash
# Installs the test oracles into .deps/python (no venv needed): ONNX Runtime (its shared library
# is what the `ort` backend loads) and the `onnx` package (its checker validates saved models).
# Idempotent: does nothing when the stamp matches. Prints the path of libonnxruntime.so.
set -euo pipefail
cd "$(dirname "$0")/.."

ORT_VERSION=1.31.1
ONNX_VERSION=1.20.1
DEPS=.deps/python
STAMP="$DEPS/.stamp"
WANT="onnxruntime==$ORT_VERSION onnx==$ONNX_VERSION"

find_lib() {
    local f
    for f in "$DEPS"/onnxruntime/capi/libonnxruntime.so*; do
        if [[ -f "$f" ]]; then
            echo "$f"
            return 0
        fi
    done
}

if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" || -z "$(find_lib)" ]]; then
    rm -rf "$DEPS"
    mkdir -p "$DEPS"
    log=$(mktemp)
    # shellcheck disable=SC2086
    if ! python3 -m pip install --quiet --disable-pip-version-check --no-input \
        --target "$DEPS" $WANT >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "setup-test-env: pip install of $WANT failed" >&2
        exit 1
    fi
    rm -f "$log"
    echo "$WANT" >"$STAMP"
fi

lib=$(find_lib)
if [[ -z "$lib" ]]; then
    echo "setup-test-env: libonnxruntime.so not found under $DEPS/onnxruntime/capi" >&2
    exit 1
fi
echo "$(pwd)/$lib"
