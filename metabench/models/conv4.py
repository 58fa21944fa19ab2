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

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` (N, C, H, W) laid out channels-last in memory (NHWC; the same values and shape).

    On CPU, batch norm and max-pooling of channels-last maps are vectorised over channels and
    several times faster than on NCHW maps, and a convolution of a channels-last input gives a
    channels-last output, so one conversion at the input keeps the whole body in that layout
    (a MAML meta-step is about 1.4× faster on one thread: ``benchmarks/``). A contiguous
    one-channel input (grey images) is laid out identically in both forms and
    ``.contiguous(memory_format=...)`` leaves its strides NCHW-like, which would make PyTorch pick
    NCHW for every layer; its strides are restated instead (no copy).
    """
    n, c, h, w = x.shape
    if c == 1 and x.is_contiguous():
        return x.as_strided(x.shape, (h * w, 1, w, 1))
    return x.contiguous(memory_format=torch.channels_last)


def batch_norm_from_moments(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """Batch norm of (N, C, H, W) maps with the batch's own statistics, written from mean and
    variance ops. Under ``torch.func.vmap``, ``F.batch_norm``'s second-order gradients are wrong
    (DESIGN.md, known traps); through these ops, a vmapped meta-gradient equals the per-task loop's
    in float64 (``tests/test_task_batching.py``)."""
    mean = x.mean((0, 2, 3), keepdim=True)
    variance = (x - mean).square().mean((0, 2, 3), keepdim=True)
    return (x - mean) * torch.rsqrt(variance + eps) * weight[:, None, None] + bias[:, None, None]


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
    ``flatten=False`` to keep feature maps for their relation module. The maps are channels-last
    in memory (``channels_last``, the fast layout on CPU); ``channels_last=False`` keeps NCHW,
    the reference the tests compare with (equal up to float rounding).
    """

    # declared behaviour (metabench.identity): bump, with a note, when the function it computes changes
    version = 1
    release_notes = {1: "[3x3 conv, batch norm, max-pool, ReLU] blocks, channels-last on CPU, at 806d491."}

    def __init__(
        self,
        in_channels: int = 1,
        hidden: int = 64,
        depth: int = 4,
        track_running_stats: bool = True,
        pooled: int | None = None,
        flatten: bool = True,
        channels_last: bool = True,
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
        self.channels_last = channels_last
        self.vmap_safe = False  # set by ``vmap_safe`` below

    def out_size(self, image_size: int) -> int:
        """Height (= width) of the output feature maps."""
        size = image_size
        for _ in range(self.pooled):
            size //= 2
        return size

    def out_features(self, image_size: int) -> int:
        return self.hidden * self.out_size(image_size) ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.vmap_safe:
            out = x
            for layer in (layer for block in self.blocks for layer in block):
                is_norm = isinstance(layer, nn.BatchNorm2d)
                out = batch_norm_from_moments(out, layer.weight, layer.bias, layer.eps) if is_norm else layer(out)
        else:
            out = self.blocks(channels_last(x) if self.channels_last else x)
        return out.flatten(1) if self.flatten else out


class Classifier(nn.Module):
    """A body followed by a linear head: the network MAML-family algorithms adapt."""

    def __init__(self, body: nn.Module, features: int, ways: int):
        super().__init__()
        self.body = body
        self.head = nn.Linear(features, ways)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@contextlib.contextmanager
def batch_statistics(networks: list[nn.Module]) -> Iterator[None]:
    """Within the block, every batch norm of ``networks`` normalises with the statistics of the
    batch it sees, whatever the train/eval mode, and leaves its running statistics untouched."""
    norms = [m for network in networks for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.track_running_stats) for m in norms]
    for norm in norms:  # training without tracking: batch statistics, no running-stat update
        norm.training, norm.track_running_stats = True, False
    try:
        yield
    finally:
        for norm, (training, tracking) in zip(norms, saved):
            norm.training, norm.track_running_stats = training, tracking


@contextlib.contextmanager
def vmap_safe(model: nn.Module) -> Iterator[None]:
    """Within the block, every Conv-4 body of ``model`` can run under ``torch.func.vmap`` (a batch
    of tasks at once) with correct gradients of every order: its batch norms are computed from
    mean and variance ops (``batch_norm_from_moments``) and its maps keep PyTorch's default
    layout (restating strides is not batchable). Only for bodies without running statistics,
    the MAML family's, whose batch norm always uses the batch's statistics.
    """
    bodies = [module for module in model.modules() if isinstance(module, Conv4)]
    for body in bodies:
        if any(isinstance(m, nn.BatchNorm2d) and m.track_running_stats for m in body.modules()):
            raise ValueError("vmap_safe needs batch norms without running statistics (track_running_stats=False)")
        body.vmap_safe = True
    try:
        yield
    finally:
        for body in bodies:
            body.vmap_safe = False
