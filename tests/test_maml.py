"""MAML's meta-gradient against finite differences; first-order MAML against its closed form."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from metabench.algorithms.maml import adapt, query_loss
from tests.maths import flat, numerical_gradient, relative_error, tiny_model, tiny_task, unflat


@pytest.mark.parametrize("steps", [1, 3])
def test_second_order_meta_gradient_matches_central_finite_differences(steps):
    model, task = tiny_model(), tiny_task()
    params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    loss, _ = query_loss(model, params, task, steps, lr=0.3, first_order=False)
    analytic = flat(dict(zip(params, torch.autograd.grad(loss, list(params.values())))))

    def loss_at(vector):
        trial = {n: p.clone().requires_grad_() for n, p in unflat(vector, params).items()}
        return query_loss(model, trial, task, steps, lr=0.3, first_order=False)[0].item()

    relative = relative_error(analytic, numerical_gradient(loss_at, flat(params)))
    assert relative < 1e-5, f"relative error {relative:.2e}"


def test_second_order_differs_from_first_order():
    """Guards against create_graph being ignored: the two meta-gradients must not coincide."""
    model, task = tiny_model(), tiny_task()
    grads = []
    for first_order in (False, True):
        params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
        loss, _ = query_loss(model, params, task, 2, lr=0.3, first_order=first_order)
        grads.append(flat(dict(zip(params, torch.autograd.grad(loss, list(params.values()))))))
    assert (grads[0] - grads[1]).norm() / grads[0].norm() > 1e-3


@pytest.mark.parametrize("steps", [1, 3])
def test_first_order_meta_gradient_is_query_gradient_at_adapted_weights(steps):
    """FOMAML closed form: g = ∇_φ L_query(φ) with φ from plain SGD on the support loss."""
    model, task = tiny_model(), tiny_task()
    support_x, support_y, query_x, query_y = task
    lr = 0.3
    params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    loss, _ = query_loss(model, params, task, steps, lr, first_order=True)
    ours = flat(dict(zip(params, torch.autograd.grad(loss, list(params.values())))))

    phi = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(steps):  # independent SGD: fresh leaves each step, no graph kept
        leaves = {n: p.clone().requires_grad_() for n, p in phi.items()}
        support_loss = F.cross_entropy(functional_call(model, leaves, (support_x,)), support_y)
        grads = torch.autograd.grad(support_loss, list(leaves.values()))
        phi = {n: p - lr * g for (n, p), g in zip(phi.items(), grads)}
    leaves = {n: p.clone().requires_grad_() for n, p in phi.items()}
    expected_loss = F.cross_entropy(functional_call(model, leaves, (query_x,)), query_y)
    expected = flat(dict(zip(leaves, torch.autograd.grad(expected_loss, list(leaves.values())))))
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)


def test_adapt_takes_plain_sgd_steps_on_a_linear_model():
    """Hand-checkable case: one step on a linear softmax model equals W - lr * X^T (p - y) / n."""
    model = torch.nn.Linear(4, 3, bias=False).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1])
    params = {"weight": model.weight.detach().clone().requires_grad_()}
    adapted = adapt(model, params, x, y, steps=1, lr=0.5, first_order=True)
    probabilities = torch.softmax(x @ params["weight"].detach().T, dim=1)
    gradient = (probabilities - F.one_hot(y, 3).double()).T @ x / len(x)
    torch.testing.assert_close(adapted["weight"].detach(), params["weight"].detach() - 0.5 * gradient)


def textbook_order(model):
    """The same network with each block in the papers' order: conv, batch norm, ReLU, max-pool."""
    import copy

    textbook = copy.deepcopy(model)
    for block in textbook.body.blocks:
        assert isinstance(block[2], torch.nn.MaxPool2d) and isinstance(block[3], torch.nn.ReLU)
        block[2], block[3] = block[3], block[2]
    return textbook


