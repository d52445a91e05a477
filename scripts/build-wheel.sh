#!/usr/bin/env bash
# Builds the `lopper` wheel (the Python API and the `lopper` command) into target/wheels with
# maturin, itself installed from the package registry into .deps/maturin on first use.
#   scripts/build-wheel.sh              # release build, for users
#   PROFILE=dev scripts/build-wheel.sh  # the tests' profile: reuses `cargo test`'s build
# Prints the wheel's path.
set -euo pipefail
cd "$(dirname "$0")/.."

MATURIN_VERSION=1.16.0
TOOLS=.deps/maturin
PROFILE=${PROFILE:-release}

if [[ ! -x "$TOOLS/bin/maturin" || "$(cat "$TOOLS/.stamp" 2>/dev/null)" != "$MATURIN_VERSION" ]]; then
    rm -rf "$TOOLS"
    log=$(mktemp)
    if ! python3 -m pip install --quiet --disable-pip-version-check --no-input \
        --target "$TOOLS" "maturin==$MATURIN_VERSION" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "build-wheel: pip install of maturin==$MATURIN_VERSION failed" >&2
        exit 1
    fi
    rm -f "$log"
    echo "$MATURIN_VERSION" >"$TOOLS/.stamp"
fi

rm -f target/wheels/lopper-*.whl
"$TOOLS/bin/maturin" build --quiet --strip --profile "$PROFILE" --out target/wheels >&2
ls target/wheels/lopper-*.whl
