"""MetaOptNet (Lee, Maji, Ravichandran & Soatto, CVPR 2019) with the ridge (R2-D2) or SVM head.

The body embeds the episode; a linear classifier is fitted to the support features *inside* the
forward pass by a convex solver, and the query loss is back-propagated through the solution
into the body:

* ``head: ridge``: ridge regression onto one-hot labels (R2-D2, Bertinetto et al., ICLR 2019),
  solved in the dual, ``W = Xᵀ (X Xᵀ + λI)⁻¹ Y``, exact and differentiable (λ = 50 as in
  MetaOptNet's code).
* ``head: svm``: the Crammer-Singer multi-class SVM (paper Eq. 3-4, C = 0.1), solved in the dual
  by accelerated projected gradient ascent (FISTA) for ``svm_iterations`` steps and
  differentiated through the unrolled iterations. Deviation: the paper uses a differentiable
  interior-point QP solver (qpth); the unrolled solver reaches the same optimum (tested against
  a generic constrained solver) and its gradient approaches the implicit one as it converges.

Logits are ``scale · (query features) Wᵀ`` with a learned scale (init 1), trained with label
smoothing 0.1 (paper's code). Deviation: Conv-4 by default, not the paper's ResNet-12.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from metabench import MetabenchError
from metabench.algorithms.base import BackboneHyper, EmbeddingAlgorithm, build_body


@dataclass
class MetaOptNetHyper(BackboneHyper):
    head: str = "svm"  # svm (MetaOptNet-SVM) or ridge (MetaOptNet-RR / R2-D2)
    lr: float = 1e-3  # Adam learning rate (paper: SGD with Nesterov momentum on ResNet-12)
    meta_batch: int = 1
    train_ways: int = 0  # ways of training episodes; 0: same as test
    ridge_lambda: float = 50.0  # λ of the ridge head (paper's code: 50)
    svm_c: float = 0.1  # C of the SVM head (paper's code: 0.1)
    svm_iterations: int = 50  # unrolled FISTA iterations of the SVM dual
    label_smoothing: float = 0.1  # paper's code: 0.1

    def validate(self) -> None:
        if self.head not in ("svm", "ridge"):
            raise MetabenchError(f"metaoptnet.head must be svm or ridge, got {self.head!r}")
        if min(self.lr, self.ridge_lambda, self.svm_c) <= 0 or self.svm_iterations < 1 or self.meta_batch < 1:
            raise MetabenchError("metaoptnet needs lr, ridge_lambda, svm_c > 0 and svm_iterations, meta_batch >= 1")


def ridge_weights(support: torch.Tensor, one_hot: torch.Tensor, lam: float) -> torch.Tensor:
    """argmin_W ||X Wᵀ − Y||² + λ||W||², via the n×n dual system: (ways, D)."""
    gram = support @ support.T
    eye = torch.eye(len(support), dtype=support.dtype, device=support.device)
    return (support.T @ torch.linalg.solve(gram + lam * eye, one_hot)).T


def project_simplex(values: torch.Tensor, total: float) -> torch.Tensor:
    """Euclidean projection of each row onto {x ≥ 0, Σx = total} (Duchi et al. 2008)."""
    ordered, _ = values.sort(dim=1, descending=True)
    cumulative = ordered.cumsum(dim=1) - total
    ranks = torch.arange(1, values.shape[1] + 1, dtype=values.dtype, device=values.device)
    active = (ordered - cumulative / ranks) > 0
    count = active.sum(dim=1, keepdim=True)  # ≥ 1: the largest entry is always active
    threshold = cumulative.gather(1, count - 1) / count.to(values.dtype)
    return (values - threshold).clamp_min(0)


def svm_weights(support: torch.Tensor, one_hot: torch.Tensor, c: float, iterations: int) -> torch.Tensor:
    """Crammer-Singer SVM weights (ways, D) from its dual, by FISTA.

    Dual: max_A  −½ tr(Aᵀ K A) + ⟨A, Y⟩  s.t.  A_i ≤ C·Y_i,  Σ_m A_im = 0, with K = X Xᵀ and
    W = Aᵀ X. Substituting B = C·Y − A makes each row of B a point of the simplex scaled by C.
    """
    gram = support @ support.T
    step = 1.0 / torch.linalg.eigvalsh(gram.detach())[-1].clamp_min(1e-12)
    dual = torch.zeros_like(one_hot)
    previous, momentum = dual, dual
    t = 1.0
    for _ in range(iterations):
        ascended = momentum + step * (one_hot - gram @ momentum)
        dual = c * one_hot - project_simplex(c * one_hot - ascended, c)
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        momentum = dual + ((t - 1) / t_next) * (dual - previous)
        previous, t = dual, t_next
    return dual.T @ support


class MetaOptNet(EmbeddingAlgorithm):
    name = "metaoptnet"
    version = 1
    release_notes = {1: "MetaOptNet ridge and SVM heads (Lee et al. 2019), at 806d491."}
    paper = "Lee et al. 2019, Meta-Learning with Differentiable Convex Optimization"
    adapts = "a linear head solved in closed form (ridge) or by a convex SVM solver on the support features"
    Hyper = MetaOptNetHyper

    def __init__(self, hyper: MetaOptNetHyper, task, device):
        super().__init__(hyper, task, device)
        self.net = nn.Module()
        self.net.body = build_body(hyper, task, track_running_stats=True)
        self.net.scale = nn.Parameter(torch.ones(()))  # learned temperature of the logits
        self.net.to(device)
        self.body = self.net.body
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=hyper.lr)

    def networks(self):
        return {"net": self.net}

    def optimizers(self):
        return {"optimizer": self.optimizer}

    def logits(self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor, ways: int) -> torch.Tensor:
        one_hot = F.one_hot(support_y, ways).to(support.dtype)
        if self.hyper.head == "ridge":
            weights = ridge_weights(support, one_hot, self.hyper.ridge_lambda)
        else:
            weights = svm_weights(support, one_hot, self.hyper.svm_c, self.hyper.svm_iterations)
        return self.net.scale * (query @ weights.T)

    def query_loss(self, scores, query_y):
        return F.cross_entropy(scores, query_y, label_smoothing=self.hyper.label_smoothing)

    def embed(self, x):
        return self.body(x)

    def predict_embedded(self, support, support_y, query, ways):
        return self.logits(support, support_y, query, ways)
