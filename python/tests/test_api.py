"""The installed wheel as a user meets it: the Python API and the `lopper` console script,
checked with ONNX Runtime from Python (an independent runtime) on the model the repository
ships. Run by scripts/test-python.sh in a fresh virtual environment."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import lopper

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "fixtures" / "models" / "resnet20_cifar10.bn.onnx"


def outputs(model, x):
    """The model's logits for `x` in ONNX Runtime (CPU); `model` a path or bytes."""
    source = os.fspath(model) if isinstance(model, Path) else model
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def images(n=8, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32), dtype=np.float32)


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_pruned_model_computes_the_masked_original_in_onnxruntime(tmp_path):
    masked = tmp_path / "masked.onnx"
    pruned = lopper.prune(MODEL, target="flops=0.5", save_masked=masked)
    x = images()
    got, want, original = outputs(pruned, x), outputs(masked, x), outputs(MODEL, x)
    assert got.shape == (8, 10)
    # The reference is not vacuous: its outputs vary across inputs and the removal changed them.
    assert float(want.std(axis=0).max()) > 1e-2
    assert rel(want, original) > 1e-3
    assert rel(got, want) < 1e-4
    kept = lopper.inspect(pruned)["macs"] / lopper.inspect(MODEL)["macs"]
    assert abs(kept - 0.5) < 0.01, kept


def test_a_path_bytes_and_a_model_proto_give_the_same_bytes():
    by_path = lopper.prune(MODEL, target="params=0.6")
    by_bytes = lopper.prune(MODEL.read_bytes(), target="params=0.6")
    by_proto = lopper.prune(onnx.load(os.fspath(MODEL)), target="params=0.6")
    assert by_path == by_bytes == by_proto
    onnx.checker.check_model(onnx.load_from_string(by_path))


def test_options_become_flags_and_a_saved_plan_replays_byte_for_byte(tmp_path):
    plan = tmp_path / "plan.json"
    report = tmp_path / "report.json"
    first = lopper.prune(MODEL, target=None, ratio=0.25, round_to=1, save_plan=plan, report=report)
    before, after = json.loads(report.read_text())["macs"]
    assert before == lopper.inspect(MODEL)["macs"] and after < 0.9 * before
    again = lopper.prune(MODEL, target=None, plan=plan, criterion="l1")
    assert first == again
    out = tmp_path / "written.onnx"
    returned = lopper.prune(MODEL, target=None, plan=plan, output=out)
    assert out.read_bytes() == returned == first


def test_bad_input_raises_the_command_lines_message(tmp_path):
    with pytest.raises(lopper.Error, match="missing.onnx"):
        lopper.prune(tmp_path / "missing.onnx")
    with pytest.raises(lopper.Error):
        lopper.prune(b"not an onnx model")
    with pytest.raises(lopper.Error, match=r"must be in \(0, 1\]"):
        lopper.prune(MODEL, target="flops=2")
    with pytest.raises(lopper.Error, match="--no-such-option"):
        lopper.prune(MODEL, no_such_option=3)
    with pytest.raises(TypeError, match="path, bytes or an onnx.ModelProto"):
        lopper.prune(42)
    # Nothing was written beside the missing model.
    assert list(tmp_path.iterdir()) == []


def test_inspect_and_groups_return_data():
    info = lopper.inspect(MODEL, layers=True)
    assert info["inputs"][0]["name"] == "input"
    assert info["params"] > 200_000 and info["macs"] > 40_000_000
    assert len(info["layers"]) > 20
    groups = lopper.groups(MODEL)
    assert sum(1 for g in groups if not g["blocked"]) >= 3
    assert all(g["channels"] > 0 for g in groups)
    assert "prune" in lopper.run("--help", capture=True)


def test_the_gil_is_released_while_a_command_runs():
    ticks = []
    stop = threading.Event()

    def count():
        while not stop.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.001)

    counter = threading.Thread(target=count)
    counter.start()
    calls = []
    for _ in range(5):
        start = time.monotonic()
        lopper.prune(MODEL, target="flops=0.5")
        calls.append((start + 0.02, time.monotonic() - 0.02))
    stop.set()
    counter.join()
    inside = [t for t in ticks if any(a < t < b for a, b in calls)]
    busy = sum(b - a for a, b in calls)
    # With the GIL held through each call the counter could not tick inside one at all.
    assert busy > 0.1, f"calls too short to tell: {calls}"
    assert len(inside) > 10 * busy, f"{len(inside)} ticks in {busy:.2f} s of calls"


def lopper_script(*args, cwd=None):
    exe = Path(sys.executable).with_name("lopper")
    return subprocess.run([exe, *map(os.fspath, args)], capture_output=True, text=True, cwd=cwd)


def test_the_console_script_is_the_command_line(tmp_path):
    shown = lopper_script("--help")
    assert shown.returncode == 0 and "prune" in shown.stdout
    out = tmp_path / "small.onnx"
    done = lopper_script("prune", MODEL, "--target", "flops=0.5", "-o", out)
    assert done.returncode == 0, done.stderr
    assert "verified" in done.stdout + done.stderr
    assert outputs(out, images(2)).shape == (2, 10)
    bad = lopper_script("prune", tmp_path / "missing.onnx", "-o", tmp_path / "x.onnx")
    assert bad.returncode == 2
    assert bad.stderr.startswith("lopper: ") and bad.stderr.count("\n") == 1, bad.stderr


def test_onnx_runtime_from_the_wheels_dependency_trains_a_pruned_model(tmp_path):
    """After `pip install` alone, training finds ONNX Runtime (the `onnxruntime` package the
    environment imports, not a path the user set): compress prunes and fine-tunes on samples
    labelled by the original model itself."""
    ort_dir = os.path.dirname(os.path.realpath(ort.__file__))
    assert os.path.realpath(os.environ["ORT_DYLIB_PATH"]).startswith(ort_dir)
    x = images(256, seed=1)
    y = outputs(MODEL, x).argmax(axis=1).astype(np.int64)
    data = tmp_path / "teacher.npz"
    np.savez(data, x_train=x, y_train=y, x_test=x[:64], y_test=y[:64])
    report = tmp_path / "report.json"
    small = lopper.compress(
        MODEL, data=f"npz:{data}", target="flops=0.7", epochs=1, batch_size=32,
        report=report,
    )
    stages = json.loads(report.read_text())["stages"]
    assert [s["stage"] for s in stages] == ["original", "prune", "kd"]
    assert stages[0]["top1"] == 1.0  # the labels are the original's own predictions
    assert "1 epochs" in stages[2]["note"]
    assert outputs(small, x[:4]).shape == (4, 10)


def test_the_python_pipeline_example_ships_a_model_onnxruntime_serves(tmp_path):
    """examples/pipeline.py with --model (no PyTorch here), on samples labelled by the model
    itself: compress, then ONNX Runtime's accuracy of the shipped model."""
    x = images(192, seed=2)
    y = outputs(MODEL, x).argmax(axis=1).astype(np.int64)
    data = tmp_path / "self.npz"
    np.savez(data, x_train=x[:128], y_train=y[:128], x_test=x[128:], y_test=y[128:])
    out = tmp_path / "pruned.onnx"
    done = subprocess.run(
        [sys.executable, ROOT / "examples" / "pipeline.py", "--model", MODEL,
         "--data", f"npz:{data}", "--epochs", "1", "--target", "flops=0.7", "--out", out],
        capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "onnxruntime top-1 on 64 held-out samples" in done.stdout, done.stdout
    assert "(x0.7" in done.stdout or "(x0.69" in done.stdout, done.stdout
    assert out.exists() and out.with_suffix(".report.json").exists()
