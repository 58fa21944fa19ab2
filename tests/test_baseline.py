"""Baseline / Baseline++: the fine-tuning update against numpy gradient descent, the cosine head by hand,
pre-training on split-level labels."""

import numpy as np
import torch
import torch.nn.functional as F

from metabench.algorithms import TaskShape, build_algorithm
from metabench.algorithms.baseline import (
    BaselineHyper,
    BaselinePPHyper,
    CosineHead,
    cosine_logits,
    fine_tune_heads,
    linear_logits,
)
from metabench.episodes import Episode


def test_linear_fine_tuning_equals_numpy_gradient_descent_on_softmax_regression():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 4)), np.array([0, 1, 2, 0, 1, 2])
    w, b = rng.normal(size=(3, 4)) * 0.1, np.zeros(3)
    head = torch.nn.Linear(4, 3).double()
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(w)), head.bias.copy_(torch.from_numpy(b))
    hyper = BaselineHyper(
        finetune_lr=0.5,
        finetune_momentum=0.0,
        finetune_dampening=0.0,
        finetune_weight_decay=0.01,
        finetune_batch=6,
        finetune_epochs=5,
    )
    features = torch.from_numpy(x)[None]
    weight, bias = fine_tune_heads(
        head, linear_logits, features, torch.from_numpy(y), hyper, torch.Generator().manual_seed(0)
    )

    one_hot = np.eye(3)[y]
    for _ in range(5):  # full batch: the shuffle does not matter
        logits = x @ w.T + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        grad_w = (p - one_hot).T @ x / len(x) + 0.01 * w
        grad_b = (p - one_hot).mean(0) + 0.01 * b
        w, b = w - 0.5 * grad_w, b - 0.5 * grad_b
    np.testing.assert_allclose(weight[0].numpy(), w, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bias[0].numpy(), b, rtol=1e-10, atol=1e-12)


def _alone(head, features, labels, hyper, generator):
    """The paper code's loop: one head, its own optimiser, mini-batches of the support set."""
    optimizer = torch.optim.SGD(
        head.parameters(),
        lr=hyper.finetune_lr,
        momentum=hyper.finetune_momentum,
        dampening=hyper.finetune_dampening,
        weight_decay=hyper.finetune_weight_decay,
    )
    for _ in range(hyper.finetune_epochs):
        order = torch.randperm(len(features), generator=generator)
        for start in range(0, len(features), hyper.finetune_batch):
            batch = order[start : start + hyper.finetune_batch]
            optimizer.zero_grad()
            F.cross_entropy(head(features[batch]), labels[batch]).backward()
            optimizer.step()
    return [p.detach() for p in head.parameters()]


def test_heads_fitted_together_equal_each_head_fitted_alone():
    # CloserLookFewShot methods/baselinefinetune.py: SGD(lr 0.01, momentum 0.9, dampening 0.9,
    # weight_decay 1e-3), batches of 4, 100 epochs, one head per episode
    hyper = BaselineHyper(finetune_epochs=7)
    features = torch.randn(3, 10, 6, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 4] * 2)
    for make, forward in (
        (lambda: torch.nn.Linear(6, 5).double(), linear_logits),
        (lambda: CosineHead(6, 5).double(), lambda x, w, g: cosine_logits(x, w, 2.0, g)),
        (lambda: CosineHead(6, 5, class_norm=False).double(), lambda x, w: cosine_logits(x, w, 2.0)),
    ):
        torch.manual_seed(1)
        together = fine_tune_heads(make(), forward, features, labels, hyper, torch.Generator().manual_seed(0))
        for episode in range(3):
            torch.manual_seed(1)
            alone = _alone(make(), features[episode], labels, hyper, torch.Generator().manual_seed(0))
            for a, b in zip(together, alone):
                torch.testing.assert_close(a[episode], b, rtol=1e-12, atol=1e-12)


def test_cosine_head_is_scaled_cosine_similarity_times_a_learnable_class_norm():
    """CloserLookFewShot backbone.py distLinear: WeightNorm(dim=0) on the head, so a class's
    logit is scale · g_j · cos(x, v_j), g_j a parameter initialised to ||v_j||."""
    head = CosineHead(3, 2).double()
    assert [name for name, _ in head.named_parameters()] == ["weight", "norm"]
    torch.testing.assert_close(head.norm.detach(), head.weight.detach().norm(dim=1))  # WeightNorm's g init
    x = torch.tensor([[1.0, 0.0, 0.0], [0.0, 3.0, 4.0]], dtype=torch.float64)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
        head.norm.copy_(torch.tensor([1.5, 0.5]))
    # by hand: cos(x0, w0)=1, cos(x0, w1)=0, cos(x1, w0)=0, cos(x1, w1)=4/5; scale 2 for <= 200 classes
    expected = 2 * torch.tensor([[1.0, 0.0], [0.0, 0.8]], dtype=torch.float64) * torch.tensor([1.5, 0.5])
    torch.testing.assert_close(head(x), expected)
    plain = CosineHead(3, 2, class_norm=False).double()  # the paper's equation: no norm parameter
    assert [name for name, _ in plain.named_parameters()] == ["weight"]
    with torch.no_grad():
        plain.weight.copy_(head.weight)
    torch.testing.assert_close(plain(x), 2 * torch.tensor([[1.0, 0.0], [0.0, 0.8]], dtype=torch.float64))
    assert CosineHead(3, 201).scale == 10.0
    assert BaselinePPHyper().class_norm and not hasattr(BaselineHyper(), "class_norm")


def build(name: str):
    task = TaskShape(channels=1, image_size=16, train_ways=3, test_ways=3, train_classes=9)
    torch.manual_seed(0)
    algorithm = build_algorithm(name, {"hidden": 4, "finetune_epochs": 3}, task, torch.device("cpu"))
    algorithm.net.double()
    return algorithm


def test_pretraining_uses_split_level_class_labels():
    algorithm = build("baseline")
    generator = torch.Generator().manual_seed(1)
    support_x = torch.rand(3, 1, 16, 16, generator=generator, dtype=torch.float64)
    query_x = torch.rand(6, 1, 16, 16, generator=generator, dtype=torch.float64)
    classes = torch.tensor([7, 2, 5])
    task = Episode(support_x, torch.arange(3), query_x, torch.arange(3).repeat(2), 3, classes)
    algorithm.train(True)
    loss, episode_logits = algorithm.episode_loss(task)
    logits = algorithm.net(torch.cat([support_x, query_x]))
    expected = F.cross_entropy(logits, torch.tensor([7, 2, 5, 7, 2, 5, 7, 2, 5]))
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(episode_logits, logits[3:][:, [7, 2, 5]])


def test_prediction_is_deterministic_and_leaves_the_body_unchanged():
    for name in ("baseline", "baselinepp"):
        algorithm = build(name)
        algorithm.train(False)
        before = [p.clone() for p in algorithm.net.parameters()]
        support_x, query_x = (
            torch.rand(6, 1, 16, 16, dtype=torch.float64),
            torch.rand(4, 1, 16, 16, dtype=torch.float64),
        )
        labels = torch.tensor([0, 1, 2, 0, 1, 2])
        first = algorithm.predict(support_x, labels, query_x, 3)
        torch.manual_seed(123)  # the global RNG must not matter
        torch.testing.assert_close(algorithm.predict(support_x, labels, query_x, 3), first)
        for old, new in zip(before, algorithm.net.parameters()):
            assert torch.equal(old, new)
