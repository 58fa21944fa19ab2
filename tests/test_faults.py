"""The fault suite: each fault a user (or a disk, a kill, a crafted file) can inflict, through
the real CLI. A fault must either be survived or refused with a one-line error that names
what to do, and must never destroy a result or leave files that disagree with each other."""

import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from metabench import MetabenchError, checkpoint, files
from metabench.cli import app
from metabench.data import store

pytestmark = pytest.mark.fault  # every case here is one of the fault suite (docs/evaluation.md, Guarantees)
runner = CliRunner()
PARAMS = (
    "run:\n  iterations: 10\n  val_every: 5\n  val_episodes: 10\n  test_episodes: 20\n  queries: 5\n"
    "algorithms:\n  protonet:\n    hyper:\n      hidden: 8\n"
    "  maml:\n    hyper:\n      hidden: 8\n      meta_batch: 2\n"
)
RUN = "glyphs-protonet-5w1s-seed0"


def cli(workdir: Path, *args: str):
    common = ["--params", str(workdir / "params.yaml"), "--data-dir", str(workdir / "data")]
    return runner.invoke(app, [*args, *common, "--runs-dir", str(workdir / "runs")])


def ok(result):
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def refused(result, *fragments: str) -> str:
    """The command failed with one MetabenchError line containing every fragment."""
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, MetabenchError), repr(result.exception)
    message = str(result.exception)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.fixture(scope="module")
def trained(tmp_path_factory, glyphs_dir) -> Path:
    """A trained and evaluated ProtoNet run on glyphs (copied by each test that changes it)."""
    root = tmp_path_factory.mktemp("faults")
    shutil.copytree(glyphs_dir / "glyphs", root / "data" / "glyphs")
    (root / "params.yaml").write_text(PARAMS)
    ok(cli(root, "train", "--algorithm", "protonet"))
    ok(cli(root, "evaluate", "--algorithm", "protonet"))
    return root


@pytest.fixture
def work(trained, tmp_path) -> Path:
    shutil.copytree(trained, tmp_path / "w")
    return tmp_path / "w"


def results(work: Path) -> dict[str, bytes]:
    run_dir = work / "runs" / RUN
    return {
        name: (run_dir / name).read_bytes() for name in ("episodes.csv", "metrics.json") if (run_dir / name).exists()
    }


class Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# -- 1. code execution ------------------------------------------------------------------------
@pytest.mark.parametrize("wrapped", [False, True], ids=["plain-pickle", "inside-metabench-format"])
def test_a_crafted_checkpoint_executes_nothing(work, tmp_path, wrapped):
    marker = tmp_path / "executed"
    path = work / "runs" / RUN / "checkpoint.pt"
    evil = {"weights": Exploit(marker)}
    if wrapped:  # a valid hash over a payload that itself is the exploit
        inner = io.BytesIO()
        torch.save(evil, inner)
        data = inner.getvalue()
        torch.save({"format": checkpoint.FORMAT, "sha256": files.sha256_bytes(data), "payload": data}, path)
    else:
        torch.save(evil, path)
    before = results(work)
    refused(cli(work, "evaluate", "--algorithm", "protonet"), "cannot be read safely", str(path))
    support = tmp_path / "support"
    for name in ("a", "b"):
        (support / name).mkdir(parents=True)
        Image = pytest.importorskip("PIL.Image")
        Image.new("L", (28, 28)).save(support / name / "x.png")
    result = runner.invoke(
        app, ["predict", "--checkpoint", str(path), "--support", str(support), "--query", str(support / "a")]
    )
    refused(result, "cannot be read safely")
    assert not marker.exists() and results(work) == before


