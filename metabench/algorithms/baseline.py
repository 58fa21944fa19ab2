"""Baseline and Baseline++ (Chen, Liu, Kira, Wang & Huang, "A Closer Look at Few-shot Classification", ICLR 2019).

Neither is meta-learned. The body and a classifier over *all* training classes are pre-trained
by ordinary supervised learning (Adam 1e-3); at test time the body is frozen, the support set is
embedded once and a fresh head for the episode's classes is fine-tuned on those features
(paper Section 3.1 and their code: SGD lr 0.01, momentum 0.9, dampening 0.9, weight decay
1e-3, mini-batches of 4, 100 epochs).

* ``baseline``: linear heads.
* ``baselinepp``: cosine heads, ``logits = scale · cos(x, w_j)`` (weight-normalised rows), with
  scale 2 for heads of at most 200 classes and 10 otherwise, as in the paper's code.

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
    """``scale · cos(x, w_j)`` for each class j (Baseline++)."""

    def __init__(self, features: int, classes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(classes, features))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        self.scale = 2.0 if classes <= 200 else 10.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).T


def fine_tune_head(
    head: nn.Module, features: torch.Tensor, labels: torch.Tensor, hyper: BaselineHyper, generator: torch.Generator
) -> nn.Module:
    """Fit ``head`` to (features, labels) by mini-batch SGD with momentum, shuffling with ``generator``."""
    optimizer = torch.optim.SGD(
        head.parameters(),
        lr=hyper.finetune_lr,
        momentum=hyper.finetune_momentum,
        dampening=hyper.finetune_dampening,
        weight_decay=hyper.finetune_weight_decay,
    )
    with torch.enable_grad():
        for _ in range(hyper.finetune_epochs):
            order = torch.randperm(len(features), generator=generator).to(features.device)
            for start in range(0, len(features), hyper.finetune_batch):
                batch = order[start : start + hyper.finetune_batch]
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(head(features[batch]), labels[batch]).backward()
                optimizer.step()
    return head


class Baseline(EmbeddingAlgorithm):
    name = "baseline"
    paper = "Chen et al. 2019, A Closer Look at Few-shot Classification (Baseline)"
    adapts = "a new linear head, fine-tuned on frozen support features"
    Hyper = BaselineHyper

    def make_head(self, features: int, classes: int) -> nn.Module:
        return nn.Linear(features, classes)

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
        with torch.random.fork_rng(devices=[]):  # a prediction is a deterministic function of the episode
            torch.manual_seed(0)
            head = self.make_head(self.features, ways).to(support.device, support.dtype)
        generator = torch.Generator().manual_seed(0)
        fine_tune_head(head, support, support_y, self.hyper, generator)
        return head(query)


class BaselinePP(Baseline):
    name = "baselinepp"
    paper = "Chen et al. 2019, A Closer Look at Few-shot Classification (Baseline++)"
    adapts = "a new cosine-similarity head, fine-tuned on frozen support features"

    def make_head(self, features: int, classes: int) -> nn.Module:
        return CosineHead(features, classes)
