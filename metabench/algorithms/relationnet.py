"""Relation Networks (Sung, Yang, Zhang, Xiang, Torr & Hospedales, CVPR 2018).

An embedding module (Conv-4 with max-pooling in the first two blocks only, so feature maps keep
their spatial extent) embeds every image; a class is represented by the element-wise *sum* of
its support feature maps (K-shot, paper Section 3.2). Each (class, query) pair is concatenated
along channels and scored by a learned relation module (two conv blocks with pooling, then
fully connected layers to 8 units and to one sigmoid output). Training regresses the scores
onto the one-hot match with mean squared error (paper, Eq. 3), Adam 1e-3.

The reference code (floodsung/LearningToCompare_FSL, ``omniglot/omniglot_train_one_shot.py`` and
``miniimagenet/miniimagenet_train_one_shot.py``) fixes three choices the paper leaves out, each a
hyper-parameter here with the reference's value as default: the encoder's first two
convolutions are unpadded (28×28 images give 5×5 maps, not 7×7: the relation module then runs
on half the positions; the miniImageNet script also leaves the relation module's convolutions
unpadded, ``unpadded_relation``, which its profile sets); the weights start from ``weights_init`` (convolutions N(0, 2/(9·out)),
linear layers N(0, 0.01²) with bias 1); and each network's gradient norm is clipped at 0.5
before its Adam step. The reference never leaves training mode, so at test time its batch norms
normalise with the statistics of the batch they see: the support set, the query set and the
(class, query) pairs, each on its own (transductive: a query's score depends on the other
queries). Every run is scored both ways (``metabench.scoring``); ``scoring`` picks the headline
mode: the default, ``inductive``, evaluates with running statistics, which keeps an image's
embedding independent of its episode (and lets the evaluator score from cached embeddings);
``transductive`` is the reference's. Name the mode beside any comparison with the paper.
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
    unpadded_convs: int = 2  # the encoder's first convolutions without padding (reference: 2)
    unpadded_relation: bool = False  # relation convolutions unpadded (reference: miniImageNet yes, Omniglot no)
    clip_grad_norm: float = 0.5  # per network, before each step (reference: 0.5); 0: no clipping
    init: str = "reference"  # reference (the reference's weights_init) or torch (PyTorch's defaults)
    scoring: str = "inductive"  # headline mode: inductive (running statistics) or transductive (each set's batch statistics, the reference's)

    def validate(self) -> None:
        if self.backbone != "conv4":
            raise MetabenchError("relationnet needs backbone conv4 (its embedding keeps feature maps)")
        if self.lr <= 0 or self.meta_batch < 1 or self.train_ways < 0 or self.relation_hidden < 1:
            raise MetabenchError("relationnet needs lr > 0, meta_batch >= 1, train_ways >= 0, relation_hidden >= 1")
        if not 0 <= self.unpadded_convs <= 4 or self.clip_grad_norm < 0:
            raise MetabenchError("relationnet needs 0 <= unpadded_convs <= 4 and clip_grad_norm >= 0")
        if self.init not in ("reference", "torch"):
            raise MetabenchError(f"relationnet init must be reference or torch, not {self.init!r}")
        if self.scoring not in ("inductive", "transductive"):
            raise MetabenchError(f"relationnet scoring must be inductive or transductive, not {self.scoring!r}")


def encoder(channels: int, hidden: int, unpadded_convs: int) -> Conv4:
    """The embedding module: Conv-4 pooled in its first two blocks, the first ``unpadded_convs``
    convolutions without padding (the reference's ``CNNEncoder``: ``padding=0`` in layer1-2)."""
    body = Conv4(channels, hidden, pooled=2, flatten=False)
    unpad(body.blocks[:unpadded_convs])
    return body


def unpad(blocks) -> None:
    """Drop the padding of each block's convolution (``Conv2d.forward`` reads it; the weights are
    the same 3×3 kernels), as the reference's unpadded layers."""
    for block in blocks:
        block[0].padding = (0, 0)


def map_size(body: nn.Module, channels: int, image_size: int) -> int:
    """Height (= width) of the encoder's feature maps for ``image_size`` inputs."""
    with torch.no_grad():
        return body.eval()(torch.zeros(1, channels, image_size, image_size)).shape[-1]


def reference_init(module: nn.Module) -> None:
    """floodsung's ``weights_init``: convolutions N(0, 2/(k·k·out)) with zero bias, batch norm 1 and
    0, linear layers N(0, 0.01²) with bias 1."""
    if isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
        nn.init.normal_(module.weight, 0.0, (2.0 / fan_out) ** 0.5)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, 0.0, 0.01)
        nn.init.ones_(module.bias)


