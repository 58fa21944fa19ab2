"""The grid: runs as units, spread over worker processes, never run twice, identical to serial."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from metabench import MetabenchError, grid, unit
from metabench.board import leaderboard_runs

PARAMS = {
    "leaderboard": {"algorithms": ["protonet", "fomaml"], "shots": [1], "seeds": [0, 1], "references": ["pixelnn"]},
    "run": {
        "dataset": "tiny",
        "ways": 5,
        "queries": 5,
        "val_every": 3,
        "val_episodes": 4,
        "test_episodes": 10,
        "device": "cpu",
    },
    "algorithms": {
        "protonet": {"run": {"iterations": 6}, "hyper": {"hidden": 8, "train_ways": 5}},
        "fomaml": {"run": {"iterations": 6, "train_queries": 1}, "hyper": {"hidden": 8, "meta_batch": 2}},
    },
}


def configs(root: Path, runs: str, params: dict = PARAMS):
    return leaderboard_runs(params, "test", data_dir=str(root), runs_dir=str(root.parent / runs))


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def episodes_bytes(grid_configs) -> dict[str, bytes]:
    return {config.run_id: (config.run_dir / "episodes.csv").read_bytes() for config in grid_configs}


def test_two_workers_give_the_serial_runs_byte_for_byte(tiny_dataset, one_thread):
    _, root = tiny_dataset
    serial = configs(root, "serial")
    for config in serial:  # the serial path: each unit in this process, one thread
        assert unit.run_unit(config, threads=1).status == "done"
    parallel = configs(root, "parallel")
    seen = []
    outcomes = grid.run_grid(parallel, grid.LocalExecutor(workers=2, threads=1), seen.append, track=False)
    assert [o.status for o in outcomes] == ["done"] * 5 and len(seen) == 5
    assert episodes_bytes(parallel) == {c.run_id: v for c, v in zip(parallel, episodes_bytes(serial).values())}
    assert {o.run_id for o in outcomes} == {c.run_id for c in parallel}


def test_finished_runs_are_kept_and_only_changed_ones_run_again(tiny_dataset, one_thread):
    _, root = tiny_dataset
    first = configs(root, "runs")
    executor = grid.LocalExecutor(workers=2, threads=1)
    grid.run_grid(first, executor, track=False)
    stamps = {c.run_id: (c.run_dir / "checkpoint.pt").stat().st_mtime_ns for c in first if c.algorithm != "pixelnn"}
    again = grid.run_grid(configs(root, "runs"), executor, track=False)
    assert {o.status for o in again} == {"skipped"}
    changed = {
        **PARAMS,
        "algorithms": {
            **PARAMS["algorithms"],
            "protonet": {"run": {"iterations": 9}, "hyper": {"hidden": 8, "train_ways": 5}},
        },
    }
    third = grid.run_grid(configs(root, "runs", changed), executor, track=False)
    ran = {o.run_id for o in third if o.status == "done"}
    assert ran == {c.run_id for c in first if c.algorithm == "protonet"}  # more iterations extend protonet only
    for config in first:
        if config.algorithm == "fomaml":
            assert (config.run_dir / "checkpoint.pt").stat().st_mtime_ns == stamps[config.run_id]


def test_a_thread_count_change_reruns_every_run(tiny_dataset, one_thread):
    # a run's CPU floats depend on its thread count, so a result made with another is not kept
    _, root = tiny_dataset
    grid.run_grid(configs(root, "runs"), grid.LocalExecutor(workers=2, threads=1), track=False)
    outcomes = grid.run_grid(configs(root, "runs"), grid.LocalExecutor(workers=1, threads=2), track=False)
    assert {o.status for o in outcomes} == {"done"}


@pytest.mark.fault
def test_a_failing_run_is_reported_and_the_others_finish(tiny_dataset, one_thread):
    _, root = tiny_dataset
    broken = {
        **PARAMS,
        "algorithms": {
            **PARAMS["algorithms"],
            "fomaml": {
                "run": {"iterations": 6, "train_queries": 1},
                "hyper": {"hidden": 8, "meta_batch": 2, "inner_lr": 1e6},
            },
        },
    }
    outcomes = grid.run_grid(configs(root, "runs", broken), grid.LocalExecutor(workers=2, threads=1), track=False)
    status = {o.run_id: o.status for o in outcomes}
    assert {s for r, s in status.items() if "fomaml" in r} == {"failed"}
    assert {s for r, s in status.items() if "fomaml" not in r} == {"done"}
    assert all("lower the learning rate" in o.error for o in outcomes if o.status == "failed")


def test_bad_worker_counts_are_one_line_errors():
    with pytest.raises(MetabenchError, match="at least 1"):
        grid.LocalExecutor(workers=0, threads=1)


def _workers(pid: int) -> list[int]:
    """The grid's worker processes (spawned interpreters), not multiprocessing's resource tracker."""
    out = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if "spawn_main" in line]


@pytest.mark.fault
@pytest.mark.slow  # a real `metabench grid` whose worker is SIGKILLed mid-run
def test_a_killed_worker_costs_a_retry_not_a_result(tiny_dataset, tmp_path, one_thread):
    _, root = tiny_dataset
    params = {
        **PARAMS,
        "algorithms": {
            **PARAMS["algorithms"],
            "fomaml": {
                "run": {"iterations": 400, "train_queries": 1, "val_every": 20},
                "hyper": {"hidden": 8, "meta_batch": 2},
            },
        },
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "METABENCH_TRACKING": "off"}
    command = ["metabench", "grid", "--params", "params.yaml", "--data-dir", str(root), "--runs-dir", "killed"]
    grid_process = subprocess.Popen(
        [*command, "--workers", "2", "--threads", "1"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    state = tmp_path / "killed" / "tiny-fomaml-5w1s-seed0" / "state.pt"
    deadline = time.monotonic() + 120
    while not state.is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert state.is_file(), "the fomaml run never saved a state"
    workers = _workers(grid_process.pid)
    assert workers, "no worker processes found"
    for pid in workers:  # every worker: whichever holds the fomaml run dies mid-run
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    out, err = grid_process.communicate(timeout=600)
    assert grid_process.returncode == 0, err[-3000:]
    serial = configs(root, "serial", params)
    for config in serial:
        unit.run_unit(config, threads=1)
    killed = configs(root, "killed", params)
    for a, b in zip(killed, serial):
        assert (a.run_dir / "episodes.csv").read_bytes() == (b.run_dir / "episodes.csv").read_bytes(), a.run_id


def test_progress_lines_count_runs_and_estimate_what_remains_from_the_finished_ones(tiny_dataset):
    _, root = tiny_dataset
    runs = configs(root, "runs")  # protonet and fomaml × 2 seeds, pixelnn: 5 runs
    now = [0.0]
    progress = grid.GridProgress(runs, workers=2, profiles_dir=None, clock=lambda: now[0])
    metrics = {"accuracy": 0.5, "ci95": 0.01}
    now[0] = 30.0
    first = progress.line(unit.Outcome(runs[0].run_id, "done", metrics, {"train": 24.0, "evaluate": 6.0}))
    assert first.startswith("[1/5 · 30 s elapsed · about ") and runs[0].run_id in first and "50.00 ± 1.00 %" in first
    # budgets without profiles: 6 iterations each for the trained runs, 0 for the reference; the
    # first took 30 s for 6, so the 3 trained runs left take about 3 × 30 s over 2 workers
    assert "about 45 s left]" in first
    stopped = progress.line(unit.Outcome(runs[1].run_id, "interrupted", error="not started"))
    assert stopped.startswith("[1/5 ") and "interrupted" in stopped
    now[0] = 4000.0
    for config in runs[1:]:
        last = progress.line(unit.Outcome(config.run_id, "skipped", metrics))
    assert last.startswith("[5/5 · 1 h 06 min elapsed]")


def test_progress_on_a_ray_cluster_whose_parallelism_is_unknown(tiny_dataset):
    _, root = tiny_dataset
    runs = configs(root, "runs")
    progress = grid.GridProgress(runs, workers=None, profiles_dir=None, clock=lambda: 0.0)
    line = progress.line(unit.Outcome(runs[0].run_id, "done", {"accuracy": 0.5, "ci95": 0.01}, {"train": 6.0}))
    assert line.startswith("[1/5 · 0 s elapsed · about 18 s left]")
