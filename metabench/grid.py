"""The leaderboard's grid of runs: each run one unit (train, then evaluate, in one process),
spread over worker processes by an executor, finished runs never run twice.

DVC cannot run the stages of one workspace in parallel (treeverse/dvc#5795), so the pipeline
has one ``grid`` stage whose output ``runs/`` persists between reproductions: ``metabench
grid`` skips every run whose evaluation matches its current spec (``completed``) and runs the
rest. Editing one algorithm, or ``dvc exp run -S algorithms.maml...``, re-runs the stage, and
only that algorithm's runs train again.

Workers never talk to MLflow (a SQLite store must not be written by two processes at once):
the driver sends each finished run from its files (``tracking.resend``), so a tracking store
holds exactly one finished MLflow run per grid point, whichever worker trained it.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from metabench import MetabenchError, files, system_metrics
from metabench.config import RunConfig

GRID_FILE = "grid.json"


@dataclass
class Outcome:
    """What one run of the grid gave: ``done`` (ran now), ``skipped`` (already complete) or ``failed``."""

    run_id: str
    status: str
    metrics: dict | None = None
    seconds: dict = field(default_factory=dict)
    error: str | None = None


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def completed(config: RunConfig, threads: int) -> dict | None:
    """The run's metrics when its evaluation describes the run its spec asks for now (same
    training settings, iterations, data, training code and thread count, same test episodes);
    None when it has to run (again)."""
    from metabench.evaluation import read_results

    if not (config.run_dir / "metrics.json").is_file():
        return None
    try:
        metrics, _ = read_results(config.run_dir)
    except MetabenchError:
        return None
    from metabench.data import store
    from metabench.runner import evaluation_episodes, fingerprint

    dataset = store.load(config.dataset, Path(config.data_dir))
    if metrics.get("fingerprint") != fingerprint(config, dataset, threads):
        return None
    if metrics.get("iterations") != (config.iterations if _trained(config) else None):
        return None
    if metrics.get("episodes_sha256") != evaluation_episodes(config, dataset, "test").digest():
        return None
    return metrics


def _trained(config: RunConfig) -> bool:
    from metabench.algorithms import get_algorithm

    return get_algorithm(config.algorithm).trained


def _must_restart(config: RunConfig, threads: int) -> bool:
    """Whether the run's folder holds a run the spec no longer asks for: trained with other
    settings, data, code or threads, or for more iterations. The grid replaces it, as ``dvc
    repro`` replaces a stage's outputs; an interrupted run with the same spec resumes instead."""
    config_path = config.run_dir / "config.json"
    if not config_path.is_file():
        return False
    try:
        saved = json.loads(config_path.read_text())
    except json.JSONDecodeError:
        return True
    from metabench.data import store
    from metabench.runner import fingerprint

    dataset = store.load(config.dataset, Path(config.data_dir))
    if saved.get("fingerprint") != fingerprint(config, dataset, threads):
        return True
    return (saved.get("config") or {}).get("iterations", 0) > config.iterations


def run_unit(config: RunConfig, threads: int | None = None) -> Outcome:
    """Train (unless a reference method) then evaluate one run in this process.

    ``threads`` fixes torch's intra-op threads first: results on a CPU are bit-identical only
    for the same count, and it is part of the run's fingerprint.
    """
    import torch

    from metabench.runner import evaluate_run, train_run

    if threads:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    start = time.perf_counter()
    restart = _trained(config) and _must_restart(config, threads)
    # the worker keeps the machine's load beside the run's files; the driver sends it to MLflow
    with system_metrics.Sampler(config.run_dir, resume=not restart):
        if _trained(config):
            train_run(config, force=restart)
        metrics = evaluate_run(config)
    return Outcome(
        config.run_id, "done", metrics, {**run_seconds(config), "unit": round(time.perf_counter() - start, 1)}
    )


def run_seconds(config: RunConfig) -> dict:
    """What the run's files say it cost (``tracking.recorded_seconds``), to a tenth of a second."""
    from metabench.tracking import recorded_seconds

    return {label: round(value, 1) for label, value in recorded_seconds(config.run_dir).items()}


def _worker_start(threads: int) -> None:
    """Each worker process: its thread count, no MLflow (the driver tracks), the CPU allocator."""
    os.environ["METABENCH_TRACKING"] = "off"
    from metabench.allocator import keep_freed_memory

    keep_freed_memory()
    import torch

    torch.set_num_threads(threads)


def _unit_in_worker(config: RunConfig, threads: int) -> Outcome:
    try:
        return run_unit(config, threads)
    except MetabenchError as error:
        return Outcome(config.run_id, "failed", error=str(error))
    except Exception as error:  # a bug in one run must not lose the others' results
        detail = traceback.format_exception_only(type(error), error)[-1].strip()
        return Outcome(config.run_id, "failed", error=detail)


class Executor(Protocol):
    """Runs grid units; calls ``report`` with each outcome as soon as it is known."""

    threads: int

    def run(self, configs: list[RunConfig], report: Callable[[Outcome], None]) -> None: ...


