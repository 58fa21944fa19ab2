"""ResNet-12: shapes, running functionally, and MAML's second-order meta-gradient through it."""

import pytest
import torch
from torch.func import functional_call

from metabench.algorithms import TaskShape, build_algorithm
from metabench.algorithms.maml import query_loss
from metabench.models import Classifier, ResNet12, build_backbone
from tests.maths import flat, leaves, unflat


@pytest.mark.parametrize("size", [84, 32])
def test_standard_widths_and_pooled_output(size):
    body = build_backbone("resnet12", 3, 64)
    assert [b.shortcut[0].out_channels for b in body.blocks] == [64, 160, 320, 640]
    assert body(torch.rand(2, 3, size, size)).shape == (2, body.out_features(size)) == (2, 640)


def test_functional_call_equals_the_module():
    torch.manual_seed(0)
    body = ResNet12(3, 4, track_running_stats=False)
    x = torch.rand(3, 3, 16, 16)
    torch.testing.assert_close(functional_call(body, dict(body.named_parameters()), (x,)), body(x))


def test_maml_second_order_gradient_through_resnet12_matches_directional_finite_differences():
    torch.manual_seed(0)
    body = ResNet12(1, 2, track_running_stats=False)
    model = Classifier(body, body.out_features(16), 3).double()
    generator = torch.Generator().manual_seed(1)
    task = (
        torch.rand(6, 1, 16, 16, generator=generator, dtype=torch.float64),
        torch.arange(3).repeat(2),
        torch.rand(9, 1, 16, 16, generator=generator, dtype=torch.float64),
        torch.arange(3).repeat(3),
    )
    params = leaves(dict(model.named_parameters()))
    loss, _ = query_loss(model, params, task, 1, 0.3, first_order=False)
    gradient = flat(dict(zip(params, torch.autograd.grad(loss, list(params.values())))))
    point = flat(params).detach()
    for seed in range(3):
        direction = torch.randn(point.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        direction /= direction.norm()
        eps = 1e-5
        values = [
            query_loss(model, leaves(unflat(point + s * eps * direction, params)), task, 1, 0.3, False)[0].item()
            for s in (1, -1)
        ]
        numeric = (values[0] - values[1]) / (2 * eps)
        assert abs(float(gradient @ direction) - numeric) < 1e-6 * max(1.0, abs(numeric))


def test_algorithms_accept_the_resnet12_backbone():
    task = TaskShape(channels=3, image_size=32, train_ways=5, test_ways=5, train_classes=10)
    for name in ("protonet", "maml", "metaoptnet"):
        algorithm = build_algorithm(name, {"backbone": "resnet12", "hidden": 4}, task, torch.device("cpu"))
        algorithm.train(False)
        logits = algorithm.predict(torch.rand(5, 3, 32, 32), torch.arange(5), torch.rand(10, 3, 32, 32), 5)
        assert logits.shape == (10, 5)
