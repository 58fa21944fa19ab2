"""One run's folder: the names of its files, and whether what it holds is the run asked for.

``runs/<run_id>/`` holds

* ``config.json``: the fully resolved settings, the run's identity (``metabench.identity``) and
  its provenance (git commit, source digest: recorded, never compared);
* ``state.pt``: everything needed to resume, written atomically at every validation;
* ``checkpoint.pt``: the weights with the best validation accuracy, with what is needed to use them;
* ``train_log.csv`` and ``train_summary.json``: per-update metrics, validations, training cost;
* ``episodes.csv``, ``metrics.json`` and ``eval_timing.json``: test accuracy per episode in the
  method's own scoring mode, its summary (with the identity of the weights it scored and every
  mode's score) and what evaluation cost; ``episodes.<mode>.csv``: the same episodes scored in
  the other mode (``metabench.scoring``), for a method with batch norm;
* ``system_metrics.csv``, ``mlflow_run.json``, ``tracking_pending``: the machine's load while it
  ran, and its MLflow run (``metabench.tracking``);
* ``manifest.json``: the sha256 of every result file above (``SEALED``), written last and
  atomically each time the run writes results. Every reader of results (report, summary,
  reproduction pages, tracking's resend, the grid's freshness check) reads a file's bytes once,
  checks them against the manifest and refuses, in one line naming the file, what does not
  match: a flipped bit in ``metrics.json`` is an error, not 40.60 instead of 42.60.

Every module that reads or writes a run folder goes through this one, so "is this run current?"
has one answer: its recorded identity equals the identity asked for (``identity.run_identity``).
A run recorded before behaviour versions is accepted and restamped here (``metabench.legacy``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from metabench import MetabenchError, files, legacy
from metabench.scoring import MODES

CONFIG = "config.json"
STATE = "state.pt"
CHECKPOINT = "checkpoint.pt"
TRAIN_LOG = "train_log.csv"
TRAIN_SUMMARY = "train_summary.json"
EPISODES = "episodes.csv"
METRICS = "metrics.json"
EVAL_TIMING = "eval_timing.json"
# the per-episode accuracies in a scoring mode other than the headline's (metabench.scoring)
EPISODES_IN_MODE = {mode: f"episodes.{mode}.csv" for mode in MODES}
EVALUATION_FILES = (EPISODES, *EPISODES_IN_MODE.values(), METRICS, EVAL_TIMING)  # they describe one set of weights
SYSTEM_METRICS = "system_metrics.csv"  # the machine's load while the run ran (system_metrics)
MLFLOW_RUN = "mlflow_run.json"  # the MLflow run this folder is tracked as (tracking)
TRACKING_PENDING = "tracking_pending"  # tracking failed: `metabench track` sends the run again
MANIFEST = "manifest.json"
# the result files the manifest covers (state.pt and the checkpoint carry their own sha256 too;
# the tracking files are the tracking store's business and change after the run)
SEALED = (CONFIG, CHECKPOINT, TRAIN_LOG, TRAIN_SUMMARY, EPISODES, *EPISODES_IN_MODE.values(), METRICS, EVAL_TIMING)
IDENTITY_KEY = "identity"


class RunFolder:
    """The files of one run (``RunFolder(config.run_dir)``)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def state(self) -> Path:
        return self.path / STATE

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def train_log(self) -> Path:
        return self.path / TRAIN_LOG

    @property
    def train_summary(self) -> Path:
        return self.path / TRAIN_SUMMARY

    @property
    def episodes(self) -> Path:
        return self.path / EPISODES

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def eval_timing(self) -> Path:
        return self.path / EVAL_TIMING

    @property
    def manifest(self) -> Path:
        return self.path / MANIFEST

    def seal(self) -> None:
        """Record the sha256 of every result file present (``SEALED``); written last, atomically."""
        present = {name: files.sha256_file(self.path / name) for name in SEALED if (self.path / name).is_file()}
        files.write_json(self.manifest, {"format": 1, "files": present})

    def sealed_names(self) -> dict[str, str] | None:
        """The manifest's ``{file: sha256}``; None without a manifest, ``{}`` when it is damaged."""
        saved = _read_record(self.manifest)
        if saved is None:
            return None
        listed = saved.get("files")
        return listed if isinstance(listed, dict) else {}

    def read_verified(self, name: str, rebuild: str) -> bytes:
        """The bytes of result file ``name``, read once and checked against the manifest (so a
        file swapped or edited after the run wrote it is never used): a one-line error naming
        the file and ``rebuild`` otherwise."""
        path = self.path / name
        listed = self.sealed_names()
        if listed is None:
            raise MetabenchError(
                f"{self.path} has no {MANIFEST} (written by metabench after every result); "
                f"run `metabench grid` or `metabench evaluate` to check the run and write it, or {rebuild}"
            )
        if name not in listed:
            raise MetabenchError(f"{path} is not in {self.manifest}; {rebuild}")
        try:
            data = path.read_bytes()
        except OSError as error:
            raise MetabenchError(f"cannot read {path} ({files.reason(error)}); {rebuild}") from error
        if files.sha256_bytes(data) != listed[name]:
            raise MetabenchError(f"{path} does not match {self.manifest} (changed after the run wrote it); {rebuild}")
        return data

    def read_json_verified(self, name: str, rebuild: str) -> dict:
        """A JSON record of the run, verified (``read_verified``) and parsed."""
        try:
            value = json.loads(self.read_verified(name, rebuild))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise MetabenchError(f"{self.path / name} is damaged ({type(error).__name__}); {rebuild}") from error
        if not isinstance(value, dict):
            raise MetabenchError(f"{self.path / name} is not a metabench record; {rebuild}")
        return value

    def read_table_verified(self, name: str, rebuild: str, columns: tuple[str, ...]):
        """A CSV table of the run (``train_log.csv``), verified, parsed, with numeric ``columns``."""
        import io

        import pandas as pd

        data = self.read_verified(name, rebuild)
        try:
            table = pd.read_csv(io.BytesIO(data))
            for column in columns:
                table[column] = pd.to_numeric(table[column], errors="raise")
        except (ValueError, KeyError, pd.errors.ParserError, UnicodeDecodeError) as error:
            raise MetabenchError(f"{self.path / name} is not a metabench table ({error!r}); {rebuild}") from error
        return table

    def mlflow_run(self) -> tuple[str, str]:
        """The MLflow run id and experiment id ``mlflow_run.json`` records ("" for either not
        recorded: a run never tracked, or tracked before records named the experiment)."""
        saved = _read_record(self.path / MLFLOW_RUN)
        if saved is None:
            return "", ""
        if not isinstance(saved.get("run_id"), str) or not isinstance(saved.get("experiment_id", ""), str):
            raise MetabenchError(
                f"{self.path / MLFLOW_RUN} is damaged; delete it and run `metabench track {self.path}` to send the run again"
            )
        return saved["run_id"], saved.get("experiment_id", "")

    def read_config(self) -> dict | None:
        """``config.json``, or None when missing; ``{}`` when unreadable (never taken as current)."""
        return _read_record(self.config)

    def write_config(self, meta: dict, identity: dict, provenance: dict) -> None:
        files.write_json(self.config, {**meta, IDENTITY_KEY: identity, "provenance": provenance})

    def migrate(self, current: dict, algorithm: str) -> None:
        """Bring a folder written by earlier metabench to this form: restamp a legacy
        ``config.json`` and ``metrics.json`` (a ``fingerprint`` with a source digest) when
        ``legacy.accepts`` them as the run ``current`` identifies, and seal a folder written
        before manifests (trusted as found, once: its evaluation is still checked against
        ``episodes.csv`` by every reader)."""
        restamped = False
        for path in (self.config, self.metrics):  # an unreadable metrics.json is read_results' to refuse
            saved = _read_record(path)
            if saved and legacy.accepts(saved.get("fingerprint"), current, algorithm):
                kept = {key: value for key, value in saved.items() if key != "fingerprint"}
                provenance = legacy.provenance(saved["fingerprint"])
                files.write_json(path, {**kept, IDENTITY_KEY: current, "provenance": provenance})
                restamped = True
        if self.path.is_dir() and (restamped or (self.sealed_names() is None and self.config.is_file())):
            self.seal()

    def recorded_identity(self) -> dict | None:
        """The identity ``config.json`` records: None without the file, ``{}`` (matching nothing)
        when unreadable or in the legacy form."""
        saved = self.read_config()
        if saved is None:
            return None
        recorded = saved.get(IDENTITY_KEY)
        return recorded if isinstance(recorded, dict) else {}

    def finished_identity(self) -> dict | None:
        """The identity of the finished training here (a checkpoint beside its config), if any."""
        if not self.checkpoint.is_file():
            return None
        return self.recorded_identity()

    def holds_other_run(self, current: dict, iterations: int) -> bool:
        """Whether the folder holds a run the spec no longer asks for: another identity, or more
        iterations than asked. (An interrupted run of the same identity resumes instead.)"""
        saved = self.read_config()
        if saved is None:
            return False
        recorded = saved.get(IDENTITY_KEY)
        return recorded != current or (saved.get("config") or {}).get("iterations", 0) > iterations

    def evaluation_is_current(
        self, metrics: dict[str, Any], current: dict, iterations: int | None, episodes: str, evaluation: int
    ) -> bool:
        """Whether ``metrics`` (this folder's, checked) scored the run asked for: its identity,
        its number of iterations (None for a reference method), the test episodes' digest, with
        the evaluation asked for (``identity.EVALUATION_VERSION``; 1 when not recorded)."""
        return (
            metrics.get(IDENTITY_KEY) == current
            and metrics.get("iterations") == iterations
            and metrics.get("episodes_sha256") == episodes
            and metrics.get("evaluation_version", 1) == evaluation
        )

    def remove_evaluation(self) -> None:
        for name in EVALUATION_FILES:
            (self.path / name).unlink(missing_ok=True)


def _read_record(path: Path) -> dict | None:
    """A JSON record of a run folder: None when missing, ``{}`` when unreadable or not a mapping."""
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return saved if isinstance(saved, dict) else {}
