#!/usr/bin/env python3
"""A deployment pipeline in Python: a model exported from PyTorch to ONNX, compressed by lopper
(pruned to a MACs budget, recovered by distillation from the original, verified), then served
by ONNX Runtime, which measures the shipped model's accuracy on held-out samples.

    pip install target/wheels/lopper-*.whl torch      # `make wheel` builds the wheel
    python examples/pipeline.py --data npz:cifar10.npz --mean 0.49,0.48,0.45 --std 0.25,0.24,0.26

With ``--model FILE.onnx`` the export step is skipped (no PyTorch needed), e.g. with the model
the repository ships, ``fixtures/models/resnet20_cifar10.bn.onnx``. The data is an ``.npz``
with ``x_train``/``y_train`` and ``x_test``/``y_test`` (images NCHW float, or NHWC bytes).
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

import lopper


def export_from_pytorch(path: Path) -> None:
    """A small CIFAR-sized CNN with BatchNormalization, exported as a user's training code would
    (dynamic batch). Untrained here: the compress step trains it from its inherited weights."""
    import torch
    from torch import nn

    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU())

    net = nn.Sequential(block(3, 32), block(32, 64), nn.MaxPool2d(2), block(64, 128),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10)).eval()
    torch.onnx.export(net, torch.zeros(1, 3, 32, 32), str(path), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "N"}}, opset_version=17)


def floats(text: str) -> tuple:
    return tuple(float(v) for v in text.split(","))


def preprocess(x: np.ndarray, mean: tuple, std: tuple) -> np.ndarray:
    """What lopper does to the samples before the model, for serving: bytes scaled to [0, 1],
    NHWC to NCHW, then per-channel mean and std."""
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    x = x.astype(np.float32)
    if mean:
        x = (x - np.array(mean, np.float32)[:, None, None]) / np.array(std, np.float32)[:, None, None]
    return np.ascontiguousarray(x)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, help="an ONNX classifier (default: export one from PyTorch)")
    p.add_argument("--data", required=True, help="npz:FILE with x_train, y_train, x_test, y_test")
    p.add_argument("--mean", type=floats, default=())
    p.add_argument("--std", type=floats, default=())
    p.add_argument("--target", default="flops=0.5")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("pruned.onnx"))
    args = p.parse_args()

    model = args.model
    if model is None:
        model = args.out.with_name("exported.onnx")
        export_from_pytorch(model)
        print(f"exported {model}")

    norm = {"mean": args.mean or None, "std": args.std or None}
    small = lopper.compress(model, data=args.data, target=args.target, epochs=args.epochs,
                            output=args.out, report=args.out.with_suffix(".report.json"), **norm)
    before, after = lopper.inspect(model)["macs"], lopper.inspect(small)["macs"]
    print(f"compressed {model} -> {args.out}: MACs {before:,} -> {after:,} (x{after / before:.3f})")

    # Serving: the shipped bytes in ONNX Runtime, on the held-out split.
    test = np.load(args.data.split(":", 1)[-1])
    x, y = preprocess(test["x_test"], args.mean, args.std), test["y_test"]
    session = ort.InferenceSession(small, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    logits = np.concatenate([session.run(None, {name: x[i:i + 64]})[0]
                             for i in range(0, len(x), 64)])
    top1 = float((logits.argmax(axis=1) == y).mean())
    print(f"onnxruntime top-1 on {len(y)} held-out samples: {top1:.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
