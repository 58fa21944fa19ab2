"""Siamese networks for one-shot recognition (Koch, Zemel & Salakhutdinov, ICML DL Workshop 2015).

Twin copies of one embedding network f; a pair (a, b) scores ``s = w · |f(a) − f(b)| + c``
(paper, Section 3.1: the weighted L1 distance followed by a sigmoid, here kept as a logit). The
network is trained as a verifier on pairs, with binary cross-entropy on "same class?". Pairs
come from the training episodes: every (query, support) pair, positives weighted by
``ways − 1`` so both outcomes count equally. An N-way one-shot task is solved by best match
(paper, Section 4.3): each query takes the class of the support image it scores highest with.
The paper defines one-shot tasks only; with K > 1 shots a class scores the mean of its K pair
logits (``shot_pooling: mean``; ``max`` is best match over all support images). With one shot
both are the paper's rule. The mean is the default because it pools the extra support images
as a prototype does, where the maximum follows the single most similar image.

Training images are distorted as in the paper (its Omniglot experiments, "affine distortions"): each image
of a training pair gets a random affine map whose components (rotation θ ∈ [−10°, 10°], shears
ρx, ρy ∈ [−0.3, 0.3], scales sx, sy ∈ [0.8, 1.2], translations tx, ty ∈ [−2, 2] pixels of a
105-pixel image, so ±1.9% of the width) are each included with probability 0.5
(``distort``; 0 turns the distortions off). Koch's code was never published, so the paper's
text is the reference; we distort every training image once per episode (the paper generated
8 distorted copies of each pair in advance).

Deviations: Conv-4 instead of the paper's 105×105 network, and Adam 1e-3 instead of per-layer
SGD with momentum schedules and per-layer L2 weights chosen by Bayesian optimisation (the paper
does not report the values found).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from metabench import MetabenchError
from metabench.algorithms.base import BackboneHyper, EmbeddingAlgorithm, build_body


@dataclass
class SiameseHyper(BackboneHyper):
    lr: float = 1e-3  # Adam learning rate
    meta_batch: int = 1
    train_ways: int = 0  # ways of training episodes; 0: same as test
    shot_pooling: str = "mean"  # a class's score from its K pair logits: mean or max (best match)
    distort: float = 0.5  # probability of each affine component in training (Koch et al.: 0.5); 0: none

    def validate(self) -> None:
        if self.lr <= 0 or self.meta_batch < 1 or self.train_ways < 0:
            raise MetabenchError("siamese needs lr > 0, meta_batch >= 1 and train_ways >= 0")
        if not 0 <= self.distort <= 1:
            raise MetabenchError(f"siamese distort is a probability in [0, 1], not {self.distort}")
        if self.shot_pooling not in POOLING:
            raise MetabenchError(f"siamese shot_pooling must be one of {', '.join(POOLING)}, not {self.shot_pooling!r}")


# Koch et al. 2015, "affine distortions": the ranges of the affine distortion's components
ROTATION_DEGREES = 10.0
SHEAR = 0.3
SCALE = (0.8, 1.2)
TRANSLATION = 2.0 / 105.0  # ±2 pixels of the paper's 105-pixel images, as a fraction of the width


def affine_matrices(count: int, probability: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``count`` random 2×3 maps (rotation · shear · scale, plus translation) in ``affine_grid``'s
    normalised coordinates; each component is drawn with ``probability``, else left at identity."""

    def component(low: float, high: float, identity: float) -> torch.Tensor:
        value = low + (high - low) * torch.rand(count, generator=generator, dtype=torch.float64)
        kept = torch.rand(count, generator=generator, dtype=torch.float64) < probability
        return torch.where(kept, value, torch.full_like(value, identity))

    theta = torch.deg2rad(component(-ROTATION_DEGREES, ROTATION_DEGREES, 0.0))
    shear_x, shear_y = component(-SHEAR, SHEAR, 0.0), component(-SHEAR, SHEAR, 0.0)
    scale_x, scale_y = component(*SCALE, 1.0), component(*SCALE, 1.0)
    # translation in normalised coordinates: the width spans [-1, 1], so a fraction f moves 2f
    move_x, move_y = (
        component(-2 * TRANSLATION, 2 * TRANSLATION, 0.0),
        component(-2 * TRANSLATION, 2 * TRANSLATION, 0.0),
    )
    cos, sin, one, zero = (
        theta.cos(),
        theta.sin(),
        torch.ones(count, dtype=torch.float64),
        torch.zeros(count, dtype=torch.float64),
    )
    rotation = torch.stack([cos, -sin, sin, cos], -1).view(count, 2, 2)
    shear = torch.stack([one, shear_x, shear_y, one], -1).view(count, 2, 2)
    scale = torch.stack([scale_x, zero, zero, scale_y], -1).view(count, 2, 2)
    linear = rotation @ shear @ scale
    return torch.cat([linear, torch.stack([move_x, move_y], -1).unsqueeze(-1)], -1)


