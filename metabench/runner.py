"""One run, start to finish: meta-train with validation-based checkpoint selection, then test.

A run's files are described in ``metabench.run_folder``; a run started again with the same
identity resumes from its ``state.pt``, a finished run of the same identity is kept. Under
``torchrun`` the ranks share the meta-batch (``metabench.distributed``) and rank 0 alone writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from metabench import MetabenchError, checkpoint, distributed, files, identity, legacy
from metabench.algorithms import get_algorithm
from metabench.config import RunConfig
from metabench.data import store
from metabench.episodes import ImageBank
from metabench.evaluation import mode_scores, scored_accuracies, write_results
from metabench.prepared import PreparedRun, evaluation_episodes, prepare
from metabench.run_folder import TRAIN_SUMMARY, RunFolder
from metabench.tracking import Tracker, run_tags
from metabench.trained import load_trained
from metabench.training import Listener, TrainingLoop, TrainingState

Progress = Callable[[str, int, int], None]  # (phase, done, total)


def prepare_episodes(configs: list[RunConfig]) -> int:
    """Make every fixed episode set the runs ``configs`` will use; return how many sets there are."""
    made, datasets = set(), {}
    for config in configs:
        key = (config.dataset, config.data_dir)
        if key not in datasets:
            datasets[key] = store.load(config.dataset, Path(config.data_dir))
        for split in ("val", "test"):
            evaluation_episodes(config, datasets[key], split)
            count = config.val_episodes if split == "val" else config.test_episodes
            made.add((key, split, config.ways, config.shots, config.queries, count, config.episode_seed))
    return len(made)


def train_run(config: RunConfig, progress: Progress | None = None, force: bool = False) -> dict:
    """Meta-train one run (resuming if a ``state.pt`` of the same identity exists); return its summary.

    A finished run of another identity is kept unless ``force``: its folder may hold results
    someone relies on. Training removes the run's stale evaluation. The run folder is locked for
    the duration: a second ``train`` of the same run refuses.
    """
    if not get_algorithm(config.algorithm).trained:
        raise MetabenchError(
            f"{config.algorithm} is a reference method with nothing to train; "
            f"score it with `metabench evaluate --algorithm {config.algorithm}`"
        )
    run = prepare(config, verify=True)
    run.check_training_splits()
    created = not config.run_dir.exists()
    try:
        with distributed.process_group(run.device):
            writer = distributed.is_writer()
            with files.exclusive(config.run_dir, f"run {config.run_dir}") if writer else contextlib.nullcontext():
                if writer:
                    files.remove_stale_parts(config.run_dir)
                return _train_locked(run, progress if writer else None, force)
    except BaseException:
        if created and config.run_dir.is_dir() and not RunFolder(config.run_dir).config.exists():
            shutil.rmtree(config.run_dir, ignore_errors=True)  # refused before it began: leave no empty folder
        raise


def _train_locked(run: PreparedRun, progress: Progress | None, force: bool) -> dict:
    config, writer, folder = run.config, distributed.is_writer(), RunFolder(run.config.run_dir)
    current = run.identity()
    _refuse_or_clear_finished(run, folder, current, force)
    algorithm = run.build()
    _check_ranks(config, algorithm)
    rng = np.random.default_rng(config.seed)
    state = _resumed_state(run, folder, current, algorithm, rng)
    finished = _finished_summary(folder, current, state, config.iterations) if not force else None
    if finished is not None:  # nothing to train: leave every file as it is (bytes and times)
        return finished
    if state.iteration < config.iterations and writer:
        folder.remove_evaluation()  # it scored other weights
    meta = _meta(run)
    if writer:  # the resolved settings, and what a later `train` compares before touching this run
        folder.write_config(meta, current, run.provenance())
        folder.seal()  # what the folder holds now (an old evaluation is gone)
    tracker = Tracker(folder.path, enabled=writer)
    tracker.start(
        config.run_id, meta, run_tags(meta, run.dataset.checksum, str(run.device)), resume=state.iteration > 0
    )
    listeners = [
        _ProgressListener(progress),
        _TrackingListener(tracker),
        _StateWriter(folder, meta, current, enabled=writer),
    ]
    try:
        TrainingLoop(run, algorithm, rng, state, listeners).run_to_end()
        summary = _summary(run, state)
        if writer:
            _write_training_results(folder, meta, state, summary)
        distributed.barrier()  # the run's files exist when any rank returns
    except BaseException as error:
        tracker.finish("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        raise
    tracker.log_final({k: v for k, v in summary.items() if k != "run_id"})
    tracker.log_artifacts([folder.checkpoint, folder.config, folder.train_log])
    tracker.finish()
    return summary


def _refuse_or_clear_finished(run: PreparedRun, folder: RunFolder, current: dict, force: bool) -> None:
    """Refuse to train over a finished run of another identity unless ``force``, which clears it."""
    if distributed.is_writer():
        folder.migrate(current, run.config.algorithm)
    finished = folder.finished_identity()
    if finished is not None and finished != current and not force:
        raise MetabenchError(
            f"{folder.path} is a finished run trained with other {identity.differences(finished, current)}; "
            f"pass --force to retrain over it, or choose another --runs-dir"
        )
    if force and distributed.is_writer():
        folder.state.unlink(missing_ok=True)
        folder.checkpoint.unlink(missing_ok=True)
    distributed.barrier()  # every rank reads the state rank 0 has left


def _finished_summary(folder: RunFolder, current: dict, state: TrainingState, iterations: int) -> dict | None:
    """The summary of this very run when it has already trained ``iterations`` (None otherwise)."""
    if state.iteration < iterations or folder.finished_identity() != current:
        return None
    try:
        return folder.read_json_verified(TRAIN_SUMMARY, "retrain")
    except MetabenchError:
        return None  # its results are damaged or missing: write them again


def _resumed_state(run: PreparedRun, folder: RunFolder, current: dict, algorithm, rng) -> TrainingState:
    """The saved state of this run's identity (restoring weights and generators), else a fresh one."""
    if not folder.state.is_file():
        return TrainingState()
    saved = checkpoint.load(folder.state, rebuild=f"delete it to train {run.config.run_id} from scratch")
    recorded = saved.get("identity")
    if recorded is None and legacy.accepts(saved.get("fingerprint"), current, run.config.algorithm):
        recorded = current
    if recorded != current:
        warnings.warn(
            f"{folder.state} was saved with other {identity.differences(recorded or {}, current)}; "
            f"training {run.config.run_id} from scratch",
            stacklevel=3,
        )
        return TrainingState()
    if saved["iteration"] > run.config.iterations:
        raise MetabenchError(
            f"{folder.path} already trained {saved['iteration']} iterations, more than the "
            f"{run.config.iterations} asked; delete {folder.state} to start over or ask for at least {saved['iteration']}"
        )
    return TrainingState.restore(saved, algorithm, rng)


