#!/usr/bin/env python3
"""ONNX's node conformance cases, for tests/it/onnx_conformance.rs.

Usage (PYTHONPATH=.deps/python, see scripts/setup-test-env.sh):

    onnx_conformance.py generate DIR
        Writes every case of onnx.backend.test.case.node.collect_testcases(None): its model
        as a record of DIR/models.bin (see write_records; one file rather than thousands,
        which are slow to write and delete on a busy disk) and its inputs and expected outputs
        into DIR/data.pkl (pickled as the onnx package builds them). Each case whose inputs
        and outputs are all tensors also gets a constant-input variant, named <case>.const:
        the inputs become initializers holding the case's input values and each output y
        becomes Reshape(y, Shape(y)), so that constant folding evaluates the op under test
        itself (the expected outputs stay the same).

    onnx_conformance.py check DIR [--jobs N]
        Runs each case's original model and, when DIR/simplified.bin (written by the Rust
        test, same record format) has one, its simplified model through ONNX Runtime on the
        case's inputs and compares the outputs with the expected ones as onnx's backend test
        runner does (same output count; per output: same shape and dtype, then assert_allclose with the case's rtol/atol,
        1e-3/1e-7 for every node case; strings and sequences element by element). Writes
        DIR/results.json: {case: {"original": null | "why it failed",
        "simplified": null | "why it failed" | absent when there is no simplified model}}.

Exit codes: 0 done (the verdicts are in the files), 3 the onnx/onnxruntime/numpy packages cannot
be imported (the Rust test skips, or fails under CI), other: an error in this script.
"""
import json
import os
import pickle
import struct
import sys
import warnings

MISSING_PACKAGES = 3
# The name suffix of the constant-input variant of a case (see _const_variant).
CONST_SUFFIX = ".const"


def _imports():
    try:
        import numpy  # noqa: F401
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        print(f"onnx_conformance.py: cannot import onnx/onnxruntime/numpy ({e}); run "
              "scripts/setup-test-env.sh and set PYTHONPATH=.deps/python", file=sys.stderr)
        sys.exit(MISSING_PACKAGES)


def generate(out_dir):
    import onnx
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        # The case generators compute expected outputs with numpy and some overflow on purpose.
        warnings.simplefilter("ignore")
        cases = collect_testcases(None)
    models = []
    data = {}

    def add(name, model, data_sets, case):
        models.append((name, model.SerializeToString()))
        data[name] = {"data_sets": data_sets, "rtol": case.rtol, "atol": case.atol}

    for case in cases:
        add(case.name, case.model, case.data_sets, case)
    for case in cases:
        const = _const_variant(case)
        if const is not None:
            add(case.name + CONST_SUFFIX, const, [([], case.data_sets[0][1])], case)
    write_records(os.path.join(out_dir, "models.bin"), models)
    with open(os.path.join(out_dir, "data.pkl"), "wb") as f:
        pickle.dump(data, f)
    print(f"onnx {onnx.__version__}: {len(models)} node cases written to {out_dir}")


def write_records(path, records):
    """(name, bytes) records: u32 LE name length, UTF-8 name, u64 LE length, bytes."""
    with open(path, "wb") as f:
        for name, payload in records:
            n = name.encode()
            f.write(struct.pack("<I", len(n)) + n + struct.pack("<Q", len(payload)))
            f.write(payload)


def read_records(path):
    """The records of a write_records file, in order."""
    out = []
    with open(path, "rb") as f:
        buf = f.read()
    i = 0
    while i < len(buf):
        (n,) = struct.unpack_from("<I", buf, i)
        name = buf[i + 4:i + 4 + n].decode()
        i += 4 + n
        (m,) = struct.unpack_from("<Q", buf, i)
        out.append((name, buf[i + 8:i + 8 + m]))
        i += 8 + m
    return out


def _const_variant(case):
    """The case's model with its inputs turned into initializers holding the case's input
    values (kept as graph inputs too in IR < 4 models, where ONNX wants that), and each graph
    output y replaced by Reshape(y, Shape(y)): lopper does not fold a node that computes a graph
    output, so the tail lets constant folding evaluate the op under test itself. None when an
    input or expected output is not a tensor (sequence, optional), the case has several data
    sets, or the default-domain opset is below 5 (Reshape's shape input)."""
    import numpy as np
    from onnx import ModelProto, TensorProto, helper, numpy_helper

    if len(case.data_sets) != 1:
        return None
    inputs, outputs = case.data_sets[0]
    graph = case.model.graph
    if len(inputs) != len(graph.input):
        return None
    if not all(isinstance(x, (TensorProto, np.ndarray, np.generic)) for x in outputs):
        return None
    opsets = [o.version for o in case.model.opset_import if o.domain in ("", "ai.onnx")]
    if not opsets or opsets[0] < 5:
        return None
    inits = []
    for vi, x in zip(graph.input, inputs):
        if isinstance(x, TensorProto):
            t = TensorProto()
            t.CopyFrom(x)
        elif isinstance(x, (np.ndarray, np.generic)):
            try:
                t = numpy_helper.from_array(np.asarray(x))
            except Exception:  # a dtype onnx cannot store
                return None
        else:
            return None
        t.name = vi.name
        inits.append(t)
    model = ModelProto()
    model.CopyFrom(case.model)
    g = model.graph
    if model.ir_version >= 4:
        del g.input[:]
    g.initializer.extend(inits)
    tails = []
    for vi in g.output:
        shape, out = vi.name + "__shape", vi.name + "__out"
        g.node.extend([
            helper.make_node("Shape", [vi.name], [shape]),
            helper.make_node("Reshape", [vi.name, shape], [out]),
        ])
        tail = type(vi)()
        tail.CopyFrom(vi)
        tail.name = out
        tails.append(tail)
    del g.output[:]
    g.output.extend(tails)
    return model


