"""Data-parallel meta-training over torch.distributed ranks (metabench.distributed).

Two gloo ranks on 127.0.0.1 must give, in float64, the meta-gradient and the weights after one
step of a single process; a torchrun training SIGKILLed mid-run must resume to the metrics of an
uninterrupted 2-rank run; an algorithm that does not split its meta-batch must refuse.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from metabench import checkpoint, distributed
from metabench.algorithms import TaskShape, build_algorithm
from metabench.episodes import Episode
from tests.maths import relative_error
from tests.network import free_port

# every algorithm whose step averages a meta-batch's meta-gradients (Algorithm.data_parallel);
# Reptile, which averages adapted weights, is checked on its own below
DATA_PARALLEL = ["maml", "fomaml", "metasgd", "anil", "metalstm"]
WAYS, TASKS = 3, 4


def build(name: str):
    torch.manual_seed(0)
    task = TaskShape(channels=1, image_size=16, train_ways=WAYS, test_ways=WAYS)
    extra = {"inner_batch": 4} if name == "reptile" else {}  # mini-batches drawn from torch's generator
    algorithm = build_algorithm(name, {"hidden": 4, "meta_batch": TASKS, **extra}, task, torch.device("cpu"))
    for network in algorithm.networks().values():
        network.double()  # in place: the optimiser keeps the same parameters
    return algorithm


def batch() -> Episode:
    generator = torch.Generator().manual_seed(1)
    labels = torch.arange(WAYS).repeat(TASKS, 1)
    return Episode(
        torch.rand(TASKS, WAYS, 1, 16, 16, generator=generator, dtype=torch.float64),
        labels,
        torch.rand(TASKS, 2 * WAYS, 1, 16, 16, generator=generator, dtype=torch.float64),
        torch.arange(WAYS).repeat(TASKS, 2),
        WAYS,
    )


def gradient_and_step(name: str) -> dict:
    """The meta-gradient of one batch, then the weights after ``meta_train_step`` on it."""
    algorithm = build(name)
    algorithm.train(True)
    algorithm.optimizer.zero_grad(set_to_none=True)
    metrics = algorithm.accumulate_meta_gradient(batch())
    parameters = [p for group in algorithm.optimizer.param_groups for p in group["params"]]
    gradient = torch.cat([p.grad.reshape(-1) for p in parameters])
    step_metrics = algorithm.meta_train_step(batch())  # zeroes, accumulates again, clips, steps
    weights = torch.cat([p.detach().reshape(-1) for p in parameters])
    return {"gradient": gradient, "weights": weights, "loss": metrics["loss"].item(), "step": step_metrics}


def reptile_step() -> dict:
    """Reptile has no meta-gradient: the weights after its batched outer update, and its loss."""
    algorithm = build("reptile")
    metrics = algorithm.meta_train_step(batch())
    return {"weights": torch.cat([p.detach().reshape(-1) for p in algorithm.model.parameters()]), **metrics}


def _rank(rank: int, world: int, port: int, out: Path) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        results = {name: gradient_and_step(name) for name in DATA_PARALLEL}
        results["reptile"] = reptile_step()
        torch.save(results, out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(_rank, args=(2, free_port(), out), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


@pytest.mark.parametrize("name", DATA_PARALLEL)
def test_two_ranks_all_reduce_the_single_process_meta_gradient_in_float64(two_rank_results, name):
    single = gradient_and_step(name)
    for ranked in two_rank_results:
        assert relative_error(ranked[name]["gradient"], single["gradient"]) < 1e-10
        assert abs(ranked[name]["loss"] - single["loss"]) < 1e-12
        # clipping (MetaLSTM clips at 0.25) and the Adam step act on the summed gradient
        assert relative_error(ranked[name]["weights"], single["weights"]) < 1e-10
        assert ranked[name]["step"]["accuracy"] == pytest.approx(single["step"]["accuracy"], abs=1e-6)  # float32 metric


def test_two_ranks_give_reptiles_batched_update_of_one_process_in_float64(two_rank_results):
    """Each rank adapts its share of the tasks (with the mini-batches one process would draw for
    them) and the ranks average the adapted weights before the outer step."""
    single = reptile_step()
    before = torch.cat([p.detach().reshape(-1) for p in build("reptile").model.parameters()])
    assert relative_error(single["weights"], before) > 1e-3  # the step moved the weights
    for ranked in two_rank_results:
        assert relative_error(ranked["reptile"]["weights"], single["weights"]) < 1e-10
        assert ranked["reptile"]["loss"] == pytest.approx(single["loss"], abs=1e-6)  # float32 losses


def test_a_rank_takes_a_contiguous_share_and_the_shares_cover_every_task(monkeypatch):
    for world, count in [(2, 8), (3, 8), (4, 5)]:
        shares = []
        for rank in range(world):
            monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
            monkeypatch.setattr(distributed, "world_size", lambda world=world: world)
            shares.append(list(distributed.shard(count)))
        assert sum(shares, []) == list(range(count))
        assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_ranks_and_threads_are_chosen_from_the_cores_or_gpus(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(distributed, "usable_cores", lambda: 2)
    assert distributed.arrangement(True, 32, cpu, None) == distributed.Arrangement(2, 1)
    assert distributed.arrangement(False, 1, cpu, None) == distributed.Arrangement(1, 2)  # threads instead
    assert distributed.arrangement(True, 32, cpu, 1) == distributed.Arrangement(1, 2)  # --ranks 1
    monkeypatch.setattr(distributed, "usable_cores", lambda: 16)
    assert distributed.arrangement(True, 8, cpu, None) == distributed.Arrangement(8, 2)  # a small meta-batch
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert distributed.arrangement(True, 32, cuda, None) == distributed.Arrangement(4, 1)  # one rank per GPU
    assert distributed.arrangement(False, 1, cuda, None) == distributed.Arrangement(1, 1)


def test_one_process_is_untouched_by_the_hooks():
    assert not distributed.active() and distributed.shard(5) == range(5)
    values = [torch.tensor(0.1), torch.tensor(0.2), torch.tensor(0.7)]
    assert torch.equal(distributed.mean_over_ranks(values, 3), torch.stack(values).mean())


# -- torchrun end to end -----------------------------------------------------------------------

PARAMS = """run:
  dataset: tiny
  ways: 5
  shots: 1
  queries: 5
  iterations: 24
  val_every: 3
  val_episodes: 10
  test_episodes: 30
