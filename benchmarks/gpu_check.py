"""`make gpu-check`, part 2: short MAML and ProtoNet runs on the CPU and the GPU, compared, and
the GPU's MAML throughput: tasks one by one against tasks under vmap, one GPU against all.

1. The same runs (same seed and budget) on each of ``--devices`` (default ``cpu,cuda``): test
   accuracy, training seconds and meta-training tasks per second on each; it fails when two
   devices' accuracies differ by more than TOLERANCE points (float kernels differ between
   devices, so the runs are not bit-identical).
2. A second-order MAML meta-step at the benchmark setting (Conv-4/64, 5-way 1-shot, 15
   queries, meta-batch 32) on the last device, its tasks looped and vmapped (``task_batching``):
   tasks per second of each.
3. With more than one GPU: the same short MAML training on one rank and on one rank per GPU
   (``metabench train --ranks``): seconds of each.

On a CUDA machine: ``python -m benchmarks.gpu_check [--data-dir DIR]``. CI runs the CPU-only
form, ``--devices cpu,cpu --quick`` (tests/test_gpu_check.py), so the script cannot rot
before a GPU comes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from metabench.algorithms import TaskShape, build_algorithm
from metabench.config import RunConfig
from metabench.data import fetch
from metabench.runner import evaluate_run, train_run

TOLERANCE = 2.0  # points of test accuracy between two devices' runs
RUNS = {  # about two minutes each on a 2-core CPU
    "protonet": {"iterations": 200, "hyper": {"hidden": 32, "train_ways": 20}, "train_queries": 5},
    "maml": {"iterations": 150, "hyper": {"hidden": 32, "meta_batch": 8}},
}
QUICK = {"iterations": 6, "val_every": 3, "val_episodes": 10, "test_episodes": 40}  # --quick: the script's plumbing


def compare_devices(devices: list[str], data_dir: Path, work: Path, quick: bool) -> list[str]:
    """Part 1: every run on every device; the failures (accuracy gaps above TOLERANCE)."""
    failures = []
    print(f"{'algorithm':10} {'device':6} {'test %':>8} {'train s':>8} {'tasks/s':>8}")
    for algorithm, settings in RUNS.items():
        accuracy = {}
        for i, device in enumerate(devices):
            budget = {"val_every": 50, "val_episodes": 50, "test_episodes": 600, **settings, **(QUICK if quick else {})}
            config = RunConfig(
                algorithm=algorithm,
                device=device,
                data_dir=str(data_dir),
                runs_dir=str(work / f"runs-{i}-{device}"),
                **budget,
            )
            seconds = train_run(config)["train_seconds"]
            metrics = evaluate_run(config)
            tasks = config.iterations * config.hyper.get("meta_batch", 1) / max(seconds, 1e-9)
            accuracy[i] = 100 * metrics["accuracy"]
            print(f"{algorithm:10} {device:6} {accuracy[i]:8.2f} {seconds:8.1f} {tasks:8.1f}")
        for i in range(1, len(devices)):
            gap = abs(accuracy[i] - accuracy[0])
            if gap > TOLERANCE:
                failures.append(
                    f"{algorithm}: {devices[i]} {accuracy[i]:.2f} % vs {devices[0]} {accuracy[0]:.2f} % (gap {gap:.2f})"
                )
    return failures


def meta_step_throughput(device: str, tasks: int, rounds: int) -> dict[str, float]:
    """Part 2: tasks per second of a second-order MAML meta-step, looped and vmapped."""
    from benchmarks.conftest import META_BATCH, QUERIES, SHOTS, SIZE, WAYS, make_task_batch

    batch = make_task_batch()
    batch = batch.tasks(range(min(tasks, META_BATCH))).to(device)
    shape = TaskShape(channels=1, image_size=SIZE, train_ways=WAYS, test_ways=WAYS)
    speeds = {}
    for setting in ("loop", "vmap"):
        torch.manual_seed(0)
        hyper = {"hidden": 64, "meta_batch": len(batch), "task_batching": setting}
        algorithm = build_algorithm("maml", hyper, shape, torch.device(device))
        algorithm.meta_train_step(batch)  # warm-up (kernel selection, allocator)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(rounds):
            algorithm.meta_train_step(batch)
        synchronize(device)
        speeds[setting] = rounds * len(batch) / (time.perf_counter() - start)
    print(f"MAML meta-step on {device}, {WAYS}-way {SHOTS}-shot {QUERIES} queries, {len(batch)} tasks: ", end="")
    print(", ".join(f"{name} {value:.1f} tasks/s" for name, value in speeds.items()))
    return speeds


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def ranks_speed(data_dir: Path, work: Path) -> None:
    """Part 3: one short MAML training on one rank, then on one rank per GPU."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus < 2:
        print(f"{gpus} GPU(s): no multi-GPU comparison")
        return
    for ranks in (1, gpus):
        runs = work / f"runs-ranks{ranks}"
        command = [sys.executable, "-m", "metabench", "train", "--algorithm", "maml", "--iterations", "100"]
        command += ["--hp", "meta_batch=32", "--hp", "hidden=64", "--ranks", str(ranks), "--device", "cuda"]
        command += ["--data-dir", str(data_dir), "--runs-dir", str(runs)]
        subprocess.run(command, check=True, env={**os.environ, "METABENCH_TRACKING": "off"}, stdout=subprocess.PIPE)
        summary = json.loads(next(runs.glob("*/train_summary.json")).read_text())
        print(f"MAML, 100 meta-steps of 32 tasks on {ranks} GPU(s): {summary['train_seconds']:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--devices", default="cpu,cuda", help="comma-separated devices to compare (default cpu,cuda)")
    parser.add_argument("--quick", action="store_true", help="tiny budgets: checks the script, not the device")
    args = parser.parse_args(argv)
    devices = args.devices.split(",")
    if any(d.startswith("cuda") for d in devices) and not torch.cuda.is_available():
        print("no CUDA device: nothing to check (the tests in tests/test_gpu.py skip for the same reason)")
        return 0
    work = Path(tempfile.mkdtemp(prefix="metabench-gpu-check-"))
    tracking = os.environ.get("METABENCH_TRACKING")
    os.environ["METABENCH_TRACKING"] = "off"  # throw-away runs stay out of the MLflow store
    try:
        data_dir = args.data_dir or work / "data"
        if not (data_dir / "glyphs").exists():
            fetch("glyphs", {}, data_dir)
        failures = compare_devices(devices, data_dir, work, args.quick)
        meta_step_throughput(devices[-1], 4 if args.quick else 32, 1 if args.quick else 5)
        if not args.quick:
            ranks_speed(data_dir, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if tracking is None:
            del os.environ["METABENCH_TRACKING"]
        else:
            os.environ["METABENCH_TRACKING"] = tracking
    for failure in failures:
        print("FAIL", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
