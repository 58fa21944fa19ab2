"""A results table from run outputs only (``runs/*/metrics.json``), never re-training.

Beside each (dataset, ways, shots) it scores the pixel nearest-neighbour baseline on the very
same fixed test episodes, so every number in the table shares its episodes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from metabench.data import store
from metabench.episodes import EpisodeSpec, ImageBank, episode_key, fixed_episodes
from metabench.evaluation import pixel_nearest_neighbour, summarise


def collect(runs_dir: Path) -> pd.DataFrame:
    rows = [json.loads(p.read_text()) for p in sorted(Path(runs_dir).glob("*/metrics.json"))]
    return pd.DataFrame(rows)


def pixel_baseline(
    dataset_name: str, data_dir: Path, ways: int, shots: int, queries: int, count: int, seed: int
) -> dict:
    dataset = store.load(dataset_name, data_dir)
    split = dataset.split("test")
    key = episode_key(dataset.name, "test", dataset.checksum)
    episodes = fixed_episodes(split, EpisodeSpec(ways, shots, queries), count, seed, Path(data_dir) / "episodes", key)
    return summarise(pixel_nearest_neighbour(ImageBank(split), episodes))


def table(runs_dir: Path, data_dir: Path) -> pd.DataFrame:
    """One row per run plus one pixel-NN row per (dataset, ways, shots, queries, episodes)."""
    runs = collect(runs_dir)
    if runs.empty:
        return runs
    rows = runs[
        ["dataset", "algorithm", "ways", "shots", "seed", "accuracy", "ci95", "episodes", "transductive"]
    ].copy()
    baselines = []
    for (name, ways, shots, queries, count, seed), _ in runs.groupby(
        ["dataset", "ways", "shots", "queries", "episodes", "episode_seed"]
    ):
        result = pixel_baseline(name, data_dir, ways, shots, queries, count, seed)
        baselines.append(
            {
                "dataset": name,
                "algorithm": "pixel-NN (reference)",
                "ways": ways,
                "shots": shots,
                "seed": None,
                **result,
                "transductive": False,
            }
        )
    combined = pd.concat([rows, pd.DataFrame(baselines)], ignore_index=True)
    return combined.sort_values(["dataset", "ways", "shots", "algorithm", "seed"]).reset_index(drop=True)
