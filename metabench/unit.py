"""One unit of the grid: a run trained (unless a reference method) then evaluated in one
process, and whether the run its spec asks for is already complete.

Any executor runs units: the local worker processes of ``metabench.grid`` or a Ray task
(``metabench.ray_executor``). "Is this run current?" is answered by its folder
(``RunFolder``) against the identity the spec gives now (``PreparedRun.identity``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from metabench import MetabenchError, system_metrics
from metabench.algorithms import get_algorithm
from metabench.config import RunConfig
from metabench.evaluation import read_results
from metabench.identity import EVALUATION_VERSION
from metabench.prepared import prepare
from metabench.run_folder import RunFolder
from metabench.runner import evaluate_run, train_run
from metabench.tracking import recorded_seconds


@dataclass
class Outcome:
    """What one run of the grid gave: ``done`` (ran now), ``skipped`` (already complete), ``failed``
    or ``interrupted`` (stopped by Ctrl-C or SIGTERM; resumes from its saved state)."""

    run_id: str
    status: str
    metrics: dict | None = None
    seconds: dict = field(default_factory=dict)
    error: str | None = None


def completed(config: RunConfig, threads: int) -> dict | None:
    """The run's metrics when its evaluation describes the run its spec asks for now (the same
    identity: settings, data, behaviour versions, threads, platform; the same iterations, test
    episodes and evaluation version); None when it has to run (again: a run only re-evaluated
    keeps its training)."""
    folder = RunFolder(config.run_dir)
    if not folder.metrics.is_file():
        return None
    run = prepare(config)
    current = run.identity(threads)
    folder.migrate(current, config.algorithm)
    try:
        metrics, _ = read_results(folder.path)
    except MetabenchError:
        return None
    iterations = config.iterations if run.algorithm_cls.trained else None
    digest = run.episodes("test").digest()
    return metrics if folder.evaluation_is_current(metrics, current, iterations, digest, EVALUATION_VERSION) else None


def trained(config: RunConfig) -> bool:
    """Whether ``config``'s method is trained (a reference method is only evaluated)."""
    return get_algorithm(config.algorithm).trained


def _must_restart(config: RunConfig, threads: int) -> bool:
    """Whether the run's folder holds a run the spec no longer asks for (``RunFolder.holds_other_run``).
    The grid replaces it, as ``dvc repro`` replaces a stage's outputs; an interrupted run of the
    same identity resumes instead."""
    current = prepare(config).identity(threads)
    folder = RunFolder(config.run_dir)
    folder.migrate(current, config.algorithm)
    return folder.holds_other_run(current, config.iterations)


def run_unit(config: RunConfig, threads: int | None = None) -> Outcome:
    """Train (unless a reference method) then evaluate one run in this process.

    ``threads`` fixes torch's intra-op threads first: results on a CPU are bit-identical only
    for the same count, and it is part of the run's identity.
    """
    if threads:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    start = time.perf_counter()
    restart = trained(config) and _must_restart(config, threads)
    # the worker keeps the machine's load beside the run's files; the driver sends it to MLflow
    with system_metrics.Sampler(config.run_dir, resume=not restart):
        if trained(config):
            train_run(config, force=restart)
        metrics = evaluate_run(config)
    return Outcome(
        config.run_id, "done", metrics, {**run_seconds(config), "unit": round(time.perf_counter() - start, 1)}
    )


def run_seconds(config: RunConfig) -> dict:
    """What the run's files say it cost (``tracking.recorded_seconds``), to a tenth of a second."""
    return {label: round(value, 1) for label, value in recorded_seconds(config.run_dir).items()}