# -- 2. corruption is refused, and the good results survive ----------------------------------
def _flip(path: Path, offset_fraction: float = 0.5, count: int = 8) -> None:
    data = bytearray(path.read_bytes())
    start = int(len(data) * offset_fraction)
    for i in range(start, start + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_bytes_in_a_checkpoint_are_refused(work):
    before = results(work)
    _flip(work / "runs" / RUN / "checkpoint.pt", 0.6)
    refused(cli(work, "evaluate", "--algorithm", "protonet"), "checkpoint.pt", "metabench train")
    assert results(work) == before


def test_flipped_bytes_in_a_resumable_state_are_refused(work):
    _flip(work / "runs" / RUN / "state.pt", 0.6)
    refused(cli(work, "train", "--algorithm", "protonet", "--iterations", "15"), "state.pt", "delete it")


def test_flipped_bytes_in_the_stored_images_are_refused(work):
    before = results(work)
    _flip(work / "data" / "glyphs" / "test.images.npy", 0.5, 64)
    refused(cli(work, "evaluate", "--algorithm", "protonet"), "test.images.npy", "metabench fetch glyphs")
    refused(cli(work, "train", "--algorithm", "protonet", "--seed", "1"), "test.images.npy")
    assert results(work) == before


@pytest.mark.parametrize("damage", ["edited", "out-of-range", "truncated", "garbled"])
def test_a_damaged_episode_file_is_refused(work, damage):
    before = results(work)
    (path,) = [p for p in (work / "data" / "episodes").glob("glyphs-test-*.npz")]
    with np.load(path) as saved:
        arrays = {key: saved[key].copy() for key in saved}
    if damage == "edited":  # every query made a copy of a support image: it would score 100 %
        arrays["query"][:] = arrays["support"][..., :1]
        np.savez(path, **arrays)
    elif damage == "out-of-range":
        arrays["support"][0, 0, 0] = 10**9
        np.savez(path, **arrays)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    else:
        _flip(path, 0.3, 32)
    refused(cli(work, "evaluate", "--algorithm", "protonet"), str(path), "metabench episodes")
    assert results(work) == before


# -- 3. result files are never half-written or disagreeing -----------------------------------
def _disk_full_after(monkeypatch, name: str):
    """Make the atomic write of ``name`` fail as a full disk does (after the data is written)."""
    real = os.fsync
    target = {"armed": True}

    def fsync(fd):
        path = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
        if target["armed"] and Path(path).name.startswith(f".{name}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)


@pytest.mark.parametrize("name", ["episodes.csv", "metrics.json", "eval_timing.json"])
def test_a_full_disk_during_re_evaluation_keeps_the_valid_evaluation(work, monkeypatch, name):
    """Re-evaluation writes beside and swaps: the old, valid results survive, as the error says."""
    from metabench.evaluation import read_results

    run_dir = work / "runs" / RUN
    before = results(work)
    (work / "params.yaml").write_text(PARAMS.replace("test_episodes: 20", "test_episodes: 436"))
    _disk_full_after(monkeypatch, name)
    message = refused(cli(work, "evaluate", "--algorithm", "protonet"), "No space left on device", name)
    assert "(None)" not in message and "old files are unchanged" in message
    assert not list(run_dir.glob(".*.part")), "the temporary files are removed"
    assert results(work) == before
    metrics, accuracies = read_results(run_dir)
    assert metrics["episodes"] == len(accuracies) == 20


def test_disagreeing_results_are_refused_by_report_and_summary(work):
    run_dir = work / "runs" / RUN
    lines = (run_dir / "episodes.csv").read_text().splitlines()
    (run_dir / "episodes.csv").write_text("\n".join(lines[:-3]) + "\n")  # a kill or an edit: fewer rows
    report = ["report", "--params", str(work / "params.yaml"), "--out-dir", str(work / "reports")]
    for command in (report, ["summary"]):
        refused(runner.invoke(app, [*command, "--runs-dir", str(work / "runs")]), "episodes.csv", "does not match")
    (run_dir / "metrics.json").write_text('{"accuracy": 0.5, "episodes')  # garbled
    refused(runner.invoke(app, ["summary", "--runs-dir", str(work / "runs")]), "metrics.json", "does not match")


def test_a_full_disk_writing_config_or_episodes_is_one_line_with_its_reason(work, monkeypatch):
    _disk_full_after(monkeypatch, "config.json")
    message = refused(cli(work, "train", "--algorithm", "protonet", "--seed", "2"), "config.json", "No space left")
    assert "(None)" not in message
    monkeypatch.undo()
    shutil.rmtree(work / "data" / "episodes")
    _disk_full_after(monkeypatch, "glyphs-val")
    refused(cli(work, "train", "--algorithm", "protonet", "--seed", "2"), "No space left", "glyphs-val")


# -- 4. the store swap survives a kill at every rename ---------------------------------------
@pytest.mark.parametrize("kill_at", [1, 2, 3], ids=["before-first-rename", "between-renames", "before-cleanup"])
def test_the_store_survives_a_kill_at_every_step_of_the_swap(work, monkeypatch, kill_at):
    dataset = store.load("glyphs", work / "data")
    checksum = dataset.checksum
    calls = {"n": 0}
    real_replace, real_rmtree = os.replace, shutil.rmtree

    class Killed(BaseException):
        pass

    def replace(src, dst):
        calls["n"] += 1
        if calls["n"] == kill_at:
            raise Killed
        return real_replace(src, dst)

    def rmtree(path, *args, **kwargs):
        if kill_at == 3 and ".old." in str(path):
            raise Killed
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(store.os, "replace", replace)
    monkeypatch.setattr(store.shutil, "rmtree", rmtree)
    with pytest.raises(Killed):
        store.save(dataset, work / "data")
    monkeypatch.undo()
    recovered = store.load("glyphs", work / "data", verify=True)
    assert recovered.checksum == checksum
    store.save(recovered, work / "data")  # the next save cleans what the killed one left
    assert not [p for p in (work / "data").iterdir() if p.name.startswith(".glyphs.") and not p.name.endswith(".lock")]


# -- 5. every damaged input is a one-line error ------------------------------------------------
@pytest.mark.parametrize("damage", ["truncated-meta", "meta-missing-key", "garbled-offsets", "truncated-images"])
def test_a_damaged_store_is_one_line(work, damage):
    root = work / "data" / "glyphs"
    if damage == "truncated-meta":
        (root / "meta.json").write_text((root / "meta.json").read_text()[:200])
    elif damage == "meta-missing-key":
        meta = json.loads((root / "meta.json").read_text())
        del meta["splits"]
        (root / "meta.json").write_text(json.dumps(meta))
    elif damage == "garbled-offsets":
        np.save(root / "test.offsets.npy", np.array([0, 5, 3], dtype=np.int64))
    else:
        (root / "test.images.npy").write_bytes((root / "test.images.npy").read_bytes()[:1000])
    refused(cli(work, "evaluate", "--algorithm", "protonet"), "metabench fetch glyphs")


def test_a_corrupt_png_inside_an_omniglot_zip_is_one_line(tmp_path):
    import zipfile

    from metabench.data import omniglot

    path = tmp_path / "images_background.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("images_background/Alpha/character01/0101_01.png", b"\x89PNG not really")
    with pytest.raises(MetabenchError, match="0101_01.png cannot be read as an image"):
        omniglot.read_zip(path, 28)


@pytest.mark.parametrize("lr", ["1e6"])
def test_an_exploding_loss_stops_the_run_with_the_reason(work, lr):
    result = cli(work, "train", "--algorithm", "maml", "--hp", f"inner_lr={lr}", "--iterations", "10")
    message = refused(result, "lower the learning rate")
    assert "iteration" in message
    run_dirs = [p for p in (work / "runs").iterdir() if p.name.startswith("glyphs-maml")]
    assert run_dirs and not (run_dirs[0] / "train_summary.json").exists()  # not recorded as finished


def test_nan_before_the_first_validation_does_not_claim_a_checkpoint(work):
    result = cli(work, "train", "--algorithm", "protonet", "--seed", "3", "--hp", "lr=1e30")
    message = refused(result)
    assert "no checkpoint was saved" in message and "best checkpoint so far" not in message


def test_messages_name_real_splits_and_real_options(work):
    (work / "params.yaml").write_text(PARAMS.replace("queries: 5", "queries: 500"))
    refused(cli(work, "evaluate", "--algorithm", "protonet"), "trained with other queries")
    message = refused(cli(work, "train", "--algorithm", "protonet", "--force"))
    assert "split split" not in message and "train split has" in message
    shutil.rmtree(work / "data" / "glyphs")
    message = refused(cli(work, "train", "--algorithm", "protonet"), "metabench fetch glyphs")
    assert "--force" not in message


# -- 7. MLflow records what happened ---------------------------------------------------------
def _mlflow_runs(work: Path, name: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("metabench-glyphs")
    return client.search_runs([experiment.experiment_id], f"attributes.run_name = '{name}'", run_view_type=1)


def test_a_failed_run_is_marked_failed_in_mlflow(work):
    refused(cli(work, "train", "--algorithm", "maml", "--hp", "inner_lr=1e6", "--iterations", "10"))
    (run_dir,) = [p for p in (work / "runs").iterdir() if p.name.startswith("glyphs-maml")]
    run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    from mlflow.tracking import MlflowClient

    assert MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run(run_id).info.status == "FAILED"


def test_a_killed_run_is_closed_when_it_starts_again_and_track_replaces_it(work):
    from mlflow.tracking import MlflowClient

    from metabench.tracking import Tracker

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run_dir = work / "runs" / "glyphs-protonet-5w1s-seed4"
    stale = Tracker(run_dir)  # what SIGKILL before the first saved state leaves: a RUNNING run
    stale.start(run_dir.name, {"a": 1}, {}, resume=False)
    stale_id = stale.run_id
    ok(cli(work, "train", "--algorithm", "protonet", "--seed", "4"))
    assert client.get_run(stale_id).info.status == "KILLED"
    trained_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    assert client.get_run(trained_id).info.status == "FINISHED"
    ok(runner.invoke(app, ["track", str(run_dir)]))
    assert client.get_run(trained_id).info.lifecycle_stage == "deleted"  # replaced, not duplicated
    resent = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    assert resent != trained_id and client.get_run(resent).info.status == "FINISHED"


# -- 8. concurrency --------------------------------------------------------------------------
def test_a_second_train_of_the_same_run_refuses_naming_the_holder(work):
    with files.exclusive(work / "runs" / RUN, "run"):
        result = cli(work, "train", "--algorithm", "protonet", "--iterations", "12")
        refused(result, f"process {os.getpid()}")
        refused(cli(work, "evaluate", "--algorithm", "protonet"), f"process {os.getpid()}")


@pytest.mark.slow
def test_two_different_runs_at_once_share_the_data_and_the_tracking_store(work):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "metabench", "train", "--algorithm", "protonet", "--params", "params.yaml"]
    processes = [
        subprocess.Popen([*command, "--seed", str(seed)], cwd=work, env=env, stderr=subprocess.PIPE) for seed in (5, 6)
    ]
    for process in processes:
        _, error = process.communicate(timeout=600)
        assert process.returncode == 0, error.decode()[-2000:]
    for seed in (5, 6):
        assert (work / "runs" / f"glyphs-protonet-5w1s-seed{seed}" / "checkpoint.pt").is_file()
        (found,) = _mlflow_runs(work, f"glyphs-protonet-5w1s-seed{seed}")
        assert found.info.status == "FINISHED"


@pytest.mark.slow
def test_sigkill_of_a_second_concurrent_train_leaves_the_first_intact(work):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "metabench", "train", "--algorithm", "protonet", "--params", "params.yaml"]
    command += ["--seed", "7", "--iterations", "400"]
    first = subprocess.Popen(command, cwd=work, env=env, stderr=subprocess.PIPE, start_new_session=True)
    lock = work / "runs" / "glyphs-protonet-5w1s-seed7" / ".lock"
    deadline = time.time() + 120
    while time.time() < deadline and not (lock.is_file() and lock.read_text().strip()):
        time.sleep(0.2)
    second = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode != 0 and f"process {first.pid}" in second.stderr
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    resumed = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]  # the kernel released the killed holder's lock


