"""The one module that talks to MLflow; everything else calls it.

Why it is careful: a tracking server is a convenience, the run's own files are the record.
Every MLflow call goes through ``_safely``; the first failure (server down, network gone)
disables tracking for the rest of the process, tells the user once, and marks the run
``tracking_pending`` so ``metabench track`` can send it again later from the local files.
Nothing the run computes depends on MLflow. MLflow itself (seconds to import) is imported where
a call is first made, so a run with ``METABENCH_TRACKING=off`` and every worker of a grid never load it.

Store: ``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///mlflow.db`` in the working
directory (the project root under DVC). Metrics are sent in batches (``log_batch``), never one
by one.

MLflow's conventions: one experiment per dataset (``metabench-<dataset>``), tagged as a model
training experiment (``mlflow.experimentKind``; MLflow 3.17's UI still starts in its GenAI view
unless the link says ``?workflowType=machine_learning``, which ``make mlflow-ui`` prints); MLflow's own
system tags (``mlflow.source.git.commit``, ``mlflow.source.name``, ``mlflow.user``); each
parameter once (the resolved run settings, the task shape, the dataset); as metrics only what
varies or is a result, each training point stamped with the time it was reached, the test
accuracy listed first (``metric_name``, ``Tracker._reserve_headline``); the
machine's load as ``system/*`` metrics (``system_metrics``); a method's cost from the profile
stage as ``cost.*`` metrics of every run of its setting, so the runs table sets accuracy
beside cost.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.console import Console

from metabench import files, sources, system_metrics
from metabench.run_folder import (
    CHECKPOINT,
    CONFIG,
    EPISODES,
    EVAL_TIMING,
    METRICS,
    MLFLOW_RUN,
    TRACKING_PENDING,
    TRAIN_LOG,
    TRAIN_SUMMARY,
    RunFolder,
)
from metabench.scoring import MODES

EXPERIMENT = "metabench"  # prefix: one experiment per dataset, metabench-<dataset>
# what the MLflow UI reads to open a training experiment on its runs (mlflow.experimentKind)
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# final numbers worth a metric; the rest of metrics.json (ways, shots, seeds, counts) are settings
RESULTS = {
    "accuracy",
    "ci95",
    "eval_seconds",
    "episodes_per_second",
    "best_val_accuracy",
    "best_iteration",
    "train_seconds",
    # each scoring mode's score (metabench.scoring), as ``test/accuracy_inductive`` and so on
    *(f"{key}_{mode}" for mode in MODES for key in ("accuracy", "ci95")),
}
# The test accuracy and its interval are ``accuracy`` and ``accuracy_ci95``, first wherever MLflow
# sorts metrics by name; its run page lists them in the order first logged, which
# ``Tracker._reserve_headline`` sees to. Every other number says what it measures in a prefix
# (``train/``, ``val/``, ``test/``, and ``cost.``, ``system/``).
VALIDATION_NAMES = {  # the same names whether training logs them or metrics.json repeats them
    "val_accuracy": "val/accuracy",
    "best_val_accuracy": "val/best_accuracy",
    "best_iteration": "val/best_iteration",
}
METRIC_NAMES = {
    "test": {"accuracy": "accuracy", "ci95": "accuracy_ci95", **VALIDATION_NAMES},
    "training": {"train_seconds": "train/seconds", **VALIDATION_NAMES},
}
PREFIXES = {"test": "test/", "training": "train/", "cost": "cost."}


def metric_name(key: str, kind: str) -> str:
    """The MLflow name of one of a run's numbers: ``kind`` is training, test or cost."""
    return METRIC_NAMES.get(kind, {}).get(key) or PREFIXES[kind] + key


# the profile's numbers that measure cost (``metabench profile``); the rest are its settings
COST = (
    "meta_train_steps_per_second",
    "meta_train_tasks_per_second",
    "adaptation_tasks_per_second",
    "evaluation_episodes_per_second",
    "gflop_per_step",
    "achieved_gflops",
    "utilisation",
    "peak_rss_mb",
)
BATCH = 1000  # MLflow's limit of metrics per log_batch call
_console = Console(stderr=True)
_warned = False


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"


def _quiet_environment() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # MLflow draws a bar per artifact transfer; in a grid's log they are noise
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # fail fast on a dead server instead of retrying for minutes
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


