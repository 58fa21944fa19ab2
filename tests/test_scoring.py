"""Scoring modes (metabench/scoring.py): every method with batch norm is scored inductively and
transductively from one checkpoint, and each mode computes what it says."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metabench import MetabenchError, published
from metabench.algorithms import REGISTRY, TaskShape, build_algorithm
from metabench.algorithms.base import EmbeddingAlgorithm
from metabench.episodes import EpisodeIndices, ImageBank
from metabench.evaluation import read_scored_results, scored_accuracies, write_results
from metabench.models.conv4 import Classifier, Conv4
from metabench.run_folder import EPISODES_IN_MODE, RunFolder
from metabench.scoring import INDUCTIVE, MODES, TRANSDUCTIVE, statistics_of_leading_rows
from tests.conftest import tiny_split
from tests.test_algorithm_protocol import CHEAP, TRAINED, batch, build


def by_hand(network: Classifier, support: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Conv-4 and its head layer by layer, every batch norm applying the support activations'
    mean and biased variance (computed here, from the support rows alone) to the queries."""
    s, q = support, query
    for block in network.body.blocks:
        for layer in block:
            if isinstance(layer, nn.BatchNorm2d):
                mean = s.mean((0, 2, 3), keepdim=True)
                variance = ((s - mean) ** 2).mean((0, 2, 3), keepdim=True)
                scale = layer.weight[:, None, None] / torch.sqrt(variance + layer.eps)
                s, q = (s - mean) * scale + layer.bias[:, None, None], (q - mean) * scale + layer.bias[:, None, None]
            else:
                s, q = layer(s), layer(q)
    return network.head(q.flatten(1))


