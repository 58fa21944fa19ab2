"""The committed leaderboard is what `dvc repro` gives: one cheap stage pair, re-run from the
committed dvc.lock in a fresh clone, must reproduce the recorded output hashes bit for bit.

A stale dvc.lock (outputs recorded by other code, or with `dvc commit`) fails here. Bit-identical
CPU results need the thread count the lock was recorded with (README, What we guarantee): the
committed leaderboard is recorded with 2 threads, on a CPU of the kind CI runs on.
"""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow  # a real `dvc repro --force` of ProtoNet 1-shot in a fresh clone

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["fetch", "episodes", "train-protonet@1-0", "evaluate-protonet@1-0"]
# train_summary.json holds wall-clock seconds; everything else a stage writes is deterministic
TIMED = {"train_summary.json", "eval_timing.json"}
RECORDED_THREADS = "2"


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_protonet_stages_reproduce_the_committed_lock_bit_for_bit(tmp_path):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the project's git checkout")
    lock = yaml.safe_load(
        subprocess.run(["git", "show", "HEAD:dvc.lock"], cwd=ROOT, capture_output=True, text=True).stdout
    )
    recorded = {
        out["path"]: out["md5"]
        for name in STAGES[2:]
        for out in lock["stages"][name]["outs"]
        if Path(out["path"]).name not in TIMED
    }
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "METABENCH_TRACKING": "off",
        "OMP_NUM_THREADS": RECORDED_THREADS,
    }
    for stage in STAGES:
        command = ["dvc", "repro", "--force", "--single-item", stage]
        result = subprocess.run(command, cwd=clone, capture_output=True, text=True, env=env, timeout=1200)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    produced = {path: md5(clone / path) for path in recorded}
    assert produced == recorded, "dvc.lock records outputs that this code does not reproduce: re-run `dvc repro`"