@pytest.mark.parametrize("first_order", [False, True], ids=["second_order", "first_order"])
def test_pooling_before_relu_gives_bitwise_the_papers_block(first_order):
    """Conv-4 pools before its ReLU (a quarter of the ReLU work); outputs and meta-gradients are
    bitwise equal (in PyTorch's default layout; channels-last is compared with it below)."""
    from metabench.models import Classifier, Conv4

    torch.manual_seed(0)
    body = Conv4(in_channels=1, hidden=16, track_running_stats=False, channels_last=False)
    ours = Classifier(body, body.out_features(28), 5)
    papers = textbook_order(ours)
    generator = torch.Generator().manual_seed(3)
    task = (
        torch.randn(5, 1, 28, 28, generator=generator),
        torch.arange(5),
        torch.randn(25, 1, 28, 28, generator=generator),
        torch.arange(5).repeat_interleave(5),
    )
    assert torch.equal(ours(task[2]), papers(task[2]))
    gradients = []
    for model in (ours, papers):
        params = dict(model.named_parameters())
        loss, _ = query_loss(model, params, task, 2, 0.4, first_order)
        gradients.append(torch.autograd.grad(loss, list(params.values())))
    assert all(torch.equal(a, b) for a, b in zip(*gradients))


@pytest.mark.parametrize("channels", [1, 3], ids=["grey", "rgb"])
@pytest.mark.parametrize("first_order", [False, True], ids=["second_order", "first_order"])
def test_channels_last_maps_give_the_nchw_outputs_and_meta_gradient_in_float64(channels, first_order):
    """Conv-4's channels-last layout (``models.conv4.channels_last``) changes speed, not maths:
    the same weights give the NCHW network's logits and its meta-gradient of two inner steps
    (float64; only summation order differs), and the maps really are channels-last."""
    from metabench.models import Classifier, Conv4
    from metabench.models.conv4 import channels_last

    networks = []
    for layout in (True, False):
        torch.manual_seed(0)
        body = Conv4(in_channels=channels, hidden=8, track_running_stats=False, channels_last=layout)
        networks.append(Classifier(body, body.out_features(16), 5).double())
    generator = torch.Generator().manual_seed(3)
    task = (
        torch.randn(5, channels, 16, 16, generator=generator, dtype=torch.float64),
        torch.arange(5),
        torch.randn(15, channels, 16, 16, generator=generator, dtype=torch.float64),
        torch.arange(5).repeat_interleave(3),
    )
    first_block = networks[0].body.blocks[0]
    assert first_block(channels_last(task[0])).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(networks[0](task[2]), networks[1](task[2]), rtol=1e-12, atol=1e-12)
    gradients = []
    for model in networks:
        params = dict(model.named_parameters())
        loss, _ = query_loss(model, params, task, 2, 0.4, first_order)
        gradients.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(params.values()))]))
    assert relative_error(gradients[0], gradients[1]) < 1e-12


def test_compiled_first_order_path_gives_the_eager_meta_gradient():
    """``compile: true`` (torch.compile of each task's loss) against the eager loop, float64, two tasks."""
    from metabench.algorithms import TaskShape, build_algorithm
    from metabench.episodes import Episode

    generator = torch.Generator().manual_seed(5)
    tasks = [
        Episode(
            torch.rand(6, 1, 16, 16, generator=generator, dtype=torch.float64),
            torch.arange(3).repeat(2),
            torch.rand(9, 1, 16, 16, generator=generator, dtype=torch.float64),
            torch.arange(3).repeat(3),
            3,
        )
        for _ in range(2)
    ]
    gradients = []
    for compiled in (False, True):
        torch.manual_seed(0)
        algorithm = build_algorithm(
            "fomaml",
            {"hidden": 8, "meta_batch": 2, "compile": compiled},
            TaskShape(channels=1, image_size=16, train_ways=3, test_ways=3),
            torch.device("cpu"),
        )
        algorithm.model.double()
        for task in tasks:
            (algorithm.episode_loss(task)[0] / 2).backward()
        gradients.append(torch.cat([p.grad.reshape(-1) for p in algorithm.model.parameters()]))
    torch.testing.assert_close(gradients[1], gradients[0], rtol=1e-10, atol=1e-12)
    assert gradients[0].abs().max() > 1e-3


def test_compile_needs_first_order():
    from metabench import MetabenchError
    from metabench.algorithms import TaskShape, build_algorithm

    with pytest.raises(MetabenchError, match="first_order"):
        build_algorithm("maml", {"compile": True}, TaskShape(1, 16, 3, 3), torch.device("cpu"))
