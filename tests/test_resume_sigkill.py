"""A training process killed with SIGKILL at a random moment resumes to exactly the uninterrupted result."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.fault]  # SIGKILLs real training processes

PARAMS = """run:
  dataset: tiny
  ways: 5
  shots: 1
  queries: 5
  iterations: 60
  val_every: 3
  val_episodes: 10
  test_episodes: 30
algorithms:
  protonet:
    hyper:
      hidden: 8
      lr_halve_every: 20
"""


def metabench(workdir, *args, **popen):
    command = [
        sys.executable,
        "-m",
        "metabench",
        *args,
        "--params",
        str(workdir / "params.yaml"),
        "--data-dir",
        str(workdir / "data"),
        "--runs-dir",
        str(workdir / "runs"),
    ]
    # MLflow is off: these tests are about the run's files (a killed run's MLflow record is test_faults.py's)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "METABENCH_TRACKING": "off"}
    return subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen)


def finish(workdir, *args) -> str:
    process = metabench(workdir, *args)
    output = process.communicate(timeout=300)[0].decode()
    assert process.returncode == 0, output
    return output


@pytest.fixture
def workdir(tmp_path, tiny_dataset):
    _, data = tiny_dataset
    (tmp_path / "params.yaml").write_text(PARAMS)
    assert data == tmp_path / "data"
    return tmp_path


def run_files(run_dir):
    # "seconds" is wall-clock training time, the one column a kill and resume may change
    log = pd.read_csv(run_dir / "train_log.csv").drop(columns="seconds")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return log, metrics


BYTE_IDENTICAL = ("checkpoint.pt", "config.json", "episodes.csv", "metrics.json")

# states saved at each validation (every 3 updates), or between validations (checkpoint_every 2, val_every 20)
SAVING = {"at-validation": "  val_every: 3\n", "between-validations": "  val_every: 20\n  checkpoint_every: 2\n"}


@pytest.mark.parametrize("saving", SAVING)
def test_sigkill_at_a_random_moment_then_the_same_command_gives_identical_metrics(workdir, saving):
    params = PARAMS.replace("  val_every: 3\n", SAVING[saving])
    (workdir / "params.yaml").write_text(params)
    train = ("train", "--algorithm", "protonet", "--seed", "4", "--evaluate")  # a kill may land in either
    run_dir = workdir / "runs" / "tiny-protonet-5w1s-seed4"

    # the interrupted run: killed once a few states have been saved, at a random moment after that
    process = metabench(workdir, *train)
    deadline = time.time() + 120
    while not (run_dir / "state.pt").is_file():
        assert process.poll() is None and time.time() < deadline, "training ended before saving a state"
        time.sleep(0.05)
    delay = random.uniform(0.0, 1.5)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    if process.returncode != -signal.SIGKILL:
        pytest.skip(f"the run finished within {delay:.2f} s, before the kill; nothing to resume")
    finish(workdir, *train)  # the same command again
    resumed_log, resumed = run_files(run_dir)
    resumed_bytes = {name: (run_dir / name).read_bytes() for name in BYTE_IDENTICAL}

    # the uninterrupted reference, in the same folder (a checkpoint records where its run lives)
    shutil.rmtree(run_dir)
    finish(workdir, *train)
    reference_log, reference = run_files(run_dir)

    pd.testing.assert_frame_equal(resumed_log, reference_log)
    assert resumed == reference, f"killed {delay:.2f} s after the first state was saved"
    for name in BYTE_IDENTICAL:  # docs/evaluation.md, Guarantees: these files, byte for byte
        assert resumed_bytes[name] == (run_dir / name).read_bytes(), name


def test_a_damaged_state_is_never_loaded(workdir):
    """A truncated state file (not produced by our atomic writes, but possible after a copy) is refused."""
    run_dir = workdir / "runs" / "tiny-protonet-5w1s-seed4"
    finish(workdir, "train", "--algorithm", "protonet", "--seed", "4", "--iterations", "6")
    state = run_dir / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    process = metabench(workdir, "train", "--algorithm", "protonet", "--seed", "4")
    output = process.communicate(timeout=300)[0].decode()
    assert process.returncode != 0
    assert "cannot be read" in output and "state.pt" in output
    assert "Traceback" not in output