class LocalExecutor:
    """``workers`` processes on this machine, ``threads`` torch threads each.

    Worker processes are started with ``spawn`` (a clean interpreter, no forked torch thread
    pools). A worker that dies (killed, out of memory) breaks the pool: its unfinished runs go
    to a new pool once, where they resume from their last saved state.
    """

    def __init__(self, workers: int, threads: int, retries: int = 1):
        if workers < 1 or threads < 1:
            raise MetabenchError("--workers and --threads must be at least 1")
        self.workers, self.threads, self.retries = workers, threads, retries

    def run(self, configs: list[RunConfig], report: Callable[[Outcome], None]) -> None:
        pending = list(configs)
        for attempt in range(self.retries + 1):
            if not pending:
                return
            pending = self._pool(pending, report, last=attempt == self.retries)

    def _pool(self, configs, report, last: bool) -> list[RunConfig]:
        context = multiprocessing.get_context("spawn")
        left = {config.run_id: config for config in configs}
        with concurrent.futures.ProcessPoolExecutor(
            max_workers=min(self.workers, len(configs)),
            mp_context=context,
            initializer=_worker_start,
            initargs=(self.threads,),
        ) as pool:
            futures = {pool.submit(_unit_in_worker, config, self.threads): config for config in configs}
            for future in concurrent.futures.as_completed(futures):
                config = futures[future]
                try:
                    outcome = future.result()
                except concurrent.futures.process.BrokenProcessPool:
                    if not last:
                        continue  # retried in a new pool
                    outcome = Outcome(config.run_id, "failed", error="its worker process died")
                left.pop(config.run_id, None)
                report(outcome)
        return list(left.values())


def estimated_seconds(config: RunConfig, profiles_dir: Path | None) -> float:
    """Rough cost of a run from its setting's profile (if one exists), else from its budget:
    the grid starts the longest runs first so that no worker idles at the end."""
    validations = config.iterations // max(config.val_every, 1) + 1
    profile = profiles_dir / config.profile_path().name if profiles_dir else None
    if profile is not None and profile.is_file():
        try:
            measured = json.loads(profile.read_text())
            steps = measured["meta_train_steps_per_second"]
            episodes = measured["evaluation_episodes_per_second"]
            evaluated = validations * config.val_episodes + config.test_episodes
            return (config.iterations / steps if _trained(config) else 0) + evaluated / episodes
        except (KeyError, TypeError, ZeroDivisionError, json.JSONDecodeError):
            pass
    return float(config.iterations if _trained(config) else 0)


def run_grid(
    configs: list[RunConfig],
    executor: Executor,
    report: Callable[[Outcome], None] = lambda outcome: None,
    profiles_dir: Path | None = None,
    track: bool = True,
) -> list[Outcome]:
    """Run every config that is not complete through ``executor``; return every outcome in
    ``configs``' order. Finished runs are sent to MLflow by this process."""
    from metabench.runner import prepare_episodes

    prepare_episodes(configs)  # once, here: workers only read them
    outcomes: dict[str, Outcome] = {}
    todo = []
    for config in configs:
        metrics = completed(config, executor.threads)
        if metrics is None:
            todo.append(config)
        else:
            outcomes[config.run_id] = Outcome(config.run_id, "skipped", metrics, run_seconds(config))
            report(outcomes[config.run_id])
    todo.sort(key=lambda config: -estimated_seconds(config, profiles_dir))

    def finished(outcome: Outcome) -> None:
        outcomes[outcome.run_id] = outcome
        if outcome.status == "done" and track:
            _track(configs, outcome.run_id)
        report(outcome)

    executor.run(todo, finished)
    return [outcomes[config.run_id] for config in configs]


def _track(configs: Iterable[RunConfig], run_id: str) -> None:
    from metabench.tracking import resend

    for config in configs:
        if config.run_id == run_id and _trained(config):
            resend(config.run_dir)


def cpu_identity() -> dict:
    """The CPU that decides a run's float rounding: torch's kernel set and the vector extensions.

    The same run with the same threads gives the same bytes on CPUs with an equal identity; on
    another (e.g. AMX against AVX-512 only), oneDNN, MKL and ATen pick other kernels and the last
    bits of every result differ.
    """
    import torch

    model, flags = "", []
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []:
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not model:
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = sorted(f for f in value.split() if f.startswith(("avx", "amx", "fma", "f16c")))
    return {"model": model, "capability": torch.backends.cpu.get_cpu_capability(), "vector_flags": flags}


def write_record(path: Path, outcomes: list[Outcome], executor: Executor, wall_seconds: float) -> dict:
    """``grid.json``: every run's headline numbers and output hash, and what each run cost.

    It is the pipeline's committed receipt of the runs (``runs/`` itself lives in DVC's cache):
    ``tests/test_committed_lock.py`` re-runs one run and compares its ``episodes.csv`` hash (on a
    CPU of the recorded ``cpu`` identity; on another, its accuracy within the recorded interval).
    """
    record = {
        "workers": getattr(executor, "workers", None),
        "threads_per_run": executor.threads,
        "wall_seconds": round(wall_seconds, 1),
        "cpu": cpu_identity(),
        "runs": [
            {
                "run_id": outcome.run_id,
                "accuracy": outcome.metrics["accuracy"],
                "ci95": outcome.metrics["ci95"],
                "episodes_csv_sha256": outcome.metrics["episodes_csv_sha256"],
                "ran": outcome.status == "done",
                "seconds": outcome.seconds,
            }
            for outcome in outcomes
        ],
    }
    files.write_json(path, record)
    return record
