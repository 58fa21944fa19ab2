"""Matching, Relation and Siamese networks: each scoring rule against an explicit loop in float64."""

import math

import pytest
import torch

from metabench import MetabenchError
from metabench.algorithms import TaskShape, build_algorithm
from metabench.algorithms.matchingnet import attention_log_probs
from metabench.algorithms.relationnet import class_sums, pair_up
from metabench.algorithms.siamese import SiameseHyper, best_match, mean_match, pair_logits, verification_loss


def random(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_matching_attention_matches_the_papers_formula_computed_by_loops(scale):
    support, query = random(6, 4, seed=1), random(3, 4, seed=2)
    labels = torch.tensor([2, 0, 1, 1, 0, 2])
    ours = attention_log_probs(support, labels, query, 3, scale).exp()
    for q in range(3):
        cosines = [float(query[q] @ support[i] / (query[q].norm() * support[i].norm())) for i in range(6)]
        logits = [scale * max(0.0, c) for c in cosines]  # CloserLookFewShot: scale · ReLU(cosine)
        weights = [math.exp(c - max(logits)) / sum(math.exp(d - max(logits)) for d in logits) for c in logits]
        for c in range(3):
            expected = sum(w for w, y in zip(weights, labels.tolist()) if y == c)
            assert abs(float(ours[q, c]) - expected) < 1e-12
    torch.testing.assert_close(ours.sum(1), torch.ones(3, dtype=torch.float64))


def test_matching_attention_on_a_hand_worked_case():
    # unit vectors: query (1,0) has cosine 1 with support 0 and 0 with support 1
    support = torch.tensor([[2.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    query = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    probs = attention_log_probs(support, torch.tensor([0, 1]), query, 2).exp()
    e = math.e
    torch.testing.assert_close(probs, torch.tensor([[e / (e + 1), 1 / (e + 1)]], dtype=torch.float64))


def test_matching_fce_trains_and_depends_on_support_order():
    task = TaskShape(channels=1, image_size=16, train_ways=3, test_ways=3)
    torch.manual_seed(0)
    algorithm = build_algorithm("matchingnet", {"fce": True, "fce_steps": 2, "hidden": 4}, task, torch.device("cpu"))
    algorithm.train(False)
    support_x, query_x = torch.rand(6, 1, 16, 16), torch.rand(4, 1, 16, 16)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    order = torch.tensor([3, 4, 5, 0, 1, 2])
    first = algorithm.predict(support_x, labels, query_x, 3)
    second = algorithm.predict(support_x[order], labels[order], query_x, 3)
    assert not torch.allclose(first, second)  # the bidirectional LSTM reads the support set in order
    torch.testing.assert_close(first.exp().sum(1), torch.ones(4))
    # one query's prediction does not depend on the other queries
    torch.testing.assert_close(algorithm.predict(support_x, labels, query_x[:1], 3), first[:1])


def test_relation_pairs_put_each_class_sum_beside_each_query():
    support_maps, query_maps = random(6, 2, 3, 3, seed=3), random(4, 2, 3, 3, seed=4)
    labels = torch.tensor([1, 0, 2, 1, 0, 2])
    sums = class_sums(support_maps, labels, 3)
    for c in range(3):
        torch.testing.assert_close(sums[c], support_maps[labels == c].sum(0))
    pairs = pair_up(sums, query_maps).view(4, 3, 4, 3, 3)
    for q in range(4):
        for c in range(3):
            torch.testing.assert_close(pairs[q, c], torch.cat([sums[c], query_maps[q]]))


@pytest.mark.parametrize("padded", [True, False])
def test_relation_scores_equal_the_relation_module_on_concatenated_pairs(padded):
    # RelationModule.scores splits the first convolution over [class; query] instead of building
    # the pairs; in training mode (batch norm over all pairs) values and gradients must equal the
    # paper's form, forward(pair_up(...)), in float64
    from metabench.algorithms.relationnet import RelationModule

    torch.manual_seed(0)
    module = RelationModule(hidden=3, size=10, fc_hidden=4, padded=padded).double().train()
    class_maps = random(4, 3, 10, 10, seed=7).requires_grad_()
    query_maps = random(6, 3, 10, 10, seed=8).requires_grad_()
    weights = random(6, 4, seed=9)
    direct = module(pair_up(class_maps, query_maps)).view(6, 4)
    direct_grads = torch.autograd.grad((direct * weights).sum(), [class_maps, query_maps, *module.parameters()])
    split = module.scores(class_maps, query_maps)
    split_grads = torch.autograd.grad((split * weights).sum(), [class_maps, query_maps, *module.parameters()])
    torch.testing.assert_close(split, direct, rtol=1e-12, atol=1e-12)
    for a, b in zip(split_grads, direct_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_relation_network_scores_and_loss_against_a_loop():
    task = TaskShape(channels=1, image_size=28, train_ways=3, test_ways=3)
    torch.manual_seed(0)
    algorithm = build_algorithm("relationnet", {"hidden": 4}, task, torch.device("cpu"))
    algorithm.body.double(), algorithm.relation.double()
    algorithm.train(False)
    support_x = random(6, 1, 28, 28, seed=5).abs()
    query_x = random(3, 1, 28, 28, seed=6).abs()
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    scores = algorithm.predict(support_x, labels, query_x, 3)
    with torch.no_grad():
        support_maps, query_maps = algorithm.body(support_x), algorithm.body(query_x)
        for q in range(3):
            for c in range(3):
                pair = torch.cat([support_maps[labels == c].sum(0), query_maps[q]]).unsqueeze(0)
                torch.testing.assert_close(scores[q, c], algorithm.relation(pair)[0])
    assert ((scores > 0) & (scores < 1)).all()

    # training loss: mean squared error of every (query, class) score against the one-hot match
    from metabench.episodes import Episode

    query_y = torch.tensor([2, 0, 1])
    algorithm.train(False)  # running statistics, so the loss sees the same embeddings as above
    loss, train_scores = algorithm.episode_loss(Episode(support_x, labels, query_x, query_y, 3))
    torch.testing.assert_close(train_scores.detach(), scores)
    expected = sum((float(scores[q, c]) - float(int(query_y[q]) == c)) ** 2 for q in range(3) for c in range(3)) / 9
    assert abs(loss.detach().item() - expected) < 1e-12


def test_siamese_pair_logits_best_match_and_balanced_loss_by_hand():
    support, query = random(4, 3, seed=7), random(2, 3, seed=8)
    weight, bias = random(3, seed=9), torch.tensor(0.3, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 1])
    pair = pair_logits(query, support, weight, bias)
    for q in range(2):
        for s in range(4):
            expected = sum(float(weight[k]) * abs(float(query[q, k] - support[s, k])) for k in range(3)) + 0.3
            assert abs(float(pair[q, s]) - expected) < 1e-12
    best = best_match(pair, labels, 2)
    for q in range(2):
        assert float(best[q, 0]) == max(float(pair[q, 0]), float(pair[q, 2]))
        assert float(best[q, 1]) == max(float(pair[q, 1]), float(pair[q, 3]))
    mean = mean_match(pair, labels, 2)
    for q in range(2):
        assert abs(float(mean[q, 0]) - (float(pair[q, 0]) + float(pair[q, 2])) / 2) < 1e-12
        assert abs(float(mean[q, 1]) - (float(pair[q, 1]) + float(pair[q, 3])) / 2) < 1e-12
    one_shot = torch.tensor([1, 0])  # with one support image per class, both poolings are Koch's best match
    torch.testing.assert_close(mean_match(pair[:, :2], one_shot, 2), best_match(pair[:, :2], one_shot, 2))

    query_y = torch.tensor([1, 0])
    loss = verification_loss(pair, query_y, labels, ways=3)  # positives weighted by ways - 1 = 2
    total = 0.0
    for q in range(2):
        for s in range(4):
            p = 1 / (1 + math.exp(-float(pair[q, s])))
            same = int(query_y[q]) == int(labels[s])
            total += -2 * math.log(p) if same else -math.log(1 - p)
    assert abs(float(loss) - total / 8) < 1e-12


def test_siamese_refuses_an_unknown_shot_pooling():
    with pytest.raises(MetabenchError, match="shot_pooling must be one of mean, max"):
        SiameseHyper(shot_pooling="median").validate()


def test_siamese_affine_maps_stay_in_koch_ranges_and_keep_half_the_components():
    from metabench.algorithms.siamese import affine_matrices

    matrices = affine_matrices(20_000, 0.5, torch.Generator().manual_seed(0))
    linear, move = matrices[:, :, :2], matrices[:, :, 2]
    # det(rotation · shear · scale) = (1 - rho_x rho_y) s_x s_y
    det = torch.linalg.det(linear)
    assert det.min() >= 0.64 * (1 - 0.09) - 1e-12 and det.max() <= 1.44 * (1 + 0.09) + 1e-12
    assert move.abs().max() <= 2 * 2 / 105 + 1e-12
    # each translation component is kept with probability 1/2: about half are exactly 0
    untouched = (move == 0).double().mean().item()
    assert abs(untouched - 0.5) < 0.02
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    assert torch.equal(affine_matrices(5, 0.0), identity.expand(5, 2, 3))


def test_siamese_rotation_alone_is_the_hand_written_matrix():
    from metabench.algorithms.siamese import affine_matrices

    generator = torch.Generator().manual_seed(1)
    matrices = affine_matrices(4000, 0.5, generator)
    # where shears and scales were all left out, the linear part is a pure rotation within 10 degrees
    linear = matrices[:, :, :2]
    rotations = linear[(linear[:, 0, 0] == linear[:, 1, 1]) & (linear[:, 0, 1] == -linear[:, 1, 0])]
    assert len(rotations) > 50
    angles = torch.rad2deg(torch.atan2(rotations[:, 1, 0], rotations[:, 0, 0]))
    assert angles.abs().max() <= 10 + 1e-9 and angles.abs().max() > 9


def test_siamese_distorts_only_in_training():
    from metabench.algorithms.siamese import distort
    from metabench.episodes import Episode

    images = random(4, 1, 12, 12, seed=11)
    assert torch.allclose(distort(images, 0.0), images, atol=1e-12)  # identity maps sample pixel centres
    task = TaskShape(channels=1, image_size=16, train_ways=2, test_ways=2)
    torch.manual_seed(0)
    algorithm = build_algorithm("siamese", {"hidden": 4}, task, torch.device("cpu"))
    plain = build_algorithm("siamese", {"hidden": 4, "distort": 0.0}, task, torch.device("cpu"))
    plain.net.load_state_dict(algorithm.net.state_dict())
    x = random(4, 1, 16, 16, seed=12).float()
    episode = Episode(x[:2], torch.tensor([0, 1]), x[2:], torch.tensor([1, 0]), 2)
    for model in (algorithm, plain):
        model.train(False)
    assert torch.equal(algorithm.episode_loss(episode)[0], plain.episode_loss(episode)[0])
    for model in (algorithm, plain):
        model.train(True)
    assert not torch.equal(algorithm.episode_loss(episode)[0], plain.episode_loss(episode)[0])
