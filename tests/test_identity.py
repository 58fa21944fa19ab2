"""A run is identified by what it does: settings, data, declared behaviour versions, threads and
platform; never by the bytes of its source. Legacy runs (a source digest) migrate without retraining."""

import json

import pandas as pd
import pytest

from metabench import identity, legacy, unit
from metabench.algorithms import REGISTRY, make_hyper
from metabench.algorithms.maml import MAML
from metabench.config import RunConfig
from metabench.prepared import prepare
from metabench.run_folder import RunFolder


def all_behaviours() -> dict[str, dict]:
    return {name: identity.behaviour(name, make_hyper(cls.Hyper, {}, name)) for name, cls in REGISTRY.items()}


def test_bumping_maml_changes_the_identity_of_the_maml_family_and_nothing_else(monkeypatch):
    before = all_behaviours()
    monkeypatch.setattr(MAML, "version", 2)
    after = all_behaviours()
    changed = {name for name in REGISTRY if before[name] != after[name]}
    assert changed == {"maml", "fomaml", "metasgd", "anil"}


def test_a_backbone_or_protocol_bump_reaches_every_run_that_uses_it(monkeypatch):
    from metabench.models import Conv4

    before = all_behaviours()
    monkeypatch.setattr(Conv4, "version", 2)
    changed = {name for name, versions in all_behaviours().items() if versions != before[name]}
    assert changed == {name for name in REGISTRY if name != "pixelnn"}  # every method but the pixel reference
    monkeypatch.setattr(identity, "PROTOCOL_VERSION", 2)
    assert all(versions["protocol"] == 2 for versions in all_behaviours().values())


def tiny_config(root, **settings) -> RunConfig:
    values = dict(
        dataset="tiny",
        algorithm="protonet",
        queries=3,
        iterations=4,
        val_every=2,
        val_episodes=4,
        test_episodes=6,
        data_dir=str(root / "data"),
        runs_dir=str(root / "runs"),
        hyper={"hidden": 4},
    )
    return RunConfig(**{**values, **settings})


@pytest.fixture
def finished(tiny_dataset, monkeypatch):
    """A trained and evaluated tiny ProtoNet run, complete for the grid at one thread."""
    monkeypatch.setenv("METABENCH_TRACKING", "off")
    _, root = tiny_dataset
    config = tiny_config(root.parent)
    assert unit.run_unit(config, threads=1).status == "done"
    assert unit.completed(config, 1) is not None
    return config


def _rewrite(path, change) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


@pytest.mark.parametrize("key, value", [("torch", "2.12.0+cpu"), ("cpu", "AVX512"), ("device", "cuda")])
def test_a_run_recorded_under_another_torch_or_cpu_is_not_current(finished, key, value):
    folder = RunFolder(finished.run_dir)
    for path in (folder.config, folder.metrics):
        _rewrite(path, lambda record: record["identity"].update({key: value}))
    assert unit.completed(finished, 1) is None
    assert unit._must_restart(finished, 1)
    assert unit.run_unit(finished, threads=1).status == "done"  # retrained, now current again
    assert json.loads(folder.config.read_text())["identity"][key] == identity.platform(prepare(finished).device)[key]


def test_provenance_is_recorded_and_never_compared(finished):
    folder = RunFolder(finished.run_dir)
    saved = json.loads(folder.config.read_text())
    assert (
        set(saved["provenance"]) == {"git_commit", "source_digest"} and len(saved["provenance"]["source_digest"]) == 64
    )
    for path in (folder.config, folder.metrics):
        _rewrite(path, lambda record: record["provenance"].update(git_commit="0" * 40, source_digest="f" * 64))
    folder.seal()  # as a run made at that commit sealed its files
    assert unit.completed(finished, 1) is not None


def _make_legacy(folder: RunFolder, digest: str) -> dict:
    """Rewrite the folder's records as the landed code wrote them: a ``fingerprint`` with ``code``."""
    current = json.loads(folder.config.read_text())["identity"]
    old = {"config": current["config"], "dataset": current["dataset"], "code": digest, "threads": current["threads"]}
    for path in (folder.config, folder.metrics):
        record = json.loads(path.read_text())
        for key in ("identity", "provenance"):
            record.pop(key)
        path.write_text(json.dumps({**record, "fingerprint": old}))
    return old


def test_a_legacy_run_of_the_landed_code_is_kept_and_restamped(finished):
    folder = RunFolder(finished.run_dir)
    metrics_before = json.loads(folder.metrics.read_text())
    _make_legacy(folder, legacy.DIGESTS["protonet"])
    checkpoint = folder.checkpoint.read_bytes()
    assert unit.completed(finished, 1) is not None  # kept: nothing retrained
    assert folder.checkpoint.read_bytes() == checkpoint
    config, metrics = json.loads(folder.config.read_text()), json.loads(folder.metrics.read_text())
    assert "fingerprint" not in config and config["identity"] == prepare(finished).identity(1)
    assert config["provenance"] == {
        "git_commit": legacy.COMMIT,
        "source_digest": legacy.DIGESTS["protonet"],
        "migrated_from": "fingerprint",
    }
    assert metrics["identity"] == config["identity"] and metrics["accuracy"] == metrics_before["accuracy"]


def test_a_legacy_run_of_other_code_is_not_current(finished):
    folder = RunFolder(finished.run_dir)
    _make_legacy(folder, "0" * 64)  # code the landed commit did not have
    assert unit.completed(finished, 1) is None and unit._must_restart(finished, 1)
    assert "fingerprint" in json.loads(folder.config.read_text())  # left as it was, for the grid to replace


def test_a_legacy_run_with_another_thread_count_is_not_current(finished):
    _make_legacy(RunFolder(finished.run_dir), legacy.DIGESTS["protonet"])
    assert unit.completed(finished, 2) is None


def test_a_legacy_run_is_not_taken_once_a_version_has_moved_on(finished, monkeypatch):
    from metabench.algorithms.protonet import ProtoNet

    _make_legacy(RunFolder(finished.run_dir), legacy.DIGESTS["protonet"])
    monkeypatch.setattr(ProtoNet, "version", 2)
    assert unit.completed(finished, 1) is None


def test_an_interrupted_legacy_run_resumes_from_its_state(tiny_dataset, monkeypatch, recwarn):
    from metabench import checkpoint
    from metabench.runner import train_run

    monkeypatch.setenv("METABENCH_TRACKING", "off")
    _, root = tiny_dataset
    whole = tiny_config(root.parent, iterations=6, runs_dir=str(root.parent / "whole"))
    train_run(whole)
    part = tiny_config(root.parent, iterations=6, runs_dir=str(root.parent / "part"))
    train_run(tiny_config(root.parent, iterations=4, runs_dir=str(root.parent / "part")))
    folder = RunFolder(part.run_dir)
    folder.checkpoint.unlink()  # as if killed after the state of iteration 4: not finished
    saved = checkpoint.load(folder.state)
    current = saved.pop("identity")
    old = {**{k: current[k] for k in ("config", "dataset", "threads")}, "code": legacy.DIGESTS["protonet"]}
    checkpoint.save_atomic({**saved, "fingerprint": old}, folder.state)
    train_run(part)
    assert not [w for w in recwarn if "from scratch" in str(w.message)]  # resumed, not restarted
    whole_log = pd.read_csv(RunFolder(whole.run_dir).train_log).drop(columns="seconds")
    pd.testing.assert_frame_equal(pd.read_csv(folder.train_log).drop(columns="seconds"), whole_log)
