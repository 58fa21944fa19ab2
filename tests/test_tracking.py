"""MLflow tracking through a real `mlflow server` on 127.0.0.1, including the server dying."""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from metabench import run_folder, tracking
from metabench.config import RunConfig
from metabench.runner import evaluate_run, train_run
from tests.network import free_port

QUICK = {"iterations": 20, "val_every": 5, "val_episodes": 10, "test_episodes": 20, "queries": 5}


class Server:
    """A real MLflow tracking server with a sqlite store and served artifacts."""

    def __init__(self, root: Path):
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = None

    def start(self):
        mlflow = Path(sys.executable).with_name("mlflow")
        self.process = subprocess.Popen(
            [
                str(mlflow),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{self.root / 'store.db'}",
                "--artifacts-destination",
                str(self.root / "artifacts"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError("mlflow server did not start within 120 s")

    def stop(self):
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, 9)
            self.process.wait(30)

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.loads(response.read())


@pytest.fixture
def server(tmp_path):
    instance = Server(tmp_path / "mlflow").start()
    yield instance
    instance.stop()


@pytest.fixture
def data(tmp_path, glyphs_dir):
    shutil.copytree(glyphs_dir / "glyphs", tmp_path / "data" / "glyphs")
    return tmp_path / "data"


def config(tmp_path, data, **extra) -> RunConfig:
    return RunConfig(
        algorithm="protonet",
        data_dir=str(data),
        runs_dir=str(tmp_path / "runs"),
        hyper={"hidden": 16},
        **{**QUICK, **extra},
    )


def run_record(run_dir: Path) -> str:
    return json.loads((run_dir / run_folder.MLFLOW_RUN).read_text())["run_id"]


@pytest.mark.slow  # a real mlflow server
def test_params_metrics_tags_and_artifacts_arrive_through_the_rest_api(tmp_path, data, server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    run = config(tmp_path, data)
    train_run(run)
    evaluate_run(run)
    run_id = run_record(run.run_dir)
    info = server.get(f"/api/2.0/mlflow/runs/get?run_id={run_id}")["run"]
    params = {p["key"]: p["value"] for p in info["data"]["params"]}
    metrics = {m["key"]: m["value"] for m in info["data"]["metrics"]}
    tags = {t["key"]: t["value"] for t in info["data"]["tags"]}
    assert params["seed"] == "0" and params["hyper.hidden"] == "16" and params["algorithm"] == "protonet"
    assert not {key for key in params if key.startswith("config.")}, "each parameter once"
    local = json.loads((run.run_dir / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(local["accuracy"])
    assert metrics["accuracy_ci95"] == pytest.approx(local["ci95"])
    # MLflow lists metrics by name: the test accuracy first, then its interval; the training
    # batch's accuracy is train/accuracy, not a second "accuracy"
    assert sorted(metrics)[:2] == ["accuracy", "accuracy_ci95"]
    assert {"train/loss", "val/accuracy", "val/best_accuracy", "train/seconds", "test/eval_seconds"} <= set(metrics)
    assert not {"test_ways", "test_shots", "test_seed", "test_episode_seed", "test_queries"} & set(metrics)
    assert {"params_hash", "dataset_checksum", "seed", "device", "mlflow.user", "mlflow.source.name"} <= set(tags)
    assert len(tags["mlflow.source.git.commit"]) in (40, len("unknown"))
    experiment = server.get(f"/api/2.0/mlflow/experiments/get?experiment_id={info['info']['experiment_id']}")
    experiment_tags = {t["key"]: t["value"] for t in experiment["experiment"]["tags"]}
    assert experiment["experiment"]["name"] == "metabench-glyphs"
    assert experiment_tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on runs
    history = server.get(f"/api/2.0/mlflow/metrics/get-history?run_id={run_id}&metric_key=train%2Floss")["metrics"]
    assert len(history) == QUICK["iterations"]
    stamps = [point["timestamp"] for point in sorted(history, key=lambda point: point["step"])]
    assert stamps == sorted(stamps) and stamps[-1] > stamps[0], "each point stamped when it was reached"
    artifacts = server.get(f"/api/2.0/mlflow/artifacts/list?run_id={run_id}")["files"]
    assert {"checkpoint.pt", "episodes.csv", "train_log.csv", "metrics.json"} <= {a["path"] for a in artifacts}
    assert info["info"]["status"] == "FINISHED"


@pytest.mark.fault
@pytest.mark.slow  # a real mlflow server, killed
def test_server_killed_mid_run_loses_nothing(tmp_path, data, server, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    monkeypatch.setattr(tracking, "_warned", False)
    from metabench.algorithms.protonet import ProtoNet

    original, calls = ProtoNet.meta_train_step, {"n": 0}

    def kill_server_at_step_8(self, batch):
        calls["n"] += 1
        if calls["n"] == 8:
            server.stop()
        return original(self, batch)

    monkeypatch.setattr(ProtoNet, "meta_train_step", kill_server_at_step_8)
    run = config(tmp_path, data)
    train_run(run)  # finishes although the server is gone
    evaluate_run(run)
    monkeypatch.setattr(ProtoNet, "meta_train_step", original)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "metabench track" in warnings[0]
    log = pd.read_csv(run.run_dir / "train_log.csv")
    assert len(log) == QUICK["iterations"] and (run.run_dir / "episodes.csv").is_file()
    assert (run.run_dir / run_folder.TRACKING_PENDING).is_file()

    server.start()  # same store: the first five steps made it before the kill
    new_id = tracking.resend(run.run_dir)
    assert new_id is not None and not (run.run_dir / run_folder.TRACKING_PENDING).exists()
    history = server.get(f"/api/2.0/mlflow/metrics/get-history?run_id={new_id}&metric_key=train%2Floss")["metrics"]
    assert sorted(int(m["step"]) for m in history) == list(range(1, QUICK["iterations"] + 1))
    info = server.get(f"/api/2.0/mlflow/runs/get?run_id={new_id}")["run"]
    metrics = {m["key"]: m["value"] for m in info["data"]["metrics"]}
    assert metrics["accuracy"] == pytest.approx(json.loads((run.run_dir / "metrics.json").read_text())["accuracy"])


def test_default_store_is_sqlite_in_the_working_directory(tmp_path, data, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    run = config(tmp_path, data, iterations=5)
    train_run(run)
    assert (tmp_path / "mlflow.db").is_file()
    from mlflow.tracking import MlflowClient

    client = MlflowClient("sqlite:///mlflow.db")
    assert client.get_run(run_record(run.run_dir)).data.params["algorithm"] == "protonet"


def test_make_mlflow_ui_prints_a_working_link_per_experiment(tmp_path):
    from mlflow.tracking import MlflowClient

    from metabench.tracking import experiment_links, run_params

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    glyphs = client.create_experiment("metabench-glyphs")
    client.create_experiment("someone-else")
    assert experiment_links(uri) == [
        f"metabench-glyphs: http://127.0.0.1:5000/#/experiments/{glyphs}?workflowType=machine_learning"
    ]
    # params hold every resolved hyper-parameter, not only those params.yaml overrides
    meta = {"config": {"shots": 1, "hyper": {"meta_batch": 8}}, "hyper": {"meta_batch": 8, "first_order": True}}
    assert run_params(meta) == {"shots": 1, "hyper.meta_batch": 8, "hyper.first_order": True}