class Tracker:
    """Tracks one metabench run (one run directory) as one MLflow run."""

    def __init__(self, run_dir: Path, enabled: bool = True, start_ms: int | None = None, mark_pending: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled and os.environ.get("METABENCH_TRACKING", "on") != "off"
        self.client = None
        self.run_id: str | None = None
        # the MLflow run's start: training points are stamped from it (a resent run gives its own)
        self.start_ms = int(time.time() * 1000) if start_ms is None else start_ms
        # a failure leaves the run marked for `metabench track`, unless what failed is not part of it
        self.mark_pending = mark_pending
        self._sampler: system_metrics.Sampler | None = None

    # -- plumbing -------------------------------------------------------------------------
    def _safely(self, action: str, function, *args, **kwargs):
        global _warned
        if not self.enabled:
            return None
        try:
            return function(*args, **kwargs)
        except Exception as error:  # any failure of the tracking backend must not stop the run
            self.enabled = False
            try:
                if self.mark_pending:
                    (self.run_dir / TRACKING_PENDING).write_text(f"{action}: {type(error).__name__}: {error}\n")
            except OSError:
                pass  # a full disk: the warning below still tells the user
            if not _warned:
                _warned = True
                _console.print(
                    f"[yellow]warning:[/yellow] MLflow at {tracking_uri()} failed while {action} "
                    f"({type(error).__name__}); results stay in {self.run_dir}; "
                    f"send them later with `metabench track {self.run_dir}`",
                    soft_wrap=True,
                )
            return None

    def _connect(self, dataset: str | None = None):
        _quiet_environment()
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri())
        if dataset is None:
            return client, None
        name = f"{EXPERIMENT}-{dataset}"
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            return client, client.create_experiment(name, tags=EXPERIMENT_KIND)
        if experiment.tags.get("mlflow.experimentKind") is None:
            client.set_experiment_tag(experiment.experiment_id, *next(iter(EXPERIMENT_KIND.items())))
        return client, experiment.experiment_id

    # -- the API the runner uses ----------------------------------------------------------
    def start(self, name: str, params: dict[str, Any], tags: dict[str, str], resume: bool) -> None:
        """Open the run (reusing the recorded MLflow run when ``resume``), log params and tags.

        Without ``resume`` the recorded run, if any, is superseded: it was killed (SIGKILL leaves
        it RUNNING) or is being replaced, so it is marked KILLED, or deleted when ``replace``.
        """
        self._open(name, params, tags, resume, replace=False)
        if self.run_id is not None and self.enabled:
            self._sampler = system_metrics.Sampler(self.run_dir, resume=resume, send=self._send_system).start()

    def replace(self, name: str, params: dict[str, Any], tags: dict[str, str]) -> None:
        """A new MLflow run for this run directory in place of the recorded one (deleted)."""
        self._open(name, params, tags, resume=False, replace=True)

    def _open(self, name, params, tags, resume: bool, replace: bool) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        record = self.run_dir / MLFLOW_RUN

        def begin():
            self.client, experiment_id = self._connect(str(params.get("dataset", {}).get("name", "unknown")))
            previous = _recorded_run(self.client, record)
            if resume and previous is not None:
                self.run_id = previous.info.run_id
                self.start_ms = previous.info.start_time or self.start_ms
                if previous.info.status != "RUNNING":
                    self.client.update_run(self.run_id, status="RUNNING")
                return
            if previous is not None:
                if replace:
                    self.client.delete_run(previous.info.run_id)
                elif previous.info.status == "RUNNING":
                    self.client.set_terminated(previous.info.run_id, "KILLED")
            run = self.client.create_run(experiment_id, start_time=self.start_ms, run_name=name, tags=tags)
            self.run_id = run.info.run_id
            # the experiment id too: the UI's full run route opens in its model-training view (run_link)
            files.write_json(
                record, {"run_id": self.run_id, "experiment_id": experiment_id, "tracking_uri": tracking_uri()}
            )
            self._log_params(params)
            self._reserve_headline()

        self._safely("starting the run", begin)

    def _reserve_headline(self) -> None:
        """MLflow's run page lists a run's metrics in the order they were first logged, and a run
        trains before it is tested; so the test accuracy and its interval are logged first, as
        NaN (not evaluated yet), and evaluation replaces them with their values."""
        from mlflow.entities import Metric

        names = [metric_name(key, "test") for key in ("accuracy", "ci95")]
        self._send_metrics([Metric(name, float("nan"), self.start_ms, 0) for name in names])

    def attach(self) -> bool:
        """Reopen the MLflow run recorded in the run directory (for evaluate/profile)."""
        record = self.run_dir / MLFLOW_RUN
        if not record.is_file():
            return False

        def reopen():
            self.client, _ = self._connect()
            self.run_id = json.loads(record.read_text())["run_id"]
            self.client.get_run(self.run_id)
            return True

        return bool(self._safely("reopening the run", reopen))

    def _log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(key, str(value)[:6000]) for key, value in run_params(params).items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_rows(self, rows: Iterable[dict[str, Any]], step_key: str = "iteration", kind: str = "training") -> None:
        """Log rows of metrics (one dict per step) in batches, named by ``metric_name``."""
        rows = list(rows)
        if not rows or self.run_id is None:
            return

        def send():
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            metrics = [
                Metric(metric_name(key, kind), float(value), self._stamp(row, now), int(row[step_key]))
                for row in rows
                for key, value in row.items()
                if key not in (step_key, "seconds") and isinstance(value, (int, float)) and value == value
            ]
            self._send_metrics(metrics)

        self._safely("logging metrics", send)

    def _send_system(self, rows: list[dict[str, float]]) -> None:
        """System-metrics samples, live; a failure is the sampler's to retry (the file keeps them)."""
        if self.enabled and self.run_id is not None:
            self.client.log_batch(self.run_id, metrics=system_metric_objects(rows))

    def log_system(self, rows: list[dict[str, float]]) -> None:
        """Recorded system-metrics samples (``system_metrics.csv``), with their own times and steps."""
        if not rows or self.run_id is None:
            return

        self._safely("logging system metrics", self._send_metrics, system_metric_objects(rows))

    def _send_metrics(self, metrics: list) -> None:
        """MLflow metrics in batches of MLflow's limit."""
        for start in range(0, len(metrics), BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + BATCH])

    def _stamp(self, row: dict[str, Any], now: int) -> int:
        """When a training point was reached: the run's start plus its training seconds."""
        seconds = row.get("seconds")
        if isinstance(seconds, (int, float)) and seconds == seconds:
            return self.start_ms + int(1000 * seconds)
        return now

    def log_final(self, metrics: dict[str, Any], kind: str = "training") -> None:
        """The run's result numbers (``RESULTS``), once; its settings are parameters already."""
        self.log_rows(
            [
                {
                    **{
                        k: v
                        for k, v in metrics.items()
                        if k in RESULTS and isinstance(v, (int, float)) and not isinstance(v, bool)
                    },
                    "_step": 0,
                }
            ],
            step_key="_step",
            kind=kind,
        )

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.run_id is None:
            return

        def send():
            from mlflow.entities import RunTag

            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

        self._safely("setting tags", send)

    def log_artifacts(self, paths: Iterable[Path], folder: str | None = None) -> None:
        """Upload files; a ``checkpoint.pt`` is also logged as an MLflow model (``log_model``)."""
        if self.run_id is None:
            return
        for path in paths:
            if Path(path).is_file():
                self._safely(f"uploading {Path(path).name}", self.client.log_artifact, self.run_id, str(path), folder)
                if Path(path).name == CHECKPOINT:
                    self._safely("logging the model", self.log_model, Path(path))

    def log_model(self, checkpoint_path: Path) -> None:
        """The run's best weights in MLflow's model format, ``runs:/<run id>/model`` (``mlflow_model``)."""
        import mlflow

        image_shape = json.loads((checkpoint_path.parent / CONFIG).read_text())["dataset"]["image_shape"]
        mlflow.set_tracking_uri(tracking_uri())
        # MLflow advises type hints and an input example; the tensor signature already states the input
        with warnings.catch_warnings(), mlflow.start_run(run_id=self.run_id, log_system_metrics=False):
            warnings.simplefilter("ignore", UserWarning)
            from metabench import mlflow_model  # MLflow's "models from code" file: imported to log a model only

            mlflow.pyfunc.log_model(
                name=mlflow_model.ARTIFACT,
                python_model=mlflow_model.__file__,  # models from code: MLflow pickles nothing
                artifacts={"checkpoint": str(checkpoint_path)},
                signature=mlflow_model.signature(image_shape),
                pip_requirements=mlflow_model.requirements(),
            )

    def finish(self, status: str = "FINISHED", end_ms: int | None = None) -> None:
        if self._sampler is not None:
            self._sampler.stop()
            self._sampler = None
        if self.run_id is not None:
            self._safely("closing the run", self.client.set_terminated, self.run_id, status, end_ms)


