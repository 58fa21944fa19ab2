"""The LSTM meta-learner: its gated update by hand, and its meta-gradient against finite differences."""

import math

import torch
import torch.nn.functional as F
from torch.func import functional_call

from metabench.algorithms.metalstm import MetaLearner, learn, preprocess, unflatten
from tests.maths import numerical_gradient, relative_error, tiny_model, tiny_task


def test_preprocessing_follows_andrychowicz_et_al():
    values = torch.tensor([1.0, -0.01, 1e-6, 0.0], dtype=torch.float64)
    p = 10
    expected = torch.tensor(
        [[0.0, 1.0], [math.log(0.01) / p, -1.0], [-1.0, 1e-6 * math.exp(p)], [-1.0, 0.0]], dtype=torch.float64
    )
    torch.testing.assert_close(preprocess(values), expected)


def meta_learner():
    torch.manual_seed(1)
    return MetaLearner(lstm_hidden=3).double()


def test_one_update_is_f_theta_minus_i_grad_with_the_gates_by_hand():
    model, (x, y, *_) = tiny_model(), tiny_task()
    meta = meta_learner()
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    updated = learn(meta, model, theta, x, y, steps=1)

    point = theta.clone().requires_grad_()
    loss = F.cross_entropy(functional_call(model, unflatten(point, dict(model.named_parameters())), (x,)), y)
    (grad,) = torch.autograd.grad(loss, point)
    inputs = torch.cat([preprocess(grad), preprocess(loss.detach().reshape(1)).expand(len(grad), 2)], 1)
    h, _ = meta.lstm(inputs)  # the library LSTM; the gated update below is computed by hand
    wf, bf = meta.forget.weight.detach()[0], meta.forget.bias.detach()[0]
    wi, bi = meta.input.weight.detach()[0], meta.input.bias.detach()[0]
    sigmoid = lambda z: 1 / (1 + torch.exp(-z))  # noqa: E731
    f = sigmoid(h.detach() @ wf[:3] + theta * wf[3] + 0.0 * wf[4] + bf)  # f_0 = 0
    i = sigmoid(h.detach() @ wi[:3] + theta * wi[3] + 0.0 * wi[4] + bi)
    torch.testing.assert_close(updated.detach(), f * theta - i * grad, rtol=1e-10, atol=1e-12)


def test_meta_gradient_of_the_learned_optimiser_matches_finite_differences():
    """After one update the learner's gradient does not depend on the meta-learner, so the paper's
    first-order simplification is exact there and finite differences must agree."""
    model, (x, y, qx, qy) = tiny_model(), tiny_task()
    meta = meta_learner()
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    like = dict(model.named_parameters())
    names = [n for n, _ in meta.named_parameters()]
    shapes = [p.shape for p in meta.parameters()]
    sizes = [p.numel() for p in meta.parameters()]

    def query_loss(params):
        """The query loss with the meta-learner's weights set to ``params`` (restored afterwards)."""
        original = {n: p.detach().clone() for n, p in meta.named_parameters()}
        with torch.no_grad():
            for (_, p), value in zip(meta.named_parameters(), params.values()):
                p.copy_(value)
        try:
            updated = learn(meta, model, theta, x, y, steps=1)
            return F.cross_entropy(functional_call(model, unflatten(updated, like), (qx,)), qy)
        finally:
            with torch.no_grad():
                for n, p in meta.named_parameters():
                    p.copy_(original[n])

    loss = F.cross_entropy(functional_call(model, unflatten(learn(meta, model, theta, x, y, 1), like), (qx,)), qy)
    analytic = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(meta.parameters()))])
    vector = torch.cat([p.detach().reshape(-1) for p in meta.parameters()])

    def loss_at(v):
        params = {n: chunk.view(s) for n, chunk, s in zip(names, v.split(sizes), shapes)}
        return query_loss(params).item()

    assert relative_error(analytic, numerical_gradient(loss_at, vector)) < 1e-5


def test_the_written_out_update_equals_the_library_lstm_and_linear_layers_over_several_steps():
    """``MetaLearner.step`` spells out ``nn.LSTMCell`` and the gates' ``nn.Linear`` for speed: three
    steps with recurrent state must equal the library modules applied to the concatenated inputs."""
    meta = meta_learner()
    torch.manual_seed(2)
    n = 50
    theta = torch.randn(n, dtype=torch.float64)
    zeros = torch.zeros(n, dtype=torch.float64)
    state, reference_state = (None, zeros, zeros), (None, zeros, zeros)
    reference_theta = theta.clone()
    for _ in range(3):
        grad, loss = torch.randn(n, dtype=torch.float64), torch.rand((), dtype=torch.float64)
        theta, state = meta.step(theta, grad, loss, state)
        lstm_state, f_prev, i_prev = reference_state
        inputs = torch.cat([preprocess(grad), preprocess(loss.reshape(1)).expand(n, 2)], dim=1)
        h, c = meta.lstm(inputs, lstm_state)
        f = torch.sigmoid(meta.forget(torch.cat([h, reference_theta[:, None], f_prev[:, None]], dim=1))).squeeze(1)
        i = torch.sigmoid(meta.input(torch.cat([h, reference_theta[:, None], i_prev[:, None]], dim=1))).squeeze(1)
        reference_theta, reference_state = f * reference_theta - i * grad, ((h, c), f, i)
        torch.testing.assert_close(theta, reference_theta, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(state[0][1].t(), c, rtol=1e-12, atol=1e-14)  # (hidden, n) inside
