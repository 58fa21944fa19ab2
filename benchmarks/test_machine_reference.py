"""The machine reference: a fixed plain-PyTorch workload the gate divides every gated time by.

CI machines of one CPU kind still differ by 20-50% in speed (cache sizes, clocks, neighbours), so
the gate compares each hot path's time *relative to this workload, measured in the same run*
with the same ratio in the baseline (``benchmarks/gate.py``). It uses no metabench code, so a
change to metabench can never move it: a Conv-4 of 64 channels built from ``torch.nn``, forward
and backward on a 5-way 16-image batch of 28×28 grey images, the shape of the gated steps.
"""

from __future__ import annotations

import torch
from torch import nn

REPEATS = 10  # about 0.2-0.4 s a round on a 2-core machine: long enough to time steadily


def plain_conv4() -> nn.Sequential:
    layers, channels = [], 1
    for _ in range(4):
        layers += [nn.Conv2d(channels, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2)]
        channels = 64
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(64, 5))


def forward_backward(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
    for _ in range(REPEATS):
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(images), labels).backward()


def test_machine_reference(benchmark):
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = plain_conv4()
    images = torch.randn(80, 1, 28, 28, generator=generator)
    labels = torch.arange(5).repeat_interleave(16)
    benchmark.pedantic(forward_backward, args=(model, images, labels), rounds=7, warmup_rounds=1)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