def system_metric_objects(rows: list[dict[str, float]]) -> list:
    """MLflow metrics ``system/<name>`` of samples, as MLflow's own system-metrics monitor names them."""
    from mlflow.entities import Metric

    return [
        Metric(f"system/{key}", value, int(row["timestamp"]), int(row["step"]))
        for row in rows
        for key, value in row.items()
        if key not in ("step", "timestamp") and value == value
    ]


def log_cost(profile: dict[str, Any], run_dirs: Iterable[Path]) -> list[str]:
    """A profile's cost numbers as ``cost.<name>`` metrics of each tracked run in ``run_dirs``
    (the seeds of its setting): the MLflow runs table then sets accuracy beside cost. Returns the
    MLflow run ids that got them. A run that is not tracked, or a store that fails, is passed over
    (the profile file is the record; it is not marked for ``metabench track``).
    """
    logged = []
    for run_dir in run_dirs:
        tracker = Tracker(run_dir, mark_pending=False)
        if not tracker.attach():
            continue
        tracker.log_rows(
            [{**{key: profile[key] for key in COST if isinstance(profile.get(key), (int, float))}, "_step": 0}],
            step_key="_step",
            kind="cost",
        )
        tracker.set_tags({"cost.device": str(profile.get("device")), "cost.threads": str(profile.get("threads"))})
        if tracker.enabled:
            logged.append(tracker.run_id)
    return logged