# -- 9. what bit-identical depends on is recorded -----------------------------------------------
def test_the_thread_count_is_part_of_the_identity(work):
    config = json.loads((work / "runs" / RUN / "config.json").read_text())
    summary = json.loads((work / "runs" / RUN / "train_summary.json").read_text())
    assert config["identity"]["threads"] == summary["threads"] == torch.get_num_threads()


# -- 10. downloads have an overall deadline ----------------------------------------------------
def test_a_trickling_server_hits_the_download_deadline(tmp_path, monkeypatch):
    import http.server
    import threading

    from metabench.data.download import fetch_file

    class Trickle(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            try:
                for _ in range(100000):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                pass

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("METABENCH_DOWNLOAD_DEADLINE", "1.5")
    started = time.monotonic()
    try:
        with pytest.raises(MetabenchError, match="took longer than 1.5 s"):
            fetch_file(f"http://127.0.0.1:{server.server_address[1]}/f", tmp_path / "f", None, timeout=5)
    finally:
        server.shutdown()
        server.server_close()
    assert time.monotonic() - started < 10 and not (tmp_path / "f").exists()


def test_a_stalled_server_is_stopped_at_the_deadline_not_at_the_read_timeout(tmp_path, monkeypatch):
    """A server that sends headers and a few bytes, then nothing: the deadline (2 s), not the
    60-second read timeout, ends the fetch."""
    import http.server
    import threading

    from metabench.data.download import fetch_file

    release = threading.Event()

    class Stall(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"x" * 10)
            self.wfile.flush()
            release.wait(90)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stall)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("METABENCH_DOWNLOAD_DEADLINE", "2")
    started = time.monotonic()
    try:
        with pytest.raises(MetabenchError, match="took longer than 2 s"):
            fetch_file(f"http://127.0.0.1:{server.server_address[1]}/f", tmp_path / "f", None)
    finally:
        release.set()
        server.shutdown()
        server.server_close()
    assert time.monotonic() - started < 6 and not (tmp_path / "f").exists()


