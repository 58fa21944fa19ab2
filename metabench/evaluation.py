"""Scoring an algorithm on fixed episodes; per-episode accuracies are the primary output."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.utils import fuse_conv_bn_eval

from metabench import MetabenchError, files, stats
from metabench.algorithms import Algorithm
from metabench.algorithms.base import EmbeddingAlgorithm
from metabench.episodes import EpisodeIndices, ImageBank
from metabench.run_folder import EPISODES, METRICS, RunFolder

# Images per forward pass when filling the embedding cache: on CPU, small batches keep the
# activations in the processor's cache, which is faster than larger batches.
EMBED_BATCH = 50
# Memory layout of the images and weights while the cache is filled (see ``inference_form``).
CACHE_LAYOUT = torch.channels_last
# Episodes scored together from the cache (bounds the gathered support/query embeddings' memory).
SCORE_EPISODES = 100


def episode_accuracies(
    algorithm: Algorithm, bank: ImageBank, episodes: EpisodeIndices, progress=None, cached: bool = True
) -> np.ndarray:
    """Accuracy on the queries of each episode.

    Algorithms with a frozen per-image embedding are scored from a cache of every distinct
    image's embedding (``cached``); the rest, one episode at a time.
    """
    if cached and isinstance(algorithm, EmbeddingAlgorithm) and not algorithm.evaluates_transductively:
        return cached_episode_accuracies(algorithm, bank, episodes, progress)
    with evaluation_mode(algorithm):
        accuracies = np.empty(len(episodes))
        for index in range(len(episodes)):
            episode = bank.episodes(episodes[index : index + 1])
            logits = algorithm.predict(episode.support_x[0], episode.support_y[0], episode.query_x[0], episode.ways)
            accuracies[index] = (logits.argmax(1) == episode.query_y[0]).double().mean().item()
            if progress:
                progress(1)
    return accuracies


@contextlib.contextmanager
def evaluation_mode(algorithm: Algorithm):
    """Evaluation mode inside, the previous mode restored afterwards, even after an error."""
    networks = list(algorithm.networks().values())
    previous = [network.training for network in networks]
    algorithm.train(False)
    try:
        yield
    finally:
        for network, mode in zip(networks, previous):
            network.train(mode)


@torch.no_grad()
def cached_episode_accuracies(
    algorithm: EmbeddingAlgorithm, bank: ImageBank, episodes: EpisodeIndices, progress=None
) -> np.ndarray:
    """Embed each distinct image of ``episodes`` once, then score every episode from the cache."""
    with evaluation_mode(algorithm):
        return _score_from_cache(algorithm, bank, episodes, progress)


def _score_from_cache(algorithm: EmbeddingAlgorithm, bank: ImageBank, episodes: EpisodeIndices, progress) -> np.ndarray:
    distinct, position = np.unique(
        np.concatenate([episodes.support.ravel(), episodes.query.ravel()]), return_inverse=True
    )
    networks = list(algorithm.networks().values())
    with inference_form(networks):
        cache = torch.cat(
            [
                algorithm.embed(
                    bank.batch(distinct[start : start + EMBED_BATCH]).contiguous(memory_format=CACHE_LAYOUT)
                )
                for start in range(0, len(distinct), EMBED_BATCH)
            ]
        )
    n_support = episodes.support.size
    support_rows = torch.from_numpy(position[:n_support].reshape(len(episodes), -1)).to(cache.device)
    query_rows = torch.from_numpy(position[n_support:].reshape(len(episodes), -1)).to(cache.device)
    count, ways, shots = episodes.support.shape
    queries = episodes.query.shape[2]
    labels = torch.arange(ways, device=cache.device)
    support_y, query_y = labels.repeat_interleave(shots), labels.repeat_interleave(queries)
    accuracies = np.empty(count)
    for start in range(0, count, SCORE_EPISODES):
        chunk = slice(start, min(start + SCORE_EPISODES, count))
        logits = algorithm.predict_embedded_episodes(
            cache[support_rows[chunk]], support_y, cache[query_rows[chunk]], ways
        )
        accuracies[chunk] = (logits.argmax(-1) == query_y).double().mean(-1).cpu().numpy()
        if progress:
            progress(chunk.stop - chunk.start)
    return accuracies


@contextlib.contextmanager
def inference_form(networks: list[nn.Module]):
    """Within the block, ``networks`` run in a faster form of the same function: the frozen
    body that fills the embedding cache.

    * Each convolution followed by an evaluation-mode batch norm (running statistics) in an
      ``nn.Sequential`` runs as one convolution: a frozen batch norm is an affine map per
      channel, so it folds into the convolution's weights and bias
      (``torch.nn.utils.fuse_conv_bn_eval``).
    * Weights (and the images, see ``CACHE_LAYOUT``) are channels-last, where CPU convolution
      and max-pooling kernels are vectorised: the layout Conv-4 trains in as well
      (``models.conv4.channels_last``; ``benchmarks/README.md`` gives the speed-ups).

    Outputs equal the plain form's up to float rounding (tested). On exit the original layers
    and memory layout are back.
    """
    pairs = []
    for network in networks:
        for block in network.modules():
            if isinstance(block, nn.Sequential):
                pairs += [
                    (block, i)
                    for i in range(len(block) - 1)
                    if isinstance(block[i], nn.Conv2d)
                    and isinstance(block[i + 1], nn.BatchNorm2d)
                    and not block[i + 1].training
                    and block[i + 1].running_mean is not None
                ]
    originals = [(block[i], block[i + 1]) for block, i in pairs]
    try:
        for block, i in pairs:
            block[i], block[i + 1] = fuse_conv_bn_eval(block[i], block[i + 1]), nn.Identity()
        for network in networks:
            network.to(memory_format=CACHE_LAYOUT)
        yield
    finally:
        for (block, i), (conv, norm) in zip(pairs, originals):
            block[i], block[i + 1] = conv, norm
        for network in networks:
            network.to(memory_format=torch.contiguous_format)


def summarise(accuracies: np.ndarray) -> dict[str, float]:
    mean, half_width = stats.mean_interval(accuracies)
    return {"accuracy": mean, "ci95": half_width, "episodes": int(len(accuracies))}


def write_results(run_dir: Path, accuracies: np.ndarray, extra: dict, timing: dict) -> dict:
    """Write ``episodes.csv`` (one row per episode), ``metrics.json`` (with the episode count and
    the sha256 of ``episodes.csv``) and ``eval_timing.json`` together, replacing an earlier
    evaluation only once all three are on disk, then seal the folder; return the metrics."""
    folder = RunFolder(run_dir)
    table = pd.DataFrame({"episode": np.arange(len(accuracies)), "accuracy": accuracies}).to_csv(index=False)
    metrics = {**summarise(accuracies), **extra, "episodes_csv_sha256": files.sha256_bytes(table.encode())}
    files.write_together(
        {
            folder.episodes: table,
            folder.metrics: json.dumps(metrics, indent=1) + "\n",
            folder.eval_timing: json.dumps(timing, indent=1) + "\n",
        }
    )
    folder.seal()
    return metrics


def read_results(run_dir: Path) -> tuple[dict, np.ndarray]:
    """A run's ``metrics.json`` and per-episode accuracies, each checked against the run's
    manifest, refused unless they agree and the headline numbers re-derive from the episodes."""
    folder = RunFolder(run_dir)
    rebuild = f"re-evaluate it (metabench evaluate, or dvc repro) or remove {folder.path}"
    try:
        metrics = json.loads(folder.read_verified(METRICS, rebuild))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MetabenchError(f"{folder.metrics} is damaged ({type(error).__name__}); {rebuild}") from error
    if not isinstance(metrics, dict) or not {"accuracy", "ci95", "episodes", "run_id"} <= set(metrics):
        raise MetabenchError(f"{folder.metrics} is not a metabench metrics file; {rebuild}")
    data = folder.read_verified(EPISODES, rebuild)
    if metrics.get("episodes_csv_sha256") != files.sha256_bytes(data):
        raise MetabenchError(f"{folder.episodes} does not match its metrics.json (sha256); {rebuild}")
    try:
        accuracies = pd.read_csv(io.BytesIO(data))["accuracy"].to_numpy(dtype=float)
    except (ValueError, KeyError, pd.errors.ParserError) as error:
        raise MetabenchError(f"{folder.episodes} is not an episodes table ({error}); {rebuild}") from error
    if len(accuracies) != metrics["episodes"]:
        raise MetabenchError(
            f"{folder.episodes} has {len(accuracies)} episodes, metrics.json says {metrics['episodes']}; {rebuild}"
        )
    derived = summarise(accuracies)
    for key in ("accuracy", "ci95"):
        if not isinstance(metrics[key], float) or not np.isclose(metrics[key], derived[key], rtol=0, atol=1e-12):
            raise MetabenchError(
                f"{folder.metrics} says {key} {metrics[key]!r}, its episodes.csv gives {derived[key]!r}; {rebuild}"
            )
    return metrics, accuracies
