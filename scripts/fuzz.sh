#!/usr/bin/env bash
# A long run of the mutation harness (tests/it/fuzz_mutations.rs, issue 15): writes the seed
# corpus to target/fuzz-corpus/ (rebuilt from code each time, nothing large is committed),
# then mutates the seeds for SECONDS (default 3600) from case FROM (default 1000000, past the
# cases CI runs), on a debug build so that integer overflow panics. A failure names its case;
# replay it with LOPPER_FUZZ_FROM=<case> LOPPER_FUZZ_CASES=1.
#   usage: scripts/fuzz.sh [SECONDS] [FROM]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-3600}
from=${2:-1000000}
# ONNX Runtime from the pinned wheel, as `make test` uses it.
ORT_DYLIB_PATH=$(scripts/setup-test-env.sh)
export ORT_DYLIB_PATH
LOPPER_FUZZ_CORPUS="$PWD/target/fuzz-corpus" \
    cargo test --workspace --test it -- fuzz_mutations::seeds_are_the_named_cases
LOPPER_FUZZ_SECONDS=$seconds LOPPER_FUZZ_FROM=$from LOPPER_FUZZ_VERBOSE=1 \
    cargo test --workspace --test it -- fuzz_mutations::mutated_models_never_panic --nocapture
