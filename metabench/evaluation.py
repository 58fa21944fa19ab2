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
from metabench.models.conv4 import batch_statistics
from metabench.run_folder import EPISODES, EPISODES_IN_MODE, METRICS, RunFolder
from metabench.scoring import INDUCTIVE, TRANSDUCTIVE, check_modes

# Images per forward pass when filling the embedding cache: on CPU, small batches keep the
# activations in the processor's cache, which is faster than larger batches.
EMBED_BATCH = 50
# Memory layout of the images and weights while the cache is filled (see ``inference_form``).
CACHE_LAYOUT = torch.channels_last
# Episodes scored together from the cache (bounds the gathered support/query embeddings' memory).
SCORE_EPISODES = 100


def scored_accuracies(
    algorithm: Algorithm,
    bank: ImageBank,
    episodes: EpisodeIndices,
    modes: tuple[str, ...],
    progress=None,
    cached: bool = True,
) -> dict[str, np.ndarray]:
    """Accuracy on the queries of each episode, in each scoring mode of ``modes`` (``metabench.scoring``).

    ``progress(count, mode)`` is told of every ``count`` episodes scored: in ``mode``'s own pass
    over the episodes, or in all ``modes`` at once when ``mode`` is None.

    An algorithm with a per-image embedding (``cached``) is scored inductively from a cache of
    every distinct image's embedding, and transductively from each episode's embeddings, its
    head scoring ``SCORE_EPISODES`` episodes at once either way; every other algorithm one
    episode at a time, adapting once per episode for all ``modes`` (``Algorithm.predict_modes``).
    """
    check_modes(modes, algorithm.scoring_modes(), algorithm.name)
    found = {}
    rest = tuple(modes)
    if cached and isinstance(algorithm, EmbeddingAlgorithm):
        if INDUCTIVE in rest:
            found[INDUCTIVE] = cached_episode_accuracies(algorithm, bank, episodes, _labelled(progress, INDUCTIVE))
        if TRANSDUCTIVE in rest:
            found[TRANSDUCTIVE] = transductive_embedded_accuracies(
                algorithm, bank, episodes, _labelled(progress, TRANSDUCTIVE)
            )
        rest = ()
    if rest:
        with evaluation_mode(algorithm):
            accuracies = {mode: np.empty(len(episodes)) for mode in rest}
            for index in range(len(episodes)):
                episode = bank.episodes(episodes[index : index + 1])
                logits = algorithm.predict_modes(
                    episode.support_x[0], episode.support_y[0], episode.query_x[0], episode.ways, rest
                )
                for mode in rest:
                    accuracies[mode][index] = (logits[mode].argmax(1) == episode.query_y[0]).double().mean().item()
                if progress:
                    progress(1, None)
        found.update(accuracies)
    return {mode: found[mode] for mode in modes}


def _labelled(progress, mode: str):
    """``progress(count)`` of one mode's pass, reported as ``progress(count, mode)``."""
    return (lambda count: progress(count, mode)) if progress else None


def episode_accuracies(
    algorithm: Algorithm, bank: ImageBank, episodes: EpisodeIndices, progress=None, cached: bool = True
) -> np.ndarray:
    """Accuracy on the queries of each episode in the algorithm's own scoring mode (the headline)."""
    mode = algorithm.headline_scoring
    counted = (lambda count, _mode: progress(count)) if progress else None
    return scored_accuracies(algorithm, bank, episodes, (mode,), counted, cached)[mode]


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


@torch.no_grad()
def transductive_embedded_accuracies(
    algorithm: EmbeddingAlgorithm, bank: ImageBank, episodes: EpisodeIndices, progress=None
) -> np.ndarray:
    """Each episode's support and query sets embedded as two batches, every batch norm on its own
    batch's statistics (as ``EmbeddingAlgorithm.predict_modes`` scores transductively), the
    head scoring ``SCORE_EPISODES`` episodes at once (a head that fine-tunes per episode, as
    Baseline's, costs 600 times its setup one by one)."""
    count, ways, shots = episodes.support.shape
    labels = torch.arange(ways, device=bank.device)
    support_y, query_y = labels.repeat_interleave(shots), labels.repeat_interleave(episodes.query.shape[2])
    accuracies = np.empty(count)
    with evaluation_mode(algorithm), batch_statistics(list(algorithm.networks().values())):
        for start in range(0, count, SCORE_EPISODES):
            chunk = range(start, min(start + SCORE_EPISODES, count))
            support, query = [], []
            for index in chunk:
                episode = bank.episodes(episodes[index : index + 1])
                support.append(algorithm.embed(episode.support_x[0]))
                query.append(algorithm.embed(episode.query_x[0]))
            logits = algorithm.predict_embedded_episodes(torch.stack(support), support_y, torch.stack(query), ways)
            accuracies[start : chunk.stop] = (logits.argmax(-1) == query_y).double().mean(-1).cpu().numpy()
            if progress:
                progress(len(chunk))
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


def _episodes_table(accuracies: np.ndarray) -> bytes:
    return pd.DataFrame({"episode": np.arange(len(accuracies)), "accuracy": accuracies}).to_csv(index=False).encode()