def test_inductive_mode_normalises_every_query_with_the_support_statistics_alone():
    torch.manual_seed(0)
    body = Conv4(1, 6, track_running_stats=False, channels_last=False)
    network = Classifier(body, body.out_features(16), 3).double()
    with torch.no_grad():  # batch norm weights away from their initial 1 and 0
        for norm in (m for m in network.modules() if isinstance(m, nn.BatchNorm2d)):
            norm.weight.uniform_(0.5, 1.5), norm.bias.uniform_(-0.5, 0.5)
    support, query = torch.rand(6, 1, 16, 16, dtype=torch.float64), torch.rand(9, 1, 16, 16, dtype=torch.float64)
    with torch.no_grad(), statistics_of_leading_rows([network], len(support)):
        logits = network(torch.cat([support, query]))
    torch.testing.assert_close(logits[len(support) :], by_hand(network, support, query), rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # the support rows are normalised with their own batch statistics, as in adaptation
        torch.testing.assert_close(logits[: len(support)], network(support), rtol=1e-12, atol=1e-12)
        network(query)  # and outside the block batch norm is back to its own function
    assert all("forward" not in vars(m) for m in network.modules())


@pytest.mark.parametrize("name", [n for n in TRAINED if REGISTRY[n].batch_norm])
def test_every_batch_norm_method_scores_both_modes_and_only_transduction_looks_at_other_queries(name):
    algorithm = build(name)
    algorithm.meta_train_step(batch(algorithm.episodes_per_step))
    algorithm.train(False)
    assert algorithm.scoring_modes() == MODES
    episode = batch(1, seed=1).task(0)
    sx, sy, qx = episode.support_x, episode.support_y, episode.query_x
    both = algorithm.predict_modes(sx, sy, qx, 3, MODES)
    torch.testing.assert_close(both[algorithm.headline_scoring], algorithm.predict(sx, sy, qx, 3))
    alone = algorithm.predict_modes(sx, sy, qx[:2], 3, MODES)
    torch.testing.assert_close(alone[INDUCTIVE], both[INDUCTIVE][:2], rtol=1e-4, atol=1e-5)
    assert not torch.equal(alone[TRANSDUCTIVE], both[TRANSDUCTIVE][:2]), (
        "a transductive score must depend on the other queries"
    )


def test_a_method_without_batch_norm_is_inductive_only_and_refuses_the_other_mode_in_one_line():
    pixelnn = build_algorithm("pixelnn", {}, TaskShape(1, 28, 5, 5), "cpu")
    assert pixelnn.scoring_modes() == (INDUCTIVE,)
    bank, episodes = ImageBank(tiny_split(6, 4)), _episodes()
    with pytest.raises(
        MetabenchError,
        match=r"^pixelnn cannot be scored 'transductive': it is scored inductive \(metabench.scoring\); choose one of those$",
    ):
        scored_accuracies(pixelnn, bank, episodes, MODES)


def _episodes(count: int = 4, ways: int = 5, shots: int = 1, queries: int = 2) -> EpisodeIndices:
    rng = np.random.default_rng(0)
    picks = [rng.permutation(4)[: shots + queries] for _ in range(count * ways)]
    classes = np.stack([rng.permutation(6)[:ways] for _ in range(count)])
    rows = (classes[..., None] * 4 + np.array(picks).reshape(count, ways, -1)).astype(np.int64)
    return EpisodeIndices(rows[..., :shots], rows[..., shots:], classes)


EMBEDDING = sorted(name for name, cls in REGISTRY.items() if issubclass(cls, EmbeddingAlgorithm) and cls.batch_norm)


@pytest.mark.parametrize("name", EMBEDDING)
def test_the_batched_scores_of_an_embedding_method_equal_the_episode_by_episode_ones(name):
    hyper = {"hidden": 8, **CHEAP.get(name, {})}
    algorithm = build_algorithm(name, hyper, TaskShape(1, 28, 5, 5, train_classes=6), "cpu")
    bank, episodes = ImageBank(tiny_split(6, 4)), _episodes()
    batched = scored_accuracies(algorithm, bank, episodes, MODES)  # the cache; the episodes' embeddings
    one_by_one = scored_accuracies(algorithm, bank, episodes, MODES, cached=False)
    for mode in MODES:
        np.testing.assert_allclose(batched[mode], one_by_one[mode], err_msg=mode)
    episode = bank.episodes(episodes[:1])
    algorithm.train(False)
    logits = algorithm.predict_modes(episode.support_x[0], episode.support_y[0], episode.query_x[0], 5, MODES)
    assert not torch.allclose(logits[INDUCTIVE], logits[TRANSDUCTIVE])  # running against batch statistics


def test_results_keep_every_mode_checked_and_refuse_a_tampered_one(tmp_path):
    scored = {TRANSDUCTIVE: np.array([1.0, 0.5, 0.75]), INDUCTIVE: np.array([0.5, 0.5, 0.75])}
    metrics = write_results(tmp_path, scored, TRANSDUCTIVE, {"run_id": "r"}, {"eval_seconds": 1.0})
    assert metrics["scoring"] == TRANSDUCTIVE and metrics["accuracy"] == pytest.approx(0.75)
    assert metrics["modes"][INDUCTIVE]["file"] == EPISODES_IN_MODE[INDUCTIVE]
    saved, headline, read = read_scored_results(tmp_path)
    assert saved == json.loads(json.dumps(metrics))
    np.testing.assert_array_equal(headline, scored[TRANSDUCTIVE])
    for mode in MODES:
        np.testing.assert_array_equal(read[mode], scored[mode])
    other = tmp_path / EPISODES_IN_MODE[INDUCTIVE]
    other.write_text(other.read_text().replace("0.5", "1.0", 1))
    with pytest.raises(MetabenchError, match="episodes.inductive.csv does not match"):
        read_scored_results(tmp_path)
    # a later evaluation in the headline mode only leaves no stale file of the other mode behind
    write_results(tmp_path, {INDUCTIVE: scored[INDUCTIVE]}, INDUCTIVE, {"run_id": "r"}, {"eval_seconds": 1.0})
    assert not other.exists() and EPISODES_IN_MODE[INDUCTIVE] not in RunFolder(tmp_path).sealed_names()


def test_every_published_mode_is_a_mode_of_a_registered_method_that_has_it():
    for algorithm, (mode, source) in published.PAPER_SCORING.items():
        assert algorithm in REGISTRY and mode in REGISTRY[algorithm].scoring_modes(), algorithm
        assert "/" in source and ".py" in source or ".lua" in source, f"{algorithm}: name the reference file"
    # read from the references' code: cbfinn/maml utils.py (tf_layers.batch_norm, training mode),
    # openai/supervised-reptile reptile.py (transductive=False), LearningToCompare_FSL (never eval()),
    # prototypical-networks protonets/utils/model.py, CloserLookFewShot save_features.py and
    # MetaOptNet test.py (eval()), meta-learning-lstm meta-learner-lstm.lua (learner.set('evaluate'))
    expected = {
        "maml": TRANSDUCTIVE,
        "fomaml": TRANSDUCTIVE,
        "relationnet": TRANSDUCTIVE,
        "reptile": INDUCTIVE,
        "protonet": INDUCTIVE,
        "baseline": INDUCTIVE,
        "baselinepp": INDUCTIVE,
        "metaoptnet": INDUCTIVE,
        "metalstm": INDUCTIVE,
    }
    assert {a: m for a, (m, _) in published.PAPER_SCORING.items()} == expected


def test_the_inductive_statistics_ignore_running_statistics_and_leave_them_untouched():
    norm = nn.BatchNorm2d(3).eval()
    norm.running_mean.fill_(5.0)
    x = torch.rand(7, 3, 4, 4)
    with statistics_of_leading_rows([norm], 4):
        out = norm(x)
    mean, variance = x[:4].mean((0, 2, 3)), x[:4].var((0, 2, 3), unbiased=False)
    expected = F.batch_norm(x, mean, variance, norm.weight, norm.bias, False, 0.0, norm.eps)
    torch.testing.assert_close(out, expected)
    assert torch.equal(norm.running_mean, torch.full((3,), 5.0))
