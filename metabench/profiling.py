"""What a method costs: meta-training and test-time throughput, FLOPs, memory.

Measured on freshly initialised weights (cost does not depend on what was learned), after
warm-up, with the device synchronised around each timed region. The machine's own matmul
peak is measured in the same process, so the utilisation ratio compares like with like on a
noisy machine.
"""

from __future__ import annotations

import dataclasses
import json
import re
import resource
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from metabench import files
from metabench.algorithms import Algorithm
from metabench.config import RunConfig
from metabench.episodes import EpisodeSpec, ImageBank, sample_indices
from metabench.evaluation import episode_accuracies
from metabench.prepared import PreparedRun, prepare


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


def profile_run(run: PreparedRun, steps: int = 5, episodes: int = 20) -> dict:
    """Throughput of one prepared (algorithm, dataset, ways, shots) configuration.

    ``adaptation_tasks_per_second`` times ``predict`` on one episode at a time (what a user
    adapting to a new task pays); ``evaluation_episodes_per_second`` times the evaluator, which
    scores methods with a frozen embedding from a cache, on ``episodes`` episodes, or on
    ``5 × episodes`` when the first count took under ``QUICK_EVALUATION_SECONDS``.
    """
    config = run.config
    device, algorithm = run.device, run.build()
    rng = np.random.default_rng(config.seed)
    flops_per_step, step_seconds = _time_meta_steps(run, algorithm, rng, steps)
    algorithm.train(False)
    episode_seconds = _time_adaptation(run, algorithm, rng, episodes)
    evaluation_seconds = _time_evaluation(run, algorithm, rng, episodes)
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
    # what the numbers describe: a profile stays current while this is the identity asked for
    return {**result, "identity": run.identity(), "provenance": run.provenance()}


def _time_meta_steps(run: PreparedRun, algorithm: Algorithm, rng: np.random.Generator, steps: int) -> tuple[int, float]:
    """FLOPs of one meta-train step and its seconds, timed over ``steps`` steps after a warm-up."""
    train = run.dataset.split("train")
    bank = ImageBank(train, run.device)
    batches = [
        bank.episodes(sample_indices(train, run.train_spec, algorithm.episodes_per_step, rng)) for _ in range(steps + 1)
    ]
    algorithm.meta_train_step(batches[0])  # warm-up
    with FlopCounterMode(display=False) as counter:
        algorithm.meta_train_step(batches[0])
    _sync(run.device)
    start = time.perf_counter()
    for batch in batches[1:]:
        algorithm.meta_train_step(batch)
    _sync(run.device)
    return counter.get_total_flops(), (time.perf_counter() - start) / steps


def _test_spec(config: RunConfig) -> EpisodeSpec:
    return EpisodeSpec(config.ways, config.shots, config.queries)


def _time_adaptation(run: PreparedRun, algorithm: Algorithm, rng: np.random.Generator, episodes: int) -> float:
    """Seconds of ``predict`` on one test episode, over ``episodes`` episodes after a warm-up."""
    test, ways = run.dataset.split("test"), run.config.ways
    bank = ImageBank(test, run.device)
    indices = sample_indices(test, _test_spec(run.config), episodes + 1, rng)
    tensors = [bank.episodes(indices[i : i + 1]) for i in range(episodes + 1)]
    algorithm.predict(tensors[0].support_x[0], tensors[0].support_y[0], tensors[0].query_x[0], ways)
    _sync(run.device)
    start = time.perf_counter()
    for episode in tensors[1:]:
        algorithm.predict(episode.support_x[0], episode.support_y[0], episode.query_x[0], ways)
    _sync(run.device)
    return (time.perf_counter() - start) / episodes


def _time_evaluation(run: PreparedRun, algorithm: Algorithm, rng: np.random.Generator, episodes: int) -> float:
    """Seconds per episode as the evaluator scores them (from the embedding cache where the method
    allows it): on ``episodes`` episodes, then on 5x as many when that is quick (where the cache
    shows its worth); a slow per-episode method's rate is already steady on the first count."""
    test = run.dataset.split("test")
    bank = ImageBank(test, run.device)
    for count in (episodes, 5 * episodes):
        evaluation = sample_indices(test, _test_spec(run.config), count, rng)
        start = time.perf_counter()
        episode_accuracies(algorithm, bank, evaluation)
        _sync(run.device)
        elapsed = time.perf_counter() - start
        if elapsed > QUICK_EVALUATION_SECONDS:
            break
    return elapsed / count


def write_profile(result: dict, path: Path) -> None:
    files.write_atomic(Path(path), json.dumps(result, indent=1) + "\n")  # never half a profile


def current_profile(path: Path, identity: dict) -> dict | None:
    """The profile at ``path`` when it was measured for ``identity`` (the same settings, data,
    behaviour versions, threads and platform); None when it must be measured (again)."""
    if not Path(path).is_file():
        return None
    try:
        saved = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(saved, dict) or saved.get("identity") != identity:
        return None
    return saved


def profile_to(config: RunConfig, path: Path, force: bool = False) -> tuple[dict, bool]:
    """``config``'s profile at ``path``: kept when current (unless ``force``), else measured and
    written. Returns (profile, whether it was measured now)."""
    run = prepare(config)
    kept = None if force else current_profile(path, run.identity())
    if kept is not None:
        return kept, False
    result = profile_run(run)
    write_profile(result, path)
    return result, True


def runs_of_setting(config: RunConfig) -> list[Path]:
    """The run directories of ``config``'s setting, every seed: the runs a profile's cost describes."""
    found = []
    pattern = RunConfig.format_id(config.dataset, config.algorithm, config.ways, config.shots, "*")
    for path in sorted(Path(config.runs_dir).glob(pattern)):
        seed = re.fullmatch(r"\d+", path.name[len(pattern) - 1 :].split("-")[0])
        if path.is_dir() and seed and dataclasses.replace(config, seed=int(seed.group())).run_id == path.name:
            found.append(path)
    return found
