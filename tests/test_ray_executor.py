"""The grid on Ray: a real two-node cluster (two network namespaces) gives the serial path's
bytes although a worker is SIGKILLed mid-run, with one finished MLflow run per grid point;
outputs are written by the driver only, complete or not at all."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from metabench import unit
from metabench.ray_executor import pack, store_run

from .test_grid import PARAMS, configs, episodes_bytes

ray = pytest.importorskip("ray", reason="the Ray executor is an optional extra: pip install 'metabench[ray]'")


def test_the_driver_writes_a_run_completely_or_leaves_it_unfinished(tmp_path, monkeypatch):
    from metabench import files

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "stale.csv").write_text("from an earlier attempt")
    written = []
    real_write = files.write_atomic
    monkeypatch.setattr(
        files, "write_atomic", lambda path, data: (written.append(Path(path).name), real_write(path, data))
    )
    store_run({"metrics.json": b"{}", "episodes.csv": b"episode,accuracy\n", "checkpoint.pt": b"w"}, run_dir)
    assert written[-1] == "metrics.json"  # the mark of a complete run comes last
    assert sorted(pack(run_dir)) == ["checkpoint.pt", "episodes.csv", "metrics.json"]


# --- a real cluster: head and worker in two network namespaces -------------------------------

HEAD, WORKER = "10.231.0.1", "10.231.0.2"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def namespaces():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to create network namespaces (ip netns)")
    tag = secrets.token_hex(2)
    names = (f"mbhead{tag}", f"mbwork{tag}")
    try:
        for name in names:
            _ip("netns", "add", name)
            _ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        _ip("link", "add", f"vh{tag}", "type", "veth", "peer", "name", f"vw{tag}")
        for end, name, address in ((f"vh{tag}", names[0], HEAD), (f"vw{tag}", names[1], WORKER)):
            _ip("link", "set", end, "netns", name)
            _ip("netns", "exec", name, "ip", "addr", "add", f"{address}/24", "dev", end)
            _ip("netns", "exec", name, "ip", "link", "set", end, "up")
    except subprocess.CalledProcessError as error:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        pytest.skip(f"creating network namespaces is not allowed here ({error.stderr.decode().strip()})")
    yield names
    for name in names:
        subprocess.run(["ip", "netns", "pids", name], capture_output=True)
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _in(namespace: str, command: list[str], env: dict, cwd: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", namespace, *command], env=env, cwd=cwd, **kwargs)


def _task_pids() -> list[int]:
    """Ray worker processes running a grid unit (Ray names them after the task)."""
    out = subprocess.run(["pgrep", "-f", "ray::run_remotely"], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


@pytest.mark.slow  # a two-node Ray cluster and an MLflow server; about two minutes
@pytest.mark.timeout(900)
def test_a_two_node_cluster_finishes_the_grid_when_a_worker_is_killed(tiny_dataset, tmp_path, namespaces):
    _, root = tiny_dataset
    params = {**PARAMS, "algorithms": {**PARAMS["algorithms"]}}
    params["algorithms"]["protonet"] = {
        **PARAMS["algorithms"]["protonet"],
        "run": {"iterations": 40},
    }  # long enough to kill
    serial = configs(root, "serial", params)
    for config in serial:
        assert unit.run_unit(config, threads=1).status == "done"

    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",  # Ray's own authentication stays on
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    head_ns, worker_ns = namespaces
    nodes = {name: tmp_path / name for name in ("head-node", "worker-node")}
    for folder in nodes.values():
        folder.mkdir()
    ray_common = ["--disable-usage-stats", "--num-cpus", "1"]
    head_start = ["ray", "start", "--head", "--node-ip-address", HEAD, "--port", "6379", "--include-dashboard", "false"]
    assert _in(head_ns, [*head_start, *ray_common], env, nodes["head-node"]).wait(120) == 0
    worker_start = ["ray", "start", "--address", f"{HEAD}:6379", "--node-ip-address", WORKER, *ray_common]
    assert _in(worker_ns, worker_start, env, nodes["worker-node"]).wait(120) == 0
    mlflow = _in(
        head_ns,
        [
            "mlflow",
            "server",
            "--host",
            HEAD,
            "--port",
            "5055",
            "--workers",
            "1",
            "--serve-artifacts",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
        ],
        env,
        tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    shutil.copytree(root / "tiny", project / "data" / "tiny")
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    driver = _in(
        head_ns,
        ["metabench", "grid", "--ray-address", f"{HEAD}:6379", "--threads", "1", "--profiles-dir", "none"],
        {**env, "MLFLOW_TRACKING_URI": f"http://{HEAD}:5055"},
        project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline, killed = time.time() + 300, None
    while killed is None and time.time() < deadline and driver.poll() is None:
        pids = _task_pids()
        if pids:
            time.sleep(1.5)  # in the middle of a run
            killed = pids[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.2)
    out, err = driver.communicate(timeout=600)
    try:
        assert killed is not None, "no Ray task was seen running"
        assert driver.returncode == 0, err[-3000:]
        ours = configs(project / "data", "runs", params)
        for config in ours:
            assert config.run_dir.is_dir(), config.run_id
        assert episodes_bytes(ours) == episodes_bytes(serial)  # the killed run too, retried from scratch
        for config in ours:
            recorded = json.loads((config.run_dir / "config.json").read_text())["config"]
            assert recorded["data_dir"] == "data"  # a worker's private copy, never the driver's folder
            assert unit.completed(config, 1) is not None  # the driver sees a complete, current run
        query = (  # the server listens in the head's namespace: ask from there
            f"import json, mlflow.tracking as t; c = t.MlflowClient('http://{HEAD}:5055'); "
            "e = c.get_experiment_by_name('metabench-tiny'); "
            "print(json.dumps([[r.info.run_name, r.info.status] for r in c.search_runs([e.experiment_id])]))"
        )
        listed = subprocess.run(
            ["ip", "netns", "exec", head_ns, sys.executable, "-c", query],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert listed.returncode == 0, listed.stderr[-2000:]
        mlflow_runs = json.loads(listed.stdout.strip().splitlines()[-1])
        finished = [name for name, status in mlflow_runs if status == "FINISHED"]
        trained = sorted(c.run_id for c in ours if c.algorithm != "pixelnn")
        assert sorted(finished) == trained  # exactly one finished MLflow run per grid point
    finally:
        mlflow.kill()
        for namespace in namespaces:
            subprocess.run(["ip", "netns", "exec", namespace, "ray", "stop", "--force"], env=env, capture_output=True)