def _meta(run: PreparedRun) -> dict:
    """What a checkpoint and ``config.json`` record of the run: settings, task and data."""
    return {
        "run_id": run.config.run_id,
        "algorithm": run.config.algorithm,
        "hyper": dataclasses.asdict(run.hyper),
        "task": dataclasses.asdict(run.task),
        "config": run.config.to_dict(),
        "dataset": {
            "name": run.dataset.name,
            "checksum": run.dataset.checksum,
            "image_shape": list(run.dataset.image_shape),
            "preprocessing": run.dataset.info.get("preprocessing", ""),
        },
    }


def _summary(run: PreparedRun, state: TrainingState) -> dict:
    return {
        "run_id": run.config.run_id,
        "best_iteration": state.best["iteration"],
        "best_val_accuracy": state.best["val_accuracy"],
        "train_seconds": round(state.elapsed, 3),
        "device": str(run.device),
        "threads": torch.get_num_threads(),
        **({"ranks": distributed.world_size()} if distributed.world_size() > 1 else {}),
    }


class _ProgressListener(Listener):
    """The caller's progress callback: training steps, validation episodes, validation accuracies."""

    def __init__(self, progress: Progress | None):
        self.progress = progress

    def stepped(self, loop: TrainingLoop) -> None:
        if self.progress:
            self.progress("train", loop.state.iteration, loop.config.iterations)

    def validating(self, loop: TrainingLoop, done: int, total: int) -> None:
        if self.progress:
            self.progress("validate", done, total)

    def validated(self, loop: TrainingLoop, rows: list[dict]) -> None:
        if self.progress:
            accuracy = 100 * rows[-1]["val_accuracy"]
            self.progress(f"val {accuracy:.1f}%", loop.state.iteration, loop.config.iterations)


