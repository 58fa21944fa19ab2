"""`make gpu-check`, part 2: the same short MAML and ProtoNet runs on the CPU and on the GPU.

Prints each run's test accuracy and meta-training throughput on both devices and fails when
the GPU's accuracy is more than TOLERANCE points from the CPU's (float kernels differ between
devices, so the runs are not bit-identical; the budgets are the same). Run it on a CUDA machine:

    python -m benchmarks.gpu_check [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from metabench.config import RunConfig
from metabench.data import fetch
from metabench.runner import evaluate_run, train_run

TOLERANCE = 2.0  # points of test accuracy between the CPU and the GPU run
RUNS = {  # about two minutes each on a 2-core CPU
    "protonet": {"iterations": 200, "hyper": {"hidden": 32, "train_ways": 20}, "train_queries": 5},
    "maml": {"iterations": 150, "hyper": {"hidden": 32, "meta_batch": 8}},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check (the tests in tests/test_gpu.py skip for the same reason)")
        return 0
    work = Path(tempfile.mkdtemp(prefix="metabench-gpu-check-"))
    data_dir = args.data_dir or work / "data"
    if not (data_dir / "glyphs").exists():
        fetch("glyphs", {}, data_dir)
    failures = []
    print(f"{'algorithm':10} {'device':6} {'test %':>8} {'train s':>8} {'tasks/s':>8}")
    for algorithm, settings in RUNS.items():
        accuracy = {}
        for device in ("cpu", "cuda"):
            config = RunConfig(
                algorithm=algorithm,
                device=device,
                data_dir=str(data_dir),
                runs_dir=str(work / f"runs-{device}"),
                val_every=50,
                val_episodes=50,
                test_episodes=600,
                **settings,
            )
            summary = train_run(config)
            metrics = evaluate_run(config)
            seconds = summary["train_seconds"]
            tasks = config.iterations * config.hyper.get("meta_batch", 1) / max(seconds, 1e-9)
            accuracy[device] = 100 * metrics["accuracy"]
            print(f"{algorithm:10} {device:6} {accuracy[device]:8.2f} {seconds:8.1f} {tasks:8.1f}")
        gap = abs(accuracy["cpu"] - accuracy["cuda"])
        if gap > TOLERANCE:
            failures.append(f"{algorithm}: GPU {accuracy['cuda']:.2f} % vs CPU {accuracy['cpu']:.2f} % (gap {gap:.2f})")
    shutil.rmtree(work, ignore_errors=True)
    for failure in failures:
        print("FAIL", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
