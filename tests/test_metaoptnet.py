"""MetaOptNet's heads: ridge against the primal normal equations, the SVM dual solver against a generic
constrained solver of the Crammer-Singer primal, gradients through the heads against finite differences."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize

from metabench.algorithms.metaoptnet import project_simplex, ridge_weights, svm_weights
from tests.maths import numerical_gradient, relative_error


def problem(seed=0, n=6, d=3, ways=3):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % ways
    x = rng.normal(size=(n, d)) + 1.5 * np.eye(ways, d)[y]  # roughly separable, not trivially
    return x, y


def test_ridge_head_solves_the_primal_normal_equations():
    x, y = problem()
    one_hot = np.eye(3)[y]
    lam = 0.7
    primal = np.linalg.solve(x.T @ x + lam * np.eye(3), x.T @ one_hot).T  # (ways, d)
    ours = ridge_weights(torch.from_numpy(x), torch.from_numpy(one_hot), lam)
    np.testing.assert_allclose(ours.numpy(), primal, rtol=1e-10, atol=1e-12)


def test_simplex_projection_matches_bisection_on_the_threshold():
    values = torch.tensor([[0.3, -1.0, 2.0, 0.1], [0.0, 0.0, 0.0, 0.0], [5.0, 5.0, -3.0, 1.0]], dtype=torch.float64)
    ours = project_simplex(values, 2.0)
    for row, projected in zip(values.numpy(), ours.numpy()):
        low, high = row.min() - 2.0, row.max()
        for _ in range(200):  # Σ max(v − τ, 0) = 2 is monotone in τ
            tau = (low + high) / 2
            low, high = (tau, high) if np.maximum(row - tau, 0).sum() > 2.0 else (low, tau)
        np.testing.assert_allclose(projected, np.maximum(row - tau, 0), atol=1e-10)


@pytest.mark.parametrize("c", [0.1, 1.0])
def test_svm_dual_solver_reaches_the_crammer_singer_primal_optimum(c):
    x, y = problem(seed=1)
    n, d, ways = len(x), x.shape[1], 3

    def objective(z):
        w, slack = z[: ways * d].reshape(ways, d), z[ways * d :]
        return 0.5 * (w**2).sum() + c * slack.sum()

    constraints = []
    for i in range(n):
        for m in range(ways):

            def margin(z, i=i, m=m):
                w, slack = z[: ways * d].reshape(ways, d), z[ways * d :]
                return (w[y[i]] - w[m]) @ x[i] - float(m != y[i]) + slack[i]

            constraints.append({"type": "ineq", "fun": margin})
    result = minimize(
        objective,
        np.zeros(ways * d + n),
        constraints=constraints,
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 1000},
    )
    assert result.success
    primal = result.x[: ways * d].reshape(ways, d)
    ours = svm_weights(torch.from_numpy(x), torch.from_numpy(np.eye(ways)[y]), c, iterations=5000).numpy()
    np.testing.assert_allclose(ours, primal, atol=1e-5)


@pytest.mark.parametrize("head", ["ridge", "svm"])
def test_query_loss_gradient_through_the_head_matches_finite_differences(head):
    x, y = problem(seed=2)
    support = torch.from_numpy(x)
    one_hot = torch.from_numpy(np.eye(3)[y])
    query = torch.from_numpy(problem(seed=3)[0])
    query_y = torch.from_numpy(problem(seed=3)[1])

    def loss(features):
        weights = ridge_weights(features, one_hot, 0.5) if head == "ridge" else svm_weights(features, one_hot, 0.1, 30)
        return F.cross_entropy(query @ weights.T * 3.0, query_y)

    point = support.clone().requires_grad_()
    (analytic,) = torch.autograd.grad(loss(point), point)
    numeric = numerical_gradient(lambda v: loss(v.view_as(support)).item(), support.reshape(-1))
    assert relative_error(analytic.reshape(-1), numeric) < 1e-5
