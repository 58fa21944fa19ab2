"""The batched-task path (tasks under torch.func.vmap, chosen on GPUs) against the per-task loop.

The meta-gradient of a meta-batch must be the loop's in float64 for every MAML-family algorithm
with a vmap path, at two inner steps. The vmapped body computes batch norm from mean and
variance ops, because F.batch_norm under vmap has given wrong second-order gradients on this
stack (``../shared/DESIGN.md``).
"""

import pytest
import torch
import torch.nn.functional as F

from metabench import MetabenchError
from metabench.algorithms import TaskShape, build_algorithm
from metabench.algorithms.maml import vmaps_tasks
from metabench.episodes import Episode
from metabench.models import Classifier, Conv4
from metabench.models.conv4 import batch_norm_from_moments
from tests.maths import relative_error

WAYS, TASKS = 3, 4


def build(name: str, task_batching: str, steps: int = 2):
    torch.manual_seed(0)
    task = TaskShape(channels=1, image_size=16, train_ways=WAYS, test_ways=WAYS)
    hyper = {"hidden": 4, "meta_batch": TASKS, "inner_steps": steps, "task_batching": task_batching}
    algorithm = build_algorithm(name, hyper, task, torch.device("cpu"))
    for network in algorithm.networks().values():
        network.double()
    return algorithm


def batch() -> Episode:
    generator = torch.Generator().manual_seed(1)
    return Episode(
        torch.rand(TASKS, WAYS, 1, 16, 16, generator=generator, dtype=torch.float64),
        torch.arange(WAYS).repeat(TASKS, 1),
        torch.rand(TASKS, 2 * WAYS, 1, 16, 16, generator=generator, dtype=torch.float64),
        torch.arange(WAYS).repeat(TASKS, 2),
        WAYS,
    )


def meta_gradient(algorithm) -> tuple[torch.Tensor, dict]:
    algorithm.train(True)
    algorithm.optimizer.zero_grad(set_to_none=True)
    metrics = algorithm.accumulate_meta_gradient(batch())
    parameters = [p for group in algorithm.optimizer.param_groups for p in group["params"]]
    return torch.cat([p.grad.reshape(-1) for p in parameters]), metrics


@pytest.mark.parametrize("name", ["maml", "fomaml", "metasgd"])
def test_vmapped_tasks_give_the_loops_meta_gradient_in_float64(name):
    looped, vmapped = build(name, "loop"), build(name, "vmap")
    assert not looped.vmap_tasks and vmapped.vmap_tasks
    (expected, expected_metrics), (found, found_metrics) = meta_gradient(looped), meta_gradient(vmapped)
    assert relative_error(found, expected) < 1e-10
    assert found_metrics["loss"].item() == pytest.approx(expected_metrics["loss"].item(), rel=1e-12)
    assert found_metrics["accuracy"].item() == expected_metrics["accuracy"].item()


def test_auto_takes_vmap_on_cuda_and_the_loop_on_cpu():
    torch.manual_seed(0)
    body = Conv4(in_channels=1, hidden=4, track_running_stats=False)
    model = Classifier(body, body.out_features(16), WAYS)
    assert vmaps_tasks("auto", torch.device("cuda"), model)
    assert not vmaps_tasks("auto", torch.device("cpu"), model)
    assert vmaps_tasks("vmap", torch.device("cpu"), model) and not vmaps_tasks("loop", torch.device("cuda"), model)
    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, WAYS))
    assert not vmaps_tasks("auto", torch.device("cuda"), other)
    with pytest.raises(MetabenchError, match="needs the conv4 backbone"):
        vmaps_tasks("vmap", torch.device("cuda"), other)


def test_settings_without_a_vmap_path_are_refused_in_one_line():
    with pytest.raises(MetabenchError, match="task_batching must be one of auto, loop, vmap"):
        build("maml", "sometimes")
    with pytest.raises(MetabenchError, match="anil has no vmap path"):
        build("anil", "vmap")


def test_batch_norm_from_moments_is_the_batch_statistics_batch_norm():
    x = torch.randn(6, 4, 5, 5, dtype=torch.float64)
    weight, bias = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    torch.testing.assert_close(
        batch_norm_from_moments(x, weight, bias, 1e-5), F.batch_norm(x, None, None, weight, bias, True, 0.0, 1e-5)
    )
