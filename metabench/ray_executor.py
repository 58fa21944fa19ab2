"""The grid on a Ray cluster: one Ray task per run (``metabench grid --ray-address ...``).

Workers need not share a file system with the driver. The driver puts the dataset's store
folder and the fixed episodes into Ray's object store once; each task unpacks them, and the
files of any earlier attempt of its run (to resume), into a private temporary directory, runs
the unit there (train, then evaluate: ``unit.run_unit``) and returns every file of the run.
Only the driver writes ``runs/``: it replaces the run's folder atomically file by file,
``metrics.json`` last, so a run is either complete in ``runs/`` or absent, whatever dies.

A task whose worker dies (SIGKILL, a lost node) is retried by Ray on another worker
(``max_retries``), starting again from the files the driver holds; a finished run is
written once and never run again (the grid skips complete runs). Ray's usage statistics are
off; its own authentication (``RAY_AUTH_MODE=token``) is left as the cluster is configured.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from metabench import MetabenchError, files
from metabench.config import RunConfig
from metabench.run_folder import METRICS
from metabench.unit import Outcome, run_unit

RESULT_LAST = METRICS  # written after every other file: its presence means the run is complete
SKIP = {".lock"}  # the worker's own lock file


def pack(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by its relative path (what travels through the object store)."""
    folder = Path(folder)
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name not in SKIP and not path.name.endswith(".part")
    }


def unpack(contents: dict[str, bytes], folder: Path) -> None:
    for name, data in contents.items():
        target = Path(folder) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def store_run(contents: dict[str, bytes], run_dir: Path) -> None:
    """Write a run's files into ``run_dir`` on the driver: ``metrics.json`` removed first and
    written last, each file atomically; files the run no longer has are removed."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RESULT_LAST).unlink(missing_ok=True)
    for stale in pack(run_dir).keys() - contents.keys():
        (run_dir / stale).unlink(missing_ok=True)
    for name in sorted(contents, key=lambda name: name == RESULT_LAST):
        files.write_atomic(run_dir / name, contents[name])


@contextlib.contextmanager
def _inside(folder: Path):
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def run_remotely(config: dict, threads: int, data: dict, episodes: dict, previous: dict) -> tuple[Outcome, dict]:
    """The body of one Ray task: the unit in a private directory laid out as the driver's
    project (``data/<dataset>``, ``data/episodes``, ``runs/<id>``), so the run's recorded
    settings name the same relative paths; returns the outcome and the run's files."""
    os.environ["METABENCH_TRACKING"] = "off"  # the driver tracks, from the returned files
    # the driver's folders mean nothing here: the same layout, relative to a private directory
    local = {**config, "data_dir": "data", "runs_dir": "runs", "episodes_dir": "data/episodes"}
    with tempfile.TemporaryDirectory(prefix="metabench-ray-") as root, _inside(Path(root)):
        run = RunConfig(**local)
        unpack(data, Path(run.data_dir) / run.dataset)
        unpack(episodes, run.episodes_path)
        unpack(previous, run.run_dir)
        try:
            outcome = run_unit(run, threads)
        except MetabenchError as error:
            return Outcome(run.run_id, "failed", error=str(error)), {}
        return outcome, pack(run.run_dir)


class RayExecutor:
    """Runs each grid unit as a Ray task of ``threads`` CPUs on the cluster at ``address``."""

    def __init__(self, address: str | None, threads: int, retries: int = 3):
        if threads < 1:
            raise MetabenchError("--threads must be at least 1")
        try:
            import ray  # an optional extra, imported only when a grid goes to a cluster
        except ImportError:
            raise MetabenchError("the Ray executor needs Ray: pip install 'metabench[ray]'") from None
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        self.ray, self.address, self.threads, self.retries = ray, address, threads, retries
        self.workers = None  # as many runs at once as the cluster has CPUs for

    def run(self, configs: list[RunConfig], report: Callable[[Outcome], None]) -> None:
        if not configs:
            return
        ray = self.ray
        if not ray.is_initialized():
            try:
                # a cluster of one's own (no address) needs no dashboard; an existing one keeps its own
                extra = {"include_dashboard": False} if self.address in (None, "", "local") else {}
                ray.init(address=self.address or None, log_to_driver=False, **extra)
            except (ConnectionError, RuntimeError, ValueError) as error:
                raise MetabenchError(
                    f"cannot reach the Ray cluster at {self.address} ({error}); start it (`ray start --head`) "
                    "or check RAY_ADDRESS and the cluster's auth token"
                ) from None
        task = ray.remote(run_remotely).options(num_cpus=self.threads, max_retries=self.retries)
        shared: dict[tuple, tuple] = {}
        pending = {}
        for config in configs:
            key = (config.dataset, config.data_dir, str(config.episodes_path))
            if key not in shared:  # each dataset and episode set goes into the object store once
                shared[key] = (
                    ray.put(pack(Path(config.data_dir) / config.dataset)),
                    ray.put(pack(config.episodes_path)),
                )
            data, episodes = shared[key]
            previous = pack(config.run_dir) if config.run_dir.is_dir() else {}
            pending[task.remote(config.to_dict(), self.threads, data, episodes, previous)] = config
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            config = pending.pop(done[0])
            try:
                outcome, contents = ray.get(done[0])
            except (ray.exceptions.RayError, OSError) as error:  # retries exhausted, or the task raised
                report(Outcome(config.run_id, "failed", error=f"{type(error).__name__}: {str(error)[:300]}"))
                continue
            if outcome.status == "done":
                store_run(contents, config.run_dir)
            report(outcome)
