"""Pixel nearest neighbour: the reference every learned method has to beat.

Each query takes the label of its nearest support image in raw pixel space (Euclidean
distance; ties go to the first support image). Nothing is learned, so it is never trained and
needs no seed: it is scored on the same fixed test episodes as every algorithm and reported
as a reference, not ranked (the "raw pixels" row of Vinyals et al. 2016, Table 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from metabench.algorithms.base import EmbeddingAlgorithm


@dataclass
class PixelNNHyper:
    """No hyper-parameters: the method has nothing to tune."""


class PixelNN(EmbeddingAlgorithm):
    name = "pixelnn"
    version = 1
    release_notes = {1: "Nearest neighbour on raw pixels, the reference floor, at 806d491."}
    paper = "nearest neighbour in pixel space (reference; Vinyals et al. 2016, Table 1)"
    adapts = "nothing: stores the support images"
    trained = False
    batch_norm = None  # no network: scored inductively only
    Hyper = PixelNNHyper

    def networks(self):
        return {}  # nothing learned

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def predict_embedded(self, support, support_y, query, ways):
        return self.predict_embedded_episodes(support[None], support_y, query[None], ways)[0]

    def predict_embedded_episodes(self, support, support_y, query, ways):
        """Logits: minus the distance to the nearest support image of each class, so the
        arg-max is the nearest neighbour's label."""
        distances = torch.cdist(query, support)  # (E, n_query, n_support)
        nearest = distances.new_full((*distances.shape[:-1], ways), float("inf"))
        nearest.scatter_reduce_(-1, support_y.expand_as(distances), distances, reduce="amin")
        return -nearest
