"""Run configuration: one run is (dataset, algorithm, ways, shots, seed) plus budgets.

A run is a pure function of its config and its data: the same config on the same data gives
the same outputs (bit for bit on CPU), so any executor can run it and DVC can cache it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from metabench import MetabenchError


@dataclass
class RunConfig:
    dataset: str = "glyphs"  # name in the dataset store (see `metabench fetch`)
    algorithm: str = "protonet"  # a registered algorithm (see `metabench algorithms`)
    ways: int = 5  # classes per test episode
    shots: int = 1  # support images per class
    queries: int = 15  # query images per class in validation and test episodes
    train_queries: int = 0  # query images per class in training episodes; 0: same as queries
    seed: int = 0  # initialisation and training-episode seed
    iterations: int = 1000  # outer updates; budgets are in iterations, never seconds
    val_every: int = 100  # validate, and save a resumable state, every this many updates
    checkpoint_every: int = 0  # also save the resumable state every this many updates (0: only when validating)
    val_episodes: int = 200  # fixed validation episodes for checkpoint selection
    test_episodes: int = 600  # fixed test episodes (>= 600 for a reportable interval)
    episode_seed: int = 0  # seed of the fixed validation/test episodes, shared by all algorithms
    augment: str = "none"  # training episodes only: none, crop, flip or crop+flip (episodes.AUGMENTATIONS)
    device: str = "auto"  # auto: CUDA when present, else CPU
    data_dir: str = "data"
    runs_dir: str = "runs"
    hyper: dict[str, Any] = field(default_factory=dict)  # the algorithm's hyper-parameters

    @property
    def queries_in_training(self) -> int:
        return self.train_queries or self.queries

    def __post_init__(self) -> None:
        from metabench.episodes import AUGMENTATIONS

        if self.augment not in AUGMENTATIONS:
            raise MetabenchError(f"augment must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}")
        if self.checkpoint_every < 0:
            raise MetabenchError(f"checkpoint_every must be 0 (only when validating) or more, got {self.checkpoint_every}")
        if self.train_queries < 0:
            raise MetabenchError(f"train_queries must be 0 (same as queries) or more, got {self.train_queries}")
        for name in ("ways", "shots", "queries", "iterations", "val_every", "val_episodes", "test_episodes"):
            if getattr(self, name) < 1:
                raise MetabenchError(f"{name} must be at least 1, got {getattr(self, name)}")

    @property
    def run_id(self) -> str:
        return f"{self.dataset}-{self.algorithm}-{self.ways}w{self.shots}s-seed{self.seed}"

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.run_id

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MetabenchError(f"device {name!r} requested but CUDA is not available; use --device auto or cpu")
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise MetabenchError(f"unknown device {name!r}; use auto, cpu or cuda") from error


def load_params(path: Path | str | None) -> dict[str, Any]:
    """Read params.yaml (empty dict when absent), with a clear error for broken YAML."""
    if path is None or not Path(path).is_file():
        return {}
    try:
        return yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as error:
        raise MetabenchError(f"{path} is not valid YAML ({str(error).splitlines()[0]}); fix the file") from error