def test_result_files_keep_the_usual_permissions(work):
    run_dir = work / "runs" / RUN
    mask = os.umask(0)
    os.umask(mask)
    for name in ("checkpoint.pt", "state.pt", "config.json", "metrics.json", "episodes.csv"):
        assert (run_dir / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


# -- no unpickling outside the allow-list ----------------------------------------------------
UNPICKLERS = {("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"), ("cloudpickle", "load"),
              ("cloudpickle", "loads"), ("dill", "load"), ("dill", "loads"), ("marshal", "load"),
              ("marshal", "loads"), ("joblib", "load"), ("shelve", "open"), ("yaml", "unsafe_load"),
              ("yaml", "full_load"), ("yaml", "Loader"), ("yaml", "UnsafeLoader"), ("yaml", "FullLoader")}  # fmt: skip


def _flag(keywords: dict, name: str, safe) -> bool:
    """Whether keyword ``name`` is absent or not the literal ``safe``."""
    import ast

    value = keywords.get(name)
    return not (isinstance(value, ast.Constant) and value.value is safe)


def _unsafe_call(node) -> str | None:
    """What is unsafe about one call node, if anything."""
    import ast

    if not (isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name)):
        return None
    keywords = {k.arg: k.value for k in node.keywords}
    call = (node.func.value.id, node.func.attr)
    if call == ("torch", "load") and _flag(keywords, "weights_only", True):
        return "torch.load without weights_only=True"
    if call == ("yaml", "load") and "Loader" not in keywords:
        return "yaml.load without a safe Loader"
    if (
        call in {("np", "load"), ("numpy", "load")}
        and "allow_pickle" in keywords
        and _flag(keywords, "allow_pickle", False)
    ):
        return "numpy.load with allow_pickle"
    return None