def _recorded_span(run_dir: Path) -> tuple[int | None, int | None]:
    """When a run's work started and ended, in ms, from its files: it ended when its last result
    file was written, and started its training and evaluation seconds before (file times survive
    a copy less well than the seconds the run recorded). (None, None) when no result is there."""
    results = [run_dir / name for name in (METRICS, TRAIN_SUMMARY) if (run_dir / name).is_file()]
    if not results:
        return None, None
    end_ms = int(1000 * max(path.stat().st_mtime for path in results))
    return end_ms - int(1000 * sum(recorded_seconds(run_dir).values())), end_ms


def recorded_seconds(run_dir: Path) -> dict[str, float]:
    """What a run's files say it cost, in seconds: ``train`` (validation included) and
    ``evaluate`` (the test episodes); a missing or unreadable file leaves its entry out."""
    seconds = {}
    for name, key, label in (
        (TRAIN_SUMMARY, "train_seconds", "train"),
        (EVAL_TIMING, "eval_seconds", "evaluate"),
    ):
        try:
            seconds[label] = float(json.loads((Path(run_dir) / name).read_text())[key])
        except (OSError, KeyError, TypeError, ValueError):
            pass
    return seconds


def _recorded_run(client, record: Path):
    """The MLflow run ``record`` names, or None when there is none (or the store lost it)."""
    if not record.is_file():
        return None
    try:
        return client.get_run(json.loads(record.read_text())["run_id"])
    except (ValueError, KeyError, json.JSONDecodeError):
        return None
    except Exception as error:  # MlflowException: not in this store
        if "RESOURCE_DOES_NOT_EXIST" in str(getattr(error, "error_code", "")) or "not found" in str(error).lower():
            return None
        raise


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def run_params(meta: dict[str, Any]) -> dict[str, Any]:
    """Each parameter once: the resolved run settings at the top level (``shots``), every
    resolved hyper-parameter (``hyper.inner_lr``, ``hyper.first_order``: the algorithm's
    defaults too, so MAML and FOMAML differ in their params), then ``task.*`` and ``dataset.*``
    (the run id is the run's name)."""
    settings = dict(meta.get("config") or {})
    hyper = {**(settings.pop("hyper", None) or {}), **(meta.get("hyper") or {})}
    return {
        **flatten(settings),
        **flatten({"hyper": hyper}),
        **flatten({"task": meta.get("task") or {}, "dataset": meta.get("dataset") or {}}),
    }