def _feed_value(x):
    """An input as ONNX Runtime's Python API takes it."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    if isinstance(x, TensorProto):
        return numpy_helper.to_array(x)
    if isinstance(x, list):
        return [_feed_value(v) for v in x]
    if isinstance(x, np.generic):
        return np.array(x)
    return x


def _expected_value(x):
    import numpy as np
    from onnx import TensorProto, numpy_helper

    if isinstance(x, TensorProto):
        return numpy_helper.to_array(x)
    if isinstance(x, (list, tuple)):
        return [_expected_value(v) for v in x]
    if isinstance(x, np.generic):
        return np.array(x)
    return x


def _assert_similar(ref, out, rtol, atol):
    """onnx.backend.test.runner.Runner.assert_similar_outputs, for one output."""
    import numpy as np

    if isinstance(out, (list, tuple)) or isinstance(ref, (list, tuple)):
        if not isinstance(out, (list, tuple)) or not isinstance(ref, (list, tuple)):
            raise AssertionError(f"expected {type(ref).__name__}, got {type(out).__name__}")
        np.testing.assert_equal(len(out), len(ref))
        for r, o in zip(ref, out):
            _assert_similar(r, o, rtol, atol)
        return
    if ref is None or out is None:
        if ref is not None or out is not None:
            raise AssertionError(f"expected {ref!r}, got {out!r}")
        return
    np.testing.assert_array_equal(out.shape, ref.shape, err_msg="incorrect shape")
    if ref.dtype == object:
        np.testing.assert_array_equal(out, ref)
    else:
        np.testing.assert_equal(out.dtype, ref.dtype)
        np.testing.assert_allclose(out, ref, rtol=rtol, atol=atol)


def _run_model(model_bytes, case):
    """None when the model computes the expected outputs on ONNX Runtime, else why not."""
    import onnxruntime as ort

    try:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.log_severity_level = 4
        sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        for inputs, expected in case["data_sets"]:
            if len(inputs) != len(names):
                return f"the model has {len(names)} inputs, the case feeds {len(inputs)}"
            feed = {n: _feed_value(x) for n, x in zip(names, inputs)}
            outs = sess.run(None, feed)
            if len(outs) != len(expected):
                return f"{len(outs)} outputs, {len(expected)} expected"
            for i, (ref, out) in enumerate(zip(expected, outs)):
                try:
                    _assert_similar(_expected_value(ref), out, case["rtol"], case["atol"])
                except AssertionError as e:
                    return f"output {i}: " + " ".join(str(e).split())[:300]
    except Exception as e:  # ONNX Runtime raises several types
        return f"{type(e).__name__}: " + " ".join(str(e).split())[:300]
    return None


# What check's worker processes read (set before the pool forks).
_CHECK = {}


def _check_case(name):
    case = _CHECK["data"][name]
    res = {"original": _run_model(_CHECK["models"][name], case)}
    simplified = _CHECK["simplified"].get(name)
    if simplified is not None:
        res["simplified"] = _run_model(simplified, case)
    return name, res


def check(out_dir, jobs):
    names = [n for n, _ in read_records(os.path.join(out_dir, "models.bin"))]
    _CHECK["models"] = dict(read_records(os.path.join(out_dir, "models.bin")))
    simplified = os.path.join(out_dir, "simplified.bin")
    _CHECK["simplified"] = dict(read_records(simplified)) if os.path.exists(simplified) else {}
    with open(os.path.join(out_dir, "data.pkl"), "rb") as f:
        _CHECK["data"] = pickle.load(f)
    warnings.simplefilter("ignore")
    if jobs > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            results = dict(pool.imap_unordered(_check_case, names, chunksize=16))
    else:
        results = dict(map(_check_case, names))
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=0, sort_keys=True)
    passed = sum(r["original"] is None for r in results.values())
    print(f"{len(names)} cases checked, {passed} pass on the original model")


def main(argv):
    if len(argv) < 2 or argv[0] not in ("generate", "check"):
        print(__doc__, file=sys.stderr)
        return 2
    _imports()
    if argv[0] == "generate":
        generate(argv[1])
    else:
        jobs = os.cpu_count() or 1
        if len(argv) >= 4 and argv[2] == "--jobs":
            jobs = int(argv[3])
        check(argv[1], jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
