"""Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, NeurIPS 2016).

A query's class distribution is an attention-weighted sum of the support labels,
``P(y | x̂) = Σ_i a(x̂, x_i) y_i`` with ``a`` the softmax over the support set of the cosine
similarity between the query embedding f(x̂) and each support embedding g(x_i) (paper, Eq. 1-2).
Training minimises the negative log-probability of the true class; ``predict`` returns log
probabilities, so argmax and cross-entropy work as with logits.

Full-context embeddings (``fce: true``, paper Appendix A.2): g is a bidirectional LSTM over the
support embeddings (plus a skip connection) and f an attention LSTM that reads the support set
for ``fce_steps`` steps. Deviation, as in most reimplementations: the attention LSTM's recurrent
state is ĥ + r (the sum) rather than the concatenation [ĥ, r]. With FCE a prediction depends on
the whole support set's order and on nothing else; queries stay independent of each other.
Defaults follow the paper's Omniglot setting (Conv-4, Adam 1e-3, FCE off: it did not help on
Omniglot, Section 4.1.1), with the attention scale of CloserLookFewShot (``attention_scale``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from metabench import MetabenchError
from metabench.algorithms.base import BackboneHyper, EmbeddingAlgorithm, build_body


@dataclass
class MatchingNetHyper(BackboneHyper):
    lr: float = 1e-3  # Adam learning rate
    meta_batch: int = 1  # episodes per update
    train_ways: int = 0  # ways of training episodes; 0: same as test
    fce: bool = False  # full-context embeddings (paper Appendix A.2)
    fce_steps: int = 5  # processing steps of the attention LSTM (only with fce)
    # softmax temperature of the attention: scale · ReLU(cosine) (CloserLookFewShot
    # methods/matchingnet.py: 100). Unscaled cosines lie in [0, 1] for post-ReLU features, so
    # with 5 supports the softmax gives the right one at most e/(e+4) ≈ 40 %.
    attention_scale: float = 100.0

    def validate(self) -> None:
        if (
            self.lr <= 0
            or self.meta_batch < 1
            or self.train_ways < 0
            or self.fce_steps < 1
            or self.attention_scale <= 0
        ):
            raise MetabenchError(
                "matchingnet needs lr > 0, meta_batch >= 1, train_ways >= 0, fce_steps >= 1 and attention_scale > 0"
            )


def attention_log_probs(
    support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor, ways: int, scale: float = 1.0
) -> torch.Tensor:
    """log Σ_i softmax_i(scale · ReLU(cos(query, support_i))) · onehot(y_i): (n_query, ways)."""
    cosine = F.normalize(query, dim=1) @ F.normalize(support, dim=1).T
    attention = (scale * cosine.relu()).softmax(dim=1)
    probs = attention @ F.one_hot(support_y, ways).to(attention.dtype)
    return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


class FullContext(nn.Module):
    """The two context networks of Appendix A.2: g (bidirectional LSTM) and f (attention LSTM)."""

    def __init__(self, features: int, steps: int):
        super().__init__()
        self.support_lstm = nn.LSTM(features, features, bidirectional=True, batch_first=True)
        self.query_cell = nn.LSTMCell(features, features)
        self.steps = steps

    def embed_support(self, support: torch.Tensor) -> torch.Tensor:
        """g(x_i) = forward state + backward state + the embedding itself."""
        out, _ = self.support_lstm(support.unsqueeze(0))
        forward, backward = out[0].chunk(2, dim=1)
        return support + forward + backward

    def embed_query(self, query: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        """f(x̂): ``steps`` rounds of attention over g(support), each refining the query state."""
        state = torch.zeros_like(query)
        cell = torch.zeros_like(query)
        readout = torch.zeros_like(query)
        for _ in range(self.steps):
            hidden, cell = self.query_cell(query, (state + readout, cell))
            state = hidden + query
            readout = (state @ support.T).softmax(dim=1) @ support
        return state


class MatchingNet(EmbeddingAlgorithm):
    name = "matchingnet"
    version = 1
    release_notes = {1: "Matching Networks with optional full-context embeddings (Vinyals et al. 2016), at 806d491."}
    paper = "Vinyals et al. 2016, Matching Networks for One Shot Learning"
    adapts = "nothing: cosine attention over the support set in a learned embedding"
    Hyper = MatchingNetHyper

    def __init__(self, hyper: MatchingNetHyper, task, device):
        super().__init__(hyper, task, device)
        self.body = build_body(hyper, task, track_running_stats=True).to(device)
        parts = {"body": self.body}
        self.context = None
        if hyper.fce:
            self.context = FullContext(self.body.out_features(task.image_size), hyper.fce_steps).to(device)
            parts["context"] = self.context
        self.optimizer = torch.optim.Adam([p for part in parts.values() for p in part.parameters()], lr=hyper.lr)

    def networks(self):
        return {"body": self.body} | ({"context": self.context} if self.context is not None else {})

    def optimizers(self):
        return {"optimizer": self.optimizer}

    def log_probs(self, support: torch.Tensor, support_y, query: torch.Tensor, ways: int) -> torch.Tensor:
        if self.context is not None:
            support = self.context.embed_support(support)
            query = self.context.embed_query(query, support)
        return attention_log_probs(support, support_y, query, ways, self.hyper.attention_scale)

    def query_loss(self, scores, query_y):
        return F.nll_loss(scores, query_y)  # the scores are log-probabilities already

    def embed(self, x):
        return self.body(x)

    def predict_embedded(self, support, support_y, query, ways):
        return self.log_probs(support, support_y, query, ways)
