"""One run, start to finish: meta-train with validation-based checkpoint selection, then test.

Files in ``runs/<run_id>/``:

* ``state.pt``: everything needed to resume (algorithm, optimiser, RNG states, history), written
  atomically at every validation; a run started again with the same config continues from it;
* ``checkpoint.pt``: the weights with the best validation accuracy, plus the config, hyper-
  parameters and dataset identity needed to use them (``metabench evaluate``/``predict``);
* ``train_log.csv``: per-update training metrics and validation accuracies;
* ``episodes.csv`` and ``metrics.json``: test accuracy per episode and its summary.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from metabench import MetabenchError, checkpoint, distributed, files, sources
from metabench.algorithms import TaskShape, build_algorithm, get_algorithm, make_hyper
from metabench.config import RunConfig, resolve_device
from metabench.data import store
from metabench.episodes import (
    EpisodeIndices,
    EpisodeSpec,
    ImageBank,
    augment_episode,
    episode_key,
    fixed_episodes,
    sample_indices,
)
from metabench.evaluation import episode_accuracies, write_results
from metabench.tracking import Tracker, run_tags

Progress = Callable[[str, int, int], None]  # (phase, done, total)


def evaluation_episodes(config: RunConfig, dataset: store.Dataset, split: str) -> EpisodeIndices:
    """The run's fixed ``val`` or ``test`` episodes (shared by every algorithm and seed), made once."""
    count = config.val_episodes if split == "val" else config.test_episodes
    return fixed_episodes(
        dataset.split(split),
        EpisodeSpec(config.ways, config.shots, config.queries),
        count,
        config.episode_seed,
        config.episodes_path,
        episode_key(dataset.name, split, dataset.checksum),
        split_name=split,
    )


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


def task_shape(config: RunConfig, dataset: store.Dataset, hyper) -> TaskShape:
    height, width, channels = dataset.image_shape
    if height != width:
        raise MetabenchError(f"dataset {dataset.name!r} has {height}x{width} images; backbones expect square images")
    train_ways = getattr(hyper, "train_ways", 0) or config.ways
    return TaskShape(
        channels=channels,
        image_size=height,
        train_ways=train_ways,
        test_ways=config.ways,
        train_classes=dataset.split("train").n_classes,
    )


def fingerprint(config: RunConfig, dataset: store.Dataset, threads: int | None = None) -> dict:
    """What must match for a saved state to be resumed, or a finished run to be kept.

    The run's training settings (a larger ``iterations`` extends a run), its data, and the code
    that trains it (``sources.training_sources``): an edit elsewhere never restarts a run.
    """
    code = sources.digest(sources.training_sources(config.algorithm))
    # float results on CPU are bit-identical only for the same number of threads
    threads = threads or torch.get_num_threads()
    found = {"config": config.training_settings(), "dataset": dataset.checksum, "code": code, "threads": threads}
    if distributed.world_size() > 1:  # the ranks sum gradients in another order than one process
        found["ranks"] = distributed.world_size()
    return found


def _changed(before: dict, after: dict) -> list[str]:
    """The keys whose values differ between two settings dicts, sorted."""
    return [key for key in sorted(set(before) | set(after)) if before.get(key) != after.get(key)]


def _differences(saved: dict, current: dict) -> str:
    changed = [f"config.{k}" for k in _changed(saved.get("config") or {}, current["config"])]
    changed += [k for k in ("dataset", "code", "threads", "ranks") if saved.get(k) != current.get(k)]
    return ", ".join(changed) or "nothing"


EVALUATION_FILES = ("episodes.csv", "metrics.json", "eval_timing.json")


# A run has diverged, even while its loss is finite, when the loss exceeds this many times its
# first loss (or 1, whichever is larger), or exceeds LOSS_LIMIT: every training loss here is a
# per-query mean of cross-entropy, NLL, MSE or BCE, which stays within tens for any sane network,
# trained or not; 1e4 comes only from exploding weights or activations (MAML at inner_lr=1e6
# starts at 1e11).
DIVERGENCE_FACTOR = 1e3
LOSS_LIMIT = 1e4


def train_run(config: RunConfig, progress: Progress | None = None, force: bool = False) -> dict:
    """Meta-train one run (resuming if a matching ``state.pt`` exists); return its summary.

    A finished run trained with other settings, data or code is kept unless ``force``: its
    folder may hold results someone relies on. Training removes the run's stale evaluation.
    The run folder is locked for the duration: a second ``train`` of the same run refuses.
    Under ``torchrun`` the ranks share the meta-batch (``metabench.distributed``) and rank 0
    alone writes the run's files.
    """
    algorithm_cls = get_algorithm(config.algorithm)
    if not algorithm_cls.trained:
        raise MetabenchError(
            f"{config.algorithm} is a reference method with nothing to train; "
            f"score it with `metabench evaluate --algorithm {config.algorithm}`"
        )
    device = resolve_device(config.device)
    with distributed.process_group(device):
        writer = distributed.is_writer()
        with files.exclusive(config.run_dir, f"run {config.run_dir}") if writer else contextlib.nullcontext():
            if writer:
                files.remove_stale_parts(config.run_dir)
            return _train_locked(config, progress if writer else None, force, device)


