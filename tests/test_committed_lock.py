"""The committed leaderboard is what `dvc repro` gives: one cheap run of the committed grid,
re-run in a fresh clone from the committed code, must reproduce its recorded output bit for bit.

`grid.json` (committed; `runs/` lives in DVC's cache) records every run's `episodes.csv` sha256,
and `dvc.lock` the fixed episodes' hash. A stale record (outputs made by other code, or written
with `dvc commit`) fails here. Bit-identical CPU results need the thread count each run was
trained with and a CPU with the same kernels (docs/evaluation.md, Guarantees): the grid records both;
on a CPU of another identity the run must agree within its recorded interval.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from metabench.grid import cpu_identity

pytestmark = pytest.mark.slow  # ProtoNet 1-shot trained and evaluated in a fresh clone

ROOT = Path(__file__).resolve().parents[1]
RUN = "glyphs-protonet-5w1s-seed0"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _committed(name: str) -> str:
    result = subprocess.run(["git", "show", f"HEAD:{name}"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, f"{name} is not committed: run `make leaderboard` and commit its outputs"
    return result.stdout


def test_a_committed_run_reproduces_bit_for_bit_in_a_fresh_clone(tmp_path):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the project's git checkout")
    lock = yaml.safe_load(_committed("dvc.lock"))
    record = json.loads(_committed("grid.json"))
    run = next(entry for entry in record["runs"] if entry["run_id"] == RUN)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    threads = str(record["threads_per_run"])
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "METABENCH_TRACKING": "off",
        "OMP_NUM_THREADS": threads,
    }
    commands = [
        ["dvc", "repro", "--force", "--single-item", "fetch"],
        ["dvc", "repro", "--force", "--single-item", "episodes"],
        ["metabench", "train", "--algorithm", "protonet", "--shots", "1", "--seed", "0", "--evaluate"],
    ]
    for command in commands:
        result = subprocess.run(command, cwd=clone, capture_output=True, text=True, env=env, timeout=1200)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    status = subprocess.run(["dvc", "status", "episodes"], cwd=clone, capture_output=True, text=True, env=env)
    episodes = next(out for out in lock["stages"]["episodes"]["outs"])
    assert "changed" not in status.stdout, f"the fixed episodes differ from dvc.lock's {episodes['md5']}"
    produced = sha256(clone / "runs" / RUN / "episodes.csv")
    if record.get("cpu") == cpu_identity():
        assert produced == run["episodes_csv_sha256"], "grid.json records a result this code does not reproduce"
    else:  # other kernels round differently (docs/evaluation.md, Guarantees): the same result within its interval
        accuracy = json.loads((clone / "runs" / RUN / "metrics.json").read_text())["accuracy"]
        assert abs(accuracy - run["accuracy"]) <= run["ci95"], (
            f"on this CPU ({cpu_identity()['model']}) the run scores {accuracy:.4f}, outside the recorded "
            f"{run['accuracy']:.4f} ± {run['ci95']:.4f} of {record.get('cpu', {}).get('model', 'an unrecorded CPU')}"
        )
    saved = json.loads((clone / "runs" / RUN / "config.json").read_text())
    assert saved["identity"]["threads"] == int(threads)