def _unsafe_loads(source: str) -> list[str]:
    """Every call, name or import in ``source`` that can build arbitrary objects from a file."""
    import ast

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if (node.value.id, node.attr) in UNPICKLERS:
                found.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
        if isinstance(node, ast.ImportFrom) and node.module in {"pickle", "cloudpickle", "dill", "marshal", "joblib"}:
            found.append(f"line {node.lineno}: from {node.module} import ...")
        if isinstance(node, ast.Call) and (reason := _unsafe_call(node)):
            found.append(f"line {node.lineno}: {reason}")
    return found


def test_no_unpickling_outside_the_allow_list_anywhere_in_the_package():
    package = Path(__file__).resolve().parents[1] / "metabench"
    allowed = package / "data" / "safe_pickle.py"
    offences = {
        str(path.relative_to(package.parent)): found
        for path in sorted(package.rglob("*.py"))
        if path != allowed and (found := _unsafe_loads(path.read_text()))
    }
    assert offences == {}
    # the check itself finds what it must
    unsafe = (
        "pickle.load(f)\ntorch.load(p)\nnp.load(p, allow_pickle=True)\nyaml.load(t)\nyaml.load(t, Loader=yaml.Loader)"
    )
    assert len(_unsafe_loads(unsafe)) == 5
    assert _unsafe_loads("torch.load(p, weights_only=True)\nnp.load(p)\nyaml.load(t, Loader=Safe)") == []


