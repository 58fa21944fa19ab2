"""This machine's load while a run works (CPU, memory, disk, network, GPU), sampled with MLflow's
own system-metrics monitors and kept with the run's files.

Why not only MLflow's ``log_system_metrics``: the grid's workers do not talk to MLflow (the
driver sends each finished run from its files), so the samples must live in the run directory
(``system_metrics.csv``, one row per sample: ``step``, ``timestamp`` in ms, then MLflow's metric
names such as ``cpu_utilization_percentage``). ``tracking`` sends them as ``system/<name>``, as
MLflow's own monitor would, live when a tracker is open and again by ``metabench track``.
"""

from __future__ import annotations

import csv
import io
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metabench import MetabenchError, files
from metabench.run_folder import SYSTEM_METRICS

FILE = SYSTEM_METRICS
INTERVAL_SECONDS = 10.0  # MLflow's default sampling interval
_ACTIVE: set[Path] = set()  # run directories being sampled in this process
_LOCK = threading.Lock()


def _monitors() -> list[Any]:
    # MLflow's monitors, imported when a sampler starts: importing mlflow costs seconds
    from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
    from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
    from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor

    monitors = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
    try:
        from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

        monitors.append(GPUMonitor())  # needs an NVIDIA GPU and nvidia-ml-py
    except Exception:
        pass  # no GPU here: CPU, memory, disk and network only
    return monitors


def read(run_dir: Path) -> list[dict[str, float]]:
    """The samples recorded in ``run_dir`` (none when the file is missing or unreadable)."""
    path = Path(run_dir) / FILE
    try:
        with path.open(newline="") as handle:
            return [{key: float(value) for key, value in row.items() if value} for row in csv.DictReader(handle)]
    except (OSError, ValueError, csv.Error):
        return []


class Sampler:
    """Samples every ``interval`` seconds in a daemon thread until ``stop``; then writes all
    samples (with ``resume``, those of the earlier part of the run first) to
    ``run_dir/system_metrics.csv``.

    ``send`` receives the samples not sent yet each time one is taken (a live MLflow run); a
    failure there is retried with the next sample, and never stops the sampling or the run.
    """

    def __init__(
        self,
        run_dir: Path,
        interval: float | None = None,
        send: Callable[[list[dict[str, float]]], None] | None = None,
        resume: bool = True,
    ):
        self.run_dir = Path(run_dir)
        self.interval = INTERVAL_SECONDS if interval is None else interval
        self.send = send
        self.rows = read(self.run_dir) if resume else []  # a run started afresh keeps none of before
        self._unsent: list[dict[str, float]] = []
        self._failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Sampler:
        """Begin sampling; inert when another sampler already records this run (the grid's unit
        around a tracked training), so each sample is taken and written once."""
        key = self.run_dir.resolve()
        with _LOCK:
            if key in _ACTIVE:
                return self
            _ACTIVE.add(key)
        self._monitors = _monitors()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="metabench-system-metrics")
        self._thread.start()
        return self

    def __enter__(self) -> Sampler:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> dict[str, float]:
        """One row now: each monitor's reading, stamped with the next step and the time."""
        row: dict[str, float] = {"step": float(len(self.rows)), "timestamp": float(int(time.time() * 1000))}
        for monitor in self._monitors:
            try:
                monitor.collect_metrics()
                row.update({key: float(value) for key, value in monitor.aggregate_metrics().items()})
            except Exception:
                continue  # a monitor that cannot read (a vanished GPU) leaves its columns empty
            finally:
                monitor.clear_metrics()
        self.rows.append(row)
        self._unsent.append(row)
        if self.send is not None:
            try:
                self.send(self._unsent)
                self._unsent = []
            except Exception:  # a busy store: these rows go with the next sample
                self._failures += 1
                if self._failures >= 3:
                    self.send = None  # the store is gone; the file keeps the samples for `metabench track`
        return row

    def stop(self) -> None:
        """End the sampling (with a last sample) and write the file atomically."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        with _LOCK:
            _ACTIVE.discard(self.run_dir.resolve())
        self.sample()
        columns = list(dict.fromkeys(key for row in self.rows for key in row))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({key: _plain(value) for key, value in row.items()} for row in self.rows)
        try:
            files.write_atomic(self.run_dir / FILE, text.getvalue())
        except MetabenchError as error:  # a full disk must not fail the run these numbers describe
            print(f"warning: system metrics not kept: {error}", file=sys.stderr)


def _plain(value: float) -> int | float:
    return int(value) if value == int(value) else value
