"""Relation Networks (Sung, Yang, Zhang, Xiang, Torr & Hospedales, CVPR 2018).

An embedding module (Conv-4 with max-pooling in the first two blocks only, so feature maps keep
their spatial extent) embeds every image; a class is represented by the element-wise *sum* of
its support feature maps (K-shot, paper Section 3.2). Each (class, query) pair is concatenated
along channels and scored by a learned relation module (two conv blocks with pooling, then
fully connected layers to 8 units and to one sigmoid output). Training regresses the scores
onto the one-hot match with mean squared error (paper, Eq. 3), Adam 1e-3. Deviation: all
convolutions are padded, so the same module fits 28×28 and 84×84 inputs; the paper's Omniglot
network leaves the first two unpadded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from metabench import MetabenchError
from metabench.algorithms.base import BackboneHyper, EmbeddingAlgorithm
from metabench.models import Conv4
from metabench.models.conv4 import conv_block


@dataclass
class RelationNetHyper(BackboneHyper):
    lr: float = 1e-3  # Adam learning rate (paper: 1e-3)
    lr_halve_every: int = 100_000  # halve the learning rate every this many updates (paper: 100,000)
    meta_batch: int = 1
    train_ways: int = 0  # ways of training episodes; 0: same as test
    relation_hidden: int = 8  # width of the relation module's fully connected layer (paper: 8)

    def validate(self) -> None:
        if self.backbone != "conv4":
            raise MetabenchError("relationnet needs backbone conv4 (its embedding keeps feature maps)")
        if self.lr <= 0 or self.meta_batch < 1 or self.train_ways < 0 or self.relation_hidden < 1:
            raise MetabenchError("relationnet needs lr > 0, meta_batch >= 1, train_ways >= 0, relation_hidden >= 1")


class RelationModule(nn.Module):
    """g_φ: a pair's concatenated feature maps → relation score in (0, 1)."""

    def __init__(self, hidden: int, size: int, fc_hidden: int):
        super().__init__()
        self.blocks = nn.Sequential(conv_block(2 * hidden, hidden, True), conv_block(hidden, hidden, True))
        out = (size // 2) // 2
        if out < 1:
            raise MetabenchError(f"relationnet: {size}x{size} feature maps are too small for two poolings")
        self.fc = nn.Sequential(nn.Linear(hidden * out * out, fc_hidden), nn.ReLU(), nn.Linear(fc_hidden, 1))

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(self.blocks(pairs).flatten(1))).squeeze(1)


def pair_up(class_maps: torch.Tensor, query_maps: torch.Tensor) -> torch.Tensor:
    """All (query, class) pairs as channel concatenations [class, query]: (Q*N, 2C, H, W), query-major."""
    queries, ways = len(query_maps), len(class_maps)
    left = class_maps.unsqueeze(0).expand(queries, -1, -1, -1, -1)
    right = query_maps.unsqueeze(1).expand(-1, ways, -1, -1, -1)
    return torch.cat([left, right], dim=2).flatten(0, 1)


def class_sums(support_maps: torch.Tensor, support_y: torch.Tensor, ways: int) -> torch.Tensor:
    """Element-wise sum of each class's support feature maps: (ways, C, H, W)."""
    one_hot = F.one_hot(support_y, ways).to(support_maps.dtype)
    return torch.einsum("sn,schw->nchw", one_hot, support_maps)


class RelationNet(EmbeddingAlgorithm):
    name = "relationnet"
    paper = "Sung et al. 2018, Learning to Compare: Relation Network for Few-Shot Learning"
    adapts = "nothing: a learned relation module scores each (class, query) pair"
    Hyper = RelationNetHyper

    def __init__(self, hyper: RelationNetHyper, task, device):
        super().__init__(hyper, task, device)
        self.body = Conv4(task.channels, hyper.hidden, pooled=2, flatten=False).to(device)
        self.relation = RelationModule(hyper.hidden, self.body.out_size(task.image_size), hyper.relation_hidden).to(
            device
        )
        self.optimizer = torch.optim.Adam([*self.body.parameters(), *self.relation.parameters()], lr=hyper.lr)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=hyper.lr_halve_every, gamma=0.5)

    def networks(self):
        return {"body": self.body, "relation": self.relation}

    def optimizers(self):
        return {"optimizer": self.optimizer, "scheduler": self.scheduler}

    def scores(self, support_maps, support_y, query_maps, ways: int) -> torch.Tensor:
        """Relation score of every query with every class: (n_query, ways)."""
        pairs = pair_up(class_sums(support_maps, support_y, ways), query_maps)
        return self.relation(pairs).view(len(query_maps), ways)

    def query_loss(self, scores, query_y):
        return F.mse_loss(scores, F.one_hot(query_y, scores.shape[-1]).to(scores.dtype))  # regression to 1/0

    def embed(self, x):
        return self.body(x)  # feature maps (n, C, H, W)

    def predict_embedded(self, support, support_y, query, ways):
        return self.scores(support, support_y, query, ways)
