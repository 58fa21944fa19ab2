"""The leaderboard's grid of runs: each run one unit (train, then evaluate, in one process),
spread over worker processes by an executor, finished runs never run twice.

DVC cannot run the stages of one workspace in parallel (treeverse/dvc#5795), so the pipeline
has one ``grid`` stage whose output ``runs/`` persists between reproductions: ``metabench
grid`` skips every run whose evaluation matches the identity its spec gives now
(``unit.completed``: settings, data, declared behaviour versions, threads, platform) and runs the
rest. Bumping one algorithm's version, or ``dvc exp run -S algorithms.maml...``, re-runs the
stage, and only that algorithm's runs (and its subclasses') train again.

Workers never talk to MLflow (a SQLite store must not be written by two processes at once):
the driver sends each finished run from its files (``tracking.resend``), so a tracking store
holds exactly one finished MLflow run per grid point, whichever worker trained it.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import signal
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

import torch

from metabench import MetabenchError, files
from metabench.allocator import keep_freed_memory
from metabench.config import RunConfig
from metabench.lifeline import die_with_parent
from metabench.ray_executor import RayExecutor
from metabench.runner import prepare_episodes
from metabench.tracking import resend
from metabench.unit import Outcome, completed, run_seconds, run_unit, trained

GRID_FILE = "grid.json"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _worker_start(threads: int, driver: int) -> None:
    """Each worker process: its thread count, no MLflow (the driver tracks), the CPU allocator;
    Ctrl-C is the driver's to handle (it terminates the workers), and a killed driver's workers
    exit (``lifeline``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(driver)
    os.environ["METABENCH_TRACKING"] = "off"
    keep_freed_memory()
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
            initargs=(self.threads, os.getpid()),
        ) as pool:
            futures = {pool.submit(_unit_in_worker, config, self.threads): config for config in configs}
            try:
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
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM (lifeline.Stopped): stop every run, start none
                running = {futures[future].run_id for future in futures if future.running()}
                _terminate(pool)
                for run_id in left:
                    said = "stopped; resumes from its last saved state" if run_id in running else "not started"
                    report(Outcome(run_id, "interrupted", error=said))
                raise
        return list(left.values())


def _terminate(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Cancel the queued runs and end the running ones now. ``shutdown`` alone would wait for
    the running runs and then start queued ones; the pool keeps its processes in ``_processes``."""
    processes = list((pool._processes or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=10)
        if process.is_alive():
            process.kill()


def executor_for(
    configs: list[RunConfig], workers: int | None, threads: int | None, ray_address: str | None
) -> Executor:
    """Where a grid runs: on a Ray cluster at ``ray_address`` (one thread per run unless given),
    else in local worker processes: by default one per usable core on a CPU (never more than the
    runs), one with a GPU, the cores divided between them as threads."""
    if ray_address:
        return RayExecutor(ray_address, threads or 1)
    cores = usable_cores()
    gpu = any(config.device != "cpu" for config in configs) and torch.cuda.is_available()
    workers = workers or (1 if gpu else min(cores, len(configs)))
    return LocalExecutor(workers, threads or max(1, cores // workers))


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
            return (config.iterations / steps if trained(config) else 0) + evaluated / episodes
        except (KeyError, TypeError, ZeroDivisionError, json.JSONDecodeError):
            pass
    return float(config.iterations if trained(config) else 0)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class GridProgress:
    """One plain line per finished run, readable in a terminal, under ``dvc repro`` and in a log:
    how many of the grid's runs are done, the time elapsed, and what remains, estimated from the
    runs' profiles (``estimated_seconds``) scaled by how long the finished runs really took."""

    def __init__(self, configs: list[RunConfig], workers: int | None, profiles_dir: Path | None, clock=time.monotonic):
        self.clock = clock
        self.start = self.clock()
        self.workers = max(1, workers or 1)  # a Ray cluster's parallelism is not known here: 1
        self.estimates = {config.run_id: estimated_seconds(config, profiles_dir) for config in configs}
        self.pending = set(self.estimates)
        self.estimated_done = self.actual_done = 0.0

    def line(self, outcome: Outcome) -> str:
        """The line for ``outcome``; an interrupted run stays pending."""
        if outcome.status != "interrupted":
            self.pending.discard(outcome.run_id)
        if outcome.status == "done":
            self.estimated_done += self.estimates.get(outcome.run_id, 0.0)
            self.actual_done += sum(outcome.seconds.values())
        total, done = len(self.estimates), len(self.estimates) - len(self.pending)
        elapsed = self.clock() - self.start
        position = f"[{done}/{total} · {_duration(elapsed)} elapsed"
        if self.pending and self.estimated_done > 0:
            scale = self.actual_done / self.estimated_done
            left = scale * sum(self.estimates[run_id] for run_id in self.pending) / self.workers
            position += f" · about {_duration(left)} left"
        return f"{position}] {_describe(outcome)}"


def _describe(outcome: Outcome) -> str:
    if outcome.status in ("failed", "interrupted"):
        return f"{outcome.status} {outcome.run_id}: {outcome.error}"
    metrics = outcome.metrics or {}
    cost = ", ".join(f"{key} {_duration(value)}" for key, value in outcome.seconds.items())
    return f"{outcome.status} {outcome.run_id}: {100 * metrics['accuracy']:.2f} ± {100 * metrics['ci95']:.2f} %" + (
        f" ({cost})" if cost else ""
    )


def run_grid(
    configs: list[RunConfig],
    executor: Executor,
    report: Callable[[Outcome], None] = lambda outcome: None,
    profiles_dir: Path | None = None,
    track: bool = True,
) -> list[Outcome]:
    """Run every config that is not complete through ``executor``; return every outcome in
    ``configs``' order. Finished runs are sent to MLflow by this process."""
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
    for config in configs:
        if config.run_id == run_id and trained(config):
            resend(config.run_dir)


def cpu_identity() -> dict:
    """The CPU that decides a run's float rounding: torch's kernel set and the vector extensions.

    The same run with the same threads gives the same bytes on CPUs with an equal identity; on
    another (e.g. AMX against AVX-512 only), oneDNN, MKL and ATen pick other kernels and the last
    bits of every result differ.
    """
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
