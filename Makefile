# `make test`: installs the test oracles (ONNX Runtime, onnx checker) into .deps/python, runs
# every test target of the workspace with ORT_DYLIB_PATH and PYTHONPATH pointing at them, then
# builds the Python wheel from that same build and tests it in a new virtual environment
# (scripts/test-python.sh).
#
# The shared models and data live in ../shared. On a fresh clone without it, `make test` runs
# the suites that need neither (unit tests, generated models, the ONNX conformance cases, the
# README's main command on the shipped model) and says which were left out.

.PHONY: test setup wheel

# Suites of the integration test binary (tests/it, one module each) that read nothing from
# ../shared, as test-name filters.
STANDALONE = data:: golden_prune:: onnx_conformance:: opset9:: prune_property:: \
	train_conv_transpose:: vjp_elementwise:: vjp_linear:: vjp_more:: examples:: fuzz_mutations::

setup:
	@scripts/setup-test-env.sh >/dev/null

# The release wheel (`pip install target/wheels/lopper-*.whl`).
wheel:
	@scripts/build-wheel.sh

# `--round-to auto` is pinned to multiples of 8 from 8 channels (LOPPER_WIDTH_TABLE), so that
# the suites' widths do not depend on what the CI machine's convolutions measure; the test of
# the measurement itself (prune_cli::auto_widths_are_measured_once_and_cached) unsets it and
# measures into a folder of its own.
WIDTHS_PIN = {"format": 3, "runtime": "pinned by make test", "multiple": 8, "from": 8, "dips": [], "seconds": []}

test:
	@lib=$$(scripts/setup-test-env.sh) && \
	export ORT_DYLIB_PATH="$$lib" PYTHONPATH="$(CURDIR)/.deps/python$${PYTHONPATH:+:$$PYTHONPATH}" && \
	mkdir -p target && echo '$(WIDTHS_PIN)' >target/widths-pin.json && \
	export LOPPER_WIDTH_TABLE="$(CURDIR)/target/widths-pin.json" && \
	if [ -d ../shared/models ]; then \
		cargo test --workspace --all-targets --no-fail-fast; \
	else \
		echo "make test: ../shared is missing: running the suites that need no shared models or data"; \
		echo "make test: left out: every other suite of tests/it and tests/bench_aa.rs (they read ../shared/models and ../shared/data)"; \
		cargo test --workspace --no-fail-fast --lib --bins --test registry_removal && \
		cargo test --no-fail-fast --test it -- $(STANDALONE) \
			prune_cli::readme_main_command_prunes_the_shipped_model; \
	fi; rust=$$?; \
	scripts/test-python.sh || exit 1; \
	exit $$rust
