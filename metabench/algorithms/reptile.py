"""Reptile (Nichol, Achiam & Schulman, arXiv:1803.02999, 2018).

For each task of the meta-batch, start from the initial weights θ and take ``inner_steps`` plain
SGD steps on the task's images (support and query together: Reptile has no support/query split
in training), each step on a different mini-batch of ``inner_batch`` images, reaching φ_i.
Training tasks hold ``train_shots`` images per class whatever the test shots (the authors'
openai/supervised-reptile ``run_omniglot.py`` flags ``--train-shots 10 --inner-batch 10
--inner-iters 5`` for 5-way Omniglot; mini-batches are drawn as its ``_mini_batches`` does,
consecutive slices of reshuffled passes). Different mini-batches per step are what give Reptile
its gradient-alignment term (paper, Section 5); full-batch steps on one tiny task remove it. The outer update moves θ towards the adapted weights:

* batched (the paper's Algorithm 2): θ ← θ + ε (mean_i φ_i − θ);
* serial (Algorithm 1, ``serial: true``): for each task in turn, θ ← θ + ε (φ_i − θ), the next
  task starting from the moved θ.

It is implemented as an SGD step of size ε on the pseudo-gradient θ − φ, with ε annealed
linearly to ``outer_lr_final`` over ``anneal_iterations`` (paper, Table 3: ε from 1.0 to 0).
No second derivatives are used. Test time: ``test_inner_steps`` SGD steps on the support set
(paper: 50), on the whole support set. Deviation: the paper's inner optimiser is Adam with
β₁ = 0 (lr 1e-3); here the inner loop is SGD, so the update has the closed form the tests check.
Batch norm normalises with batch statistics, as in the paper's transductive setting.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call

from metabench import MetabenchError, distributed
from metabench.algorithms.base import Algorithm, BackboneHyper, EpisodeNormalised, episodic_classifier
from metabench.algorithms.maml import Params, adapt
from metabench.episodes import Episode


@dataclass
class ReptileHyper(BackboneHyper):
    inner_lr: float = 0.1  # SGD step size of the inner loop (paper: Adam 1e-3; see module docstring)
    inner_steps: int = 5  # inner steps per task in training (paper, Omniglot: 5)
    test_inner_steps: int = 50  # inner steps at evaluation (paper: 50)
    outer_lr: float = 1.0  # ε at the start (paper: 1.0)
    outer_lr_final: float = 0.0  # ε at the end of annealing (paper: 0)
    anneal_iterations: int = 100_000  # meta-steps over which ε decays linearly (paper: 100,000)
    meta_batch: int = 5  # tasks per outer update (paper, Omniglot: 5)
    serial: bool = False  # Algorithm 1 (one outer step per task) instead of the batched Algorithm 2
    train_shots: int = 10  # images per class of a training task (reference --train-shots 10)
    inner_batch: int = 10  # images per inner step, a new mini-batch each step (reference: 10); 0: all

    def validate(self) -> None:
        if self.inner_steps < 1 or self.test_inner_steps < 1 or self.meta_batch < 1 or self.anneal_iterations < 1:
            raise MetabenchError("reptile needs inner_steps, test_inner_steps, meta_batch and anneal_iterations >= 1")
        if self.inner_lr <= 0 or self.outer_lr <= 0 or not 0 <= self.outer_lr_final <= self.outer_lr:
            raise MetabenchError("reptile needs inner_lr > 0 and 0 <= outer_lr_final <= outer_lr")
        if self.train_shots < 2 or self.inner_batch < 0:
            raise MetabenchError("reptile needs train_shots >= 2 and inner_batch >= 0")


def mini_batches(count: int, size: int, batches: int) -> list[torch.Tensor]:
    """``batches`` index sets of ``size`` out of ``count``: consecutive slices of reshuffled
    passes (a batch may span two passes), from torch's generator (saved with a run's state)."""
    if size == 0 or size >= count:
        return [torch.arange(count)] * batches
    passes = -(-size * batches // count)
    order = torch.cat([torch.randperm(count) for _ in range(passes)])
    return list(order[: size * batches].split(size))


def inner_sgd(
    model, params: Params, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float, batch: int = 0, rows=None
) -> Params:
    """Plain SGD from ``params`` (no graph kept), one step per mini-batch: Reptile's φ.
    ``rows``: the mini-batches' indices, drawn beforehand (``mini_batches``), else drawn here."""
    with torch.enable_grad():
        adapted = {name: p.detach().requires_grad_() for name, p in params.items()}
        for chosen in rows if rows is not None else mini_batches(len(x), batch, steps):
            adapted = adapt(model, adapted, x[chosen], y[chosen], 1, lr, first_order=True)
            adapted = {name: p.detach().requires_grad_() for name, p in adapted.items()}
    return {name: p.detach() for name, p in adapted.items()}


