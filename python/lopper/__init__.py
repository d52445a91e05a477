"""lopper: structured (channel/filter) pruning of ONNX models, from Python.

Every function runs the same command as the ``lopper`` program, in-process (the GIL is released
while it works), with the same options, checks and error messages::

    import lopper
    small = lopper.prune("model.onnx", target="flops=0.5")      # bytes of the verified model
    info = lopper.inspect(small)                                   # dict: params, MACs, ...

A model is a path, the bytes of an ONNX file, or an ``onnx.ModelProto``. Options not named in a
signature are passed as command-line flags: ``calibration_samples=64`` becomes
``--calibration-samples 64``, ``True`` a bare flag, lists and tuples comma-joined values
(``mean=(0.49, 0.48, 0.45)``); ``None`` and ``False`` are left out. A failure raises
:class:`Error` with the one line the command line prints.

Training, evaluation and latency targets use ONNX Runtime: the ``onnxruntime`` package this wheel
depends on is found automatically (``ORT_DYLIB_PATH`` set beforehand takes precedence).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Iterator, Union

__all__ = ["Error", "InternalError", "prune", "compress", "inspect", "groups", "run"]


def _use_pip_onnxruntime() -> None:
    """Points lopper at the ``onnxruntime`` package's shared library (without importing it)."""
    if os.environ.get("ORT_DYLIB_PATH"):
        return
    spec = find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        return
    capi = Path(next(iter(spec.submodule_search_locations))) / "capi"
    names = {"win32": "onnxruntime.dll", "darwin": "libonnxruntime*.dylib"}
    found = sorted(capi.glob(names.get(sys.platform, "libonnxruntime.so*")))
    if found:
        os.environ["ORT_DYLIB_PATH"] = str(found[0])


_use_pip_onnxruntime()

from ._native import Error, InternalError, __version__  # noqa: E402
from ._native import call as _call  # noqa: E402

Model = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, Any]
"""A path to an ONNX file, its bytes, or an ``onnx.ModelProto``."""


@contextlib.contextmanager
def _model_file(model: Model, tmp: Path) -> Iterator[str]:
    """The model as a file path: a path as it is (its external data beside it), anything else
    written into ``tmp``."""
    if isinstance(model, (str, os.PathLike)):
        yield os.fspath(model)
        return
    if isinstance(model, (bytes, bytearray, memoryview)):
        data = bytes(model)
    elif hasattr(model, "SerializeToString"):
        data = model.SerializeToString()
    else:
        raise TypeError(
            f"model must be a path, bytes or an onnx.ModelProto, not {type(model).__name__}"
        )
    path = tmp / "model.onnx"
    path.write_bytes(data)
    yield str(path)


def _flags(options: dict[str, Any]) -> list[str]:
    """Keyword options as command-line flags (see the module's documentation)."""
    out: list[str] = []
    for key, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif isinstance(value, (list, tuple)):
            out += [flag, ",".join(str(v) for v in value)]
        elif isinstance(value, os.PathLike):
            out += [flag, os.fspath(value)]
        else:
            out += [flag, str(value)]
    return out


def run(*args: Union[str, "os.PathLike[str]"], capture: bool = False) -> str:
    """Runs any ``lopper`` command, e.g. ``run("bench", "a.onnx", "b.onnx", "--json",
    capture=True)``. Returns what it printed to stdout when ``capture`` is true (else prints
    it and returns ``""``); warnings and progress go to stderr. Raises :class:`Error`."""
    return _call([os.fspath(a) for a in args], capture)


def _write(
    command: str,
    model: Model,
    output: Union[str, "os.PathLike[str]", None],
    args: list[str],
) -> bytes:
    """Runs a command that writes a model and returns the written file's bytes."""
    with tempfile.TemporaryDirectory(prefix="lopper-") as tmp_name:
        tmp = Path(tmp_name)
        with _model_file(model, tmp) as src:
            dest = Path(output) if output is not None else tmp / "out.onnx"
            extra = [] if output is not None else ["--external-data", "never"]
            _call([command, src, "-o", str(dest), *extra, *args], True)
            return dest.read_bytes()


def prune(
    model: Model,
    target: str | None = "flops=0.5",
    criterion: str = "l1",
    round_to: Union[int, str, None] = None,
    verify: bool = True,
    *,
    output: Union[str, "os.PathLike[str]", None] = None,
    **options: Any,
) -> bytes:
    """Removes channels and returns the pruned model's bytes, checked against the original
    with the removed channels silenced unless ``verify=False`` (``lopper prune``).

    ``target``: ``flops=R``, ``params=R`` or ``latency=R`` (the fraction to keep); ``None`` to
    choose the amount with other options (``ratio=0.3``, ``threshold=...``, ``plan=...``).
    ``round_to``: kept widths' multiple (default ``auto``; ``1`` for exact widths).
    ``output``: also write the model there (weights above 2 GB go to ``<output>.data``; the
    bytes returned are then the model file only). Other options as flags, e.g.
    ``save_plan="plan.json"``, ``report="report.json"``, ``save_masked="masked.onnx"``.
    """
    args = ["--criterion", criterion, "--table", "none"]
    if target is not None:
        args += ["--target", target]
    if round_to is not None:
        args += ["--round-to", str(round_to)]
    if not verify:
        args.append("--no-verify")
    return _write("prune", model, output, args + _flags(options))


def compress(
    model: Model,
    data: str,
    target: str | None = "flops=0.5",
    *,
    output: Union[str, "os.PathLike[str]", None] = None,
    **options: Any,
) -> bytes:
    """Original to shipped model in one call (``lopper compress``): evaluates, prunes,
    recovers (BatchNormalization statistics, fine-tuning), evaluates each stage and verifies;
    returns the final model's bytes. ``data`` as on the command line, e.g.
    ``"images:cifar10.zip"``; options as flags, e.g. ``epochs=1, mean=(...), std=(...),
    method="slimming", report="report.json"``."""
    args = ["--data", data]
    if target is not None:
        args += ["--target", target]
    return _write("compress", model, output, args + _flags(options))


def inspect(model: Model, layers: bool = False) -> dict[str, Any]:
    """The model's interface, opset, op histogram, parameters, MACs/FLOPs and activation
    memory (``lopper inspect --json``); with ``layers``, a per-layer list too."""
    with tempfile.TemporaryDirectory(prefix="lopper-") as tmp:
        with _model_file(model, Path(tmp)) as src:
            args = ["inspect", src, "--json"] + (["--layers"] if layers else [])
            return json.loads(_call(args, True))


def groups(model: Model) -> list[dict[str, Any]]:
    """The channel dependency groups (``lopper groups --json``): each with its producers,
    consumers, members, channel count and the reasons it cannot be pruned, if any."""
    with tempfile.TemporaryDirectory(prefix="lopper-") as tmp:
        with _model_file(model, Path(tmp)) as src:
            return json.loads(_call(["groups", src, "--json"], True))
