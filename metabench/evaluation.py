"""Scoring an algorithm on fixed episodes; per-episode accuracies are the primary output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from metabench import stats
from metabench.algorithms import Algorithm
from metabench.episodes import EpisodeIndices, ImageBank


def episode_accuracies(algorithm: Algorithm, bank: ImageBank, episodes: EpisodeIndices, progress=None) -> np.ndarray:
    """Accuracy on the queries of each episode, one episode at a time."""
    algorithm.train(False)
    accuracies = np.empty(len(episodes))
    for index in range(len(episodes)):
        episode = bank.episodes(episodes[index : index + 1])
        logits = algorithm.predict(episode.support_x[0], episode.support_y[0], episode.query_x[0], episode.ways)
        accuracies[index] = (logits.argmax(1) == episode.query_y[0]).double().mean().item()
        if progress:
            progress(1)
    algorithm.train(True)
    return accuracies


def summarise(accuracies: np.ndarray) -> dict[str, float]:
    mean, half_width = stats.mean_interval(accuracies)
    return {"accuracy": mean, "ci95": half_width, "episodes": int(len(accuracies))}


def write_results(run_dir: Path, accuracies: np.ndarray, extra: dict) -> dict:
    """Write ``episodes.csv`` (one row per episode) and ``metrics.json``; return the metrics."""
    run_dir = Path(run_dir)
    pd.DataFrame({"episode": np.arange(len(accuracies)), "accuracy": accuracies}).to_csv(
        run_dir / "episodes.csv", index=False
    )
    metrics = {**summarise(accuracies), **extra}
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics


@torch.no_grad()
def pixel_nearest_neighbour(bank: ImageBank, episodes: EpisodeIndices) -> np.ndarray:
    """Reference baseline: label each query with its nearest support image in pixel space."""
    accuracies = np.empty(len(episodes))
    for index in range(len(episodes)):
        episode = bank.episodes(episodes[index : index + 1])
        support = episode.support_x[0].flatten(1)
        query = episode.query_x[0].flatten(1)
        nearest = torch.cdist(query, support).argmin(1)
        accuracies[index] = (episode.support_y[0][nearest] == episode.query_y[0]).double().mean().item()
    return accuracies
