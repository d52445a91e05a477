"""The PyTorch reference of `cargo bench --bench train_step`: the CIFAR-10 ResNets of the
pretrained ONNX models rebuilt with identical shapes (3x3 convolutions without bias, BN, ReLU;
option-A shortcuts: a stride-2 slice and zero channel padding, as in the exports; global
average pool; a 64 x 10 linear layer), trained by the step lopper compiles: SGD momentum 0.9,
weight decay 5e-4, cross-entropy, eager mode, the given batch and intra-op threads.

A server, so that the bench can interleave it with lopper's step in one run: after building
the model and running the warm-up steps it prints `ready`; then each line `steps K` on stdin
runs K steps and prints a JSON list of their wall times in seconds. `quit` or EOF ends it.

    python3 benches/torch_reference.py --blocks 3 --batch 128 --threads 2 --warmup 2
"""

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    """Two 3x3 convolutions with BN; the shortcut slices and zero-pads when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = (cout - cin) // 2 if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.pad is None:
            shortcut = x
        else:
            shortcut = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + shortcut)


class ResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 images: 16, 32, 64 channels, n blocks each."""

    def __init__(self, n: int, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                layers.append(Block(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        out = F.avg_pool2d(out, out.shape[3]).flatten(1)
        return self.linear(out)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--blocks", type=int, required=True, help="n: 3 for ResNet-20, 9 for ResNet-56")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(0)
    model = ResNet(args.blocks).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(args.batch, 3, 32, 32, generator=g) * 2 - 1
    y = torch.randint(0, 10, (args.batch,), generator=g)

    def step() -> float:
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return time.perf_counter() - start

    for _ in range(args.warmup):
        step()
    print("ready", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        if words[0] == "steps":
            print(json.dumps([step() for _ in range(int(words[1]))]), flush=True)


if __name__ == "__main__":
    main()
