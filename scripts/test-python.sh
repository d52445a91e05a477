#!/usr/bin/env bash
# Tests the wheel as a user installs it: builds it (PROFILE=dev by default, reusing the build
# of `cargo test`), installs it into a new virtual environment under target/ (its dependency
# onnxruntime, and pytest, numpy and onnx for the tests, come from the package registry), and
# runs python/tests with pytest. Nothing from ../shared is needed.
set -euo pipefail
cd "$(dirname "$0")/.."

export PROFILE=${PROFILE:-dev}
wheel=$(scripts/build-wheel.sh)
venv=target/python-test-venv
rm -rf "$venv"
python3 -m venv "$venv"
oracles=$(pwd)/.deps/python
if [[ ! -d "$oracles/onnxruntime" ]]; then
    scripts/setup-test-env.sh >/dev/null
fi
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$oracles" >"$site/lopper-test-oracles.pth"
log=$(mktemp)
# ORT_DYLIB_PATH from the caller would hide whether the wheel finds its own ONNX Runtime.
unset ORT_DYLIB_PATH PYTHONPATH
if ! "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input \
    "$wheel" pytest >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "test-python: pip install of the wheel failed" >&2
    exit 1
fi
rm -f "$log"
"$venv/bin/lopper" --version
"$venv/bin/python" -m pytest -q -p no:cacheprovider python/tests "$@"
