"""Every registered algorithm honours the shared protocol the trainer and evaluator rely on."""

import copy

import pytest
import torch

from metabench.algorithms import REGISTRY, TaskShape, build_algorithm
from metabench.episodes import Episode
from tests.conftest import SMALL_IMAGES

SMALL = {"hidden": 4}
CHEAP = {
    "baseline": {"finetune_epochs": 2},
    "baselinepp": {"finetune_epochs": 2},
    "reptile": {"test_inner_steps": 2},
    "maml": {"meta_batch": 2},
    "fomaml": {"meta_batch": 2},
    "metasgd": {"meta_batch": 2},
    "anil": {"meta_batch": 2},
}


def build(name: str):
    task = TaskShape(channels=1, image_size=16, train_ways=3, test_ways=3, train_classes=10)
    torch.manual_seed(0)
    return build_algorithm(
        name, {**SMALL, **CHEAP.get(name, {}), **SMALL_IMAGES.get(name, {})}, task, torch.device("cpu")
    )


def batch(count: int, seed: int = 0) -> Episode:
    generator = torch.Generator().manual_seed(seed)
    support_x = torch.rand(count, 6, 1, 16, 16, generator=generator)
    query_x = torch.rand(count, 6, 1, 16, 16, generator=generator)
    labels = torch.arange(3).repeat(2).expand(count, 6)
    classes = torch.stack([torch.randperm(10, generator=generator)[:3] for _ in range(count)])
    return Episode(support_x, labels, query_x, labels, 3, classes)


def weights(algorithm) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for part in algorithm.networks().values() for p in part.parameters()])


TRAINED = sorted(name for name, cls in REGISTRY.items() if cls.trained)


@pytest.mark.parametrize("name", TRAINED)
def test_train_step_predict_and_checkpoint_round_trip(name):
    algorithm = build(name)
    before = weights(algorithm)
    metrics = algorithm.meta_train_step(batch(algorithm.episodes_per_step))
    assert torch.isfinite(torch.tensor(metrics["loss"]))
    assert not torch.equal(before, weights(algorithm)), "a training step must change the weights"

    algorithm.train(False)
    episode = batch(1, seed=1).task(0)
    logits = algorithm.predict(episode.support_x, episode.support_y, episode.query_x, 3)
    assert logits.shape == (6, 3) and torch.isfinite(logits).all()

    clone = build(name)
    clone.load_state_dict(copy.deepcopy(algorithm.state_dict()), weights_only=True)
    clone.train(False)
    torch.testing.assert_close(clone.predict(episode.support_x, episode.support_y, episode.query_x, 3), logits)

    if not REGISTRY[name].transductive:  # a query's prediction must not depend on the other queries
        alone = algorithm.predict(episode.support_x, episode.support_y, episode.query_x[:2], 3)
        torch.testing.assert_close(alone, logits[:2], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_algorithm_states_its_paper_and_what_it_adapts(name):
    cls = REGISTRY[name]
    assert cls.name == name
    assert cls.paper and cls.adapts and isinstance(cls.transductive, bool)
