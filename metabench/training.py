"""The meta-training loop: steps, validation on the fixed episodes, best-weights selection.

The loop computes and emits events; what to do with them (progress bars, MLflow, the resumable
state on disk) is each ``Listener``'s business, so nothing here does I/O. Its behaviour is the
shared protocol's (``identity.PROTOCOL_VERSION``): a change to what it computes bumps that.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from metabench import MetabenchError, distributed
from metabench.algorithms import Algorithm
from metabench.episodes import EpisodeIndices, ImageBank, augment_episode, sample_indices
from metabench.evaluation import episode_accuracies
from metabench.prepared import PreparedRun

# A run has diverged, even while its loss is finite, when the loss exceeds this many times its
# first loss (or 1, whichever is larger), or exceeds LOSS_LIMIT: every training loss here is a
# per-query mean of cross-entropy, NLL, MSE or BCE, which stays within tens for any sane network,
# trained or not; 1e4 comes only from exploding weights or activations (MAML at inner_lr=1e6
# starts at 1e11).
DIVERGENCE_FACTOR = 1e3
LOSS_LIMIT = 1e4


def finite(state: Any) -> bool:
    """Whether every floating tensor of a (nested) state dict is finite: weights, batch-norm
    statistics, optimiser moments."""
    if isinstance(state, torch.Tensor):
        return not state.is_floating_point() or bool(torch.isfinite(state).all())
    if isinstance(state, dict):
        return all(finite(value) for value in state.values())
    if isinstance(state, (list, tuple)):
        return all(finite(value) for value in state)
    return True


@dataclass
class TrainingState:
    """Where training stands: what ``state.pt`` saves and a resumed run restores."""

    iteration: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per update from iteration 1
    validations: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"val_accuracy": -1.0, "iteration": 0})
    best_weights: dict[str, Any] | None = None
    elapsed: float = 0.0  # training seconds so far, resumed runs included

    def payload(self, algorithm: Algorithm, rng: np.random.Generator) -> dict[str, Any]:
        """Everything a resumed run needs, as plain data."""
        return {
            "algorithm": algorithm.state_dict(),
            "numpy_rng": rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "iteration": self.iteration,
            "history": self.history,
            "validations": self.validations,
            "best": self.best,
            "best_weights": self.best_weights,
            "elapsed": self.elapsed,
        }

    @classmethod
    def restore(cls, saved: dict[str, Any], algorithm: Algorithm, rng: np.random.Generator) -> TrainingState:
        """The state ``payload`` saved, with the algorithm's weights and both generators restored."""
        algorithm.load_state_dict(saved["algorithm"])
        rng.bit_generator.state = saved["numpy_rng"]
        torch.set_rng_state(saved["torch_rng"])
        return cls(
            saved["iteration"],
            saved["history"],
            saved["validations"],
            saved["best"],
            saved["best_weights"],
            saved["elapsed"],
        )


class Listener:
    """Receives the loop's events; each method is optional."""

    def stepped(self, loop: TrainingLoop) -> None:
        """After every update (``loop.state.history[-1]`` is its row)."""

    def validating(self, loop: TrainingLoop, done: int, total: int) -> None:
        """While validation episodes are scored on this rank."""

    def validated(self, loop: TrainingLoop, rows: list[dict[str, Any]]) -> None:
        """After a validation: the update rows since the last one, then the validation's own."""

    def saving(self, loop: TrainingLoop) -> None:
        """When the resumable state is due (every validation, and every ``checkpoint_every``)."""

    def diverged(self, loop: TrainingLoop) -> None:
        """Before the loop stops a diverged run (``loop.state.best_weights`` are the best so far)."""