class _TrackingListener(Listener):
    """MLflow gets the update rows and the validation in one batch at each validation."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker

    def validated(self, loop: TrainingLoop, rows: list[dict]) -> None:
        self.tracker.log_rows(rows)


class _StateWriter(Listener):
    """Writes ``state.pt`` when it is due, and the best checkpoint of a run that diverged."""

    def __init__(self, folder: RunFolder, meta: dict, current: dict, enabled: bool):
        self.folder, self.meta, self.current, self.enabled = folder, meta, current, enabled

    def saving(self, loop: TrainingLoop) -> None:
        if self.enabled:
            payload = {"identity": self.current, **loop.state.payload(loop.algorithm, loop.rng)}
            checkpoint.save_atomic(payload, self.folder.state)

    def diverged(self, loop: TrainingLoop) -> None:
        if self.enabled and loop.state.best_weights is not None:  # every rank sees the same loss; one writes
            _save_best(self.folder, self.meta, loop.state)


def _save_best(folder: RunFolder, meta: dict, state: TrainingState) -> None:
    checkpoint.save_atomic({**meta, **state.best, "weights": state.best_weights}, folder.checkpoint)
    folder.seal()


def _write_training_results(folder: RunFolder, meta: dict, state: TrainingState, summary: dict) -> None:
    """The best checkpoint, the per-update log and the summary of a finished training."""
    _save_best(folder, meta, state)
    log = (
        pd.DataFrame(state.history).merge(pd.DataFrame(state.validations), on="iteration", how="left")
        if state.history
        else pd.DataFrame()
    )
    files.write_atomic(folder.train_log, log.to_csv(index=False))
    files.write_json(folder.train_summary, summary)
    folder.seal()


def training_arrangement(config: RunConfig, ranks: int | None) -> distributed.Arrangement:
    """Ranks × threads for training ``config`` (``distributed.arrangement``; ``ranks=None``
    chooses). The run is prepared first, so a missing dataset or a bad setting is one error here,
    not one per rank."""
    run = prepare(config)
    splits = run.algorithm_cls.splits_meta_batch(run.hyper)
    return distributed.arrangement(splits, getattr(run.hyper, "meta_batch", 1), run.device, ranks)


def _check_ranks(config: RunConfig, algorithm) -> None:
    """Under torchrun, the algorithm must split its meta-batch, and every rank needs a task."""
    ranks = distributed.world_size()
    if ranks == 1:
        return
    if not type(algorithm).splits_meta_batch(algorithm.hyper):
        raise MetabenchError(
            f"{config.algorithm} does not split its meta-batch over ranks; train it in one process (without torchrun)"
        )
    if algorithm.episodes_per_step < ranks:
        raise MetabenchError(
            f"{config.algorithm} has a meta-batch of {algorithm.episodes_per_step} tasks for {ranks} ranks; "
            f"raise meta_batch to at least {ranks} or start fewer ranks"
        )


def _algorithm_to_evaluate(run: PreparedRun, folder: RunFolder):
    """The run's best checkpoint, checked against its config and the data; or, for a reference
    method, the method itself. Returns (algorithm, its training record for metrics.json)."""
    config, current = run.config, run.identity()
    if not run.algorithm_cls.trained:
        folder.path.mkdir(parents=True, exist_ok=True)
        meta = {
            "run_id": config.run_id,
            "algorithm": config.algorithm,
            "hyper": config.hyper,
            "config": config.to_dict(),
        }
        folder.write_config(meta, current, run.provenance())
        record = {"best_iteration": None, "val_accuracy": None, "iterations": None}
        return run.algorithm_cls(run.hyper, run.task, run.device), {**record, "identity": current}
    folder.migrate(current, config.algorithm)
    algorithm, saved = load_trained(folder.checkpoint, run.device)
    settings = config.training_settings()
    changed = [key for key in sorted(settings) if saved["config"].get(key) != settings[key]]
    if changed:
        raise MetabenchError(
            f"{folder.path} was trained with other {', '.join(changed)}; give the options it was trained with, "
            f"or retrain it (metabench train --force)"
        )
    if saved["dataset"]["checksum"] != run.dataset.checksum:
        raise MetabenchError(
            f"{folder.path} was trained on different {run.dataset.name!r} data; retrain it (metabench train)"
        )
    # what a grid compares to decide whether this evaluation still describes the run it asks for
    return algorithm, {
        "best_iteration": saved["iteration"],
        "val_accuracy": saved["val_accuracy"],
        "iterations": saved["config"]["iterations"],
        "identity": folder.finished_identity(),
    }


def evaluate_run(config: RunConfig, progress: Progress | None = None) -> dict:
    """Score the run's best checkpoint (or a reference method) on the shared fixed test episodes."""
    folder = RunFolder(config.run_dir)
    if get_algorithm(config.algorithm).trained and not folder.checkpoint.is_file():
        raise MetabenchError(f"{folder.checkpoint} does not exist; train the run first (metabench train)")
    with files.exclusive(folder.path, f"run {folder.path}"):
        return _evaluate_locked(prepare(config, verify=True), folder, progress)


