"""MAML-family meta-steps: ours against `higher` (the peer) on the same model and data."""

from __future__ import annotations

import functools

import higher
import pytest
import torch
import torch.nn.functional as F

from benchmarks.conftest import conv4_classifier
from metabench.algorithms import maml


def ours(model, batch, first_order: bool):
    """One meta-gradient over the meta-batch with metabench's MAML task loss (per-task backward)."""
    model.zero_grad(set_to_none=True)
    params = dict(model.named_parameters())
    for i in range(len(batch.support_x)):
        task = (batch.support_x[i], batch.support_y[i], batch.query_x[i], batch.query_y[i])
        loss, _ = maml.query_loss(model, params, task, 1, 0.4, first_order)
        (loss / len(batch.support_x)).backward()


def ours_compiled(model, batch, loss_fn):
    """First-order MAML with each task's loss through torch.compile (``compile: true``)."""
    model.zero_grad(set_to_none=True)
    params = dict(model.named_parameters())
    for i in range(len(batch.support_x)):
        task = (batch.support_x[i], batch.support_y[i], batch.query_x[i], batch.query_y[i])
        loss, _ = maml.query_loss(model, params, task, 1, 0.4, True, loss_fn)
        (loss / len(batch.support_x)).backward()


def with_higher(model, batch, first_order: bool):
    """The same meta-gradient with `higher`'s differentiable optimiser.

    First order: ``track_higher_grads=False`` detaches the fast weights, so the query gradient at
    the adapted weights is added to the initial weights' ``.grad`` by hand, as `higher` documents.
    """
    model.zero_grad(set_to_none=True)
    inner = torch.optim.SGD(model.parameters(), lr=0.4)
    tasks = len(batch.support_x)
    for i in range(tasks):
        with higher.innerloop_ctx(model, inner, copy_initial_weights=False, track_higher_grads=not first_order) as (
            fmodel,
            diffopt,
        ):
            diffopt.step(F.cross_entropy(fmodel(batch.support_x[i]), batch.support_y[i]))
            loss = F.cross_entropy(fmodel(batch.query_x[i]), batch.query_y[i]) / tasks
            if not first_order:
                loss.backward()
                continue
            for p, g in zip(model.parameters(), torch.autograd.grad(loss, list(fmodel.parameters()))):
                p.grad = g if p.grad is None else p.grad + g


@pytest.mark.parametrize("first_order", [False, True], ids=["second_order", "first_order"])
@pytest.mark.parametrize("implementation", [ours, with_higher], ids=["metabench", "higher"])
def test_maml_meta_step(benchmark, task_batch, implementation, first_order):
    model = conv4_classifier(textbook=implementation is with_higher)
    benchmark.extra_info.update({"meta_batch": len(task_batch.support_x), "first_order": first_order})
    benchmark.pedantic(implementation, args=(model, task_batch, first_order), rounds=5, warmup_rounds=1)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_fomaml_compiled_meta_step(benchmark, task_batch):
    """The opt-in compiled first-order path; compilation (about a minute) happens in the warm-up round."""
    model = conv4_classifier()
    loss_fn = torch.compile(functools.partial(maml.loss_and_logits, model), dynamic=False)
    benchmark.extra_info.update({"meta_batch": len(task_batch.support_x), "first_order": True})
    benchmark.pedantic(ours_compiled, args=(model, task_batch, loss_fn), rounds=3, warmup_rounds=1)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_inner_loop_of_one_task(benchmark, task_batch):
    """Small and steady: the benchmark the slowed-inner-loop check targets."""
    model = conv4_classifier()
    params = dict(model.named_parameters())
    args = (model, params, task_batch.support_x[0], task_batch.support_y[0], 1, 0.4, False)
    benchmark(lambda: maml.adapt(*args))


@pytest.mark.parametrize("first_order", [False, True], ids=["second_order", "first_order"])
def test_peer_computes_the_same_meta_gradient(task_batch, first_order):
    """The comparison is only fair if both compute the same thing (float64, 2 tasks)."""
    batch = type(task_batch)(
        *(
            t[:2].double() if t.is_floating_point() else t[:2]
            for t in (task_batch.support_x, task_batch.support_y, task_batch.query_x, task_batch.query_y)
        ),
        task_batch.ways,
    )
    grads = []
    for implementation in (ours, with_higher):
        model = conv4_classifier(textbook=implementation is with_higher).double()
        implementation(model, batch, first_order)
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-12)
