"""Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, ICML 2017), second or first order.

Description:
    The inner loop adapts every parameter of a Conv-4 + linear-head classifier with a few SGD
    steps on the support set; the outer loop updates the initial parameters with Adam to lower
    the query loss *after* adaptation, averaged over a meta-batch of tasks. Second order
    differentiates through the inner steps (``create_graph=True``); first order (FOMAML)
    treats the inner gradients as constants, so the meta-gradient is the query-loss gradient
    at the adapted parameters.

    ``adapt`` and ``query_loss`` are pure functions of a parameter dict, so the maths can be
    tested on its own (finite differences, closed form) without the trainer.

Defaults (paper, Section 5.1 and Appendix A.1, Omniglot 5-way): inner learning rate 0.4, one
inner step in training, meta-batch 32, Adam 1e-3; three steps at test time. Batch norm always
uses the statistics of the batch it sees (``track_running_stats=False``), as the paper does,
which makes evaluation transductive: queries are normalised together.

References:
    Finn et al. 2017, arXiv:1703.03400.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metabench import MetabenchError
from metabench.algorithms.base import Algorithm, BackboneHyper, EpisodeNormalised, episodic_classifier
from metabench.episodes import Episode
from metabench.models.conv4 import Conv4, vmap_safe

Params = dict[str, torch.Tensor]
TASK_BATCHING = ("auto", "loop", "vmap")


@dataclass
class MAMLHyper(BackboneHyper):
    meta_lr: float = 1e-3  # Adam learning rate of the outer loop (paper: 1e-3)
    inner_lr: float = 0.4  # SGD step size of the inner loop (paper, Omniglot: 0.4)
    inner_steps: int = 1  # inner steps while meta-training (paper, Omniglot: 1)
    test_inner_steps: int = 3  # inner steps at evaluation (paper, Omniglot: 3)
    meta_batch: int = 32  # tasks per outer update (paper, Omniglot 5-way: 32)
    first_order: bool = False  # drop second-order terms (FOMAML)
    # first order only: run each task's loss through torch.compile (second order cannot be
    # compiled: it differentiates twice); costs a compilation per process, changes float rounding
    # only; its speed is in README's Benchmarks
    compile: bool = False
    # how a meta-batch's tasks are computed: "loop" (one after another, the fastest on CPU),
    # "vmap" (all at once under torch.func.vmap, for GPUs), "auto" (vmap on CUDA, else loop)
    task_batching: str = "auto"

    def validate(self) -> None:
        if self.task_batching not in TASK_BATCHING:
            raise MetabenchError(f"task_batching must be one of {', '.join(TASK_BATCHING)}, not {self.task_batching!r}")
        if self.compile and self.task_batching == "vmap":
            raise MetabenchError("maml compile: true compiles the per-task loop; use task_batching: loop with it")
        if self.compile and not self.first_order:
            raise MetabenchError(
                "maml compile: true needs first_order: true (torch.compile does not support the "
                "double backward of second-order MAML)"
            )
        if self.inner_steps < 1 or self.test_inner_steps < 1:
            raise MetabenchError("maml needs inner_steps >= 1 and test_inner_steps >= 1")
        if self.inner_lr <= 0 or self.meta_lr <= 0 or self.meta_batch < 1:
            raise MetabenchError("maml needs inner_lr > 0, meta_lr > 0 and meta_batch >= 1")


def loss_and_logits(model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor):
    """Cross-entropy and logits of ``model`` run with the parameters ``params``."""
    logits = functional_call(model, params, (x,))
    return F.cross_entropy(logits, y), logits


def adapt(
    model: nn.Module,
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    lr: float | Params,
    first_order: bool,
    loss_fn=None,
) -> Params:
    """``steps`` SGD steps on the cross-entropy of (x, y), starting from ``params``.

    ``lr`` is one step size, or a tensor per parameter (Meta-SGD's learned rates). With
    ``first_order=False`` the result stays differentiable with respect to ``params`` (and a
    learned ``lr``) through the inner gradients (second-order MAML). ``loss_fn(params, x, y)``
    replaces ``loss_and_logits`` (the compiled fast path).
    """
    loss_fn = loss_fn or partial(loss_and_logits, model)
    for _ in range(steps):
        loss, _ = loss_fn(params, x, y)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=not first_order)
        params = {
            name: p - (lr[name] if isinstance(lr, dict) else lr) * g for (name, p), g in zip(params.items(), grads)
        }
    return params


def query_loss(
    model: nn.Module,
    params: Params,
    task: tuple[torch.Tensor, ...],
    steps: int,
    lr: float | Params,
    first_order: bool,
    loss_fn=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MAML's per-task objective: query loss after adapting on the support; also the logits."""
    support_x, support_y, query_x, query_y = task
    loss_fn = loss_fn or partial(loss_and_logits, model)
    adapted = adapt(model, params, support_x, support_y, steps, lr, first_order, loss_fn)
    return loss_fn(adapted, query_x, query_y)


def batched_query_losses(
    model: nn.Module, params: Params, batch: Episode, steps: int, lr: float | Params, first_order: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``query_loss`` of every task of ``batch`` at once: (E,) losses and (E, queries, ways) logits.

    The tasks run under ``torch.func.vmap`` (one batched kernel per layer instead of one per task,
    which keeps a GPU busy) and the inner gradients come from ``torch.func.grad``; the outer
    gradient is ordinary autograd through both, so ``losses.sum().backward()`` gives the loop's
    meta-gradient (equal in float64, tested). The Conv-4 body runs ``vmap_safe``.
    """

    def task_loss(support_x, support_y, query_x, query_y):
        adapted = params
        for _ in range(steps):
            grads = torch.func.grad(lambda p: loss_and_logits(model, p, support_x, support_y)[0])(adapted)
            if first_order:
                grads = {name: g.detach() for name, g in grads.items()}
            adapted = {
                name: p - (lr[name] if isinstance(lr, dict) else lr) * grads[name] for name, p in adapted.items()
            }
        return loss_and_logits(model, adapted, query_x, query_y)

    with vmap_safe(model):
        return torch.func.vmap(task_loss)(batch.support_x, batch.support_y, batch.query_x, batch.query_y)


def vmaps_tasks(setting: str, device: torch.device, model: nn.Module) -> bool:
    """Whether a meta-batch's tasks run under vmap: ``task_batching`` resolved for the device.

    ``auto`` takes vmap on CUDA only: on a CPU the per-task loop is faster (vmapped convolutions
    become grouped convolutions, slow on CPU; ``benchmarks/README.md`` has the timings). vmap needs the
    Conv-4 body (``vmap_safe``); ``auto`` falls back to the loop for other backbones.
    """
    batchable = isinstance(getattr(model, "body", None), Conv4)
    if setting == "vmap" and not batchable:
        raise MetabenchError("task_batching: vmap needs the conv4 backbone; use task_batching: loop")
    return setting == "vmap" or (setting == "auto" and device.type == "cuda" and batchable)


class MAML(EpisodeNormalised, Algorithm):
    name = "maml"
    version = 1
    release_notes = {1: "Second-order MAML with batch-statistics Conv-4 (Finn et al. 2017), at 806d491."}
    paper = "Finn et al. 2017, Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks"
    adapts = "every weight, by a few SGD steps on the support set (second order)"
    fixed_ways = True
    data_parallel = True  # the meta-batch is split over torchrun ranks (metabench.distributed)
    Hyper = MAMLHyper

    @classmethod
    def training_queries(cls, hyper: MAMLHyper, shots: int, queries: int) -> int:
        """K queries per class, as many as shots: cbfinn/maml ``main.py`` builds tasks with
        ``DataGenerator(update_batch_size * 2, ...)`` and splits each class's 2K images into K
        support and K query (Meta-SGD and ANIL, which inherit this, train the same way)."""
        return shots

    def __init__(self, hyper: MAMLHyper, task, device):
        super().__init__(hyper, task, device)
        if task.train_ways != task.test_ways:
            raise MetabenchError(
                f"{self.name} has a {task.test_ways}-way head; set train_ways equal to ways ({task.test_ways})"
            )
        self.model = episodic_classifier(hyper, task).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=hyper.meta_lr)
        # the meta-training loss; compiled once per process and input shape when asked
        self.train_loss_fn = partial(loss_and_logits, self.model)
        if hyper.compile:
            self.train_loss_fn = torch.compile(self.train_loss_fn, dynamic=False)
        self.vmap_tasks = vmaps_tasks(hyper.task_batching, torch.device(device), self.model) and not hyper.compile

    def networks(self):
        return {"model": self.model}

    def optimizers(self):
        return {"optimizer": self.optimizer}

    def parameters(self) -> Params:
        return dict(self.model.named_parameters())

    def inner_lr(self) -> float | Params:
        """The inner-loop step size: one number here, one tensor per parameter in Meta-SGD."""
        return self.hyper.inner_lr

    def episode_loss(self, task: Episode):
        parts = (task.support_x, task.support_y, task.query_x, task.query_y)
        hyper = self.hyper
        return query_loss(
            self.model,
            self.parameters(),
            parts,
            hyper.inner_steps,
            self.inner_lr(),
            hyper.first_order,
            self.train_loss_fn,
        )

    def batched_episode_losses(self, batch: Episode):
        if not self.vmap_tasks:
            return None
        hyper = self.hyper
        return batched_query_losses(
            self.model, self.parameters(), batch, hyper.inner_steps, self.inner_lr(), hyper.first_order
        )

    def adapted(self, support_x, support_y, ways):
        with torch.enable_grad():
            params = {n: p.detach().requires_grad_() for n, p in self.parameters().items()}
            lr = self.inner_lr()
            lr = {n: v.detach() for n, v in lr.items()} if isinstance(lr, dict) else lr
            adapted = adapt(self.model, params, support_x, support_y, self.hyper.test_inner_steps, lr, True)
        weights = {n: p.detach() for n, p in adapted.items()}
        return lambda x: functional_call(self.model, weights, (x,))


@dataclass
class FOMAMLHyper(MAMLHyper):
    first_order: bool = True  # FOMAML: the inner gradients are treated as constants


class FOMAML(MAML):
    """First-order MAML (Finn et al. 2017, Section 5.2): MAML with ``first_order=True``."""

    name = "fomaml"
    version = 1
    release_notes = {1: "First-order MAML: the inner-loop gradient is not differentiated, at 806d491."}
    adapts = "every weight, by a few SGD steps on the support set (first-order meta-gradient)"
    Hyper = FOMAMLHyper
