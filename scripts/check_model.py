#!/usr/bin/env python3
"""Runs onnx.checker.check_model(path, full_check=True) on each file given.

Usage: PYTHONPATH=.deps/python python3 scripts/check_model.py FILE...
The path form is used so that external data next to the model is found. Exits 1 at the first
failure, naming the file and the checker's message.
"""
import sys


def main(paths):
    if not paths:
        print("usage: check_model.py FILE...", file=sys.stderr)
        return 2
    try:
        import onnx
    except ImportError as e:
        print(f"check_model.py: cannot import onnx ({e}); run scripts/setup-test-env.sh and "
              "set PYTHONPATH=.deps/python", file=sys.stderr)
        return 2
    for path in paths:
        try:
            onnx.checker.check_model(path, full_check=True)
        except Exception as e:  # the checker raises several exception types
            print(f"{path}: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