def distort(images: torch.Tensor, probability: float) -> torch.Tensor:
    """``images`` (n, C, H, W), each under its own random affine map (``affine_matrices``); the
    border's value fills what moves in, so a background stays a background whatever the
    normalisation."""
    matrices = affine_matrices(len(images), probability).to(images.dtype).to(images.device)
    grid = F.affine_grid(matrices, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, padding_mode="border", align_corners=False)


def pair_logits(query: torch.Tensor, support: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Verification logit of every (query, support) pair: (n_query, n_support)."""
    distance = (query.unsqueeze(1) - support.unsqueeze(0)).abs()
    return distance @ weight + bias


def best_match(pair: torch.Tensor, support_y: torch.Tensor, ways: int) -> torch.Tensor:
    """Per class, the highest pair logit among its support images: (n_query, ways)."""
    masked = pair.unsqueeze(2).masked_fill(F.one_hot(support_y, ways).bool().logical_not().unsqueeze(0), float("-inf"))
    return masked.amax(dim=1)


def mean_match(pair: torch.Tensor, support_y: torch.Tensor, ways: int) -> torch.Tensor:
    """Per class, the mean pair logit over its support images: (n_query, ways)."""
    one_hot = F.one_hot(support_y, ways).to(pair.dtype)
    return pair @ one_hot / one_hot.sum(0)


POOLING = {"mean": mean_match, "max": best_match}


def verification_loss(pair: torch.Tensor, query_y: torch.Tensor, support_y: torch.Tensor, ways: int) -> torch.Tensor:
    """Binary cross-entropy on "same class?", positives weighted by ways − 1 to balance the classes."""
    same = (query_y.unsqueeze(1) == support_y.unsqueeze(0)).to(pair.dtype)
    positive_weight = torch.tensor(float(max(ways - 1, 1)), dtype=pair.dtype, device=pair.device)
    return F.binary_cross_entropy_with_logits(pair, same, pos_weight=positive_weight)


class Siamese(EmbeddingAlgorithm):
    name = "siamese"
    version = 1
    release_notes = {1: "Siamese verification networks with Koch et al.'s affine distortions, at 806d491."}
    paper = "Koch et al. 2015, Siamese Neural Networks for One-shot Image Recognition"
    adapts = "nothing: a learned verifier scores each query against every class's support images"
    Hyper = SiameseHyper

    def __init__(self, hyper: SiameseHyper, task, device):
        super().__init__(hyper, task, device)
        self.body = build_body(hyper, task, track_running_stats=True)
        self.head = nn.Linear(self.body.out_features(task.image_size), 1)  # w and c of the distance layer
        self.net = nn.ModuleDict({"body": self.body, "head": self.head}).to(device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=hyper.lr)

    def networks(self):
        return {"net": self.net}

    def optimizers(self):
        return {"optimizer": self.optimizer}

    def pairs(self, support: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        return pair_logits(query, support, self.head.weight[0], self.head.bias[0])

    def episode_loss(self, task):
        images = torch.cat([task.support_x, task.query_x])
        if self.net.training and self.hyper.distort > 0:
            images = distort(images, self.hyper.distort)  # torch's generator: the runner seeds and saves it
        embedded = self.body(images)
        n_support = len(task.support_x)
        pair = self.pairs(embedded[:n_support], embedded[n_support:])
        loss = verification_loss(pair, task.query_y, task.support_y, task.ways)
        return loss, POOLING[self.hyper.shot_pooling](pair.detach(), task.support_y, task.ways)

    def embed(self, x):
        return self.body(x)

    def predict_embedded(self, support, support_y, query, ways):
        return POOLING[self.hyper.shot_pooling](self.pairs(support, query), support_y, ways)
