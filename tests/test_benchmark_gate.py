"""The benchmark gate catches a slowed inner loop and passes the real code (real pytest-benchmark runs)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gate

ROOT = Path(__file__).resolve().parents[1]
TARGET = [
    "benchmarks/test_meta_step.py",
    "benchmarks/test_machine_reference.py",
    "-k",
    "inner_loop_of_one_task or machine_reference",
    "-p",
    "no:cacheprovider",
]


def run_benchmark(storage: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "pytest",
        *TARGET,
        f"--benchmark-storage=file://{storage}",
        "--benchmark-min-rounds=30",
        *extra,
    ]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def run_gate(baseline: Path, now: Path) -> subprocess.CompletedProcess:
    # This checks the mechanism on a millisecond benchmark, whose fastest round varies too much
    # between runs for a tight threshold, so the limit is 100%: a 5x slower inner loop is far past
    # it, noise never. (The CI gate itself uses 50% on the second-scale benchmarks; see the Makefile.)
    command = [sys.executable, "-m", "benchmarks.gate", str(now), str(baseline), "--limit", "1.0"]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.slow  # real pytest-benchmark runs
def test_gate_fails_on_a_slowed_inner_loop_and_passes_the_real_one(tmp_path):
    baseline = tmp_path / "baseline"
    saved = run_benchmark(baseline, "--benchmark-save=reference")
    assert saved.returncode == 0, saved.stdout[-2000:]

    slowed = run_benchmark(tmp_path / "scratch", f"--benchmark-json={tmp_path / 'slowed.json'}", "--slow-inner-loop=5")
    assert slowed.returncode == 0, slowed.stdout[-2000:]
    verdict = run_gate(baseline, tmp_path / "slowed.json")
    assert verdict.returncode == 1, verdict.stdout
    assert "Performance has regressed" in verdict.stdout
    assert "test_inner_loop_of_one_task" in verdict.stdout.split("Performance has regressed")[1]

    real = run_benchmark(tmp_path / "scratch", f"--benchmark-json={tmp_path / 'real.json'}")
    assert real.returncode == 0, real.stdout[-2000:]
    verdict = run_gate(baseline, tmp_path / "real.json")
    assert verdict.returncode == 0, verdict.stdout
    assert "× reference" in verdict.stdout


def result(tmp_path: Path, name: str, times: dict[str, float]) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"benchmarks": [{"name": k, "stats": {"min": v}} for k, v in times.items()]}))
    return path


def test_a_machine_twice_as_slow_passes_and_a_slower_step_on_the_same_machine_fails(tmp_path):
    """The gate's arithmetic: what moves with the machine is divided out; what moves alone is caught."""
    baseline = tmp_path / "baseline" / "Linux"
    baseline.mkdir(parents=True)
    result(baseline, "0001_baseline.json", {"test_step": 2.0, gate.REFERENCE: 0.2})

    slower_machine = result(tmp_path, "machine.json", {"test_step": 4.0, gate.REFERENCE: 0.4})
    assert gate.main([str(slower_machine), str(tmp_path / "baseline")]) == 0

    slower_step = result(tmp_path, "step.json", {"test_step": 3.2, gate.REFERENCE: 0.2})
    assert gate.main([str(slower_step), str(tmp_path / "baseline")]) == 1


def test_without_a_baseline_the_gate_measures_and_says_so(tmp_path, capsys):
    now = result(tmp_path, "now.json", {"test_step": 2.0, gate.REFERENCE: 0.2})
    assert gate.main([str(now), str(tmp_path / "AVX9")]) == 0
    assert "measured, not compared" in capsys.readouterr().out


def test_a_damaged_result_is_one_line_that_says_what_to_do(tmp_path):
    damaged = tmp_path / "now.json"
    damaged.write_text("{")
    with pytest.raises(SystemExit, match="not a pytest-benchmark result.*make benchmarks"):
        gate.main([str(damaged), str(tmp_path)])
