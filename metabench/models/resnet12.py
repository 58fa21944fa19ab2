"""ResNet-12, the backbone of MetaOptNet (Lee et al. 2019), TADAM and FEAT (Ye et al. 2020).

Four residual blocks; each is three [3×3 conv, batch norm, LeakyReLU(0.1)] layers (no ReLU
after the third's batch norm until the residual sum), a 1×1 conv + batch norm shortcut, then
LeakyReLU and 2×2 max-pooling. Widths are (1, 2.5, 5, 10) × ``hidden`` (64 → 64-160-320-640, the
standard). The output is global-average-pooled to ``10·hidden`` features (FEAT's variant;
MetaOptNet flattens the 5×5 map instead). DropBlock regularisation is not included.

Like Conv-4, every parameter is an ordinary ``nn.Parameter``, so MAML-family code runs it with
``torch.func.functional_call``; ``track_running_stats=False`` gives batch-statistics
normalisation for them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResidualBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, track_running_stats: bool):
        super().__init__()
        layers = []
        for i in range(3):
            layers += [
                nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels, track_running_stats=track_running_stats),
            ]
            if i < 2:
                layers.append(nn.LeakyReLU(0.1))
        self.body = nn.Sequential(*layers)
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels, track_running_stats=track_running_stats),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.leaky_relu(self.body(x) + self.shortcut(x), 0.1), 2)


class ResNet12(nn.Module):
    # declared behaviour (metabench.identity): bump, with a note, when the function it computes changes
    version = 1
    release_notes = {1: "Four residual blocks of three 3x3 convolutions, global average pooling, at 806d491."}

    def __init__(self, in_channels: int = 3, hidden: int = 64, track_running_stats: bool = True):
        super().__init__()
        widths = [hidden, int(2.5 * hidden), 5 * hidden, 10 * hidden]
        channels = [in_channels, *widths]
        self.blocks = nn.Sequential(
            *(ResidualBlock(channels[i], channels[i + 1], track_running_stats) for i in range(4))
        )
        self.width = widths[-1]

    def out_features(self, image_size: int) -> int:
        if image_size < 16:
            raise ValueError(f"ResNet-12 pools four times; {image_size}x{image_size} images are too small")
        return self.width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x).mean(dim=(2, 3))