def _evaluate_locked(run: PreparedRun, folder: RunFolder, progress: Progress | None) -> dict:
    config = run.config
    algorithm, training = _algorithm_to_evaluate(run, folder)
    episodes = run.episodes("test")
    bank = ImageBank(run.dataset.split("test"), run.device)
    modes = algorithm.scoring_modes()  # every mode it has, from one checkpoint (metabench.scoring)
    done: dict[str, int] = {}

    def tick(count: int, mode: str | None) -> None:
        phase = f"evaluate {mode}" if mode else "evaluate"  # a pass over the episodes per mode, or one for all
        done[phase] = done.get(phase, 0) + count
        if progress:
            progress(phase, done[phase], len(episodes))

    start = time.perf_counter()
    scored = scored_accuracies(algorithm, bank, episodes, modes, tick)
    extra = {
        "run_id": config.run_id,
        "algorithm": config.algorithm,
        "dataset": run.dataset.name,
        "ways": config.ways,
        "shots": config.shots,
        "queries": config.queries,
        "seed": config.seed,
        "episode_seed": config.episode_seed,
        "episodes_sha256": episodes.digest(),
        **training,
        "provenance": run.provenance(),
        "transductive": algorithm.evaluates_transductively,
        "evaluation_version": identity.EVALUATION_VERSION,
    }
    seconds = round(time.perf_counter() - start, 3)
    timing = {"eval_seconds": seconds, "episodes_per_second": round(len(episodes) / max(seconds, 1e-9), 3)}
    metrics = write_results(folder.path, scored, algorithm.headline_scoring, extra, timing)
    tracker = Tracker(folder.path)
    if tracker.attach():
        tracker.log_final({**metrics, **mode_scores(metrics), **timing}, kind="test")
        tracker.log_artifacts([folder.path / scores["file"] for scores in metrics["modes"].values()] + [folder.metrics])
        tracker.finish()
    return metrics
