"""The protocol every algorithm follows, so one trainer and one evaluator serve them all.

An algorithm owns its networks and optimiser. The trainer only calls:

* ``meta_train_step(batch)``: one outer update from a batch of training episodes, returning
  scalar metrics (``loss`` at least). Most algorithms only define ``episode_loss(task)`` and
  inherit the step: the mean loss over the meta-batch, one ``self.optimizer`` step (and
  ``self.scheduler`` step if present). Task by task, each task's graph is freed before the next
  is built; an algorithm that batches its tasks (``batched_episode_losses``, under
  ``torch.func.vmap``) holds every task's graph at once;
* ``predict(support_x, support_y, query_x, ways)``: logits for one episode's queries;
* ``state_dict()`` / ``load_state_dict()``: everything needed to resume or to predict later,
  from ``networks()`` (weights) and ``optimizers()`` (optimiser and scheduler states).

Hyper-parameters are a dataclass per algorithm (``Hyper``), filled from params.yaml by
``make_hyper``, which rejects unknown names and wrong types with a one-line error.

Every class of an algorithm's lineage declares its behaviour: ``version`` and ``release_notes``
in its own body (``metabench.identity``). A run's identity holds the versions of its class and
of each parent, so bumping ``MAML.version`` retrains MAML and its subclasses and nothing else.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from metabench import MetabenchError, distributed
from metabench.episodes import Episode
from metabench.models import Classifier, build_backbone
from metabench.models.conv4 import batch_statistics
from metabench.scoring import INDUCTIVE, MODES, TRANSDUCTIVE, statistics_of_leading_rows


@dataclass(frozen=True)
class TaskShape:
    """What an algorithm is built for: image shape and the episode sizes it trains and tests on."""

    channels: int
    image_size: int
    train_ways: int
    test_ways: int
    train_classes: int = 0  # classes in the training split (for methods that pre-train a global head)


class Algorithm(abc.ABC):
    name: ClassVar[str]
    paper: ClassVar[str]  # citation of the method
    adapts: ClassVar[str]  # one line: what changes at test time
    transductive: ClassVar[bool]  # does a query's prediction depend on the other queries (headline score)?
    # where batch norm takes its statistics at test time: "running" (kept from training; set by
    # EmbeddingAlgorithm), "batch" (of the images it sees; EpisodeNormalised) or None (no batch
    # norm, or a method that scores only its own way): which scoring modes it has (metabench.scoring)
    batch_norm: ClassVar[str | None] = None
    fixed_ways: ClassVar[bool] = False  # True when the model has a head of exactly test_ways outputs
    # False for a reference method with nothing to learn: it is only evaluated, once per setting
    trained: ClassVar[bool] = True
    Hyper: ClassVar[type]
    # Declared behaviour: bump ``version``, with a release note, when a change alters what a run
    # computes (the golden canary, tests/test_canary.py, fails until the bump is made). Every
    # subclass declares its own; a parent's bump reaches its subclasses.
    version: ClassVar[int] = 1
    release_notes: ClassVar[dict[int, str]] = {
        1: "The default meta-train step (mean loss over the meta-batch, optional clipping, one optimiser "
        "step; no step on a non-finite gradient) and the episodic classifier head, at 806d491.",
    }

    def __init__(self, hyper: Any, task: TaskShape, device: torch.device):
        self.hyper = hyper
        self.task = task
        self.device = device

    @property
    def evaluates_transductively(self) -> bool:
        """Whether this instance's predictions depend on the other queries (``transductive``,
        unless a hyper-parameter chooses the scoring mode)."""
        return self.transductive

    @property
    def headline_scoring(self) -> str:
        """The scoring mode of the headline score (``episodes.csv``): the method's own."""
        return TRANSDUCTIVE if self.evaluates_transductively else INDUCTIVE

    @classmethod
    def scoring_modes(cls) -> tuple[str, ...]:
        """The modes it can be scored in (``metabench.scoring``): both with batch norm, else its own."""
        return MODES if cls.batch_norm else (TRANSDUCTIVE if cls.transductive else INDUCTIVE,)

    def predict_modes(
        self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor, ways: int, modes: tuple[str, ...]
    ) -> dict[str, torch.Tensor]:
        """Logits (n_query, ways) of one episode's queries in each of ``modes`` (``metabench.scoring``),
        adapting once. By default the headline mode only, through ``predict``."""
        if tuple(modes) != (self.headline_scoring,):
            raise MetabenchError(f"{self.name} can only be scored {self.headline_scoring}")
        return {self.headline_scoring: self.predict(support_x, support_y, query_x, ways)}

    @classmethod
    def training_queries(cls, hyper: Any, shots: int, queries: int) -> int:
        """Query images per class in training episodes when the run does not set
        ``train_queries``: the algorithm family's protocol (one place per family). By default
        the test episodes' ``queries``."""
        return queries

    @property
    def episodes_per_step(self) -> int:
        """How many training episodes one ``meta_train_step`` consumes (the meta-batch)."""
        return getattr(self.hyper, "meta_batch", 1)

    clip_grad_norm: float = 0.0  # > 0: clip the meta-gradient's norm before the step

    def episode_loss(self, task: Episode) -> tuple[torch.Tensor, torch.Tensor]:
        """Training loss of one episode and its query logits (used by the default step)."""
        raise NotImplementedError(f"{self.name} defines neither episode_loss nor meta_train_step")

    # True when the step's meta-gradient is a mean over the meta-batch's tasks, so the tasks can be
    # split over torch.distributed ranks (metabench.distributed); the default step does the split
    data_parallel: ClassVar[bool] = False

    @classmethod
    def splits_meta_batch(cls, hyper: Any) -> bool:
        """Whether a run with ``hyper`` can split its meta-batch over ranks (``data_parallel``,
        unless a setting makes the tasks depend on each other)."""
        return cls.data_parallel

    def accumulate_meta_gradient(self, batch: Episode) -> dict[str, torch.Tensor]:
        """Add the meta-gradient of the mean query loss over ``batch`` to the parameters' ``.grad``.

        Under ``torchrun`` this rank takes its share of the tasks and the ranks sum their
        gradients (``distributed.all_reduce_gradients``), so every rank ends with the whole
        batch's meta-gradient. Returns the batch's mean loss and query accuracy.
        """
        share = distributed.shard(len(batch))
        together = self.batched_episode_losses(batch.tasks(share))
        if together is not None:
            losses, logits = together
            (losses.sum() / len(batch)).backward()
            query_y = batch.query_y[share.start : share.stop]
            accuracies = list((logits.detach().argmax(-1) == query_y).float().mean(-1))
            losses = list(losses.detach())
        else:
            losses, accuracies = [], []
            for index in share:
                task = batch.task(index)
                loss, logits = self.episode_loss(task)
                (loss / len(batch)).backward()  # per task, so only one task's graph is alive at a time
                losses.append(loss.detach())
                accuracies.append((logits.detach().argmax(1) == task.query_y).float().mean())
        distributed.all_reduce_gradients(p for group in self.optimizer.param_groups for p in group["params"])
        return {
            "loss": distributed.mean_over_ranks(losses, len(batch)),
            "accuracy": distributed.mean_over_ranks(accuracies, len(batch)),
        }

    def batched_episode_losses(self, batch: Episode) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Every episode's training loss (E,) and query logits (E, queries, ways) computed at once
        (tasks under ``torch.func.vmap``, the GPU path), or None: one episode at a time."""
        return None

    def meta_train_step(self, batch: Episode) -> dict[str, float]:
        """One outer update from a batch of episodes (tensors with a leading episode axis)."""
        self.train(True)
        self.optimizer.zero_grad(set_to_none=True)
        metrics = self.accumulate_meta_gradient(batch)
        parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
        if self.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(parameters, self.clip_grad_norm)
        if not all(p.grad is None or torch.isfinite(p.grad).all() for p in parameters):
            return {"loss": float("nan"), "accuracy": float("nan")}  # the trainer stops on NaN; no step taken
        self.optimizer.step()
        if getattr(self, "scheduler", None) is not None:
            self.scheduler.step()
        return {name: value.item() for name, value in metrics.items()}

    @abc.abstractmethod
    def predict(
        self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor, ways: int
    ) -> torch.Tensor:
        """Logits (n_query, ways) for one episode."""

    @abc.abstractmethod
    def networks(self) -> dict[str, torch.nn.Module]:
        """The networks by name: what has weights and a train/eval mode (a predictor needs only these)."""

    def optimizers(self) -> dict[str, Any]:
        """Optimisers and schedulers by name: what else a resumed run needs (none by default)."""
        return {}

    def modules(self) -> dict[str, Any]:
        """Every stateful part saved in a resumable state: ``networks()`` and ``optimizers()``."""
        return {**self.networks(), **self.optimizers()}

    def train(self, mode: bool = True) -> None:
        for network in self.networks().values():
            network.train(mode)

    def state_dict(self) -> dict[str, Any]:
        return {key: part.state_dict() for key, part in self.modules().items()}

    def load_state_dict(self, state: dict[str, Any], weights_only: bool = False) -> None:
        for key, part in (self.networks() if weights_only else self.modules()).items():
            part.load_state_dict(state[key])


@dataclass
class BackboneHyper:
    """The body every algorithm builds (extended by each algorithm's ``Hyper``)."""

    backbone: str = "conv4"  # conv4 or resnet12 (metabench.models)
    hidden: int = 64  # channels of each block (Conv-4; ResNet-12 scales its widths by it)


def build_body(hyper: BackboneHyper, task: TaskShape, track_running_stats: bool) -> torch.nn.Module:
    return build_backbone(hyper.backbone, task.channels, hyper.hidden, track_running_stats=track_running_stats)


def episodic_classifier(hyper: BackboneHyper, task: TaskShape) -> torch.nn.Module:
    """Backbone plus a linear head over the test ways, normalising with each episode's batch
    statistics (the MAML family, Reptile and the LSTM meta-learner adapt it per task)."""
    body = build_body(hyper, task, track_running_stats=False)
    return Classifier(body, body.out_features(task.image_size), task.test_ways)


class EpisodeNormalised:
    """Prediction for an algorithm that adapts a network without running statistics to each
    episode (the MAML family, Reptile, the LSTM meta-learner): its batch norm normalises with the
    statistics of the images it sees, so it is scored transductively (the queries together, as
    its papers do) and inductively (every image with the support set's statistics) from one
    adaptation. A mixin, listed before ``Algorithm``: it declares no behaviour version of its own,
    so its code is part of the behaviour of each algorithm that uses it (their canaries cover it).
    """

    transductive = True
    batch_norm = "batch"

    def adapted(
        self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """The network adapted to the support set, as a function from images to logits (called
        under ``no_grad``; its batch norms are those of ``networks()``)."""
        raise NotImplementedError(f"{self.name} defines neither adapted nor predict_modes")

    def predict(self, support_x, support_y, query_x, ways):
        return self.predict_modes(support_x, support_y, query_x, ways, (self.headline_scoring,))[self.headline_scoring]

    def predict_modes(self, support_x, support_y, query_x, ways, modes):
        forward = self.adapted(support_x, support_y, ways)
        logits = {}
        with torch.no_grad():
            for mode in modes:
                if mode == TRANSDUCTIVE:
                    logits[mode] = forward(query_x)
                else:
                    with statistics_of_leading_rows(list(self.networks().values()), len(support_x)):
                        logits[mode] = forward(torch.cat([support_x, query_x]))[len(support_x) :]
        return logits


class EmbeddingAlgorithm(Algorithm):
    """An algorithm whose test-time prediction sees images only through a per-image embedding.

    At evaluation the body is frozen and normalises with running statistics, so an image's
    embedding does not depend on its episode: the evaluator embeds every distinct test image
    once and scores all episodes from that cache (``predict_embedded``), which gives the same
    predictions as ``predict`` on each episode. Transductive methods (MAML family, ANIL, whose
    batch-statistics body sees the whole episode) must not use this class.
    """

    transductive = False
    batch_norm = "running"
    version = 1
    release_notes = {1: "Embed support and query in one batch, score with the test-time head, at 806d491."}

    @abc.abstractmethod
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings of a batch of images, (n, …); called in evaluation mode under no_grad."""

    @abc.abstractmethod
    def predict_embedded(
        self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor, ways: int
    ) -> torch.Tensor:
        """Query logits (n_query, ways) from support and query embeddings."""

    def predict_embedded_episodes(
        self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor, ways: int
    ) -> torch.Tensor:
        """Query logits (E, n_query, ways) of E episodes with the same labels: support (E, n_support, …).

        One episode at a time by default. A method whose head is a few tensor operations scores
        all episodes at once instead: 600 small per-episode calls cost about a third of the
        cached evaluation of Prototypical Networks on CPU.
        """
        return torch.stack([self.predict_embedded(s, support_y, q, ways) for s, q in zip(support, query)])

    def predict(self, support_x, support_y, query_x, ways):
        return self.predict_modes(support_x, support_y, query_x, ways, (self.headline_scoring,))[self.headline_scoring]

    @torch.no_grad()
    def predict_modes(self, support_x, support_y, query_x, ways, modes):
        """Inductive: the networks as they are (evaluation mode: running statistics, per image).
        Transductive: every batch norm on the statistics of its own batch, the support set and the
        query set embedded as two batches (LearningToCompare_FSL's test)."""
        logits = {}
        for mode in modes:
            with batch_statistics(list(self.networks().values())) if mode == TRANSDUCTIVE else contextlib.nullcontext():
                logits[mode] = self.predict_embedded(self.embed(support_x), support_y, self.embed(query_x), ways)
        return logits

    def query_loss(self, scores: torch.Tensor, query_y: torch.Tensor) -> torch.Tensor:
        """Training loss of the query scores ``predict_embedded`` gives (cross-entropy unless overridden)."""
        return F.cross_entropy(scores, query_y)

    def episode_loss(self, task: Episode) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed support and query images in one batch (so a training-mode batch norm sees the
        whole episode), score the queries exactly as at test time, and take ``query_loss``."""
        n_support = len(task.support_x)
        embedded = self.embed(torch.cat([task.support_x, task.query_x]))
        scores = self.predict_embedded(embedded[:n_support], task.support_y, embedded[n_support:], task.ways)
        return self.query_loss(scores, task.query_y), scores


def make_hyper(cls: type, values: dict[str, Any] | None, algorithm: str) -> Any:
    """Build ``cls`` (a dataclass) from ``values``, with a clear error for unknown or mistyped keys."""
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise MetabenchError(
            f"{algorithm} has no hyper-parameter {', '.join(unknown)}; valid: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        expected = hints[key]
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            values[key] = float(value)
        elif expected in (int, float, bool, str) and type(value) is not expected:
            raise MetabenchError(
                f"{algorithm}.{key} must be {expected.__name__}, got {value!r} ({type(value).__name__})"
            )
    hyper = cls(**values)
    for key, expected in hints.items():  # inf passes `lr <= 0` and NaN passes every comparison
        value = getattr(hyper, key, None)
        if expected is float and isinstance(value, float) and not math.isfinite(value):
            raise MetabenchError(f"{algorithm}.{key} must be a finite number, got {value}")
    if getattr(hyper, "hidden", 1) < 1:
        raise MetabenchError(f"{algorithm}.hidden must be at least 1 (channels per block), got {hyper.hidden}")
    check = getattr(hyper, "validate", None)
    if check:
        check()
    return hyper
