"""Peak memory of one process during MAML meta-steps: ours (one process, or one of two ranks)
against `higher`, at the benchmark setting (``conftest.py``).

Each arrangement runs in a fresh process (spawned), which takes two meta-steps of its tasks
(the whole meta-batch, or a rank's half); the figure is its peak resident memory (``ru_maxrss``)
above its resident memory just before the first step, so imports and data do not count.
"""

from __future__ import annotations

import multiprocessing
import resource

import psutil
import pytest
import torch

from benchmarks.conftest import META_BATCH, conv4_classifier, make_task_batch


def _peak_bytes(implementation: str, first_order: bool, tasks: int, threads: int) -> int:
    from benchmarks.test_meta_step import ours, with_higher
    from metabench.allocator import keep_freed_memory

    keep_freed_memory()
    torch.set_num_threads(threads)
    batch = make_task_batch().tasks(range(tasks))
    model = conv4_classifier(textbook=implementation == "higher")
    step = with_higher if implementation == "higher" else ours
    before = psutil.Process().memory_info().rss
    for _ in range(2):
        step(model, batch, first_order)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before


def peak_bytes(implementation: str, first_order: bool, tasks: int, threads: int) -> int:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_peak_bytes, (implementation, first_order, tasks, threads))


@pytest.mark.parametrize("first_order", [False, True], ids=["second_order", "first_order"])
def test_peak_memory_per_process_is_no_higher_than_highers(benchmark, first_order):
    arrangements = {
        "higher, 1 process x 2 threads": ("higher", META_BATCH, 2),
        "metabench, 1 process x 2 threads": ("metabench", META_BATCH, 2),
        "metabench, one of 2 ranks x 1 thread": ("metabench", META_BATCH // 2, 1),
    }
    peaks = {}

    def measure():
        for name, (implementation, tasks, threads) in arrangements.items():
            peaks[name] = peak_bytes(implementation, first_order, tasks, threads)

    benchmark.pedantic(measure, rounds=1, iterations=1)
    benchmark.extra_info.update({f"peak MiB, {name}": round(value / 2**20, 1) for name, value in peaks.items()})
    higher = peaks["higher, 1 process x 2 threads"]
    for name, value in peaks.items():
        assert value <= 1.02 * higher, f"{name}: {value / 2**20:.0f} MiB against higher's {higher / 2**20:.0f} MiB"
