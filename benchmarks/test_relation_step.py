"""Relation Networks' training step at the reference's Omniglot protocol: split against pairs.

floodsung's ``omniglot_train_one_shot.py``: 5-way 1-shot episodes with 19 queries per class,
28×28 images, so every step scores 95 × 5 = 475 (class, query) pairs. ``split`` is metabench's
``RelationModule.scores`` (the first relation convolution once per class map and once per query
map, summed per pair); ``pairs`` is the paper's form, the module on the concatenated pairs. The
two compute the same function (``tests/test_metric_algorithms.py``); ``make benchmarks`` prints
both in one run, so their ratio is what this records.
"""

from __future__ import annotations

import math

import pytest
import torch

from metabench.algorithms import TaskShape, build_algorithm
from metabench.algorithms.relationnet import RelationModule, pair_up
from metabench.episodes import Episode

WAYS, SHOTS, QUERIES = 5, 1, 19


def concatenated_pairs(module: RelationModule, class_maps: torch.Tensor, query_maps: torch.Tensor) -> torch.Tensor:
    """Scores through the concatenated pairs (the reference's form)."""
    return module(pair_up(class_maps, query_maps)).view(len(query_maps), len(class_maps))


@pytest.fixture
def one_episode() -> Episode:
    generator = torch.Generator().manual_seed(0)
    support_x = torch.rand(1, WAYS * SHOTS, 1, 28, 28, generator=generator)
    query_x = torch.rand(1, WAYS * QUERIES, 1, 28, 28, generator=generator)
    support_y = torch.arange(WAYS).repeat_interleave(SHOTS)[None]
    query_y = torch.arange(WAYS).repeat_interleave(QUERIES)[None]
    return Episode(support_x, support_y, query_x, query_y, WAYS)


@pytest.mark.parametrize("form", ["split", "pairs"])
def test_relation_network_training_step(benchmark, one_episode, form, monkeypatch):
    torch.manual_seed(0)
    task = TaskShape(channels=1, image_size=28, train_ways=WAYS, test_ways=WAYS)
    algorithm = build_algorithm("relationnet", {}, task, torch.device("cpu"))
    if form == "pairs":
        monkeypatch.setattr(RelationModule, "scores", concatenated_pairs)
    benchmark.extra_info.update({"pairs_per_step": WAYS * WAYS * QUERIES, "threads": torch.get_num_threads()})
    metrics = benchmark.pedantic(algorithm.meta_train_step, args=(one_episode,), rounds=20, warmup_rounds=3)
    assert math.isfinite(metrics["loss"])  # a step was taken (meta_train_step returns NaN when it skips one)
