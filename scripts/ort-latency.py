"""An independent latency harness (ONNX Runtime from Python): CPU, 2 threads, batch 1,
spinning off, the models interleaved in 30 rounds (the issue's harness; `ROUNDS=N` for more)
after 5 warm-up rounds. Prints the median latency of every model after the first as a ratio to
the first's, e.g. `0.612 / 0.981`.

    python3 scripts/ort-latency.py ORIGINAL.onnx PRUNED.onnx [MORE.onnx ...]
    ROUNDS=300 python3 scripts/ort-latency.py ORIGINAL.onnx PRUNED.onnx
"""
import os
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort


def session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feed = {}
    rng = np.random.default_rng(0)
    for i in s.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in i.shape]
        feed[i.name] = rng.random(shape, dtype=np.float32)
    return s, feed


def main():
    sessions = [session(p) for p in sys.argv[1:]]
    times = [[] for _ in sessions]
    rounds = int(os.environ.get("ROUNDS", "30"))
    for r in range(5 + rounds):
        for k in range(len(sessions)):
            j = (r + k) % len(sessions)
            s, feed = sessions[j]
            t = time.perf_counter()
            s.run(None, feed)
            if r >= 5:
                times[j].append(time.perf_counter() - t)
    base = statistics.median(times[0])
    print(" / ".join("%.3f" % (statistics.median(t) / base) for t in times[1:]))


if __name__ == "__main__":
    main()
