"""The report's statistics over loaded runs (the formulas themselves are in ``metabench.stats``):
per algorithm and setting the mean over seeds with its intervals and costs, and the paired
comparisons between algorithms scored on the same episodes.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from metabench import published, stats
from metabench.report.runs import Runs

COST_COLUMNS = {  # profile field -> column title in the cost table
    "meta_train_tasks_per_second": "meta-train tasks/s",
    "adaptation_tasks_per_second": "adapt tasks/s (one episode)",
    "evaluation_episodes_per_second": "eval episodes/s (evaluator)",
    "achieved_gflops": "GFLOP/s (meta-train)",
    "utilisation": "of matmul peak",
    "peak_rss_mb": "peak RSS MB",
}


def aggregate(runs: Runs) -> pd.DataFrame:
    """One row per (dataset, ways, shots, algorithm): seed statistics and costs."""
    out = []
    keys = ["dataset", "ways", "shots", "algorithm"]
    for (dataset, ways, shots, algorithm), group in runs.metrics.groupby(keys):
        mean, half = stats.seed_interval(group["accuracy"])
        row = {
            "dataset": dataset,
            "ways": ways,
            "shots": shots,
            "algorithm": algorithm,
            "accuracy": mean,
            "seed_ci95": half,
            "seeds": len(group),
            "episode_ci95": float(group["ci95"].mean()),
            "episodes": ", ".join(str(n) for n in sorted(set(group["episodes"]))),  # per run, usually one count
            "train_seconds": float(group["train_seconds"].mean()) if "train_seconds" in group else float("nan"),
            **_budget(group),
            "transductive": bool(group["transductive"].iloc[0]),
            "mlflow_runs": [  # (experiment id, run id) of each tracked seed
                (e, r) for e, r in group.sort_values("seed")[["mlflow_experiment_id", "mlflow_run_id"]].values if r
            ],
            "seed_accuracies": list(group.sort_values("seed")["accuracy"]),
            **_open(runs, group),
        }
        if not runs.profiles.empty:
            match = runs.profiles[
                (runs.profiles["algorithm"] == algorithm)
                & (runs.profiles["shots"] == shots)
                & (runs.profiles["dataset"] == dataset)
                & (runs.profiles["ways"] == ways)
            ]
            if not match.empty:
                profile = match.iloc[0]
                row.update({key: float(profile.get(key, float("nan"))) for key in COST_COLUMNS})
        entry = published.lookup(dataset, algorithm, ways, shots)
        row["published"] = (
            (f"{entry[0]}" + (f" ± {entry[1]}" if entry[1] is not None else "") + f" ({entry[2]})") if entry else ""
        )
        out.append(row)
    return pd.DataFrame(out)


def _budget(group: pd.DataFrame) -> dict[str, float]:
    """Outer steps and training tasks per step of a setting's runs (the same in every seed)."""
    return {
        key: float(group[key].iloc[0]) if key in group and group[key].notna().all() else float("nan")
        for key in ("iterations", "episodes_per_step")
    }


def _open(runs: Runs, group: pd.DataFrame) -> dict[str, float]:
    """The open interval of one algorithm and setting: per image-disjoint episode, the mean over
    seeds; then the t-interval over those episodes. NaN when its episodes are not at hand."""
    hashes = set(group["episodes_sha256"].dropna()) if "episodes_sha256" in group else set()
    kept = runs.disjoint.get(next(iter(hashes))) if len(hashes) == 1 else None
    if kept is None:
        return {"open_accuracy": float("nan"), "open_ci95": float("nan"), "open_episodes": 0}
    pooled = np.mean([runs.episodes[run_id] for run_id in group["run_id"]], axis=0)
    mean, half, count = stats.open_interval(pooled, kept)
    return {"open_accuracy": mean, "open_ci95": half, "open_episodes": count}


def pairwise(runs: Runs) -> pd.DataFrame:
    """Paired comparisons between every two algorithms of each (dataset, ways, shots).

    Runs are paired only when they were scored on identical episodes (the same
    ``episodes_sha256`` in every seed of both algorithms); runs from before that hash was
    recorded are never paired. The unit of the test is the seed when both algorithms have at
    least two seeds in common: a paired t-test on the per-seed mean accuracies (seed i of one
    against seed i of the other), so training randomness counts, not only episode sampling.
    With one seed it falls back to the per-episode paired t-test, which only says how sure we
    are about these particular trained models; the ``test`` column says which was used.
    """
    rows = []
    metrics = runs.metrics
    if "episodes_sha256" not in metrics:
        return pd.DataFrame(rows)
    for (dataset, ways, shots), group in metrics.groupby(["dataset", "ways", "shots"]):
        pooled, episodes_of, seed_means = {}, {}, {}
        for algorithm, runs_of in group.groupby("algorithm"):
            hashes = set(runs_of["episodes_sha256"].dropna())
            if len(hashes) != 1 or runs_of["episodes_sha256"].isna().any():
                continue  # its seeds were scored on different episodes: nothing to pair them on
            pooled[algorithm] = np.mean([runs.episodes[r] for r in runs_of["run_id"]], axis=0)
            episodes_of[algorithm] = hashes.pop()
            seed_means[algorithm] = dict(zip(runs_of["seed"], runs_of["accuracy"]))
        setting = []
        for a, b in itertools.combinations(sorted(pooled), 2):
            if episodes_of[a] != episodes_of[b]:
                continue
            seeds = sorted(set(seed_means[a]) & set(seed_means[b]))
            if len(seeds) >= 2:
                per_seed = ([seed_means[a][s] for s in seeds], [seed_means[b][s] for s in seeds])
                result, test = stats.paired_comparison(*per_seed), f"paired t over {len(seeds)} seeds"
            else:
                result = stats.paired_comparison(pooled[a], pooled[b])
                test = f"paired t over {len(pooled[a])} episodes (one seed: training randomness not counted)"
            setting.append({"dataset": dataset, "ways": ways, "shots": shots, "a": a, "b": b, **result, "test": test})
        if setting:
            adjusted = stats.adjust_p_values([r["p_value"] for r in setting])
            for row, p in zip(setting, adjusted):
                row["p_adjusted"] = float(p)
            rows += setting
    return pd.DataFrame(rows)