# -- finite numbers only ---------------------------------------------------------------------
@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_a_non_finite_learning_rate_is_refused_before_training(work, value):
    before = sorted(p.name for p in (work / "runs").iterdir())
    refused(cli(work, "train", "--algorithm", "protonet", "--hp", f"lr={value}"), "protonet.lr", "finite")
    assert sorted(p.name for p in (work / "runs").iterdir()) == before  # no empty run folder either


def test_a_non_finite_hyper_parameter_in_params_yaml_is_refused(work):
    (work / "params.yaml").write_text(
        PARAMS.replace("      meta_batch: 2\n", "      meta_batch: 2\n      inner_lr: .nan\n")
    )
    refused(cli(work, "train", "--algorithm", "maml"), "maml.inner_lr", "finite")


def test_a_weight_turning_non_finite_stops_the_run_and_no_nan_checkpoint_is_kept(work, monkeypatch):
    """A finite loss does not prove finite weights: the step that makes them inf reports the loss
    it computed before. With validation every step the non-finite weights are never kept."""
    from metabench.algorithms.protonet import ProtoNet

    real = ProtoNet.meta_train_step
    calls = [0]

    def poisoned(self, batch):
        metrics = real(self, batch)
        calls[0] += 1
        if calls[0] == 3:
            network = next(iter(self.networks().values()))
            with torch.no_grad():
                next(network.parameters()).fill_(float("inf"))
        return metrics

    monkeypatch.setattr(ProtoNet, "meta_train_step", poisoned)
    (work / "params.yaml").write_text(PARAMS.replace("val_every: 5", "val_every: 1"))
    result = cli(work, "train", "--algorithm", "protonet", "--seed", "4")
    message = refused(result, "non-finite at iteration 3", "best checkpoint so far (iteration ")
    saved = checkpoint.load(work / "runs" / "glyphs-protonet-5w1s-seed4" / "checkpoint.pt")
    from metabench.training import finite

    assert finite(saved["weights"]) and not finite({"w": torch.tensor([1.0, float("nan")])}), message


# -- a run folder proves its own integrity ---------------------------------------------------
def _report(work: Path):
    report = ["report", "--params", str(work / "params.yaml"), "--out-dir", str(work / "reports")]
    return runner.invoke(app, [*report, "--runs-dir", str(work / "runs")])


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}, indent=1) + "\n")


def test_one_flipped_bit_in_the_accuracy_is_refused_not_reported(work):
    path = work / "runs" / RUN / "metrics.json"
    text = path.read_text()
    line = next(line for line in text.splitlines() if line.startswith(' "accuracy"'))
    digit = next(i for i, c in enumerate(line) if c.isdigit() and c not in "0" and i > line.index("."))
    flipped = line[:digit] + chr(ord(line[digit]) ^ 1) + line[digit + 1 :]  # one bit of one digit
    path.write_text(text.replace(line, flipped))
    for result in (_report(work), runner.invoke(app, ["summary", "--runs-dir", str(work / "runs")])):
        refused(result, "metrics.json", "manifest")
    assert not (work / "reports" / "leaderboard.md").exists()


def test_an_edited_shots_field_does_not_file_a_one_shot_run_as_five_shot(work):
    _edit_json(work / "runs" / RUN / "metrics.json", shots=5)
    refused(_report(work), "metrics.json", "manifest")