def run_tags(config: dict[str, Any], dataset_checksum: str, device: str) -> dict[str, str]:
    """Tags that identify where a run's numbers came from: MLflow's system tags and ours."""
    params_hash = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return {
        "mlflow.source.git.commit": (sources.git_commit() or "unknown").removesuffix("+dirty"),
        "mlflow.source.name": "metabench",
        "mlflow.source.type": "LOCAL",
        "mlflow.user": user,
        "params_hash": params_hash,
        "dataset_checksum": dataset_checksum,
        "seed": str(config.get("config", {}).get("seed")),
        "device": device,
        "algorithm": str(config.get("algorithm")),
        "dataset": str(config.get("dataset", {}).get("name")),
    }


def resend(run_dir: Path) -> str | None:
    """Log a finished run again from its local files into an MLflow run that replaces the one it
    recorded (a partial run is deleted, never left beside the new one); return the new id."""
    run_dir = Path(run_dir)
    with files.exclusive(run_dir, f"run {run_dir}"):
        return _resend(run_dir)


def _resend(run_dir: Path) -> str | None:
    folder, retrain = RunFolder(run_dir), f"retrain the run (metabench train --force) or remove {run_dir}"
    config = folder.read_json_verified(CONFIG, retrain)
    for key in ("identity", "provenance", "fingerprint"):  # what the run is compared by and came from: not parameters
        config.pop(key, None)
    start_ms, end_ms = _recorded_span(run_dir)
    tracker = Tracker(run_dir, start_ms=start_ms)
    summary = (
        folder.read_json_verified(TRAIN_SUMMARY, retrain) if TRAIN_SUMMARY in (folder.sealed_names() or {}) else {}
    )
    tags = run_tags(config, config["dataset"]["checksum"], str(summary.get("device", "unknown")))
    tracker.replace(run_dir.name, config, {**tags, "resent_from_files": "true"})  # never a second run beside it
    sealed = folder.sealed_names() or {}
    if TRAIN_LOG in sealed:
        tracker.log_rows(folder.read_table_verified(TRAIN_LOG, retrain, ("iteration",)).to_dict("records"))
    tracker.log_system(system_metrics.read(run_dir))
    if TRAIN_SUMMARY in sealed:
        tracker.log_final(folder.read_json_verified(TRAIN_SUMMARY, retrain))
    if METRICS in sealed:
        from metabench.evaluation import read_results  # torch: only where a result is sent

        tracker.log_final(read_results(run_dir)[0], kind="test")
    tracker.log_artifacts([run_dir / n for n in (CHECKPOINT, CONFIG, TRAIN_LOG, EPISODES, METRICS)])
    tracker.finish(end_ms=end_ms)
    if tracker.enabled and tracker.run_id:
        (run_dir / TRACKING_PENDING).unlink(missing_ok=True)
        return tracker.run_id
    return None


UI = "http://127.0.0.1:5000"  # where `make mlflow-ui` serves the default store


def run_link(run_id: str, uri: str | None = None, experiment_id: str = "") -> str:
    """The MLflow UI's page of one run: on the tracking server itself when runs go to one, else at
    `make mlflow-ui`'s address. With the experiment id, the full route in the model-training view
    (MLflow 3.17 opens ``#/runs/<id>``, the route for runs recorded without it, in its GenAI view)."""
    uri = uri or tracking_uri()
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else UI
    if experiment_id:
        return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"
    return f"{base}/#/runs/{run_id}"


def experiment_links(tracking: str = "sqlite:///mlflow.db", ui: str = UI) -> list[str]:
    """The MLflow UI's page of every metabench experiment in ``tracking`` (for ``make mlflow-ui``),
    in the classic view (MLflow opens experiments in its GenAI view otherwise)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking)
    experiments = [e for e in client.search_experiments() if e.name.startswith(f"{EXPERIMENT}-")]
    return [
        f"{e.name}: {ui}/#/experiments/{e.experiment_id}?workflowType=machine_learning"
        for e in sorted(experiments, key=lambda e: e.name)
    ]
