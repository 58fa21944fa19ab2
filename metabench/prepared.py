"""One run made ready, once, for whatever uses it: training, evaluation, profiling, the grid.

``prepare(config)`` loads the dataset, resolves the typed hyper-parameters (the only place a
run's ``hyper`` dict becomes its ``Hyper`` dataclass), the task shape and the device; the
``PreparedRun`` then builds the algorithm, gives the fixed episodes and says the run's identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from metabench import MetabenchError, distributed, identity
from metabench.algorithms import Algorithm, TaskShape, get_algorithm, make_hyper
from metabench.config import RunConfig, resolve_device
from metabench.data import store
from metabench.episodes import EpisodeIndices, EpisodeSpec, episode_key, fixed_episodes


def task_shape(config: RunConfig, dataset: store.Dataset, hyper: Any) -> TaskShape:
    """The image shape and episode sizes ``config``'s algorithm is built for on ``dataset``."""
    height, width, channels = dataset.image_shape
    if height != width:
        raise MetabenchError(f"dataset {dataset.name!r} has {height}x{width} images; backbones expect square images")
    train_ways = getattr(hyper, "train_ways", 0) or config.ways
    return TaskShape(
        channels=channels,
        image_size=height,
        train_ways=train_ways,
        test_ways=config.ways,
        train_classes=dataset.split("train").n_classes,
    )


def training_queries(config: RunConfig, cls: type[Algorithm], hyper: Any) -> int:
    """Query images per class in training episodes: ``train_queries`` when set, else the
    algorithm family's protocol (``Algorithm.training_queries``)."""
    return config.train_queries or cls.training_queries(hyper, config.shots, config.queries)


def evaluation_episodes(config: RunConfig, dataset: store.Dataset, split: str) -> EpisodeIndices:
    """The run's fixed ``val`` or ``test`` episodes (shared by every algorithm and seed), made once."""
    count = config.val_episodes if split == "val" else config.test_episodes
    return fixed_episodes(
        dataset.split(split),
        EpisodeSpec(config.ways, config.shots, config.queries),
        count,
        config.episode_seed,
        config.episodes_path,
        episode_key(dataset.name, split, dataset.checksum),
        split_name=split,
    )


@dataclass
class PreparedRun:
    config: RunConfig
    dataset: store.Dataset
    algorithm_cls: type[Algorithm]
    hyper: Any  # the algorithm's Hyper dataclass
    task: TaskShape
    device: torch.device

    @property
    def train_spec(self) -> EpisodeSpec:
        queries = training_queries(self.config, self.algorithm_cls, self.hyper)
        return EpisodeSpec(self.task.train_ways, self.config.shots, queries)

    def build(self) -> Algorithm:
        """A freshly initialised algorithm, seeded with the run's seed."""
        torch.manual_seed(self.config.seed)
        return self.algorithm_cls(self.hyper, self.task, self.device)

    def episodes(self, split: str) -> EpisodeIndices:
        return evaluation_episodes(self.config, self.dataset, split)

    def check_training_splits(self) -> None:
        """Refuse, before anything is written, a run whose episodes its splits cannot give."""
        self.train_spec.check(self.dataset.split("train"), "train")
        EpisodeSpec(self.config.ways, self.config.shots, self.config.queries).check(self.dataset.split("val"), "val")

    def identity(self, threads: int | None = None) -> dict[str, Any]:
        """What a recorded run must match to be this run (``metabench.identity``)."""
        return identity.run_identity(
            self.config.training_settings(),
            self.dataset.checksum,
            identity.behaviour(self.config.algorithm, self.hyper),
            threads or torch.get_num_threads(),
            distributed.world_size(),
            self.device,
        )

    def provenance(self) -> dict[str, Any]:
        return identity.provenance(self.config.algorithm)


def prepare(config: RunConfig, verify: bool = False, device: torch.device | None = None) -> PreparedRun:
    """Load ``config``'s data (hashing every file when ``verify``) and resolve what the run needs."""
    dataset = store.load(config.dataset, Path(config.data_dir), verify=verify)
    cls = get_algorithm(config.algorithm)
    hyper = make_hyper(cls.Hyper, config.hyper, config.algorithm)
    return PreparedRun(
        config, dataset, cls, hyper, task_shape(config, dataset, hyper), device or resolve_device(config.device)
    )