class TrainingLoop:
    """Meta-trains ``algorithm`` from ``state`` to the run's ``iterations``, telling ``listeners``."""

    def __init__(
        self,
        run: PreparedRun,
        algorithm: Algorithm,
        rng: np.random.Generator,
        state: TrainingState,
        listeners: list[Listener],
    ):
        self.run, self.algorithm, self.rng, self.state, self.listeners = run, algorithm, rng, state, listeners
        self.config = run.config
        self.train_split = run.dataset.split("train")
        self.train_bank = ImageBank(self.train_split, run.device)
        self.val_bank = ImageBank(run.dataset.split("val"), run.device)
        self.val_episodes: EpisodeIndices = run.episodes("val")
        self._logged = self.state.validations[-1]["iteration"] if self.state.validations else 0
        self._clock = time.perf_counter()

    def _emit(self, event: str, *args) -> None:
        for listener in self.listeners:
            getattr(listener, event)(self, *args)

    def run_to_end(self) -> TrainingState:
        self._clock = time.perf_counter()
        for iteration in range(self.state.iteration + 1, self.config.iterations + 1):
            self.step(iteration)
            validating = iteration % self.config.val_every == 0 or iteration == self.config.iterations
            if validating:
                self.validate(iteration)
            every = self.config.checkpoint_every
            if validating or (every and iteration % every == 0):
                now = time.perf_counter()
                self.state.elapsed += now - self._clock
                self._clock = now
                self._emit("saving")
        return self.state

    def step(self, iteration: int) -> None:
        """One outer update on a fresh batch of training episodes drawn from the run's generator."""
        indices = sample_indices(self.train_split, self.run.train_spec, self.algorithm.episodes_per_step, self.rng)
        batch = self.train_bank.episodes(indices)
        if self.config.augment != "none":  # draws from rng only when augmenting, so other runs are unchanged
            seed = int(self.rng.integers(2**62))
            batch = augment_episode(batch, self.config.augment, torch.Generator().manual_seed(seed))
        metrics = self.algorithm.meta_train_step(batch)
        self.check_divergence(metrics["loss"], iteration)
        if not finite(self.algorithm.state_dict()):  # a finite loss can come from weights just turned inf
            self.stop(f"a weight became non-finite at iteration {iteration} (loss {metrics['loss']:.4g})")
        seconds = round(self.state.elapsed + time.perf_counter() - self._clock, 3)
        self.state.history.append({"iteration": iteration, **metrics, "seconds": seconds})
        self.state.iteration = iteration
        self._emit("stepped")

    def validate(self, iteration: int) -> None:
        """Score the fixed validation episodes (each rank its share); keep the best weights."""
        share = distributed.shard(len(self.val_episodes))
        done = [0]

        def tick(count: int) -> None:
            done[0] += count
            self._emit("validating", done[0], len(share))

        mine = episode_accuracies(self.algorithm, self.val_bank, self.val_episodes[share.start : share.stop], tick)
        val_accuracy = float(distributed.gather(mine).mean())
        distributed.check_same_weights(self.algorithm.networks().values(), f"at iteration {iteration}")
        record = {"iteration": iteration, "val_accuracy": val_accuracy}
        self.state.validations.append(record)
        rows = self.state.history[self._logged :] + [record]
        self._logged = len(self.state.history)
        if val_accuracy > self.state.best["val_accuracy"] and finite(self.algorithm.state_dict()):
            self.state.best = dict(record)
            self.state.best_weights = copy.deepcopy(self.algorithm.state_dict())
        self._emit("validated", rows)

    def check_divergence(self, loss: float, iteration: int) -> None:
        """Stop a run whose loss is not finite or has exploded; listeners keep the best weights."""
        history = self.state.history
        reference = max(1.0, history[0]["loss"] if history else loss if math.isfinite(loss) else 1.0)
        if math.isfinite(loss) and loss <= min(LOSS_LIMIT, DIVERGENCE_FACTOR * reference):
            return
        what = "became" if not math.isfinite(loss) else "exploded to"
        self.stop(f"training loss {what} {loss:.4g} at iteration {iteration}")

    def stop(self, reason: str) -> None:
        """End a diverged run: listeners keep the best weights, which only finite weights become."""
        self._emit("diverged")
        if self.state.best_weights is not None:
            kept = f"the best checkpoint so far (iteration {self.state.best['iteration']}) is kept as checkpoint.pt"
        else:
            kept = "no checkpoint was saved: it diverged before its first validation"
        raise MetabenchError(f"{reason}; lower the learning rate ({kept})")
