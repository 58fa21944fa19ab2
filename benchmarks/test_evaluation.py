"""Prototypical Networks' evaluation of 600 5-way 1-shot episodes: per episode against the embedding cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metabench.algorithms import TaskShape, build_algorithm
from metabench.data import store
from metabench.episodes import EpisodeSpec, ImageBank, sample_indices
from metabench.evaluation import episode_accuracies


@pytest.fixture(scope="module")
def glyphs_like():
    """A split shaped like glyphs' test split (562 classes × 20 images, 28×28), random pixels."""
    rng = np.random.default_rng(0)
    classes, per_class = 562, 20
    images = rng.integers(0, 256, size=(classes * per_class, 28, 28, 1), dtype=np.uint8)
    split = store.Split(images, np.arange(classes + 1) * per_class, [str(i) for i in range(classes)], ["g"] * classes)
    episodes = sample_indices(split, EpisodeSpec(5, 1, 15), 600, np.random.default_rng(1))
    task = TaskShape(channels=1, image_size=28, train_ways=5, test_ways=5)
    torch.manual_seed(0)
    return build_algorithm("protonet", {"hidden": 64}, task, torch.device("cpu")), ImageBank(split), episodes


@pytest.mark.parametrize("cached", [False, True], ids=["per_episode", "cached"])
def test_protonet_evaluation_600_episodes(benchmark, glyphs_like, cached):
    algorithm, bank, episodes = glyphs_like
    accuracies = benchmark.pedantic(
        episode_accuracies, args=(algorithm, bank, episodes), kwargs={"cached": cached}, rounds=3, warmup_rounds=0
    )
    assert len(accuracies) == 600


def test_episode_sampler(benchmark, glyphs_like):
    _, bank, _ = glyphs_like
    split = store.Split(np.zeros((562 * 20, 1, 1, 1), np.uint8), np.arange(563) * 20, [""] * 562, [""] * 562)
    rng = np.random.default_rng(0)
    benchmark(sample_indices, split, EpisodeSpec(5, 1, 15), 32, rng)
