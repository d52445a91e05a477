# `make test`: installs the test oracles (ONNX Runtime, onnx checker) into .deps/python, then
# runs every test target with ORT_DYLIB_PATH and PYTHONPATH pointing at them.

.PHONY: test setup

setup:
	@scripts/setup-test-env.sh >/dev/null

test:
	@lib=$$(scripts/setup-test-env.sh) && \
	export ORT_DYLIB_PATH="$$lib" PYTHONPATH="$(CURDIR)/.deps/python$${PYTHONPATH:+:$$PYTHONPATH}" && \
	cargo test --all-targets --no-fail-fast