def test_a_consistent_forgery_of_metrics_and_manifest_is_refused_by_the_episodes(work):
    """The headline numbers are re-derived from episodes.csv, not trusted."""
    from metabench.run_folder import RunFolder

    run_dir = work / "runs" / RUN
    metrics = json.loads((run_dir / "metrics.json").read_text())
    _edit_json(run_dir / "metrics.json", accuracy=metrics["accuracy"] + 0.02)
    RunFolder(run_dir).seal()
    refused(_report(work), "metrics.json says accuracy", "episodes.csv gives")


@pytest.mark.parametrize(
    "name, damage",
    [("train_log.csv", b"\x00garbage,\n\xff\xfe"), ("train_summary.json", b'{"train_seconds": 1e9}\n')],
    ids=["garbage-train-log", "edited-cost"],
)
def test_learning_curves_and_costs_are_read_checked(work, name, damage):
    (work / "runs" / RUN / name).write_bytes(damage)
    refused(_report(work), name, "manifest")


def test_a_damaged_mlflow_record_is_one_line_in_the_report(work):
    (work / "runs" / RUN / "mlflow_run.json").write_text('{"run_id": ')
    refused(_report(work), "mlflow_run.json", "metabench track")


def test_a_deleted_manifest_is_refused_by_readers_and_the_grid_checks_and_restores_it(work):
    run_dir = work / "runs" / RUN
    (run_dir / "manifest.json").unlink()
    refused(_report(work), "manifest.json", "metabench grid")
    from metabench.config import load_params, resolve_run
    from metabench.unit import completed

    config = resolve_run(load_params(work / "params.yaml"), {"algorithm": "protonet"}, {"runs_dir": str(work / "runs"),
                         "data_dir": str(work / "data")})  # fmt: skip
    assert completed(config, torch.get_num_threads()) is not None  # sealed as found, still checked
    assert (run_dir / "manifest.json").is_file()
    ok(_report(work))


# -- byte-identical means byte-identical -----------------------------------------------------
def test_a_continued_training_writes_the_checkpoint_bytes_of_the_uninterrupted_one_and_a_no_op_writes_nothing(
    work, monkeypatch
):
    """`train --iterations 5` then `--iterations 10` against `--iterations 10` at once, in the same
    folder: the same checkpoint.pt, config.json, episodes.csv and metrics.json bytes;
    train_log.csv and train_summary.json equal but for their wall-clock seconds. A second
    `train` of a finished run leaves every file untouched. (MLflow off: the subject is the run's
    files; what MLflow records of a restarted run is test_a_killed_run_is_closed_when_it_starts_again's.)"""
    monkeypatch.setenv("METABENCH_TRACKING", "off")
    run = work / "runs" / "glyphs-maml-5w1s-seed0"
    outputs = []
    for steps in (("10",), ("5", "10")):
        shutil.rmtree(run, ignore_errors=True)
        for count in steps:
            ok(cli(work, "train", "--algorithm", "maml", "--iterations", count))
        ok(cli(work, "evaluate", "--algorithm", "maml"))
        summary = json.loads((run / "train_summary.json").read_text())
        outputs.append(
            {
                **{name: (run / name).read_bytes() for name in ("checkpoint.pt", "config.json", "episodes.csv", "metrics.json")},
                "train_log.csv": pd.read_csv(run / "train_log.csv").drop(columns="seconds").fillna(-1).to_dict("list"),
                "train_summary.json": {k: v for k, v in summary.items() if k != "train_seconds"},
            }
        )  # fmt: skip
    assert outputs[0].keys() == outputs[1].keys()
    for name in outputs[0]:
        assert outputs[0][name] == outputs[1][name], name
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir() if p.is_file()}
    ok(cli(work, "train", "--algorithm", "maml", "--iterations", "10"))
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir() if p.is_file()}
    assert {k: v for k, v in after.items() if k != ".lock"} == {k: v for k, v in before.items() if k != ".lock"}


