"""The LSTM meta-learner (Ravi & Larochelle, "Optimization as a Model for Few-Shot Learning", ICLR 2017).

A learned optimiser: the learner's parameters θ are the cell state of an LSTM that runs
coordinate-wise over every parameter (Section 3.2):

    f_t = σ(W_F · [h_t, θ_{t−1}, f_{t−1}] + b_F)        (forget gate: shrink the weights)
    i_t = σ(W_I · [h_t, θ_{t−1}, i_{t−1}] + b_I)        (input gate: a learned step size)
    θ_t = f_t ⊙ θ_{t−1} − i_t ⊙ ∇_t

where h_t comes from a first, ordinary LSTM (20 units) reading the preprocessed gradient and
loss of each coordinate (log-magnitude and sign, Andrychowicz et al. 2016, p = 10). The initial
θ_0 (the learner's initialisation), both LSTMs and the gates are meta-learned by Adam on the
query loss after ``inner_steps`` updates on the support set, with the paper's simplification
that gradients and losses fed to the meta-learner are constants (no second derivatives) and
its gradient clipping (0.25). Gate weights start at U(−0.01, 0.01) and gate biases so that
f ≈ 1 and i is small (b_F ~ U(4, 6), b_I ~ U(−5, −4), Section 3.4; as the trusted
reimplementation markdtw/meta-learning-lstm-pytorch ``metalearner.py`` initialises them). The learner is Conv-4 with 32 filters (paper, Section 4) and
normalises with batch statistics, as in the paper.

Updates per episode follow the authors' code (twitter-research/meta-learning-lstm
``config/lstm/train-imagenet-1shot.lua``: ``nEpochs[1]=12``, ``nEpochs[5]=5``, full-batch): 12
on a 1-shot support set, 5 otherwise, unless ``inner_steps`` sets a number for both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metabench import MetabenchError
from metabench.algorithms.base import Algorithm, BackboneHyper, EpisodeNormalised, episodic_classifier


@dataclass
class MetaLSTMHyper(BackboneHyper):
    meta_lr: float = 1e-3  # Adam on the meta-learner (paper: 1e-3)
    inner_steps: int = 0  # learner updates per episode; 0: 12 for 1-shot, 5 otherwise (authors' config)
    meta_batch: int = 1
    lstm_hidden: int = 20  # units of the first LSTM (paper: 20)
    clip_grad_norm: float = 0.25  # paper: 0.25
    hidden: int = 32  # learner filters (paper: 32)

    def validate(self) -> None:
        if self.inner_steps < 0 or self.meta_lr <= 0 or self.meta_batch < 1 or self.lstm_hidden < 1:
            raise MetabenchError("metalstm needs inner_steps >= 0, meta_lr > 0, meta_batch >= 1, lstm_hidden >= 1")

    def steps_for(self, shots: int) -> int:
        return self.inner_steps or (12 if shots == 1 else 5)


def preprocess(values: torch.Tensor, p: float = 10.0) -> torch.Tensor:
    """(log|x| / p, sign x) where |x| ≥ e^−p, else (−1, e^p x): (n, 2), scale-free inputs."""
    large = values.abs() >= math.exp(-p)
    magnitude = torch.where(large, values.abs().clamp_min(math.exp(-p)).log() / p, torch.full_like(values, -1.0))
    direction = torch.where(large, values.sign(), values * math.exp(p))
    return torch.stack([magnitude, direction], dim=1)


class MetaLearner(nn.Module):
    """The two-layer coordinate-wise meta-learner: an LSTM, then the gated update of θ."""

    def __init__(self, lstm_hidden: int):
        super().__init__()
        self.lstm = nn.LSTMCell(4, lstm_hidden)
        self.forget = nn.Linear(lstm_hidden + 2, 1)
        self.input = nn.Linear(lstm_hidden + 2, 1)
        nn.init.uniform_(self.forget.weight, -0.01, 0.01)
        nn.init.uniform_(self.input.weight, -0.01, 0.01)
        nn.init.uniform_(self.forget.bias, 4.0, 6.0)
        nn.init.uniform_(self.input.bias, -5.0, -4.0)

    def step(self, theta, grad, loss, state):
        """One update: returns θ_t and the recurrent state (lstm (h, c), f_t, i_t).

        The LSTM is written out from ``self.lstm``'s weights (gate order i, f, g, o, as
        ``nn.LSTMCell``) with coordinates along the columns: h and c are (hidden, n), so every gate
        is a contiguous block of rows, and each gate's linear layer is a matrix-vector product plus
        two scaled vectors instead of a concatenation. The same arithmetic as ``nn.LSTMCell`` and
        ``nn.Linear`` on the concatenated inputs (``tests/test_metalstm.py`` checks both in
        float64), and faster: one matrix-vector product per gate over tens of thousands of coordinates.
        """
        lstm_state, f_prev, i_prev = state
        cell = self.lstm
        n = len(grad)
        inputs = torch.cat([preprocess(grad).t(), preprocess(loss.reshape(1)).t().expand(2, n)], dim=0)
        if lstm_state is None:  # h_0 = c_0 = 0, as nn.LSTMCell (which keeps weight_hh in the graph)
            zeros = inputs.new_zeros(cell.hidden_size, n)
            lstm_state = (zeros, zeros)
        h_prev, c_prev = lstm_state
        weight = torch.cat([cell.weight_ih, cell.weight_hh], dim=1)
        bias = (cell.bias_ih + cell.bias_hh)[:, None]
        gates = torch.addmm(bias, weight, torch.cat([inputs, h_prev], dim=0))
        in_gate, forget_gate, cell_gate, out_gate = gates.chunk(4, dim=0)
        c = torch.sigmoid(forget_gate) * c_prev + torch.sigmoid(in_gate) * torch.tanh(cell_gate)
        h = torch.sigmoid(out_gate) * torch.tanh(c)
        f = torch.sigmoid(self._gate(self.forget, h, theta, f_prev))
        i = torch.sigmoid(self._gate(self.input, h, theta, i_prev))
        return f * theta - i * grad, ((h, c), f, i)

    @staticmethod
    def _gate(layer: nn.Linear, h, theta, previous):
        """``layer([hᵀ, θ, previous])`` for h of shape (hidden, n), without the (n, hidden + 2) input."""
        weight = layer.weight[0]
        hidden = h.shape[0]
        return torch.addmv(layer.bias, h.t(), weight[:hidden]) + theta * weight[hidden] + previous * weight[hidden + 1]


def unflatten(theta: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    sizes = [p.numel() for p in like.values()]
    return {name: chunk.view_as(p) for (name, p), chunk in zip(like.items(), theta.split(sizes))}


def learn(meta: MetaLearner, model: nn.Module, theta: torch.Tensor, x, y, steps: int) -> torch.Tensor:
    """Run the meta-learner for ``steps`` updates of the learner on (x, y); returns θ_T (flat).

    Each step's gradient and loss are computed at a detached copy of θ: they enter the
    meta-learner as constants, the paper's first-order simplification.
    """
    like = dict(model.named_parameters())
    zeros = torch.zeros_like(theta)
    state = (None, zeros, zeros)
    for _ in range(steps):
        with torch.enable_grad():
            point = theta.detach().requires_grad_()
            loss = F.cross_entropy(functional_call(model, unflatten(point, like), (x,)), y)
            (grad,) = torch.autograd.grad(loss, point)
        theta, state = meta.step(theta, grad, loss.detach(), state)
    return theta


class MetaLSTM(EpisodeNormalised, Algorithm):
    name = "metalstm"
    version = 1
    release_notes = {1: "LSTM meta-learner of Ravi & Larochelle 2017, at 806d491."}
    paper = "Ravi & Larochelle 2017, Optimization as a Model for Few-Shot Learning"
    adapts = "every weight, by a learned LSTM optimiser from a learned initialisation"
    fixed_ways = True
    data_parallel = True  # the meta-batch is split over torchrun ranks (metabench.distributed)
    Hyper = MetaLSTMHyper

    def __init__(self, hyper: MetaLSTMHyper, task, device):
        super().__init__(hyper, task, device)
        if task.train_ways != task.test_ways:
            raise MetabenchError(f"metalstm has a {task.test_ways}-way learner; set train_ways equal to ways")
        self.model = episodic_classifier(hyper, task).to(device)
        self.meta = MetaLearner(hyper.lstm_hidden).to(device)
        self.optimizer = torch.optim.Adam([*self.model.parameters(), *self.meta.parameters()], lr=hyper.meta_lr)
        self.clip_grad_norm = hyper.clip_grad_norm

    def networks(self):
        return {"model": self.model, "meta": self.meta}

    def optimizers(self):
        return {"optimizer": self.optimizer}

    def initial_theta(self) -> torch.Tensor:
        """θ_0: the learner's (meta-learned) initial parameters, flattened."""
        return torch.cat([p.reshape(-1) for p in self.model.parameters()])

    def learned(self, theta, support_x, support_y) -> dict[str, torch.Tensor]:
        """The learner's weights after the meta-learner's updates on the support set."""
        steps = self.hyper.steps_for(len(support_x) // self.task.test_ways)
        theta = learn(self.meta, self.model, theta, support_x, support_y, steps)
        return unflatten(theta, dict(self.model.named_parameters()))

    def query_logits(self, theta, support_x, support_y, query_x) -> torch.Tensor:
        return functional_call(self.model, self.learned(theta, support_x, support_y), (query_x,))

    def episode_loss(self, task):
        logits = self.query_logits(self.initial_theta(), task.support_x, task.support_y, task.query_x)
        return F.cross_entropy(logits, task.query_y), logits

    @torch.no_grad()
    def adapted(self, support_x, support_y, ways):
        weights = self.learned(self.initial_theta(), support_x, support_y)
        return lambda x: functional_call(self.model, weights, (x,))