class RelationModule(nn.Module):
    """g_φ: a pair's concatenated feature maps → relation score in (0, 1).

    ``padded=False`` drops the convolutions' padding, as the reference's miniImageNet relation
    module does (``miniimagenet_train_one_shot.py``: 19×19 maps → 3×3 before ``fc1``); its
    Omniglot module pads (``omniglot_train_one_shot.py``: 5×5 → 1×1).
    """

    def __init__(self, hidden: int, size: int, fc_hidden: int, padded: bool = True):
        super().__init__()
        self.blocks = nn.Sequential(conv_block(2 * hidden, hidden, True), conv_block(hidden, hidden, True))
        if not padded:
            unpad(self.blocks)
        out = size
        for _ in self.blocks:
            out = (out - (0 if padded else 2)) // 2
        if out < 1:
            raise MetabenchError(
                f"relationnet: {size}x{size} feature maps are too small for the relation module's two "
                f"{'' if padded else 'unpadded '}convolutions and poolings; use larger images (28x28 or more), "
                "hyper unpadded_convs: 0 or hyper unpadded_relation: false"
            )
        self.fc = nn.Sequential(nn.Linear(hidden * out * out, fc_hidden), nn.ReLU(), nn.Linear(fc_hidden, 1))

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        """Scores of concatenated pairs (n, 2C, H, W): the definition ``scores`` computes faster."""
        return self.head(self.blocks(pairs)).squeeze(1)

    def head(self, maps: torch.Tensor) -> torch.Tensor:
        """Relation scores (n, 1) of the second block's maps: the two fully connected layers, then a sigmoid."""
        return torch.sigmoid(self.fc(maps.flatten(1)))

    def scores(self, class_maps: torch.Tensor, query_maps: torch.Tensor) -> torch.Tensor:
        """Score of every (query, class) pair, (n_query, ways), without building the pairs.

        The first convolution is linear in its input, so on a concatenation [class; query] it is
        the sum of one convolution of the class map (the kernel's first C input channels, with the
        bias) and one of the query map (the last C; zero padding splits the same way). Computing
        those once per class and once per query and summing them for each pair gives the same
        function as ``forward(pair_up(…))`` with ways + queries convolutions of C channels instead
        of ways × queries of 2C (the batch norm that follows sees the same pair batch).
        """
        conv = self.blocks[0][0]
        channels = class_maps.shape[1]
        by_class = F.conv2d(class_maps, conv.weight[:, :channels], conv.bias, padding=conv.padding)
        by_query = F.conv2d(query_maps, conv.weight[:, channels:], None, padding=conv.padding)
        summed = (by_query.unsqueeze(1) + by_class.unsqueeze(0)).flatten(0, 1)  # query-major, as pair_up
        hidden = self.blocks[1](self.blocks[0][1:](summed))
        return self.head(hidden).view(len(query_maps), len(class_maps))


def pair_up(class_maps: torch.Tensor, query_maps: torch.Tensor) -> torch.Tensor:
    """All (query, class) pairs as channel concatenations [class, query]: (Q*N, 2C, H, W), query-major
    (the paper's input to the relation module; ``RelationModule.scores`` computes the same scores
    without materialising it)."""
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
    version = 1
    release_notes = {
        1: "Relation Networks as floodsung's reference script, the relation module's first convolution split per class and query map, at 806d491."
    }
    paper = "Sung et al. 2018, Learning to Compare: Relation Network for Few-Shot Learning"
    adapts = "nothing: a learned relation module scores each (class, query) pair"
    Hyper = RelationNetHyper

    def __init__(self, hyper: RelationNetHyper, task, device):
        super().__init__(hyper, task, device)
        self.body = encoder(task.channels, hyper.hidden, hyper.unpadded_convs)
        size = map_size(self.body, task.channels, task.image_size)
        self.relation = RelationModule(hyper.hidden, size, hyper.relation_hidden, not hyper.unpadded_relation)
        if hyper.init == "reference":
            self.body.apply(reference_init)
            self.relation.apply(reference_init)
        self.body.to(device)
        self.relation.to(device)
        self.optimizer = torch.optim.Adam([*self.body.parameters(), *self.relation.parameters()], lr=hyper.lr)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=hyper.lr_halve_every, gamma=0.5)

    def networks(self):
        return {"body": self.body, "relation": self.relation}

    def optimizers(self):
        return {"optimizer": self.optimizer, "scheduler": self.scheduler}

    def accumulate_meta_gradient(self, batch):
        metrics = super().accumulate_meta_gradient(batch)
        if self.hyper.clip_grad_norm > 0:  # each network on its own, as the reference clips them
            for network in (self.body, self.relation):
                torch.nn.utils.clip_grad_norm_(network.parameters(), self.hyper.clip_grad_norm)
        return metrics

    def scores(self, support_maps, support_y, query_maps, ways: int) -> torch.Tensor:
        """Relation score of every query with every class: (n_query, ways)."""
        return self.relation.scores(class_sums(support_maps, support_y, ways), query_maps)

    def query_loss(self, scores, query_y):
        return F.mse_loss(scores, F.one_hot(query_y, scores.shape[-1]).to(scores.dtype))  # regression to 1/0

    def embed(self, x):
        return self.body(x)  # feature maps (n, C, H, W)

    def predict_embedded(self, support, support_y, query, ways):
        return self.scores(support, support_y, query, ways)

    @property
    def evaluates_transductively(self) -> bool:
        return self.hyper.scoring == "transductive"
