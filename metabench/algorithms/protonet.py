"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017).

Each class is represented by the mean embedding of its support images (its prototype); a
query's logits are the negative squared Euclidean distances to the prototypes. Nothing is
adapted at test time. Training follows the paper: Adam, learning rate 1e-3 halved every 2,000
episodes, one episode per update, often with more ways than at test time (60-way for Omniglot,
Table 1 / Section 3.1), which the run config sets with ``train_ways``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from metabench import MetabenchError
from metabench.algorithms.base import BackboneHyper, EmbeddingAlgorithm, build_body


@dataclass
class ProtoNetHyper(BackboneHyper):
    lr: float = 1e-3  # Adam learning rate (paper: 1e-3)
    lr_halve_every: int = 2000  # halve the learning rate every this many updates (paper: 2,000)
    meta_batch: int = 1  # episodes per update (paper: 1)
    train_ways: int = 0  # ways of training episodes; 0: same as test (paper, Omniglot: 60)

    def validate(self) -> None:
        if self.lr <= 0 or self.meta_batch < 1 or self.lr_halve_every < 1 or self.train_ways < 0:
            raise MetabenchError("protonet needs lr > 0, meta_batch >= 1, lr_halve_every >= 1 and train_ways >= 0")


def prototypes(embeddings: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """Mean embedding per class: (ways, D), or (E, ways, D) for embeddings of E episodes (E, n, D)."""
    one_hot = F.one_hot(labels, ways).to(embeddings.dtype)
    return (one_hot.T @ embeddings) / one_hot.sum(0, keepdim=True).T


def prototype_logits(support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor, ways: int) -> torch.Tensor:
    """Negative squared Euclidean distance from each query embedding to each prototype (batched over
    leading episode dimensions like ``prototypes``)."""
    centres = prototypes(support, support_y, ways)
    return -torch.cdist(query, centres).pow(2)


class ProtoNet(EmbeddingAlgorithm):
    name = "protonet"
    version = 1
    release_notes = {1: "Prototypical Networks with squared Euclidean distance (Snell et al. 2017), at 806d491."}
    paper = "Snell et al. 2017, Prototypical Networks for Few-shot Learning"
    adapts = "nothing: class prototypes are support-set means in a learned embedding"
    Hyper = ProtoNetHyper

    def __init__(self, hyper: ProtoNetHyper, task, device):
        super().__init__(hyper, task, device)
        self.body = build_body(hyper, task, track_running_stats=True).to(device)
        self.optimizer = torch.optim.Adam(self.body.parameters(), lr=hyper.lr)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=hyper.lr_halve_every, gamma=0.5)

    def networks(self):
        return {"body": self.body}

    def optimizers(self):
        return {"optimizer": self.optimizer, "scheduler": self.scheduler}

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def predict_embedded(self, support, support_y, query, ways):
        return prototype_logits(support, support_y, query, ways)

    predict_embedded_episodes = predict_embedded  # prototype_logits is batched over episodes
