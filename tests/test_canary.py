"""The golden canary (``tests/canary.py``): a behaviour change without a version bump fails here."""

import dataclasses

import pytest
import torch

from metabench import identity
from metabench.algorithms import REGISTRY, Algorithm, make_hyper
from metabench.algorithms import maml as maml_module
from metabench.config import RunConfig
from metabench.runner import evaluate_run, train_run
from tests import canary


def algorithm_key(name: str) -> str:
    """The versions the algorithm canary exercises: the algorithm's lineage and its backbone."""
    cls = REGISTRY[name]
    versions = identity.behaviour(name, make_hyper(cls.Hyper, canary.hyper_of(name), name))
    return canary.behaviour_key({k: v for k, v in versions.items() if k != "protocol"})


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_algorithm_computes_the_golden_values_of_its_versions(name, update_golden):
    canary.check(name, algorithm_key(name), canary.algorithm_canary(name), update_golden)


def test_a_changed_inner_loop_without_a_version_bump_fails_naming_the_algorithm(monkeypatch):
    original = maml_module.adapt

    def faster_inner_loop(model, params, x, y, steps, lr, first_order, loss_fn=None):
        return original(model, params, x, y, steps, 1.01 * lr, first_order, loss_fn)  # a 1% larger inner step

    monkeypatch.setattr(maml_module, "adapt", faster_inner_loop)
    with pytest.raises(AssertionError, match=r"^maml: behaviour changed without a version bump"):
        canary.check("maml", algorithm_key("maml"), canary.algorithm_canary("maml"), update=False)


def test_bumped_versions_without_golden_values_fail_until_written(monkeypatch, tmp_path):
    monkeypatch.setattr(maml_module.MAML, "version", 2)
    key = algorithm_key("fomaml")
    assert "MAML=2" in key
    with pytest.raises(AssertionError, match="fomaml: no golden values"):
        canary.check("fomaml", key, canary.algorithm_canary("fomaml"), update=False)
    monkeypatch.setattr(canary, "GOLDEN", tmp_path)  # writing takes the explicit flag, here into a copy
    canary.check("fomaml", key, canary.algorithm_canary("fomaml"), update=True)
    canary.check("fomaml", key, canary.algorithm_canary("fomaml"), update=False)


def test_on_another_cpu_the_golden_values_hold_within_the_tolerance():
    key = algorithm_key("protonet")
    values = canary.algorithm_canary("protonet")
    golden = {"platform": {"torch": "2.13.0+cpu", "device": "cpu", "cpu": "OTHER"}, "values": {}}
    golden["values"] = {k: [(v * (1 + 1e-12)).hex() for v in vs] for k, vs in values.items()}
    canary.compare("protonet", key, golden, values)  # last-bit differences pass
    golden["values"]["losses"][0] = (values["losses"][0] * 1.001).hex()
    with pytest.raises(AssertionError, match="protonet: behaviour changed"):
        canary.compare("protonet", key, golden, values)


def protocol_canary(root) -> dict[str, list[float]]:
    """A tiny ProtoNet run through the real train and evaluate path (float32, one thread):
    sampling, validation, checkpoint selection, the fixed episodes and cached evaluation."""
    config = RunConfig(
        dataset="tiny",
        algorithm="protonet",
        queries=3,
        iterations=6,
        val_every=2,
        val_episodes=4,
        test_episodes=8,
        data_dir=str(root / "data"),
        runs_dir=str(root / "runs"),
        hyper={"hidden": 4},
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = train_run(config)
        metrics = evaluate_run(config)
    finally:
        torch.set_num_threads(threads)
    log = (config.run_dir / "train_log.csv").read_text().splitlines()[1:]
    losses = [float(line.split(",")[1]) for line in log]
    episodes = [float(line.split(",")[1]) for line in (config.run_dir / "episodes.csv").read_text().splitlines()[1:]]
    return {
        "losses": losses,
        "best": [float(summary["best_iteration"])],
        "episodes": episodes,
        "accuracy": [metrics["accuracy"]],
    }


# float32 through the real path: on other kernels the losses move by float32 rounding, and a
# query near a tie may flip (1/15 of an episode), so the mean accuracy is compared within a few
# flips; which iteration was best and each episode's accuracy are compared bit for bit only
PROTOCOL_TOLERANCE = {"losses": (1e-4, 1e-6), "accuracy": (0.0, 0.05)}


def test_the_shared_protocol_computes_its_golden_values(tiny_dataset, monkeypatch, update_golden):
    monkeypatch.setenv("METABENCH_TRACKING", "off")
    _, root = tiny_dataset
    key = canary.behaviour_key(identity.behaviour("protonet", make_hyper(REGISTRY["protonet"].Hyper, {}, "protonet")))
    canary.check("protocol", key, protocol_canary(root.parent), update_golden, PROTOCOL_TOLERANCE)


def test_every_class_of_every_lineage_declares_its_own_version_and_notes():
    classes = {klass for cls in REGISTRY.values() for klass in cls.__mro__ if issubclass(klass, Algorithm)}
    for klass in classes:
        own = vars(klass)
        assert "version" in own, f"{klass.__name__} inherits its parent's version: declare its own"
        assert isinstance(own["version"], int) and own["version"] >= 1
        notes = own.get("release_notes") or {}
        assert set(notes) == set(range(1, own["version"] + 1)), f"{klass.__name__} needs a note for every version"


def test_identity_holds_the_versions_of_the_class_and_its_parents():
    hyper = make_hyper(REGISTRY["anil"].Hyper, {}, "anil")
    assert identity.behaviour("anil", hyper) == {
        "algorithm": {"ANIL": 1, "MAML": 1, "Algorithm": 1},
        "backbone": {"conv4": 1},
        "protocol": identity.PROTOCOL_VERSION,
    }
    assert dataclasses.is_dataclass(hyper)