algorithms:
  maml:
    hyper:
      hidden: 8
      meta_batch: 4
  protonet:
    hyper:
      hidden: 8
"""


def torchrun(workdir: Path, runs: str, *args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    command += ["--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "metabench"]
    command += [*args, "--params", str(workdir / "params.yaml"), "--data-dir", str(workdir / "data")]
    command += ["--runs-dir", str(workdir / runs)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "METABENCH_TRACKING": "off"}
    return subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen) -> str:
    output = process.communicate(timeout=300)[0].decode()
    assert process.returncode == 0, output
    return output


@pytest.fixture
def workdir(tmp_path, tiny_dataset):
    (tmp_path / "params.yaml").write_text(PARAMS)
    return tmp_path


def trained(run_dir: Path):
    log = pd.read_csv(run_dir / "train_log.csv").drop(columns="seconds")
    return log, json.loads((run_dir / "train_summary.json").read_text())["best_val_accuracy"]


@pytest.mark.slow
def test_a_sigkilled_two_rank_training_resumes_to_the_uninterrupted_metrics(workdir):
    train = ("train", "--algorithm", "maml", "--seed", "3")
    finish(torchrun(workdir, "straight", *train))
    run_id = "tiny-maml-5w1s-seed3"
    straight = workdir / "straight" / run_id
    config = json.loads((straight / "config.json").read_text())
    assert config["identity"]["ranks"] == 2
    assert not list(straight.glob("*rank*")), "only rank 0 writes the run's files"

    process = torchrun(workdir, "killed", *train)
    state = workdir / "killed" / run_id / "state.pt"
    deadline = time.monotonic() + 240
    while not state.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = [p for p in psutil.Process(process.pid).children(recursive=True) if "metabench" in " ".join(p.cmdline())]
    assert process.poll() is None and len(workers) == 2, "the run ended before a state was saved"
    os.kill(workers[1].pid, signal.SIGKILL)  # rank 1, mid-run
    process.communicate(timeout=120)
    assert process.returncode != 0, "torchrun reports the killed rank"
    assert not (workdir / "killed" / run_id / "train_summary.json").is_file(), "killed before the end"
    saved = checkpoint.load(state)
    finish(torchrun(workdir, "killed", *train))
    # resumed, not restarted: the rows before the kill keep the killed process's clock readings
    seconds = pd.read_csv(workdir / "killed" / run_id / "train_log.csv")["seconds"].tolist()
    assert saved["iteration"] > 0 and seconds[: saved["iteration"]] == [row["seconds"] for row in saved["history"]]

    (log, best), (resumed_log, resumed_best) = trained(straight), trained(workdir / "killed" / run_id)
    pd.testing.assert_frame_equal(log, resumed_log)
    assert best == resumed_best


@pytest.mark.slow
def test_torchrun_of_an_algorithm_that_does_not_split_its_batch_refuses_in_one_line(workdir):
    process = torchrun(workdir, "runs", "train", "--algorithm", "protonet")
    output = process.communicate(timeout=300)[0].decode()
    assert process.returncode != 0
    assert "protonet does not split its meta-batch over ranks; train it in one process" in output


@pytest.mark.slow
def test_a_ranks_one_line_error_reaches_the_launcher_through_torch_elastics_error_file(workdir):
    # --ranks 2 with a meta-batch of 1: each launched rank refuses in _check_ranks; the launcher
    # reads the first rank's message from its error file and prints it, not "a rank failed"
    command = [
        sys.executable,
        "-m",
        "metabench",
        "train",
        "--algorithm",
        "maml",
        "--ranks",
        "2",
        "--hp",
        "meta_batch=1",
    ]
    command += ["--params", str(workdir / "params.yaml"), "--data-dir", str(workdir / "data")]
    command += ["--runs-dir", str(workdir / "runs")]
    env = {**os.environ, "METABENCH_TRACKING": "off"}
    result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: maml has a meta-batch of 1 tasks for 2 ranks"), result.stderr[-2000:]
    assert "exit code" not in last


@pytest.mark.slow
@pytest.mark.fault
def test_a_sigkilled_launcher_leaves_no_rank_training(workdir):
    """The launcher cannot stop its ranks when it is killed with SIGKILL: they die with it
    (parent-death signal) instead of training on alone."""
    (workdir / "params.yaml").write_text(PARAMS.replace("iterations: 24", "iterations: 5000"))
    command = [sys.executable, "-m", "metabench", "train", "--algorithm", "maml", "--seed", "7", "--ranks", "2"]
    command += ["--params", str(workdir / "params.yaml"), "--data-dir", str(workdir / "data")]
    command += ["--runs-dir", str(workdir / "runs")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "METABENCH_TRACKING": "off"}
    launcher = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    state = workdir / "runs" / "tiny-maml-5w1s-seed7" / "state.pt"
    deadline = time.monotonic() + 240
    while not state.is_file() and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    ranks = [p for p in psutil.Process(launcher.pid).children(recursive=True) if "metabench" in " ".join(p.cmdline())]
    assert launcher.poll() is None and len(ranks) == 2, launcher.stdout.read().decode() if launcher.poll() else ""
    launcher.kill()
    launcher.wait(timeout=30)
    gone, alive = psutil.wait_procs(ranks, timeout=10)
    assert alive == [], f"ranks {[p.pid for p in alive]} still training after the launcher was killed"