def _train_locked(config: RunConfig, progress: Progress | None, force: bool, device: torch.device) -> dict:
    writer = distributed.is_writer()
    dataset = store.load(config.dataset, Path(config.data_dir), verify=True)
    algorithm_cls = get_algorithm(config.algorithm)
    hyper = make_hyper(algorithm_cls.Hyper, config.hyper, config.algorithm)
    task = task_shape(config, dataset, hyper)
    train_split, val_split = dataset.split("train"), dataset.split("val")
    train_spec = EpisodeSpec(task.train_ways, config.shots, config.queries_in_training)
    train_spec.check(train_split, "train")
    val_episodes = evaluation_episodes(config, dataset, "val")

    torch.manual_seed(config.seed)
    algorithm = build_algorithm(config.algorithm, config.hyper, task, device)
    _check_ranks(config, algorithm)
    rng = np.random.default_rng(config.seed)
    train_bank, val_bank = ImageBank(train_split, device), ImageBank(val_split, device)
    run_dir = config.run_dir
    state_path, best_path = run_dir / "state.pt", run_dir / "checkpoint.pt"
    current = fingerprint(config, dataset)
    finished = _finished_fingerprint(run_dir)
    if finished is not None and finished != current and not force:
        raise MetabenchError(
            f"{run_dir} is a finished run trained with other {_differences(finished, current)}; "
            f"pass --force to retrain over it, or choose another --runs-dir"
        )
    if force and writer:
        for name in ("state.pt", "checkpoint.pt"):
            (run_dir / name).unlink(missing_ok=True)
    distributed.barrier()  # every rank reads the state rank 0 has left

    start, history, validations = 0, [], []
    best = {"val_accuracy": -1.0, "iteration": 0}
    best_weights = None
    elapsed = 0.0
    if state_path.is_file():
        saved = checkpoint.load(state_path, rebuild=f"delete it to train {config.run_id} from scratch")
        if saved["fingerprint"] != current:
            warnings.warn(
                f"{state_path} was saved with other {_differences(saved['fingerprint'], current)}; "
                f"training {config.run_id} from scratch",
                stacklevel=2,
            )
        elif saved["iteration"] > config.iterations:
            raise MetabenchError(
                f"{run_dir} already trained {saved['iteration']} iterations, more than the {config.iterations} asked; "
                f"delete {state_path} to start over or ask for at least {saved['iteration']}"
            )
        else:
            algorithm.load_state_dict(saved["algorithm"])
            rng.bit_generator.state = saved["numpy_rng"]
            torch.set_rng_state(saved["torch_rng"])
            start, history, validations, best = (
                saved["iteration"],
                saved["history"],
                saved["validations"],
                saved["best"],
            )
            best_weights, elapsed = saved["best_weights"], saved["elapsed"]

    if start < config.iterations and writer:
        for name in EVALUATION_FILES:  # they scored other weights
            (run_dir / name).unlink(missing_ok=True)
    meta = {
        "run_id": config.run_id,
        "algorithm": config.algorithm,
        "hyper": dataclasses.asdict(hyper),
        "task": dataclasses.asdict(task),
        "config": config.to_dict(),
        "dataset": {
            "name": dataset.name,
            "checksum": dataset.checksum,
            "image_shape": list(dataset.image_shape),
            "preprocessing": dataset.info.get("preprocessing", ""),
        },
    }
    # the fully resolved settings, and what a later `train` compares before touching this run
    if writer:
        files.write_json(run_dir / "config.json", {**meta, "fingerprint": current})
    tracker = Tracker(run_dir, enabled=writer)
    tracker.start(config.run_id, meta, run_tags(meta, dataset.checksum, str(device)), resume=start > 0)
    try:
        # history holds one row per update from iteration 1; rows go to the tracker at each validation
        logged = validations[-1]["iteration"] if validations else 0
        clock = time.perf_counter()
        for iteration in range(start + 1, config.iterations + 1):
            indices = sample_indices(train_split, train_spec, algorithm.episodes_per_step, rng)
            batch = train_bank.episodes(indices)
            if config.augment != "none":  # draws from rng only when augmenting, so other runs are unchanged
                seed = int(rng.integers(2**62))
                batch = augment_episode(batch, config.augment, torch.Generator().manual_seed(seed))
            metrics = algorithm.meta_train_step(batch)
            _check_divergence(metrics["loss"], history, iteration, best_weights, best_path, meta, best)
            # training seconds so far (resumed runs included): the tracker's timestamps, cost curves
            history.append(
                {"iteration": iteration, **metrics, "seconds": round(elapsed + time.perf_counter() - clock, 3)}
            )
            if progress:
                progress("train", iteration, config.iterations)
            validating = iteration % config.val_every == 0 or iteration == config.iterations
            if validating:
                share = distributed.shard(len(val_episodes))  # each rank scores its share of the episodes
                tick = _ticker(progress, "validate", len(share))
                mine = episode_accuracies(algorithm, val_bank, val_episodes[share.start : share.stop], tick)
                val_accuracy = float(distributed.gather(mine).mean())
                distributed.check_same_weights(algorithm.networks().values(), f"at iteration {iteration}")
                validations.append({"iteration": iteration, "val_accuracy": val_accuracy})
                if progress:
                    progress(f"val {100 * val_accuracy:.1f}%", iteration, config.iterations)
                tracker.log_rows(history[logged:] + [validations[-1]])
                logged = len(history)
                if val_accuracy > best["val_accuracy"]:
                    best = {"val_accuracy": val_accuracy, "iteration": iteration}
                    best_weights = copy.deepcopy(algorithm.state_dict())
            saving = validating or (config.checkpoint_every and iteration % config.checkpoint_every == 0)
            if saving:
                now = time.perf_counter()
                elapsed += now - clock
                clock = now
            if saving and writer:
                checkpoint.save_atomic(
                    {
                        "fingerprint": current,
                        "algorithm": algorithm.state_dict(),
                        "numpy_rng": rng.bit_generator.state,
                        "torch_rng": torch.get_rng_state(),
                        "iteration": iteration,
                        "history": history,
                        "validations": validations,
                        "best": best,
                        "best_weights": best_weights,
                        "elapsed": elapsed,
                    },
                    state_path,
                )
        summary = {
            "run_id": config.run_id,
            "best_iteration": best["iteration"],
            "best_val_accuracy": best["val_accuracy"],
            "train_seconds": round(elapsed, 3),
            "device": str(device),
            "threads": torch.get_num_threads(),
            **({"ranks": distributed.world_size()} if distributed.world_size() > 1 else {}),
        }
        if writer:
            _write_training_results(run_dir, meta, best, best_weights, history, validations, summary)
        distributed.barrier()  # the run's files exist when any rank returns
    except BaseException as error:
        tracker.finish("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        raise
    tracker.log_final({k: v for k, v in summary.items() if k != "run_id"})
    tracker.log_artifacts([best_path, run_dir / "config.json", run_dir / "train_log.csv"])
    tracker.finish()
    return summary


def _write_training_results(run_dir, meta, best, best_weights, history, validations, summary) -> None:
    """The best checkpoint, the per-update log and the summary of a finished training."""
    checkpoint.save_atomic({**meta, **best, "weights": best_weights}, run_dir / "checkpoint.pt")
    log = (
        pd.DataFrame(history).merge(pd.DataFrame(validations), on="iteration", how="left")
        if history
        else pd.DataFrame()
    )
    files.write_atomic(run_dir / "train_log.csv", log.to_csv(index=False))
    files.write_json(run_dir / "train_summary.json", summary)


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


def _ticker(progress: Progress | None, phase: str, total: int):
    """A callback for ``episode_accuracies`` that reports ``(phase, episodes done, total)``."""
    if progress is None:
        return None
    done = [0]

    def tick(count: int) -> None:
        done[0] += count
        progress(phase, done[0], total)

    return tick


def _check_divergence(loss, history, iteration, best_weights, best_path, meta, best) -> None:
    """Stop a run whose loss is not finite or has exploded; keep the best weights so far."""
    reference = max(1.0, history[0]["loss"] if history else loss if math.isfinite(loss) else 1.0)
    if math.isfinite(loss) and loss <= min(LOSS_LIMIT, DIVERGENCE_FACTOR * reference):
        return
    if best_weights is not None:
        if distributed.is_writer():  # every rank sees the same loss and stops; one writes
            checkpoint.save_atomic({**meta, **best, "weights": best_weights}, best_path)
        kept = f"the best checkpoint so far (iteration {best['iteration']}) is kept in {best_path}"
    else:
        kept = "no checkpoint was saved: it diverged before its first validation"
    what = "became" if not math.isfinite(loss) else "exploded to"
    raise MetabenchError(f"training loss {what} {loss:.4g} at iteration {iteration}; lower the learning rate ({kept})")


def _finished_fingerprint(run_dir: Path) -> dict | None:
    """The fingerprint of the finished run in ``run_dir`` (its config.json beside a checkpoint), if any."""
    config_path = run_dir / "config.json"
    if not (run_dir / "checkpoint.pt").is_file() or not config_path.is_file():
        return None
    try:
        return json.loads(config_path.read_text()).get("fingerprint", {})
    except json.JSONDecodeError:
        return {}  # unreadable: treated as another run's, so it is never silently replaced


def load_trained(checkpoint_path: Path, device: torch.device):
    """Rebuild an algorithm from ``checkpoint.pt`` with its best weights; return (algorithm, meta)."""
    saved = checkpoint.load(checkpoint_path, rebuild="train the run (metabench train) or restore the file")
    task = TaskShape(**saved["task"])
    algorithm = build_algorithm(saved["algorithm"], saved["hyper"], task, device)
    algorithm.load_state_dict(saved["weights"], weights_only=True)
    algorithm.train(False)
    return algorithm, saved


def _algorithm_to_evaluate(config: RunConfig, dataset: store.Dataset, device: torch.device):
    """The run's best checkpoint, checked against ``config`` and the data; or, for a reference
    method, the method itself. Returns (algorithm, its training record for metrics.json)."""
    cls = get_algorithm(config.algorithm)
    if not cls.trained:
        hyper = make_hyper(cls.Hyper, config.hyper, config.algorithm)
        config.run_dir.mkdir(parents=True, exist_ok=True)
        meta = {
            "run_id": config.run_id,
            "algorithm": config.algorithm,
            "hyper": config.hyper,
            "config": config.to_dict(),
        }
        files.write_json(config.run_dir / "config.json", meta)
        record = {"best_iteration": None, "val_accuracy": None, "iterations": None}
        return cls(hyper, task_shape(config, dataset, hyper), device), {
            **record,
            "fingerprint": fingerprint(config, dataset),
        }
    algorithm, saved = load_trained(config.run_dir / "checkpoint.pt", device)
    settings = config.training_settings()
    changed = _changed({k: v for k, v in saved["config"].items() if k in settings}, settings)
    if changed:
        raise MetabenchError(
            f"{config.run_dir} was trained with other {', '.join(changed)}; give the options it was trained with, "
            f"or retrain it (metabench train --force)"
        )
    if saved["dataset"]["checksum"] != dataset.checksum:
        raise MetabenchError(
            f"{config.run_dir} was trained on different {dataset.name!r} data; retrain it (metabench train)"
        )
    # what a grid compares to decide whether this evaluation still describes the run it asks for
    trained = _finished_fingerprint(config.run_dir)
    return algorithm, {
        "best_iteration": saved["iteration"],
        "val_accuracy": saved["val_accuracy"],
        "iterations": saved["config"]["iterations"],
        "fingerprint": trained,
    }


def evaluate_run(config: RunConfig, progress: Progress | None = None) -> dict:
    """Score the run's best checkpoint (or a reference method) on the shared fixed test episodes."""
    if get_algorithm(config.algorithm).trained and not (config.run_dir / "checkpoint.pt").is_file():
        raise MetabenchError(
            f"{config.run_dir / 'checkpoint.pt'} does not exist; train the run first (metabench train)"
        )
    with files.exclusive(config.run_dir, f"run {config.run_dir}"):
        return _evaluate_locked(config, progress)


def _evaluate_locked(config: RunConfig, progress: Progress | None) -> dict:
    device = resolve_device(config.device)
    dataset = store.load(config.dataset, Path(config.data_dir), verify=True)
    algorithm, training = _algorithm_to_evaluate(config, dataset, device)
    episodes = evaluation_episodes(config, dataset, "test")
    bank = ImageBank(dataset.split("test"), device)
    start = time.perf_counter()
    accuracies = episode_accuracies(algorithm, bank, episodes, _ticker(progress, "evaluate", len(episodes)))
    extra = {
        "run_id": config.run_id,
        "algorithm": config.algorithm,
        "dataset": dataset.name,
        "ways": config.ways,
        "shots": config.shots,
        "queries": config.queries,
        "seed": config.seed,
        "episode_seed": config.episode_seed,
        "episodes_sha256": episodes.digest(),
        **training,
        "transductive": type(algorithm).transductive,
    }
    timing = {"eval_seconds": round(time.perf_counter() - start, 3), "episodes_per_second": None}
    timing["episodes_per_second"] = round(len(episodes) / max(timing["eval_seconds"], 1e-9), 3)
    files.write_json(config.run_dir / "eval_timing.json", timing)
    metrics = write_results(config.run_dir, accuracies, extra)
    tracker = Tracker(config.run_dir)
    if tracker.attach():
        tracker.log_final({**metrics, **timing}, prefix="test_")
        tracker.log_artifacts([config.run_dir / "episodes.csv", config.run_dir / "metrics.json"])
        tracker.finish()
    return metrics