# -- one line, never a traceback -------------------------------------------------------------
def test_predict_given_the_resumable_state_says_to_give_the_checkpoint(work, tmp_path):
    support = tmp_path / "support"
    for name in ("a", "b"):
        (support / name).mkdir(parents=True)
        from PIL import Image

        Image.new("L", (28, 28)).save(support / name / "x.png")
    ok(cli(work, "train", "--algorithm", "protonet", "--seed", "5", "--iterations", "5"))
    state = work / "runs" / "glyphs-protonet-5w1s-seed5" / "state.pt"
    result = runner.invoke(
        app, ["predict", "--checkpoint", str(state), "--support", str(support), "--query", str(support / "a")]
    )
    refused(result, "resumable training state", "checkpoint.pt")


def test_a_runs_dir_that_is_a_file_is_one_line(work):
    (work / "afile").write_text("")
    result = runner.invoke(
        app,
        ["train", "--algorithm", "protonet", "--params", str(work / "params.yaml"), "--data-dir", str(work / "data"),
         "--runs-dir", str(work / "afile")],
    )  # fmt: skip
    refused(result, "afile", "Not a directory")


def test_a_full_runs_folder_is_one_line(work, monkeypatch):
    real = Path.mkdir

    def full(self, *args, **kwargs):
        if "seed6" in self.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", full)
    refused(cli(work, "train", "--algorithm", "protonet", "--seed", "6"), "No space left on device", "seed6")


def test_a_truncated_profile_given_to_the_report_is_one_line(work):
    profiles = work / "profiles"
    profiles.mkdir()
    (profiles / "glyphs-protonet-5w1s.json").write_text('{"algorithm": "proto')
    report = ["report", "--params", str(work / "params.yaml"), "--out-dir", str(work / "reports")]
    result = runner.invoke(app, [*report, "--runs-dir", str(work / "runs"), "--profiles-dir", str(profiles)])
    refused(result, "glyphs-protonet-5w1s.json", "damaged")


def test_nan_on_the_command_line_is_one_line(work):
    refused(cli(work, "train", "--algorithm", "maml", "--hp", "inner_lr=nan"), "maml.inner_lr", "finite")


# -- a params file is checked whole ----------------------------------------------------------
@pytest.mark.parametrize(
    "text, fragments",
    [
        (PARAMS + "  protonet:\n    hyper:\n      hidden: 16\n", ("protonet", "appears twice", "line 15")),
        (PARAMS + "run:\n  shots: 5\n", ("'run' appears twice",)),
        (PARAMS.replace("meta_batch: 2", "meta_bach: 2"), ("maml has no hyper-parameter meta_bach",)),
        (PARAMS.replace("  maml:\n", "  mamll:\n"), ("algorithms.mamll is not a registered algorithm",)),
        (PARAMS + "data:\n  glyphs:\n    seeed: 1\n", ("data.glyphs has no option seeed",)),
        (PARAMS + "leaderboard:\n  algorithms: [protonet]\n  shots: [1]\n  seeds: [0]\n  seed: [1]\n", ("leaderboard has no key seed",)),
        (PARAMS.replace("hidden: 8\n  maml", "hidden: eight\n  maml"), ("protonet.hidden must be int",)),
    ],
    ids=["duplicate-block", "duplicate-section", "misspelt-other-algorithm", "unknown-algorithm", "data-option",
         "leaderboard-key", "wrong-type"],
)  # fmt: skip
def test_a_mistake_anywhere_in_the_params_file_stops_every_command_before_it_starts(work, text, fragments):
    """Even a block of an algorithm other than the one trained: a sweep must not fail minutes later."""
    (work / "params.yaml").write_text(text)
    before = sorted(p.name for p in (work / "runs").iterdir())
    for command in (("train", "--algorithm", "protonet", "--seed", "9"), ("check-params",)):
        args = [*command, "--params", str(work / "params.yaml")]
        if command[0] == "train":
            args += ["--data-dir", str(work / "data"), "--runs-dir", str(work / "runs")]
        refused(runner.invoke(app, args), *fragments)
    assert sorted(p.name for p in (work / "runs").iterdir()) == before
