"""Baseline and Baseline++ (Chen, Liu, Kira, Wang & Huang, "A Closer Look at Few-shot Classification", ICLR 2019).

Neither is meta-learned. The body and a classifier over *all* training classes are pre-trained
by ordinary supervised learning (Adam 1e-3); at test time the body is frozen, the support set is
embedded once and a fresh head for the episode's classes is fine-tuned on those features
(paper Section 3.1 and their code: SGD lr 0.01, momentum 0.9, dampening 0.9, weight decay
1e-3, mini-batches of 4, 100 epochs).

* ``baseline``: linear heads.
* ``baselinepp``: cosine heads, ``logits = scale · g_j · cos(x, v_j)``, with scale 2 for heads of
  at most 200 classes and 10 otherwise, and a learnable norm ``g_j`` per class: the paper's code
  (CloserLookFewShot ``backbone.py``, ``distLinear``) applies ``WeightNorm(dim=0)`` to the head,
  ``class_wise_learnable_norm = True``, so each class's weight is ``g_j · v_j / ||v_j||`` with
  ``g_j`` initialised to ``||v_j||`` (that repository's issues #4 and #8). ``class_norm: false``
  gives the plain cosine head of the paper's equation.

Pre-training batches are the training episodes' images with their split-level class labels
(``train_ways`` classes × (shots + queries) images per batch) instead of uniformly shuffled
images: the same data stream every algorithm sees, at the cost of class-balanced batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from metabench import MetabenchError
from metabench.algorithms.base import BackboneHyper, EmbeddingAlgorithm, build_body


@dataclass
class BaselineHyper(BackboneHyper):
    lr: float = 1e-3  # Adam learning rate of pre-training (paper: 1e-3)
    train_ways: int = 0  # classes per pre-training batch; 0: same as test ways
    finetune_lr: float = 0.01  # SGD of the new head on the support set (paper's code: 0.01)
    finetune_momentum: float = 0.9
    finetune_dampening: float = 0.9
    finetune_weight_decay: float = 1e-3
    finetune_batch: int = 4  # support images per fine-tuning step (paper's code: 4)
    finetune_epochs: int = 100  # passes over the support set (paper's code: 100)

    def validate(self) -> None:
        if self.lr <= 0 or self.finetune_lr <= 0 or self.finetune_batch < 1 or self.finetune_epochs < 1:
            raise MetabenchError("baseline needs lr > 0, finetune_lr > 0, finetune_batch >= 1, finetune_epochs >= 1")


class CosineHead(nn.Module):
    """``scale · g_j · cos(x, v_j)`` for each class j (Baseline++): ``weight`` holds the directions
    v (``nn.Linear``'s initialisation), ``norm`` the per-class norms g, initialised to ``||v_j||``
    as ``WeightNorm`` does; without ``class_norm``, g is fixed at 1 (no parameter)."""

    def __init__(self, features: int, classes: int, class_norm: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(classes, features))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        self.norm = nn.Parameter(self.weight.detach().norm(dim=1).clone()) if class_norm else None
        self.scale = cosine_scale(classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cosine_logits(x, self.weight, self.scale, self.norm)


def cosine_scale(classes: int) -> float:
    """The paper's code: scale 2 for heads of at most 200 classes, 10 for larger ones."""
    return 2.0 if classes <= 200 else 10.0


def cosine_logits(
    x: torch.Tensor, weight: torch.Tensor, scale: float, norm: torch.Tensor | None = None
) -> torch.Tensor:
    """``scale · g_j · cos(x_i, w_j)`` (g = 1 without ``norm``); batched over leading dimensions
    (x (…, n, F), weight (…, C, F), norm (…, C))."""
    cosines = F.normalize(x, dim=-1) @ F.normalize(weight, dim=-1).transpose(-1, -2)
    return scale * (cosines if norm is None else cosines * norm.unsqueeze(-2))


def linear_logits(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``x Wᵀ + b`` batched over episodes: x (E, n, F), weight (E, C, F), bias (E, C)."""
    return torch.baddbmm(bias[:, None, :], x, weight.transpose(1, 2))


def fine_tune_heads(
    head: nn.Module,
    forward,
    features: torch.Tensor,
    labels: torch.Tensor,
    hyper: BaselineHyper,
    generator: torch.Generator,
) -> list[torch.Tensor]:
    """Fit one copy of ``head`` per episode to (features (E, n, F), labels (n,)) by mini-batch
    SGD with momentum, every episode visiting its support images in the same shuffled order;
    return the episodes' head parameters, each (E, …).

    The episodes' losses are summed: each copy's gradient is its own episode's, and SGD's
    update is elementwise, so each episode is fitted exactly as alone (the paper's code fits
    one head per episode; all at once, the 100 epochs are 700 steps instead of 70,000 per
    100 episodes)."""
    episodes = len(features)
    weights = [p.detach()[None].repeat(episodes, *([1] * p.dim())).requires_grad_() for p in head.parameters()]
    optimizer = torch.optim.SGD(
        weights,
        lr=hyper.finetune_lr,
        momentum=hyper.finetune_momentum,
        dampening=hyper.finetune_dampening,
        weight_decay=hyper.finetune_weight_decay,
    )
    with torch.enable_grad():
        for _ in range(hyper.finetune_epochs):
            order = torch.randperm(features.shape[1], generator=generator).to(features.device)
            for start in range(0, features.shape[1], hyper.finetune_batch):
                batch = order[start : start + hyper.finetune_batch]
                optimizer.zero_grad(set_to_none=True)
                logits = forward(features[:, batch], *weights)
                losses = F.cross_entropy(logits.flatten(0, 1), labels[batch].repeat(episodes), reduction="none")
                losses.view(episodes, -1).mean(1).sum().backward()
                optimizer.step()
    return [w.detach() for w in weights]


class Baseline(EmbeddingAlgorithm):
    name = "baseline"
    version = 1
    release_notes = {
        1: "Pre-trains a linear head over the training classes, fine-tunes a new head per episode (Chen et al. 2019), at 806d491."
    }
    paper = "Chen et al. 2019, A Closer Look at Few-shot Classification (Baseline)"
    adapts = "a new linear head, fine-tuned on frozen support features"
    Hyper = BaselineHyper

    def make_head(self, features: int, classes: int) -> nn.Module:
        return nn.Linear(features, classes)

    def head_logits(self, x: torch.Tensor, *weights: torch.Tensor) -> torch.Tensor:
        """The head's logits, batched over episodes, from its parameters in ``make_head``'s order."""
        return linear_logits(x, *weights)

    def __init__(self, hyper: BaselineHyper, task, device):
        super().__init__(hyper, task, device)
        if task.train_classes < 2:
            raise MetabenchError(f"{self.name} pre-trains on all training classes but was told of {task.train_classes}")
        self.body = build_body(hyper, task, track_running_stats=True)
        self.features = self.body.out_features(task.image_size)
        self.net = nn.Sequential(self.body, self.make_head(self.features, task.train_classes)).to(device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=hyper.lr)

    def networks(self):
        return {"net": self.net}

    def optimizers(self):
        return {"optimizer": self.optimizer}

    def episode_loss(self, task):
        if task.classes is None:
            raise MetabenchError(f"{self.name} needs the episodes' split-level class ids to pre-train")
        logits = self.net(torch.cat([task.support_x, task.query_x]))
        labels = task.classes[torch.cat([task.support_y, task.query_y])]
        episode_logits = logits[len(task.support_x) :, task.classes]  # the queries, among the episode's classes
        return F.cross_entropy(logits, labels), episode_logits

    def embed(self, x):
        return self.body(x)

    def predict_embedded(self, support, support_y, query, ways):
        return self.predict_embedded_episodes(support[None], support_y, query[None], ways)[0]

    def predict_embedded_episodes(self, support, support_y, query, ways):
        # a prediction is a deterministic function of the episode: the same initial head and
        # shuffling for every episode, whichever others it is scored with
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            head = self.make_head(self.features, ways).to(support.device, support.dtype)
        generator = torch.Generator().manual_seed(0)
        weights = fine_tune_heads(head, self.head_logits, support, support_y, self.hyper, generator)
        return self.head_logits(query, *weights)


@dataclass
class BaselinePPHyper(BaselineHyper):
    # a learnable norm per class on the cosine head (CloserLookFewShot backbone.py distLinear:
    # WeightNorm(dim=0), class_wise_learnable_norm = True); false: the plain cosine head
    class_norm: bool = True


class BaselinePP(Baseline):
    name = "baselinepp"
    version = 1
    release_notes = {1: "Baseline with a cosine-similarity head (Chen et al. 2019), at 806d491."}
    paper = "Chen et al. 2019, A Closer Look at Few-shot Classification (Baseline++)"
    adapts = "a new cosine-similarity head, fine-tuned on frozen support features"
    Hyper = BaselinePPHyper

    def make_head(self, features: int, classes: int) -> nn.Module:
        return CosineHead(features, classes, self.hyper.class_norm)

    def head_logits(self, x: torch.Tensor, *weights: torch.Tensor) -> torch.Tensor:
        weight, *norm = weights  # the direction, then the class norms (with class_norm)
        return cosine_logits(x, weight, cosine_scale(weight.shape[-2]), *norm)
