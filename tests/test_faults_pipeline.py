"""Faults of the whole pipeline, through `dvc repro` and `metabench grid` in real processes:
a misspelt params key stops everything before a stage runs; an interrupted or killed grid
leaves no process behind and resumes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.fault]

ROOT = Path(__file__).resolve().parents[1]


def _env(repo: Path) -> dict:
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHONPATH": str(repo),
        "METABENCH_TRACKING": "off",
    }


def test_dvc_repro_with_a_misspelt_key_fails_before_any_stage_runs_and_changes_no_committed_file(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    params = clone / "params.yaml"
    text = params.read_text()
    assert "      inner_steps: 1\n" in text
    params.write_text(text.replace("      inner_steps: 1\n", "      inner_step: 1\n", 1))
    start = time.perf_counter()
    result = subprocess.run(["dvc", "repro"], cwd=clone, capture_output=True, text=True, env=_env(clone), timeout=300)
    seconds = time.perf_counter() - start
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "maml has no hyper-parameter inner_step" in output, output
    assert seconds < 30, output
    assert output.count("Running stage") == 1 and "Running stage 'check-params'" in output, output
    status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True).stdout
    assert status.split("\n")[0].strip() == "M params.yaml" and len(status.strip().splitlines()) == 1, status


GRID_PARAMS = """\
leaderboard:
  algorithms: [protonet]
  shots: [1]
  seeds: [0, 1, 2]
run:
  dataset: glyphs
  queries: 5
  val_every: 20
  val_episodes: 5
  test_episodes: 20
  device: cpu
algorithms:
  protonet:
    run:
      iterations: {iterations}
    hyper:
      hidden: 8
"""


def _session(pid: int) -> list:
    """Every live process of session ``pid`` (the grid, its workers and anything they started)."""
    import psutil

    alive = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == pid and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            pass
    return alive


def _grid(work: Path, **kwargs) -> subprocess.Popen:
    command = [sys.executable, "-m", "metabench", "grid", "--workers", "2", "--threads", "1"]
    return subprocess.Popen(
        command, cwd=work, env=_env(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True, **kwargs,
    )  # fmt: skip


@pytest.fixture
def grid_work(tmp_path, glyphs_dir):
    import shutil

    work = tmp_path / "work"
    shutil.copytree(glyphs_dir / "glyphs", work / "data" / "glyphs")
    (work / "params.yaml").write_text(GRID_PARAMS.format(iterations=4000))
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)  # a project root for behaviour.json
    subprocess.run([sys.executable, "-m", "metabench", "pipeline"], cwd=work, env=_env(ROOT), check=True)
    return work


def _wait_until_two_runs_train(work: Path, grid: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while len(list((work / "runs").glob("*/state.pt"))) < 2:
        assert grid.poll() is None and time.monotonic() < deadline, grid.stdout.read() if grid.poll() else "slow"
        time.sleep(0.2)


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "SIGKILL"])
def test_an_interrupted_or_killed_grid_leaves_no_process_and_resumes(grid_work, how):
    grid = _grid(grid_work)
    _wait_until_two_runs_train(grid_work, grid)
    if how == "SIGINT":  # Ctrl-C: the terminal signals the whole foreground group
        os.killpg(grid.pid, signal.SIGINT)
    else:  # a scheduler or `kill`: the driver alone
        os.kill(grid.pid, getattr(signal, how))
    output, _ = grid.communicate(timeout=30)
    assert grid.returncode != 0, output
    deadline = time.monotonic() + 10
    while _session(grid.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _session(grid.pid) == [], f"left running after {how}"
    if how != "SIGKILL":
        assert output.count("interrupted glyphs-protonet") == 3, output  # two running, one never started
        assert "run the same command again to resume" in output
    assert not list((grid_work / "runs").glob("*/metrics.json"))
    (grid_work / "params.yaml").write_text(GRID_PARAMS.format(iterations=60))  # the re-run: a shorter budget
    again = _grid(grid_work)
    output, _ = again.communicate(timeout=600)
    assert again.returncode == 0, output
    assert len(list((grid_work / "runs").glob("*/metrics.json"))) == 3
    # one plain progress line per run, on stderr, readable in a log: position, elapsed, estimate
    lines = [line for line in output.splitlines() if line.startswith("[")]
    assert [line.split(" ·")[0] for line in lines] == ["[1/3", "[2/3", "[3/3"], output
    assert all("elapsed" in line and "glyphs-protonet-5w1s-seed" in line for line in lines), output
    assert "left]" in lines[0] and "left]" not in lines[-1], output
