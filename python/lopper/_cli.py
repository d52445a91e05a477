"""The ``lopper`` console script: the command line, run in-process (see ``lopper --help``)."""

import sys


def main() -> None:
    """Runs ``lopper`` with this process's arguments and exits with its exit code."""
    from . import _native  # importing the package first finds ONNX Runtime

    sys.stdout.flush()
    sys.exit(_native.main(["lopper", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
