"""Loading a report's inputs: each run's checked results, learning curve and cost profile, and
the fixed episodes' image-disjoint subsets (for the open intervals). Nothing is re-trained.
"""

from __future__ import annotations

import dataclasses
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from metabench import MetabenchError, files, stats
from metabench.algorithms import REGISTRY
from metabench.episodes import EpisodeIndices
from metabench.evaluation import read_scored_results
from metabench.run_folder import CONFIG, METRICS, TRAIN_LOG, TRAIN_SUMMARY, RunFolder

# what a profile records of where its numbers came from: not a cost, not a column of the report
PROFILE_RECORDS = ("identity", "provenance")


def _profile(path: Path) -> dict:
    """One cost profile, refused in one line when damaged (a truncated copy, an edit)."""
    profile = files.read_json(path, "cost profile", "measure it again with `metabench profile --force` or remove it")
    needed = ("algorithm", "dataset", "ways", "shots")
    if not isinstance(profile, dict) or any(key not in profile for key in needed):
        raise MetabenchError(f"cost profile {path} is not a metabench profile; measure it again or remove it")
    return profile


@dataclass
class Runs:
    metrics: pd.DataFrame  # one row per run
    episodes: dict[str, np.ndarray]  # run_id -> per-episode accuracy
    curves: pd.DataFrame  # run_id, algorithm, shots, seed, iteration, val_accuracy
    profiles: pd.DataFrame
    disjoint: dict[str, np.ndarray] = field(default_factory=dict)  # episodes sha256 -> image-disjoint episodes
    hyper: dict[str, dict] = field(default_factory=dict)  # algorithm -> resolved hyper-parameters (config.json)
    # run_id -> scoring mode -> per-episode accuracy (metabench.scoring); {} for an evaluation from before modes
    scored: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def disjoint_by_digest(episodes_dir: Path | None) -> dict[str, np.ndarray]:
    """For every fixed episode file in ``episodes_dir``: its digest (the ``episodes_sha256`` of
    the runs scored on it) -> the positions of its image-disjoint episodes. Matching by digest,
    never by file name, means a run is only ever paired with the very episodes it was scored on."""

    found = {}
    for path in sorted(Path(episodes_dir).glob("*.npz")) if episodes_dir else []:
        try:
            with np.load(path) as saved:
                indices = EpisodeIndices(saved["support"], saved["query"], saved["classes"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            continue  # not an episode file; a run whose episodes are missing gets no open interval
        found[indices.digest()] = stats.disjoint_episodes(indices.support, indices.query)
    return found


def load_runs(
    runs_dir: Path, profiles_dir: Path, run_ids: list[str] | None = None, episodes_dir: Path | None = None
) -> Runs:
    """Read run outputs; with ``run_ids`` exactly those runs (a missing one is an error). The
    fixed episodes in ``episodes_dir`` give the open intervals (none without them)."""
    rows, episodes, curves, hyper, scored = [], {}, [], {}, {}
    if run_ids is None:
        paths = sorted(Path(runs_dir).glob(f"*/{METRICS}"))
    else:
        paths = [Path(runs_dir) / run_id / METRICS for run_id in run_ids]
        missing = [p.parent.name for p in paths if not p.is_file()]
        if missing:
            raise MetabenchError(
                f"runs {', '.join(missing)} have no metrics.json; run `dvc repro` (after `metabench pipeline` if the leaderboard changed)"
            )
    for metrics_path in paths:
        run_dir = metrics_path.parent
        # refused unless every episodes file is the one metrics.json describes
        metrics, accuracies, by_mode = read_scored_results(run_dir)
        metrics.pop("modes", None)  # a nested record, not a column: ``scored`` holds its episodes
        folder, retrain = RunFolder(run_dir), f"retrain the run or remove {run_dir}"
        trained = TRAIN_SUMMARY in (folder.sealed_names() or {})  # a reference method has no training
        if trained:
            seconds = folder.read_json_verified(TRAIN_SUMMARY, retrain).get("train_seconds")
            if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
                raise MetabenchError(f"{run_dir / TRAIN_SUMMARY} has no valid train_seconds; {retrain}")
            metrics["train_seconds"] = seconds
            config = folder.read_json_verified(CONFIG, retrain)
            metrics.update(_budget(config, run_dir))
            hyper.setdefault(metrics["algorithm"], config.get("hyper", {}))
        metrics["mlflow_run_id"], metrics["mlflow_experiment_id"] = folder.mlflow_run()
        rows.append(metrics)
        episodes[metrics["run_id"]] = accuracies
        scored[metrics["run_id"]] = by_mode
        if trained:
            log = folder.read_table_verified(TRAIN_LOG, retrain, ("iteration",))
            if "val_accuracy" in log:
                log = log.dropna(subset=["val_accuracy"])[["iteration", "val_accuracy"]]
                curves.append(
                    log.assign(
                        run_id=metrics["run_id"],
                        algorithm=metrics["algorithm"],
                        shots=metrics["shots"],
                        seed=metrics["seed"],
                        dataset=metrics["dataset"],
                    )
                )
    if not rows:
        raise MetabenchError(f"no evaluated runs in {runs_dir}; run the train and evaluate stages first")
    profiles = [
        {key: value for key, value in _profile(path).items() if key not in PROFILE_RECORDS}
        for path in sorted(Path(profiles_dir).glob("*.json"))
    ]
    return Runs(
        pd.DataFrame(rows),
        episodes,
        pd.concat(curves) if curves else pd.DataFrame(),
        pd.DataFrame(profiles),
        disjoint_by_digest(episodes_dir),
        hyper,
        scored,
    )


def _budget(config: dict, run_dir: Path) -> dict[str, int]:
    """What a run was given to train: outer steps and training tasks (episodes) per step, the
    algorithm's meta-batch (one when it has none, as ``Algorithm.episodes_per_step``)."""
    try:
        iterations = int(config["config"]["iterations"])
        per_step = int(config["hyper"].get("meta_batch", 1))
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise MetabenchError(f"{run_dir / CONFIG} has no training budget ({error}); retrain the run") from error
    return {"iterations": iterations, "episodes_per_step": per_step}


def is_reference(algorithm: str) -> bool:
    """A reference method (nothing trained): reported beside the ranking, not in it."""
    return algorithm in REGISTRY and not REGISTRY[algorithm].trained


def split_references(runs: Runs) -> tuple[Runs, pd.DataFrame]:
    """The ranked runs, and the reference methods' runs (one row per run)."""
    mask = runs.metrics["algorithm"].map(is_reference)
    ranked = dataclasses.replace(runs, metrics=runs.metrics[~mask].reset_index(drop=True))
    if ranked.metrics.empty:
        raise MetabenchError("only reference methods were evaluated; train and evaluate an algorithm first")
    return ranked, runs.metrics[mask]
