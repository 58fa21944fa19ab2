"""Data-parallel meta-training: one meta-batch split over ``torch.distributed`` ranks.

``torchrun --nproc-per-node N metabench train ...`` starts N processes; each joins the process
group (gloo on CPU, NCCL on CUDA), computes the meta-gradient of its share of the meta-batch's
tasks, and the ranks sum those gradients (``all_reduce_gradients``, the one hook an algorithm's
step calls) before the single optimiser step, so every rank holds the same weights after it.
Each rank draws the same batches from the run's seeded generator (what sampling on rank 0 and
sending the batch would give, with nothing but gradients sent), validation episodes are split
over the ranks and their accuracies gathered in order, and only rank 0 writes the run's files
and talks to MLflow, so a run's outputs are the same files as a one-process run's.

On one process (no ``WORLD_SIZE`` > 1 in the environment) every function here is the identity
or a no-op, and a run's arithmetic is exactly what it was without this module.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ErrorHandler
from torch.distributed.run import get_args_parser, run

from metabench import MetabenchError
from metabench.lifeline import die_with_parent


def active() -> bool:
    """True inside a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank: the group's, or torchrun's ``RANK`` once the group is left."""
    return dist.get_rank() if active() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_writer() -> bool:
    """Only rank 0 writes files, shows progress and logs to MLflow."""
    return rank() == 0


def requested_ranks() -> int:
    """The world size torchrun asks for (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """Join the process group torchrun describes for the duration (nothing on one process).

    A group this call joined is left at the end; one that already exists is kept.
    """
    if requested_ranks() <= 1 or dist.is_initialized():
        yield
        return
    die_with_parent()  # a rank whose launcher was killed stops too, instead of training on alone
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def shard(count: int) -> range:
    """This rank's contiguous share of ``count`` items (shares differ by at most one)."""
    size, me = world_size(), rank()
    base, extra = divmod(count, size)
    start = me * base + min(me, extra)
    return range(start, start + base + (1 if me < extra else 0))


def all_reduce_gradients(parameters: Iterable[torch.Tensor]) -> None:
    """Sum every parameter's gradient over the ranks, in one flat buffer (no-op on one rank).

    A parameter without a gradient on every rank keeps none, as in one process; one with a
    gradient on some rank gets the sum (the others count as zeros).
    """
    if not active():
        return
    params = list(parameters)
    if not params:
        return
    dtype = params[0].dtype
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=dtype, device=params[0].device)
    flat = torch.cat(
        [has_grad] + [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(dtype) for p in params]
    )
    dist.all_reduce(flat)
    used, values = flat[: len(params)] > 0, flat[len(params) :]
    for p, is_used, chunk in zip(params, used.tolist(), values.split([p.numel() for p in params])):
        p.grad = chunk.view_as(p).to(p.dtype).clone() if is_used else None


def mean_over_ranks(values: list[torch.Tensor], count: int) -> torch.Tensor:
    """The mean of the per-task tensors ``values`` of every rank (``count`` in all), elementwise.

    On one process, ``torch.stack(values).mean(0)`` (the same rounding as before ranks existed);
    over ranks, the sum in float64, then divided.
    """
    if not active():
        return torch.stack(values).mean(0)
    total = torch.stack(values).sum(0).detach().to(torch.float64).clone()  # every rank has a task
    dist.all_reduce(total)
    return total / count


def gather(local: np.ndarray) -> np.ndarray:
    """Every rank's ``local`` array (its ``shard`` of a sequence), concatenated in rank order."""
    if not active():
        return local
    parts: list[np.ndarray | None] = [None] * world_size()
    dist.all_gather_object(parts, local)
    return np.concatenate(parts)


def barrier() -> None:
    if active():
        dist.barrier()


def check_same_weights(modules: Iterable[torch.nn.Module], where: str) -> None:
    """Fail loudly if the ranks' weights differ (they must stay equal after every step)."""
    if not active():
        return
    tensors = [p.detach().to(torch.float64) for module in modules for p in module.state_dict().values()]
    checksum = torch.stack([t.sum() for t in tensors] + [(t * t).sum() for t in tensors])
    gathered = [torch.empty_like(checksum) for _ in range(world_size())]
    dist.all_gather(gathered, checksum)
    if any(not torch.equal(gathered[0], other) for other in gathered[1:]):
        raise MetabenchError(f"the ranks' weights differ {where}; report this with the command that was run")


# -- how many ranks one run uses -----------------------------------------------------------------


@dataclass(frozen=True)
class Arrangement:
    """Processes (``ranks``) that share one run's meta-batches, and torch threads per rank."""

    ranks: int
    threads: int


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and ``taskset`` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def arrangement(data_parallel: bool, tasks_per_step: int, device: torch.device, ranks: int | None) -> Arrangement:
    """The ranks × threads one training run uses; ``ranks=None`` chooses (``--ranks auto``).

    Automatic: an algorithm that splits its meta-batch (``data_parallel``) gets one rank per GPU
    on CUDA, and on a CPU one rank per core, each with one thread (cores left over when the
    meta-batch is smaller than the core count go to threads): for a second-order MAML meta-step
    ranks of one thread were at least as fast as one process of as many threads
    (``benchmarks/README.md``, "Cost and speed", has the measurement). Every other algorithm runs
    in one process with every core as threads.
    """
    cores = usable_cores()
    if ranks is None:
        if not data_parallel:
            ranks = 1
        elif device.type == "cuda":
            ranks = min(torch.cuda.device_count(), tasks_per_step)
        else:
            ranks = min(cores, tasks_per_step)
    ranks = max(1, ranks)
    return Arrangement(ranks, 1 if device.type == "cuda" else max(1, cores // ranks))


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def launch(plan: Arrangement, command: list[str]) -> None:
    """Run ``python -m metabench <command>`` as ``plan.ranks`` local ranks, as ``torchrun
    --standalone --nproc-per-node N`` would (PyTorch's own launcher, on a free local port), with
    ``plan.threads`` threads each; returns when every rank has finished.

    A failed rank stops the others. A rank that stopped on a ``MetabenchError`` left its message
    in torch elastic's error file (``record_rank_error``); the first such message is raised here,
    else an error that says to run the command again, which resumes.
    """
    args = get_args_parser().parse_args(
        ["--standalone", "--nproc-per-node", str(plan.ranks), "-m", "metabench", *command]
    )
    try:
        with _environment(OMP_NUM_THREADS=str(plan.threads)):
            run(args)
    except ChildFailedError as error:
        _, first = error.get_first_failure()
        said = first.message.get("message", "") if isinstance(first.message, dict) else ""
        prefix = f"{MetabenchError.__name__}: "
        if said.startswith(prefix):
            raise MetabenchError(said.removeprefix(prefix)) from None
        failures = ", ".join(f"rank {rank} exit code {failure.exitcode}" for rank, failure in error.failures.items())
        raise MetabenchError(
            f"training on {plan.ranks} ranks failed ({failures}); run the same command again to resume "
            f"(or --ranks 1 for one process)"
        ) from None


def record_rank_error(error: BaseException) -> None:
    """In a rank started by ``launch`` (or torchrun), write ``error`` to torch elastic's error
    file, where the launcher reads why the rank failed."""
    ErrorHandler().record_exception(error)
