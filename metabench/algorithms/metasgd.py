"""Meta-SGD (Li, Zhou, Chen & Li, arXiv:1707.09835, 2017): MAML with learned per-parameter step sizes.

The inner update is ``θ' = θ − α ⊙ ∇L_support(θ)`` where ``α`` has the shape of ``θ`` and is
meta-learned together with ``θ`` by the outer loop (second order: the meta-gradient flows into
``α`` through the inner step). Defaults follow the paper's Omniglot setting (Section 4.1): one
inner step, ``α`` initialised uniformly in [0.005, 0.1], Adam 1e-3 on (θ, α), meta-batch 32.
At test time the same single learned step is taken (``test_inner_steps`` 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from metabench import MetabenchError
from metabench.algorithms.maml import MAML, MAMLHyper, Params


@dataclass
class MetaSGDHyper(MAMLHyper):
    inner_steps: int = 1  # paper: one learned step
    test_inner_steps: int = 1  # paper: the same single step at test time
    lr_init_low: float = 0.005  # α ~ U[low, high] at initialisation (paper: [0.005, 0.1])
    lr_init_high: float = 0.1

    def validate(self) -> None:
        super().validate()
        if not 0 <= self.lr_init_low <= self.lr_init_high:
            raise MetabenchError("metasgd needs 0 <= lr_init_low <= lr_init_high")


class MetaSGD(MAML):
    name = "metasgd"
    version = 1
    release_notes = {1: "Meta-SGD: meta-learned per-parameter inner learning rates (Li et al. 2017), at 806d491."}
    paper = "Li et al. 2017, Meta-SGD: Learning to Learn Quickly for Few-Shot Learning"
    adapts = "every weight, by one step with a learned step size per weight"
    Hyper = MetaSGDHyper

    def __init__(self, hyper: MetaSGDHyper, task, device):
        super().__init__(hyper, task, device)
        rates = [torch.empty_like(p).uniform_(hyper.lr_init_low, hyper.lr_init_high) for p in self.model.parameters()]
        self.rates = nn.ParameterList(rates).to(device)
        self.optimizer = torch.optim.Adam([*self.model.parameters(), *self.rates], lr=hyper.meta_lr)

    def networks(self):
        return {"model": self.model, "rates": self.rates}

    def optimizers(self):
        return {"optimizer": self.optimizer}

    def inner_lr(self) -> Params:
        return dict(zip(self.parameters(), self.rates))
