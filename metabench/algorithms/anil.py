"""ANIL, Almost No Inner Loop (Raghu, Raghu, Bengio & Vinyals, ICLR 2020).

MAML with the inner loop restricted to the linear head: the support and query images are
embedded once by the body, a few SGD steps adapt only the head on the support features, and the
outer loop updates body and head to lower the query loss after adaptation. The meta-gradient
reaches the body through the features and (second order) through the head's inner gradients.
At test time the body is frozen, so only the head is fine-tuned.

Protocol, as in learn2learn's reference ``examples/vision/anil_fc100.py`` (the code the ANIL
authors' results are usually reproduced with): the head adapts with SGD at ``fast_lr`` 0.1 for
the same ``adapt_steps`` (5) in training, validation and test; training tasks have K queries per
class (``k=2*shots`` split in halves), the MAML family's protocol (``MAML.training_queries``).
MAML's own inner learning rate (0.4) and its 1 training / 3 test steps overshoot on body features
(their norm is about 10 at initialisation), which is why ANIL does not inherit them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call

from metabench import MetabenchError
from metabench.algorithms.maml import MAML, MAMLHyper, Params
from metabench.scoring import TRANSDUCTIVE, statistics_of_leading_rows


@dataclass
class ANILHyper(MAMLHyper):
    inner_lr: float = 0.1  # head SGD step size (learn2learn anil_fc100.py: fast_lr=0.1)
    inner_steps: int = 5  # head steps in training (anil_fc100.py: adapt_steps=5)
    test_inner_steps: int = 5  # the same steps at validation and test (anil_fc100.py)


def adapt_head(weight, bias, features, labels, steps: int, lr: float, first_order: bool):
    """SGD on the head (``weight``, ``bias``) alone, on fixed ``features``."""
    for _ in range(steps):
        loss = F.cross_entropy(F.linear(features, weight, bias), labels)
        grad_w, grad_b = torch.autograd.grad(loss, (weight, bias), create_graph=not first_order)
        weight, bias = weight - lr * grad_w, bias - lr * grad_b
    return weight, bias


def anil_query_loss(model, params: Params, task, steps: int, lr: float, first_order: bool):
    """ANIL's per-task objective for a ``Classifier`` run with ``params``: query loss, logits."""
    support_x, support_y, query_x, query_y = task
    body = {name.removeprefix("body."): p for name, p in params.items() if name.startswith("body.")}
    features = functional_call(model.body, body, (torch.cat([support_x, query_x]),))
    support, query = features[: len(support_x)], features[len(support_x) :]
    weight, bias = adapt_head(params["head.weight"], params["head.bias"], support, support_y, steps, lr, first_order)
    logits = F.linear(query, weight, bias)
    return F.cross_entropy(logits, query_y), logits


class ANIL(MAML):
    name = "anil"
    version = 1
    release_notes = {1: "Adapts only the linear head in the inner loop (Raghu et al. 2020), at 806d491."}
    paper = "Raghu et al. 2020, Rapid Learning or Feature Reuse? Towards Understanding the Effectiveness of MAML"
    adapts = "only the linear head, by a few SGD steps on the support features"
    Hyper = ANILHyper

    def __init__(self, hyper: ANILHyper, task, device):
        if hyper.compile:  # its inner loop runs on cached body features, not the compiled task loss
            raise MetabenchError("anil has no compiled path; remove compile: true from its hyper-parameters")
        if hyper.task_batching == "vmap":  # its inner loop is on the head alone: the loop is cheap everywhere
            raise MetabenchError("anil has no vmap path; use task_batching: loop or auto")
        super().__init__(hyper, task, device)
        self.vmap_tasks = False

    def episode_loss(self, task):
        parts = (task.support_x, task.support_y, task.query_x, task.query_y)
        hyper = self.hyper
        return anil_query_loss(
            self.model, self.parameters(), parts, hyper.inner_steps, hyper.inner_lr, hyper.first_order
        )

    def predict_modes(self, support_x, support_y, query_x, ways, modes):
        """Transductive: support and queries embedded as one batch (the features the head adapts
        on see the queries too). Inductive: every image normalised with the support set's
        statistics, which leaves the support features those of the support set alone."""
        logits = {}
        for mode in modes:
            together = (
                contextlib.nullcontext()
                if mode == TRANSDUCTIVE
                else statistics_of_leading_rows([self.model], len(support_x))
            )
            with torch.no_grad(), together:
                features = self.model.body(torch.cat([support_x, query_x]))
            support, query = features[: len(support_x)], features[len(support_x) :]
            with torch.enable_grad():
                weight = self.model.head.weight.detach().requires_grad_()
                bias = self.model.head.bias.detach().requires_grad_()
                weight, bias = adapt_head(
                    weight, bias, support, support_y, self.hyper.test_inner_steps, self.hyper.inner_lr, True
                )
            logits[mode] = F.linear(query, weight.detach(), bias.detach())
        return logits