class Reptile(EpisodeNormalised, Algorithm):
    name = "reptile"
    version = 1
    release_notes = {1: "Reptile with inner mini-batches of train_shots images (Nichol et al. 2018), at 806d491."}
    paper = "Nichol et al. 2018, On First-Order Meta-Learning Algorithms"
    adapts = "every weight, by many SGD steps on the support set (first order, no second derivatives)"
    fixed_ways = True
    data_parallel = True  # the batched update (not ``serial``) is split over torchrun ranks
    Hyper = ReptileHyper

    @classmethod
    def splits_meta_batch(cls, hyper: ReptileHyper) -> bool:
        return not hyper.serial  # Algorithm 1's tasks depend on each other's outer steps

    def __init__(self, hyper: ReptileHyper, task, device):
        super().__init__(hyper, task, device)
        if task.train_ways != task.test_ways:
            raise MetabenchError(f"reptile has a {task.test_ways}-way head; set train_ways equal to ways")
        self.model = episodic_classifier(hyper, task).to(device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=hyper.outer_lr)
        self.scheduler = torch.optim.lr_scheduler.LinearLR(
            self.optimizer, 1.0, hyper.outer_lr_final / hyper.outer_lr, total_iters=hyper.anneal_iterations
        )

    def networks(self):
        return {"model": self.model}

    def optimizers(self):
        return {"optimizer": self.optimizer, "scheduler": self.scheduler}

    @classmethod
    def training_queries(cls, hyper: ReptileHyper, shots: int, queries: int) -> int:
        return max(1, hyper.train_shots - shots)  # support + query = train_shots images per class

    def _outer_step(self, adapted: list[Params], tasks: int) -> None:
        """SGD of size ε on θ − mean(φ): θ ← θ + ε (mean φ − θ); the mean over ``tasks`` tasks,
        ``adapted`` being this rank's share of them (``distributed.mean_over_ranks``)."""
        params = dict(self.model.named_parameters())
        flat = [torch.cat([phi[name].reshape(-1) for name in params]) for phi in adapted]
        means = distributed.mean_over_ranks(flat, tasks).split([p.numel() for p in params.values()])
        for p, mean in zip(params.values(), means):
            p.grad = p.detach() - mean.view_as(p).to(p.dtype)
        self.optimizer.step()

    def meta_train_step(self, batch: Episode) -> dict[str, float]:
        self.train(True)
        size = batch.support_x.shape[1] + batch.query_x.shape[1]
        # every task's mini-batches, in task order, from the generator every rank holds alike
        rows = [mini_batches(size, self.hyper.inner_batch, self.hyper.inner_steps) for _ in range(len(batch))]
        adapted, losses = [], []
        for index in range(len(batch)) if self.hyper.serial else distributed.shard(len(batch)):
            task = batch.task(index)
            x = torch.cat([task.support_x, task.query_x])
            y = torch.cat([task.support_y, task.query_y])
            with torch.no_grad():
                losses.append(F.cross_entropy(self.model(x), y))
            params = dict(self.model.named_parameters())
            hyper = self.hyper
            adapted.append(inner_sgd(self.model, params, x, y, hyper.inner_steps, hyper.inner_lr, rows=rows[index]))
            if self.hyper.serial:
                self._outer_step(adapted, 1)
                adapted = []
        if adapted:
            self._outer_step(adapted, len(batch))
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        # the loss before adaptation on the task's own images: how well θ itself fits a new task
        loss = distributed.mean_over_ranks(losses, len(batch))
        return {"loss": loss.item(), "outer_lr": self.scheduler.get_last_lr()[0]}

    def adapted(self, support_x, support_y, ways):
        weights = inner_sgd(
            self.model,
            dict(self.model.named_parameters()),
            support_x,
            support_y,
            self.hyper.test_inner_steps,
            self.hyper.inner_lr,
        )
        return lambda x: functional_call(self.model, weights, (x,))
