"""The CUDA path: run where a GPU is present (`make gpu-check`), skipped with the reason elsewhere.

What a first GPU must confirm: every algorithm takes a training step on the device, evaluation
on the device agrees with the CPU's, the embedding cache works there, and a checkpoint saved by
a GPU run loads and predicts on a CPU-only machine.
"""

import shutil

import numpy as np
import pytest
import torch

from metabench.algorithms import REGISTRY, TaskShape, build_algorithm
from metabench.config import RunConfig
from metabench.episodes import EpisodeSpec, ImageBank, sample_indices
from metabench.evaluation import episode_accuracies
from tests.conftest import SMALL_IMAGES, tiny_split

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
CUDA = torch.device("cuda")
TRAINED = sorted(name for name, cls in REGISTRY.items() if cls.trained)
SMALL = {"hidden": 8}


def _build(name: str, device: torch.device):
    task = TaskShape(channels=1, image_size=16, train_ways=4, test_ways=4, train_classes=10)
    extra = {"meta_batch": 2} if "meta_batch" in REGISTRY[name].Hyper.__dataclass_fields__ else {}
    torch.manual_seed(0)
    return build_algorithm(name, {**SMALL, **extra, **SMALL_IMAGES.get(name, {})}, task, device)


@pytest.mark.parametrize("name", TRAINED)
def test_every_algorithm_trains_on_the_gpu(name):
    split = tiny_split(10, 12, size=16, seed=4)
    algorithm = _build(name, CUDA)
    bank = ImageBank(split, CUDA)
    batch = bank.episodes(
        sample_indices(split, EpisodeSpec(4, 1, 3), algorithm.episodes_per_step, np.random.default_rng(0))
    )
    before = [p.detach().clone() for net in algorithm.networks().values() for p in net.parameters()]
    metrics = algorithm.meta_train_step(batch)
    after = [p.detach() for net in algorithm.networks().values() for p in net.parameters()]
    assert np.isfinite(metrics["loss"]) and all(p.is_cuda for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize("name", TRAINED)
def test_evaluation_on_the_gpu_agrees_with_the_cpu(name):
    split = tiny_split(10, 12, size=16, seed=4)
    episodes = sample_indices(split, EpisodeSpec(4, 3, 3), 12, np.random.default_rng(1))
    cpu = _build(name, torch.device("cpu"))
    gpu = _build(name, CUDA)
    gpu.load_state_dict({k: v for k, v in cpu.state_dict().items()}, weights_only=True)
    on_cpu = episode_accuracies(cpu, ImageBank(split), episodes)
    on_gpu = episode_accuracies(gpu, ImageBank(split, CUDA), episodes)  # the cache, where the method has one
    # float kernels differ between devices; an accuracy may flip on a near-tie, rarely
    assert np.abs(on_cpu - on_gpu).mean() <= 0.05


def test_a_checkpoint_trained_on_the_gpu_predicts_on_the_cpu(tmp_path, glyphs_dir):
    from metabench.runner import evaluate_run, train_run
    from metabench.trained import load_trained

    shutil.copytree(glyphs_dir / "glyphs", tmp_path / "data" / "glyphs")
    common = {"data_dir": str(tmp_path / "data"), "runs_dir": str(tmp_path / "runs"), "hyper": {"hidden": 16}}
    quick = {"iterations": 20, "val_every": 10, "val_episodes": 10, "test_episodes": 20, "queries": 5}
    config = RunConfig(algorithm="protonet", device="cuda", **common, **quick)
    train_run(config)
    on_gpu = evaluate_run(config)
    algorithm, saved = load_trained(config.run_dir / "checkpoint.pt", torch.device("cpu"))
    assert all(not p.is_cuda for net in algorithm.networks().values() for p in net.parameters())
    on_cpu = evaluate_run(RunConfig(algorithm="protonet", device="cpu", **common, **quick))
    assert abs(on_cpu["accuracy"] - on_gpu["accuracy"]) <= 0.02


@pytest.mark.parametrize("name", ["maml", "fomaml", "metasgd"])
def test_vmapped_tasks_on_the_gpu_give_the_loops_meta_gradient(name):
    """``task_batching: auto`` takes vmap on CUDA; it must equal the loop there too (float64)."""
    from tests.test_task_batching import batch, build

    gradients = []
    for setting in ("loop", "auto"):
        algorithm = build(name, setting)
        for network in algorithm.networks().values():
            network.to(CUDA)
        algorithm.vmap_tasks = setting == "auto"  # built on the CPU; on CUDA, auto means vmap
        algorithm.optimizer.zero_grad(set_to_none=True)
        algorithm.accumulate_meta_gradient(batch().to(CUDA))
        parameters = [p for group in algorithm.optimizer.param_groups for p in group["params"]]
        gradients.append(torch.cat([p.grad.reshape(-1) for p in parameters]))
    assert float((gradients[1] - gradients[0]).norm() / gradients[0].norm()) < 1e-10
