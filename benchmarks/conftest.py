"""Fixtures of the benchmark gate: the issue's MAML setting and a test-only slowed inner loop.

Setting (benchmarks/README.md, "Cost and speed"): Conv-4 with 64 channels, 28×28 grey images, 5-way 1-shot tasks with
15 queries per class, meta-batch 32, one inner step at 0.4. Data are random: speed does not
depend on pixel values.

``--slow-inner-loop FACTOR`` (test-only) makes every MAML inner loop take FACTOR times as long,
by sleeping after each call for (FACTOR − 1) × its own duration; ``tests/test_benchmark_gate.py``
uses it to prove the gate fails on a regression.
"""

from __future__ import annotations

import time

import pytest
import torch

from metabench.algorithms import maml
from metabench.episodes import Episode
from metabench.models import Classifier, Conv4

WAYS, SHOTS, QUERIES, META_BATCH, SIZE = 5, 1, 15, 32, 28


def pytest_configure(config):
    """Measure what the command line runs: it applies these allocator settings at start."""
    from metabench.allocator import keep_freed_memory

    keep_freed_memory()


def pytest_addoption(parser):
    parser.addoption(
        "--slow-inner-loop", type=float, default=1.0, help="test-only: make MAML's inner loop this many times slower"
    )


@pytest.fixture(autouse=True)
def slowed_inner_loop(request, monkeypatch):
    factor = request.config.getoption("--slow-inner-loop")
    if factor != 1.0:
        real = maml.adapt

        def slow(*args, **kwargs):
            start = time.perf_counter()
            out = real(*args, **kwargs)
            time.sleep((factor - 1.0) * (time.perf_counter() - start))
            return out

        monkeypatch.setattr(maml, "adapt", slow)


@pytest.fixture(scope="session", autouse=True)
def fixed_threads():
    torch.set_num_threads(2)  # the machine the baseline was recorded on; see README


def conv4_classifier(seed: int = 0, textbook: bool = False) -> Classifier:
    """metabench's Conv-4 classifier; ``textbook``: the same network as a user of a peer library
    writes it, each block in the papers' order (conv, batch norm, ReLU, max-pool) on PyTorch's
    default NCHW maps. metabench pools before the ReLU (the same function, bitwise;
    ``models.conv4.conv_block``) and keeps its maps channels-last (``models.conv4.channels_last``)."""
    torch.manual_seed(seed)
    body = Conv4(in_channels=1, hidden=64, track_running_stats=False, channels_last=not textbook)
    if textbook:
        for block in body.blocks:
            block[2], block[3] = block[3], block[2]
    return Classifier(body, body.out_features(SIZE), WAYS)


@pytest.fixture
def task_batch() -> Episode:
    return make_task_batch()


def make_task_batch() -> Episode:
    """The benchmark's meta-batch of random tasks (the same in every process)."""
    generator = torch.Generator().manual_seed(0)
    support_x = torch.rand(META_BATCH, WAYS * SHOTS, 1, SIZE, SIZE, generator=generator)
    query_x = torch.rand(META_BATCH, WAYS * QUERIES, 1, SIZE, SIZE, generator=generator)
    labels = torch.arange(WAYS)
    support_y = labels.repeat_interleave(SHOTS).expand(META_BATCH, -1)
    query_y = labels.repeat_interleave(QUERIES).expand(META_BATCH, -1)
    return Episode(support_x, support_y, query_x, query_y, WAYS)
