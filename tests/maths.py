"""Shared float64 helpers for the algorithms' maths tests: a tiny network, a tiny task, finite differences."""

from __future__ import annotations

from collections.abc import Callable

import torch

from metabench.models import Classifier, Conv4


def tiny_model(ways: int = 3) -> Classifier:
    torch.manual_seed(0)
    body = Conv4(in_channels=1, hidden=3, depth=2, track_running_stats=False)
    return Classifier(body, body.out_features(8), ways=ways).double()


def tiny_task(seed: int = 1, ways: int = 3, shots: int = 2, queries: int = 3):
    """(support_x, support_y, query_x, query_y) of 8×8 random images, float64."""
    generator = torch.Generator().manual_seed(seed)
    support_x = torch.rand(ways * shots, 1, 8, 8, generator=generator, dtype=torch.float64)
    query_x = torch.rand(ways * queries, 1, 8, 8, generator=generator, dtype=torch.float64)
    return support_x, torch.arange(ways).repeat(shots), query_x, torch.arange(ways).repeat(queries)


def flat(params: dict) -> torch.Tensor:
    return torch.cat([p.reshape(-1) for p in params.values()])


def unflat(vector: torch.Tensor, like: dict) -> dict:
    out, start = {}, 0
    for name, p in like.items():
        out[name] = vector[start : start + p.numel()].view_as(p)
        start += p.numel()
    return out


def leaves(params: dict) -> dict:
    """Fresh float64 leaf copies that require grad."""
    return {n: p.detach().clone().requires_grad_() for n, p in params.items()}


def numerical_gradient(
    function: Callable[[torch.Tensor], float], point: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """Central finite differences of a scalar function of a flat float64 vector."""
    point = point.detach()
    gradient = torch.empty_like(point)
    for i in range(len(point)):
        values = []
        for sign in (1, -1):
            shifted = point.clone()
            shifted[i] += sign * eps
            values.append(float(function(shifted)))
        gradient[i] = (values[0] - values[1]) / (2 * eps)
    return gradient


def relative_error(analytic: torch.Tensor, numeric: torch.Tensor) -> float:
    return float((analytic - numeric).norm() / numeric.norm())
