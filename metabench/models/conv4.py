"""Conv-4: the standard few-shot backbone (Vinyals et al. 2016; Snell et al. 2017; Finn et al. 2017).

Four blocks of [3×3 conv, batch norm, ReLU, 2×2 max-pool] (computed as conv, batch norm,
max-pool, ReLU: the same function, see ``conv_block``); the output is flattened
(64 features for 28×28 inputs, 1,600 for 84×84). Every parameter is an ordinary
``nn.Parameter``, so MAML-family code can run the network functionally with
``torch.func.functional_call(model, params, x)``.

``track_running_stats=False`` makes batch norm always use the statistics of the batch it sees,
in training and evaluation alike. MAML-family algorithms need this (running-stat updates are
in-place and break ``torch.func.grad``; the MAML paper also normalises with batch statistics),
and it makes their evaluation transductive: a query's prediction depends on the other images
of its episode. Metric methods keep running statistics, so their embeddings are per image.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_block(in_channels: int, out_channels: int, track_running_stats: bool, pool: bool = True) -> nn.Sequential:
    """3×3 conv, batch norm, ReLU and (when ``pool``) 2×2 max-pool, the papers' block.

    Pooling runs before the ReLU: max-pooling and ReLU commute exactly (both only compare and
    select), so outputs and gradients of every order are bitwise those of ReLU-then-pool
    (tested), while the ReLU touches a quarter of the values: about 6% of a MAML meta-step here.
    Parameter names are unchanged (``blocks.<i>.0`` conv, ``blocks.<i>.1`` batch norm).
    """
    layers = [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels, track_running_stats=track_running_stats),
    ]
    return nn.Sequential(*layers, nn.MaxPool2d(2), nn.ReLU()) if pool else nn.Sequential(*layers, nn.ReLU())


class Conv4(nn.Module):
    """Conv-4 body; ``out_features(image_size)`` tells the flattened width.

    ``pooled`` blocks (the first ones) end in max-pooling; Relation Networks use 2 of 4 and
    ``flatten=False`` to keep feature maps for their relation module.
    """

    def __init__(
        self,
        in_channels: int = 1,
        hidden: int = 64,
        depth: int = 4,
        track_running_stats: bool = True,
        pooled: int | None = None,
        flatten: bool = True,
    ):
        super().__init__()
        channels = [in_channels] + [hidden] * depth
        self.pooled = depth if pooled is None else pooled
        self.blocks = nn.Sequential(
            *(conv_block(channels[i], channels[i + 1], track_running_stats, i < self.pooled) for i in range(depth))
        )
        self.hidden = hidden
        self.depth = depth
        self.flatten = flatten

    def out_size(self, image_size: int) -> int:
        """Height (= width) of the output feature maps."""
        size = image_size
        for _ in range(self.pooled):
            size //= 2
        return size

    def out_features(self, image_size: int) -> int:
        return self.hidden * self.out_size(image_size) ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(x)
        return out.flatten(1) if self.flatten else out


class Classifier(nn.Module):
    """A body followed by a linear head: the network MAML-family algorithms adapt."""

    def __init__(self, body: nn.Module, features: int, ways: int):
        super().__init__()
        self.body = body
        self.head = nn.Linear(features, ways)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
