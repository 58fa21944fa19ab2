"""MLflow holds what a run cost: the machine's load while it ran (``system/*``, live or sent by the
grid's driver from the run's files) and the profile's cost numbers (``cost.*``) on every seed's run."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from metabench import run_folder, system_metrics, tracking, unit
from metabench.config import RunConfig
from metabench.profiling import runs_of_setting
from metabench.runner import evaluate_run, train_run

QUICK = {"iterations": 40, "val_every": 20, "val_episodes": 10, "test_episodes": 20, "queries": 5}


@pytest.fixture
def store(tmp_path, monkeypatch, glyphs_dir):
    shutil.copytree(glyphs_dir / "glyphs", tmp_path / "data" / "glyphs")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(system_metrics, "INTERVAL_SECONDS", 0.2)
    return MlflowClient(uri)


def config(tmp_path, **extra) -> RunConfig:
    settings = {
        "algorithm": "protonet",
        "data_dir": str(tmp_path / "data"),
        "runs_dir": str(tmp_path / "runs"),
        "hyper": {"hidden": 16},
        **QUICK,
    }
    return RunConfig(**{**settings, **extra})


def run_of(client, run_dir):
    return client.get_run(json.loads((run_dir / run_folder.MLFLOW_RUN).read_text())["run_id"])


def system_points(client, run_id):
    return sorted(client.get_metric_history(run_id, "system/cpu_utilization_percentage"), key=lambda m: m.step)


def test_a_tracked_training_logs_the_machines_load_live_and_keeps_it_in_the_run(tmp_path, store):
    run = config(tmp_path)
    train_run(run)
    recorded = run_of(store, run.run_dir)
    points = system_points(store, recorded.info.run_id)
    rows = pd.read_csv(run.run_dir / system_metrics.FILE)
    assert len(points) == len(rows) >= 2  # samples during training, and one at its end
    assert [p.step for p in points] == list(range(len(points)))
    assert all(0 <= p.value <= 100 for p in points)
    assert {"system/system_memory_usage_megabytes", "system/disk_usage_percentage"} <= set(recorded.data.metrics)
    assert recorded.info.start_time <= points[0].timestamp <= points[-1].timestamp <= recorded.info.end_time


def test_the_grid_sends_a_runs_load_and_its_true_duration_from_its_files(tmp_path, store, monkeypatch):
    run = config(tmp_path)
    monkeypatch.setenv("METABENCH_TRACKING", "off")  # as in a grid worker: nothing reaches MLflow
    unit.run_unit(run, threads=1)
    assert not (run.run_dir / run_folder.MLFLOW_RUN).exists()
    rows = pd.read_csv(run.run_dir / system_metrics.FILE)
    assert len(rows) >= 2 and rows["step"].tolist() == list(range(len(rows)))

    monkeypatch.setenv("METABENCH_TRACKING", "on")
    recorded = store.get_run(tracking.resend(run.run_dir))
    points = system_points(store, recorded.info.run_id)
    assert [p.timestamp for p in points] == rows["timestamp"].tolist()
    worked = json.loads((run.run_dir / "train_summary.json").read_text())["train_seconds"]
    worked += json.loads((run.run_dir / "eval_timing.json").read_text())["eval_seconds"]
    duration = (recorded.info.end_time - recorded.info.start_time) / 1000
    assert duration == pytest.approx(worked, abs=0.01)  # the run's work, not the seconds it took to send it
    loss = store.get_metric_history(recorded.info.run_id, "train/loss")
    assert all(recorded.info.start_time <= m.timestamp <= recorded.info.end_time for m in loss)


def test_a_second_sampler_of_the_same_run_records_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(system_metrics, "INTERVAL_SECONDS", 0.05)
    outer = system_metrics.Sampler(tmp_path).start()
    inner = system_metrics.Sampler(tmp_path).start()  # the grid's unit already samples this run
    inner.stop()
    assert not (tmp_path / system_metrics.FILE).exists()
    outer.stop()
    first = pd.read_csv(tmp_path / system_metrics.FILE)
    with system_metrics.Sampler(tmp_path, resume=True):
        pass
    assert pd.read_csv(tmp_path / system_metrics.FILE)["step"].tolist() == list(range(len(first) + 1))
    with system_metrics.Sampler(tmp_path, resume=False):  # a run started afresh
        pass
    assert pd.read_csv(tmp_path / system_metrics.FILE)["step"].tolist() == [0]


def test_the_profile_cost_lands_on_every_seed_of_its_setting_and_nowhere_else(tmp_path, store):
    seed0, seed1 = config(tmp_path, iterations=5), config(tmp_path, iterations=5, seed=1)
    other_shots = config(tmp_path, iterations=5, shots=5)
    variant = dataclasses.replace(config(tmp_path, iterations=5), variant="abc12345")
    for run in (seed0, seed1, other_shots, variant):
        train_run(run)
    evaluate_run(seed0)
    assert runs_of_setting(seed0) == [seed0.run_dir, seed1.run_dir]
    assert runs_of_setting(variant) == [variant.run_dir]

    profile = {
        "device": "cpu",
        "threads": 1,
        "meta_batch": 1,
        "meta_train_tasks_per_second": 12.5,
        "peak_rss_mb": 700.0,
    }
    logged = tracking.log_cost(profile, runs_of_setting(seed0))
    assert len(logged) == 2
    for run in (seed0, seed1):
        recorded = run_of(store, run.run_dir)
        assert recorded.data.metrics["cost.meta_train_tasks_per_second"] == 12.5
        assert recorded.data.metrics["cost.peak_rss_mb"] == 700.0
        assert "cost.meta_batch" not in recorded.data.metrics  # a setting, not a cost
        assert recorded.data.tags["cost.threads"] == "1"
        assert recorded.info.status == "FINISHED"
    assert run_of(store, seed0.run_dir).data.metrics["accuracy"] > 0  # beside the accuracy
    for run in (other_shots, variant):
        assert not {key for key in run_of(store, run.run_dir).data.metrics if key.startswith("cost.")}


def test_cost_for_an_untracked_run_is_passed_over_and_marks_nothing(tmp_path, store, monkeypatch):
    run = config(tmp_path, iterations=5)
    monkeypatch.setenv("METABENCH_TRACKING", "off")
    train_run(run)
    monkeypatch.setenv("METABENCH_TRACKING", "on")
    assert tracking.log_cost({"meta_train_tasks_per_second": 1.0}, [run.run_dir]) == []
    assert not (run.run_dir / run_folder.TRACKING_PENDING).exists()


def test_samples_a_busy_store_refused_go_with_the_next_one(tmp_path, monkeypatch):
    monkeypatch.setattr(system_metrics, "INTERVAL_SECONDS", 3600)  # samples taken by hand below
    sent, calls = [], {"n": 0}

    def flaky(rows):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("database is locked")
        sent.extend(row["step"] for row in rows)

    sampler = system_metrics.Sampler(tmp_path, send=flaky).start()
    sampler.sample()
    sampler.sample()
    sampler.stop()
    assert sent == [0.0, 1.0, 2.0]  # the refused sample went with the next, none twice
