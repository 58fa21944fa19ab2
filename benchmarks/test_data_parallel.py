"""MAML meta-steps with the meta-batch split over two gloo ranks of one thread each.

The split is metabench's data-parallel step (``metabench.distributed``: each rank its half of
the tasks, then the gradients summed over the ranks); compare with ``test_maml_meta_step``
(one process, two threads, ours and `higher`) in the same run: ``make benchmarks`` prints both.
Rank 1 is a helper process that takes a meta-step each time the benchmark (rank 0) broadcasts 1.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from benchmarks.conftest import conv4_classifier, make_task_batch
from metabench import distributed
from metabench.algorithms import maml
from tests.network import free_port


def rank_step(model, batch, first_order: bool) -> None:
    """This rank's share of the meta-batch, then the meta-gradient summed over the ranks."""
    model.zero_grad(set_to_none=True)
    params = dict(model.named_parameters())
    for i in distributed.shard(len(batch.support_x)):
        task = (batch.support_x[i], batch.support_y[i], batch.query_x[i], batch.query_y[i])
        loss, _ = maml.query_loss(model, params, task, 1, 0.4, first_order)
        (loss / len(batch.support_x)).backward()
    distributed.all_reduce_gradients(model.parameters())


def _helper(port: int, first_order: bool) -> None:
    from metabench.allocator import keep_freed_memory

    keep_freed_memory()  # as the benchmark process (conftest) and every command-line rank do
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=1, world_size=2)
    model, batch, go = conv4_classifier(), make_task_batch(), torch.zeros(1)
    while True:
        dist.broadcast(go, 0)
        if go.item() == 0:
            break
        rank_step(model, batch, first_order)
    dist.destroy_process_group()


@pytest.fixture
def second_rank(request):
    first_order = request.node.callspec.params["first_order"]
    port = free_port()
    helper = mp.get_context("spawn").Process(target=_helper, args=(port, first_order), daemon=True)
    helper.start()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=2)
    try:
        yield
    finally:
        dist.broadcast(torch.zeros(1), 0)
        dist.destroy_process_group()
        helper.join(60)
        torch.set_num_threads(threads)


def step(model, batch, first_order: bool) -> None:
    dist.broadcast(torch.ones(1), 0)  # rank 1 starts its half
    rank_step(model, batch, first_order)


@pytest.mark.parametrize("first_order", [False, True], ids=["second_order", "first_order"])
def test_data_parallel_maml_meta_step(benchmark, task_batch, first_order, second_rank):
    model = conv4_classifier()
    benchmark.extra_info.update({"meta_batch": len(task_batch.support_x), "ranks": 2, "threads_per_rank": 1})
    benchmark.pedantic(step, args=(model, task_batch, first_order), rounds=3, warmup_rounds=1)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