def write_results(run_dir: Path, scored: dict[str, np.ndarray], headline: str, extra: dict, timing: dict) -> dict:
    """Write ``episodes.csv`` (one row per episode, in the ``headline`` scoring mode), one
    ``episodes.<mode>.csv`` per other mode of ``scored``, ``metrics.json`` (the headline's
    summary with its episode count and the sha256 of ``episodes.csv``, and under ``modes`` every
    mode's summary, file and sha256) and ``eval_timing.json`` together, replacing an earlier
    evaluation only once all are on disk, then seal the folder; return the metrics."""
    folder = RunFolder(run_dir)
    tables = {mode: _episodes_table(accuracies) for mode, accuracies in scored.items()}
    names = {mode: EPISODES if mode == headline else EPISODES_IN_MODE[mode] for mode in scored}
    modes = {
        mode: {**summarise(scored[mode]), "file": names[mode], "episodes_csv_sha256": files.sha256_bytes(tables[mode])}
        for mode in scored
    }
    metrics = {
        **summarise(scored[headline]),
        **extra,
        "episodes_csv_sha256": modes[headline]["episodes_csv_sha256"],
        "scoring": headline,
        "modes": modes,
    }
    files.write_together(
        {
            **{folder.path / names[mode]: tables[mode].decode() for mode in scored},
            folder.metrics: json.dumps(metrics, indent=1) + "\n",
            folder.eval_timing: json.dumps(timing, indent=1) + "\n",
        }
    )
    for name in EPISODES_IN_MODE.values():
        if name not in names.values():
            (folder.path / name).unlink(missing_ok=True)  # an earlier evaluation's other mode
    folder.seal()
    return metrics


def mode_scores(metrics: dict) -> dict[str, float]:
    """``accuracy_<mode>`` and ``ci95_<mode>`` of every scoring mode ``metrics`` holds, flat (a
    table's columns, MLflow's metrics)."""
    modes = metrics.get("modes") or {}
    return {f"{key}_{mode}": scores[key] for mode, scores in modes.items() for key in ("accuracy", "ci95")}


def read_results(run_dir: Path) -> tuple[dict, np.ndarray]:
    """A run's ``metrics.json`` and per-episode accuracies (the headline mode's), each checked
    against the run's manifest, refused unless they agree and the headline numbers re-derive
    from the episodes; every other mode's file is checked the same way."""
    metrics, headline, _ = read_scored_results(run_dir)
    return metrics, headline


def read_scored_results(run_dir: Path) -> tuple[dict, np.ndarray, dict[str, np.ndarray]]:
    """A run's ``metrics.json``, its per-episode accuracies in the headline mode, and those in
    each scoring mode it was scored in (``modes``; none for an evaluation from before scoring
    modes), every file checked against the manifest and its summary re-derived."""
    folder = RunFolder(run_dir)
    rebuild = f"re-evaluate it (metabench evaluate, or dvc repro) or remove {folder.path}"
    try:
        metrics = json.loads(folder.read_verified(METRICS, rebuild))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MetabenchError(f"{folder.metrics} is damaged ({type(error).__name__}); {rebuild}") from error
    if not isinstance(metrics, dict) or not {"accuracy", "ci95", "episodes", "run_id"} <= set(metrics):
        raise MetabenchError(f"{folder.metrics} is not a metabench metrics file; {rebuild}")
    headline = _read_episodes(folder, EPISODES, metrics, rebuild)
    modes = metrics.get("modes")
    if modes is None:
        return metrics, headline, {}
    if not isinstance(modes, dict) or metrics.get("scoring") not in modes:
        raise MetabenchError(f"{folder.metrics} lists no score for its headline mode; {rebuild}")
    scored = {}
    for mode, summary in modes.items():
        if mode not in EPISODES_IN_MODE or not isinstance(summary, dict):
            raise MetabenchError(f"{folder.metrics} has an unknown scoring mode {mode!r}; {rebuild}")
        expected = EPISODES if mode == metrics["scoring"] else EPISODES_IN_MODE[mode]
        if summary.get("file") != expected:
            raise MetabenchError(
                f"{folder.metrics} names {summary.get('file')!r} for {mode}, not {expected}; {rebuild}"
            )
        scored[mode] = headline if expected == EPISODES else _read_episodes(folder, expected, summary, rebuild)
        if mode == metrics["scoring"]:
            _check_summary(folder, summary, headline, rebuild)
    return metrics, headline, scored


def _read_episodes(folder: RunFolder, name: str, summary: dict, rebuild: str) -> np.ndarray:
    """Episode accuracies from the run's file ``name``, checked against the manifest and against
    ``summary`` (its sha256, episode count, and mean and interval re-derived)."""
    data = folder.read_verified(name, rebuild)
    path = folder.path / name
    if summary.get("episodes_csv_sha256") != files.sha256_bytes(data):
        raise MetabenchError(f"{path} does not match its metrics.json (sha256); {rebuild}")
    try:
        accuracies = pd.read_csv(io.BytesIO(data))["accuracy"].to_numpy(dtype=float)
    except (ValueError, KeyError, pd.errors.ParserError) as error:
        raise MetabenchError(f"{path} is not an episodes table ({error}); {rebuild}") from error
    _check_summary(folder, summary, accuracies, rebuild, path)
    return accuracies


def _check_summary(folder: RunFolder, summary: dict, accuracies: np.ndarray, rebuild: str, path=None) -> None:
    path = path or folder.episodes
    if len(accuracies) != summary.get("episodes"):
        raise MetabenchError(
            f"{path} has {len(accuracies)} episodes, metrics.json says {summary.get('episodes')}; {rebuild}"
        )
    derived = summarise(accuracies)
    for key in ("accuracy", "ci95"):
        if not isinstance(summary.get(key), float) or not np.isclose(summary[key], derived[key], rtol=0, atol=1e-12):
            raise MetabenchError(
                f"{folder.metrics} says {key} {summary.get(key)!r}, {path.name} gives {derived[key]!r}; {rebuild}"
            )
