"""Scoring from cached embeddings gives the per-episode path's accuracies."""

import numpy as np
import pytest
import torch

from metabench import evaluation
from metabench.algorithms import REGISTRY, TaskShape, build_algorithm
from metabench.algorithms.base import EmbeddingAlgorithm
from metabench.episodes import EpisodeSpec, ImageBank, sample_indices
from metabench.evaluation import episode_accuracies
from tests.conftest import SMALL_IMAGES, tiny_split

EMBEDDING = sorted(name for name, cls in REGISTRY.items() if issubclass(cls, EmbeddingAlgorithm) and cls.trained)


def test_every_non_transductive_algorithm_with_a_frozen_body_uses_the_cache():
    assert {"protonet", "matchingnet", "relationnet", "siamese", "baseline", "baselinepp", "metaoptnet"} <= set(
        EMBEDDING
    )
    assert all(not REGISTRY[name].transductive for name in EMBEDDING)


@pytest.mark.parametrize("name", EMBEDDING)
@pytest.mark.parametrize("shots", [1, 3])
def test_cached_accuracies_equal_per_episode_accuracies(name, shots, monkeypatch):
    monkeypatch.setattr(evaluation, "SCORE_EPISODES", 5)  # 12 episodes: scored in chunks of 5, 5 and 2
    split = tiny_split(10, 12, size=16, seed=4)
    bank = ImageBank(split)
    episodes = sample_indices(split, EpisodeSpec(4, shots, 3), 12, np.random.default_rng(0))
    task = TaskShape(channels=1, image_size=16, train_ways=4, test_ways=4, train_classes=10)
    torch.manual_seed(0)
    # Relation Networks' reference init starts every score at sigmoid(1) +- 0.01, so after three
    # steps near-ties would let float summation order (threads) pick the argmax: PyTorch's init
    # keeps scores apart
    extra = {"baseline": {"finetune_epochs": 3}, "baselinepp": {"finetune_epochs": 3}, "relationnet": {"init": "torch"}}
    algorithm = build_algorithm(
        name, {"hidden": 8, **extra.get(name, {}), **SMALL_IMAGES.get(name, {})}, task, torch.device("cpu")
    )
    # a few training steps so running statistics and weights are not at their initial values
    train = sample_indices(split, EpisodeSpec(4, shots, 3), 3, np.random.default_rng(1))
    for index in range(3):
        algorithm.meta_train_step(bank.episodes(train[index : index + 1]))
    per_episode = episode_accuracies(algorithm, bank, episodes, cached=False)
    cached = episode_accuracies(algorithm, bank, episodes, cached=True)
    np.testing.assert_array_equal(cached, per_episode)
    assert len(set(per_episode)) > 1 or per_episode[0] not in (0.0, 1.0)  # not a degenerate all-equal case


def test_inference_form_embeds_the_same_and_restores_the_network():
    from metabench.evaluation import CACHE_LAYOUT, inference_form

    task = TaskShape(channels=1, image_size=16, train_ways=4, test_ways=4, train_classes=10)
    torch.manual_seed(0)
    algorithm = build_algorithm("protonet", {"hidden": 8}, task, torch.device("cpu"))
    for norm in (m for m in algorithm.body.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        norm.running_mean.uniform_(-1, 1), norm.running_var.uniform_(0.5, 2), norm.weight.data.uniform_(-2, 2)
    algorithm.train(False)
    x = torch.rand(7, 1, 16, 16)
    with torch.no_grad():
        plain = algorithm.embed(x)
        before = [type(m) for m in algorithm.body.modules()]
        with inference_form([algorithm.body]):
            assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in algorithm.body.modules())
            folded = algorithm.embed(x.contiguous(memory_format=CACHE_LAYOUT))
        assert [type(m) for m in algorithm.body.modules()] == before
        assert all(p.is_contiguous() for p in algorithm.body.parameters())
        torch.testing.assert_close(folded, plain, rtol=1e-5, atol=1e-5)
        assert torch.equal(algorithm.embed(x), plain)
    algorithm.train(True)
    with inference_form([algorithm.body]):  # training-mode batch norm is never folded
        assert any(isinstance(m, torch.nn.BatchNorm2d) for m in algorithm.body.modules())


@pytest.mark.parametrize("name", ["protonet", "metaoptnet", "baselinepp"])
def test_cached_accuracies_equal_per_episode_with_resnet12(name):
    """The inference form (channels-last; ResNet-12's batch norms are not in Sequential pairs) on RGB images."""
    split = tiny_split(8, 10, size=20, seed=6, channels=3)
    bank = ImageBank(split)
    episodes = sample_indices(split, EpisodeSpec(4, 2, 3), 10, np.random.default_rng(1))
    torch.manual_seed(0)
    hyper = {"backbone": "resnet12", "hidden": 4, **({"finetune_epochs": 2} if "baseline" in name else {})}
    algorithm = build_algorithm(name, hyper, TaskShape(3, 20, 4, 4, train_classes=8), torch.device("cpu"))
    train = sample_indices(split, EpisodeSpec(4, 2, 3), 2, np.random.default_rng(2))
    for index in range(2):
        algorithm.meta_train_step(bank.episodes(train[index : index + 1]))
    np.testing.assert_array_equal(
        episode_accuracies(algorithm, bank, episodes, cached=True),
        episode_accuracies(algorithm, bank, episodes, cached=False),
    )
