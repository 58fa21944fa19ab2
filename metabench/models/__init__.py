"""Backbones by name: ``build_backbone("conv4" | "resnet12", ...)``, selected by each algorithm's ``backbone`` hyper-parameter."""

from __future__ import annotations

from torch import nn

from metabench import MetabenchError
from metabench.models.conv4 import Classifier, Conv4
from metabench.models.resnet12 import ResNet12

BACKBONES = {"conv4": Conv4, "resnet12": ResNet12}


def build_backbone(name: str, in_channels: int, hidden: int = 64, track_running_stats: bool = True) -> nn.Module:
    if name not in BACKBONES:
        raise MetabenchError(f"unknown backbone {name!r}; choose one of {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name](in_channels=in_channels, hidden=hidden, track_running_stats=track_running_stats)


__all__ = ["BACKBONES", "Classifier", "Conv4", "ResNet12", "build_backbone"]
