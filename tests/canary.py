"""The golden canary: tiny runs whose numbers change exactly when behaviour changes.

A run is identified by declared behaviour versions (``metabench.identity``), not by the bytes
of its code, so a change that alters what an algorithm computes must come with a version bump.
The canary makes a silent change fail: for every registered algorithm, a few meta-steps and a
predict on small float64 images, one thread; for the shared protocol, a tiny run through the
real train and evaluate path. Each result is compared with the golden values committed in
``tests/golden/`` under the versions that produced them:

* the same versions, the same CPU capability and torch: every value bit for bit;
* the same versions on another CPU or torch (other kernels round differently): a tight tolerance;
* versions with no golden values: a failure, until they are written deliberately with
  ``pytest tests/test_canary.py --update-golden`` (a reviewed act that goes with a release note).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metabench import identity
from metabench.algorithms import REGISTRY, TaskShape, build_algorithm
from metabench.episodes import Episode
from tests.conftest import SMALL_IMAGES

GOLDEN = Path(__file__).parent / "golden"
# the tiny setting: every algorithm small enough for a few float64 steps in well under a second
TINY = {"hidden": 4}
CHEAP = {
    "baseline": {"finetune_epochs": 2},
    "baselinepp": {"finetune_epochs": 2},
    "reptile": {"test_inner_steps": 2, "meta_batch": 2},
    "maml": {"meta_batch": 2},
    "fomaml": {"meta_batch": 2},
    "metasgd": {"meta_batch": 2},
    "anil": {"meta_batch": 2},
}
STEPS = 2
# On another CPU or torch (other kernels), each part must agree to (rtol, atol). Losses and
# logits of a few float64 steps agree to about 1e-12. Weight sums agree to about 1e-8 only: a
# convolution bias before a batch norm has a zero true gradient, and Adam divides its rounding
# noise (1e-13) by eps (1e-8) into steps of lr·1e-5. A behaviour change moves losses and logits
# by orders of magnitude more than these.
TOLERANCE = {"losses": (1e-7, 1e-9), "logits": (1e-7, 1e-9), "weights": (1e-7, 1e-6)}


@contextlib.contextmanager
def float64_one_thread():
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_default_dtype(dtype)
        torch.set_num_threads(threads)


def hyper_of(name: str) -> dict[str, Any]:
    return {**TINY, **CHEAP.get(name, {}), **SMALL_IMAGES.get(name, {})} if REGISTRY[name].trained else {}


def batch(count: int, seed: int) -> Episode:
    """``count`` 3-way 2-shot episodes of 16×16 grey images (float64), 2 queries per class."""
    generator = torch.Generator().manual_seed(seed)
    support_x = torch.rand(count, 6, 1, 16, 16, generator=generator, dtype=torch.float64)
    query_x = torch.rand(count, 6, 1, 16, 16, generator=generator, dtype=torch.float64)
    labels = torch.arange(3).repeat(2).expand(count, 6)
    classes = torch.stack([torch.randperm(10, generator=generator)[:3] for _ in range(count)])
    return Episode(support_x, labels, query_x, labels, 3, classes)


def _numbers(tensor: torch.Tensor) -> list[float]:
    return [float(value) for value in tensor.detach().double().reshape(-1)]


def algorithm_canary(name: str) -> dict[str, list[float]]:
    """What ``name`` computes in the tiny setting: losses of ``STEPS`` meta-steps, a prediction,
    and a summary of every network's weights afterwards."""
    task = TaskShape(channels=1, image_size=16, train_ways=3, test_ways=3, train_classes=10)
    with float64_one_thread():
        torch.manual_seed(0)
        algorithm = build_algorithm(name, hyper_of(name), task, torch.device("cpu"))
        losses = []
        if REGISTRY[name].trained:
            for step in range(STEPS):
                metrics = algorithm.meta_train_step(batch(algorithm.episodes_per_step, seed=step))
                losses.append(float(metrics["loss"]))
        algorithm.train(False)
        episode = batch(1, seed=100).task(0)
        torch.manual_seed(1)  # a method that draws at test time (a fine-tuned head's init) draws the same
        logits = algorithm.predict(episode.support_x, episode.support_y, episode.query_x, 3)
        weights = [
            value
            for network in algorithm.networks().values()
            for p in network.state_dict().values()
            if p.is_floating_point()
            for value in (float(p.double().sum()), float(p.double().square().sum()))
        ]
    return {"losses": losses, "logits": _numbers(logits), "weights": weights}


def behaviour_key(versions: dict[str, Any]) -> str:
    """A readable key of declared versions: ``algorithm:Algorithm=1,MAML=1 backbone:conv4=1 protocol=1``."""
    parts = []
    for kind, value in sorted(versions.items()):
        if isinstance(value, dict):
            parts.append(f"{kind}:" + ",".join(f"{k}={v}" for k, v in sorted(value.items())))
        else:
            parts.append(f"{kind}={value}")
    return " ".join(parts)


def platform() -> dict[str, str]:
    return identity.platform(torch.device("cpu"))


def compare(name: str, key: str, golden: dict, values: dict[str, list[float]], tolerance=None) -> None:
    """Fail, naming ``name``, when ``values`` are not the golden ones for its versions: bit for bit
    on the platform that wrote them; elsewhere each part within ``tolerance[part]`` (rtol, atol),
    and a part without a tolerance is not compared (it is only reproducible bit for bit)."""
    tolerance = TOLERANCE if tolerance is None else tolerance
    exact = golden["platform"] == platform()
    for part, expected in golden["values"].items():
        if not exact and part not in tolerance:
            continue
        got = values[part]
        if len(got) != len(expected):
            raise AssertionError(f"{name}: {part} has {len(got)} values, the golden {len(expected)} ({key})")
        if exact:
            same = [float.fromhex(e) == g for e, g in zip(expected, got)]
        else:
            rtol, atol = tolerance[part]
            same = list(np.isclose(got, [float.fromhex(e) for e in expected], rtol=rtol, atol=atol))
        if not all(same):
            first = same.index(False)
            raise AssertionError(
                f"{name}: behaviour changed without a version bump: {part}[{first}] is {got[first]!r}, "
                f"golden {float.fromhex(expected[first])!r} at {key} "
                f"({'bit for bit' if exact else 'within tolerance, another CPU or torch'}); if the change is "
                f"meant, bump {name}'s version with a release note and write its golden values "
                f"(pytest tests/test_canary.py --update-golden)"
            )


def check(name: str, key: str, values: dict[str, list[float]], update: bool, tolerance=None) -> None:
    """Compare with, or with ``update`` write, the golden values of ``name`` at ``key``."""
    path = GOLDEN / f"{name}.json"
    record = json.loads(path.read_text()) if path.is_file() else {}
    if update:
        record[key] = {"platform": platform(), "values": {k: [v.hex() for v in vs] for k, vs in values.items()}}
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        return
    if key not in record:
        raise AssertionError(
            f"{name}: no golden values for {key} in {path}; a version was bumped or the method is new: review "
            f"the change, then write them with `pytest tests/test_canary.py --update-golden`"
        )
    compare(name, key, record[key], values, tolerance)
