"""Meta-SGD and ANIL against finite differences; Reptile's outer update against its closed form."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from metabench.algorithms import TaskShape, build_algorithm
from metabench.algorithms.anil import anil_query_loss
from metabench.algorithms.maml import query_loss
from metabench.episodes import Episode
from tests.maths import flat, leaves, numerical_gradient, relative_error, tiny_model, tiny_task, unflat


def test_metasgd_meta_gradient_for_weights_and_learned_rates_matches_finite_differences():
    model, task = tiny_model(), tiny_task()
    params = leaves(dict(model.named_parameters()))
    generator = torch.Generator().manual_seed(3)
    rates = {
        n: (0.05 + 0.3 * torch.rand(p.shape, generator=generator, dtype=torch.float64)).requires_grad_()
        for n, p in params.items()
    }
    loss, _ = query_loss(model, params, task, 2, rates, first_order=False)
    analytic = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, [*params.values(), *rates.values()])])

    n_params = len(flat(params))

    def loss_at(vector):
        trial = leaves(unflat(vector[:n_params], params))
        trial_rates = unflat(vector[n_params:], rates)
        return query_loss(model, trial, task, 2, trial_rates, first_order=False)[0].item()

    numeric = numerical_gradient(loss_at, torch.cat([flat(params), flat(rates)]))
    assert relative_error(analytic, numeric) < 1e-5
    # the learned rates do receive a meta-gradient, and it is not trivially zero
    assert numeric[n_params:].abs().max() > 1e-6


def test_metasgd_inner_step_uses_each_weights_own_rate():
    model, (support_x, support_y, *_) = tiny_model(), tiny_task()
    params = leaves(dict(model.named_parameters()))
    rates = {n: torch.full_like(p, 0.1 * (i + 1)) for i, (n, p) in enumerate(params.items())}
    from metabench.algorithms.maml import adapt

    adapted = adapt(model, params, support_x, support_y, 1, rates, first_order=True)
    loss = F.cross_entropy(functional_call(model, params, (support_x,)), support_y)
    grads = torch.autograd.grad(loss, list(params.values()))
    for (name, p), g in zip(params.items(), grads):
        torch.testing.assert_close(adapted[name], p - rates[name] * g)


@pytest.mark.parametrize("first_order", [False, True])
def test_anil_meta_gradient_matches_finite_differences(first_order):
    model, task = tiny_model(), tiny_task()
    params = leaves(dict(model.named_parameters()))
    loss, _ = anil_query_loss(model, params, task, 2, lr=0.5, first_order=first_order)
    analytic = flat(dict(zip(params, torch.autograd.grad(loss, list(params.values())))))

    def loss_at(vector):
        return anil_query_loss(model, leaves(unflat(vector, params)), task, 2, lr=0.5, first_order=False)[0].item()

    error = relative_error(analytic, numerical_gradient(loss_at, flat(params)))
    if first_order:
        assert error > 1e-3  # dropping the second-order term must change the body's gradient
    else:
        assert error < 1e-5


def test_anil_adapts_only_the_head():
    """By hand: embed support and query together once, head-only SGD on fixed features, query loss."""
    model, (support_x, support_y, query_x, query_y) = tiny_model(), tiny_task()
    params = leaves(dict(model.named_parameters()))
    loss, _ = anil_query_loss(model, params, (support_x, support_y, query_x, query_y), 3, 0.5, first_order=True)

    with torch.no_grad():
        features = model.body(torch.cat([support_x, query_x]))  # batch statistics over the whole episode
    support, query = features[: len(support_x)], features[len(support_x) :]
    w, b = model.head.weight.detach(), model.head.bias.detach()
    for _ in range(3):
        w_, b_ = w.clone().requires_grad_(), b.clone().requires_grad_()
        gw, gb = torch.autograd.grad(F.cross_entropy(support @ w_.T + b_, support_y), (w_, b_))
        w, b = w - 0.5 * gw, b - 0.5 * gb
    torch.testing.assert_close(loss.detach(), F.cross_entropy(query @ w.T + b, query_y))


def reptile(serial: bool, meta_batch: int = 2):
    task = TaskShape(channels=1, image_size=16, train_ways=3, test_ways=3)
    hyper = {
        "inner_steps": 2,
        "inner_lr": 0.2,
        "outer_lr": 0.5,
        "meta_batch": meta_batch,
        "serial": serial,
        "hidden": 3,
        "anneal_iterations": 4,
        "inner_batch": 0,  # full batch: the closed form below; mini-batches are tested separately
    }
    torch.manual_seed(0)
    algorithm = build_algorithm("reptile", hyper, task, torch.device("cpu"))
    algorithm.model.double()
    return algorithm


def reptile_batch(count: int) -> Episode:
    generator = torch.Generator().manual_seed(5)
    support_x = torch.rand(count, 3, 1, 16, 16, generator=generator, dtype=torch.float64)
    query_x = torch.rand(count, 6, 1, 16, 16, generator=generator, dtype=torch.float64)
    labels = torch.arange(3)
    return Episode(support_x, labels.expand(count, 3), query_x, labels.repeat(2).expand(count, 6), 3)


def sgd(model, theta: dict, x, y, steps: int, lr: float) -> dict:
    """Independent plain SGD: fresh leaves each step, no graph kept."""
    for _ in range(steps):
        current = leaves(theta)
        loss = F.cross_entropy(functional_call(model, current, (x,)), y)
        grads = torch.autograd.grad(loss, list(current.values()))
        theta = {n: p.detach() - lr * g for (n, p), g in zip(current.items(), grads)}
    return theta


@pytest.mark.parametrize("serial", [False, True])
def test_reptile_outer_update_matches_closed_form(serial):
    algorithm, batch = reptile(serial), reptile_batch(2)
    model = algorithm.model
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    epsilon = 0.5
    phis = []
    for i in range(2):
        x = torch.cat([batch.support_x[i], batch.query_x[i]])
        y = torch.cat([batch.support_y[i], batch.query_y[i]])
        phi = sgd(model, theta, x, y, steps=2, lr=0.2)
        if serial:  # Algorithm 1: θ ← θ + ε(φ_i − θ) after every task
            theta = {n: theta[n] + epsilon * (phi[n] - theta[n]) for n in theta}
        phis.append(phi)
    if not serial:  # Algorithm 2: θ ← θ + ε(mean φ − θ)
        theta = {n: theta[n] + epsilon * (sum(phi[n] for phi in phis) / 2 - theta[n]) for n in theta}

    metrics = algorithm.meta_train_step(batch)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), theta[name], rtol=1e-10, atol=1e-12)
    assert metrics["outer_lr"] == pytest.approx(epsilon * (1 - 1 / 4))  # linear annealing to 0 over 4 steps


def test_reptile_serial_and_batched_differ():
    batch = reptile_batch(2)
    a, b = reptile(serial=False), reptile(serial=True)
    a.meta_train_step(batch)
    b.meta_train_step(batch)
    assert (flat(dict(a.model.named_parameters())) - flat(dict(b.model.named_parameters()))).abs().max() > 1e-6
