"""What a method costs: meta-training and test-time throughput, FLOPs, memory.

Measured on freshly initialised weights (cost does not depend on what was learned), after
warm-up, with the device synchronised around each timed region. The machine's own matmul
peak is measured in the same process, so the utilisation ratio compares like with like on a
noisy machine.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from metabench import files
from metabench.algorithms import build_algorithm, get_algorithm, make_hyper
from metabench.config import RunConfig, resolve_device
from metabench.data import store
from metabench.episodes import EpisodeSpec, ImageBank, sample_indices
from metabench.evaluation import episode_accuracies
from metabench.runner import task_shape


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_gflops(device: torch.device, size: int = 1024, repeats: int = 10) -> float:
    """float32 matmul throughput: the machine's practical compute ceiling."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


# the first evaluation timing is repeated on 5x the episodes only when it took less than this
QUICK_EVALUATION_SECONDS = 2.0


def profile_run(config: RunConfig, steps: int = 5, episodes: int = 20) -> dict:
    """Throughput of one (algorithm, dataset, ways, shots) configuration.

    ``adaptation_tasks_per_second`` times ``predict`` on one episode at a time (what a user
    adapting to a new task pays); ``evaluation_episodes_per_second`` times the evaluator, which
    scores methods with a frozen embedding from a cache, on ``episodes`` episodes, or on
    ``5 × episodes`` when the first count took under ``QUICK_EVALUATION_SECONDS``.
    """
    device = resolve_device(config.device)
    dataset = store.load(config.dataset, Path(config.data_dir))
    hyper = make_hyper(get_algorithm(config.algorithm).Hyper, config.hyper, config.algorithm)
    task = task_shape(config, dataset, hyper)
    torch.manual_seed(config.seed)
    algorithm = build_algorithm(config.algorithm, config.hyper, task, device)
    rng = np.random.default_rng(config.seed)
    train, test = dataset.split("train"), dataset.split("test")
    train_bank, test_bank = ImageBank(train, device), ImageBank(test, device)
    train_spec = EpisodeSpec(task.train_ways, config.shots, config.queries_in_training)
    batches = [
        train_bank.episodes(sample_indices(train, train_spec, algorithm.episodes_per_step, rng))
        for _ in range(steps + 1)
    ]

    algorithm.meta_train_step(batches[0])  # warm-up
    with FlopCounterMode(display=False) as counter:
        algorithm.meta_train_step(batches[0])
    flops_per_step = counter.get_total_flops()
    _sync(device)
    start = time.perf_counter()
    for batch in batches[1:]:
        algorithm.meta_train_step(batch)
    _sync(device)
    step_seconds = (time.perf_counter() - start) / steps

    test_episodes = sample_indices(test, EpisodeSpec(config.ways, config.shots, config.queries), episodes + 1, rng)
    algorithm.train(False)
    tensors = [test_bank.episodes(test_episodes[i : i + 1]) for i in range(episodes + 1)]
    algorithm.predict(tensors[0].support_x[0], tensors[0].support_y[0], tensors[0].query_x[0], config.ways)
    _sync(device)
    start = time.perf_counter()
    for episode in tensors[1:]:
        algorithm.predict(episode.support_x[0], episode.support_y[0], episode.query_x[0], config.ways)
    _sync(device)
    episode_seconds = (time.perf_counter() - start) / episodes

    # evaluation as the evaluator runs it (from the embedding cache where the method allows it):
    # on `episodes` episodes, then on 5x as many when that is quick (where the cache shows its
    # worth); a slow per-episode method's rate is already steady on the first count
    for count in (episodes, 5 * episodes):
        evaluation = sample_indices(test, EpisodeSpec(config.ways, config.shots, config.queries), count, rng)
        start = time.perf_counter()
        episode_accuracies(algorithm, test_bank, evaluation)
        _sync(device)
        elapsed = time.perf_counter() - start
        evaluation_seconds = elapsed / count
        if elapsed > QUICK_EVALUATION_SECONDS:
            break

    peak = matmul_peak_gflops(device)
    achieved = flops_per_step / step_seconds / 1e9
    result = {
        "algorithm": config.algorithm,
        "dataset": config.dataset,
        "ways": config.ways,
        "shots": config.shots,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "meta_batch": algorithm.episodes_per_step,
        "meta_train_steps_per_second": 1 / step_seconds,
        "meta_train_tasks_per_second": algorithm.episodes_per_step / step_seconds,
        "gflop_per_step": flops_per_step / 1e9,
        "achieved_gflops": achieved,
        "machine_peak_gflops": peak,
        "utilisation": achieved / peak,
        "adaptation_tasks_per_second": 1 / episode_seconds,
        "evaluation_episodes_per_second": 1 / evaluation_seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if device.type == "cuda":
        result["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def write_profile(result: dict, path: Path) -> None:
    files.write_atomic(Path(path), json.dumps(result, indent=1) + "\n")  # never half a profile


def runs_of_setting(config: RunConfig) -> list[Path]:
    """The run directories of ``config``'s setting, every seed: the runs a profile's cost describes."""
    import dataclasses
    import re

    found = []
    pattern = RunConfig.format_id(config.dataset, config.algorithm, config.ways, config.shots, "*")
    for path in sorted(Path(config.runs_dir).glob(pattern)):
        seed = re.fullmatch(r"\d+", path.name[len(pattern) - 1 :].split("-")[0])
        if path.is_dir() and seed and dataclasses.replace(config, seed=int(seed.group())).run_id == path.name:
            found.append(path)
    return found
