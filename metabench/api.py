"""metabench from Python: the calls the command line itself makes.

Settings resolve exactly as on the command line: ``params.yaml`` in the working directory (or
``params=``) gives the defaults of every run and of each algorithm, keyword arguments override
them, and a run whose training settings differ from the params' gets its own folder (a
``variant`` in its id), so an experiment never overwrites the default run.

Example (after ``metabench fetch glyphs``)::

    import metabench

    run = metabench.train("protonet", shots=1, iterations=100)   # -> RunConfig of the trained run
    metrics = metabench.evaluate(run)                             # the 600 shared test episodes
    print(f"{100 * metrics['accuracy']:.2f} ± {100 * metrics['ci95']:.2f} %")
    probabilities = metabench.predict(run.run_dir / "checkpoint.pt", support_x, support_y, query_x)
    board = metabench.load_leaderboard()                          # reports/leaderboard.csv, checked
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from metabench import MetabenchError
from metabench.config import RunConfig, resolve_run
from metabench.data import fetch as fetch_source
from metabench.params_check import load_checked
from metabench.runner import Progress, evaluate_run, train_run
from metabench.trained import load_model

if TYPE_CHECKING:
    from metabench.data.download import ProgressCallback

# the identity and location of a run; every other keyword is a run setting that changes what is trained
_SELECTION = ("dataset", "ways", "shots", "seed", "device", "data_dir", "runs_dir", "episodes_dir")
LEADERBOARD_COLUMNS = ("dataset", "setting", "ways", "shots", "algorithm", "accuracy", "ci95", "ci95_over", "rank")


def fetch(
    source: str,
    /,
    *,
    data_dir: str | Path = "data",
    params: str | Path | None = None,
    progress: ProgressCallback | None = None,
    **options: Any,
):
    """Download (or generate) dataset ``source`` into ``data_dir`` and return the stored dataset.

    ``options`` override the source's ``data.<source>`` section of ``params`` (``source=`` a URL
    or folder, ``split=``, ``checksums=``, …). ``progress(what, done, total)`` sees each phase:
    downloaded bytes (``total`` None when the server does not say), rendered or read classes.
    """

    configured = dict(((load_checked(params).get("data") or {}).get(source)) or {})
    return fetch_source(source, {**configured, **options}, Path(data_dir), progress)


def run_config(
    algorithm: str,
    *,
    params: str | Path | None = None,
    hyper: dict[str, Any] | None = None,
    **settings: Any,
) -> RunConfig:
    """The fully resolved run: ``params`` (default ``./params.yaml`` if present), then ``settings``.

    ``settings`` are :class:`~metabench.config.RunConfig` fields (``shots=5``, ``iterations=200``,
    ``runs_dir="runs"``, …); ``hyper`` overrides the algorithm's hyper-parameters
    (``{"inner_lr": 0.1}``). Unknown names are refused with the list of valid ones.
    """

    valid = {f.name for f in dataclasses.fields(RunConfig)} - {"algorithm", "hyper", "variant"}
    unknown = sorted(set(settings) - valid)
    if unknown:
        raise MetabenchError(f"unknown run setting {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
    selection = {"algorithm": algorithm, **{k: v for k, v in settings.items() if k in _SELECTION}}
    overrides = {k: v for k, v in settings.items() if k not in _SELECTION}
    where = str(params or "built-in defaults")
    return resolve_run(load_checked(params), selection, overrides, dict(hyper or {}), where=where)


def _config(run: str | RunConfig, params, hyper, settings) -> RunConfig:
    if isinstance(run, RunConfig):
        if params is not None or hyper or settings:
            raise MetabenchError("give either a RunConfig or an algorithm name with settings, not both")
        return run
    return run_config(run, params=params, hyper=hyper, **settings)


def train(
    run: str | RunConfig,
    *,
    params: str | Path | None = None,
    hyper: dict[str, Any] | None = None,
    progress: Progress | None = None,
    force: bool = False,
    **settings: Any,
) -> RunConfig:
    """Meta-train one run (``metabench train``) and return its resolved config.

    Interrupted runs resume from their last saved state; the best checkpoint by validation
    accuracy is ``<run_dir>/checkpoint.pt`` and the training summary ``train_summary.json``.
    ``progress(phase, done, total)`` sees ``train`` updates and ``validate`` episodes.
    """

    config = _config(run, params, hyper, settings)
    train_run(config, progress, force=force)
    return config


def evaluate(
    run: str | RunConfig,
    *,
    params: str | Path | None = None,
    hyper: dict[str, Any] | None = None,
    progress: Progress | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Score a trained run (or a reference method) on the fixed test episodes (``metabench evaluate``).

    Returns ``metrics.json``'s content: ``accuracy`` (mean over episodes), ``ci95`` (half-width
    of the 95% interval over episodes), ``episodes`` and the run's identity, in the method's own
    scoring mode (``scoring``); ``modes`` has the same for each mode it was scored in (a method
    with batch norm: ``inductive`` and ``transductive``). The per-episode accuracies are in
    ``<run_dir>/episodes.csv`` and ``episodes.<other mode>.csv``.
    """

    return evaluate_run(_config(run, params, hyper, settings), progress)


def predict(
    checkpoint: str | Path,
    support_x: Any,
    support_y: Any,
    query_x: Any,
    device: str = "cpu",
    scoring: str | None = None,
) -> np.ndarray:
    """Class probabilities of ``query_x`` given a labelled support set (``metabench predict``).

    Shapes: ``support_x`` (n_support, channels, size, size) float in [0, 1] as the dataset store
    gives images (``metabench.folders.load_support`` reads folders into this), ``support_y``
    (n_support,) int class indices 0 … ways − 1, ``query_x`` (n_query, channels, size, size).
    Returns (n_query, ways) float32 probabilities (softmax of the method's scores).
    A transductive method's answer for one query depends on the others (see the checkpoint's
    algorithm in ``metabench algorithms``): classify queries together, or pass
    ``scoring="inductive"`` (``metabench.scoring``; None: the method's own mode). To classify
    several query sets with one checkpoint, ``load_model`` it once.
    """
    return load_model(checkpoint, device).predict(support_x, support_y, query_x, scoring)


def load_leaderboard(path: str | Path = "reports/leaderboard.csv") -> pd.DataFrame:
    """The leaderboard ``metabench report`` wrote: one row per (dataset, setting, algorithm).

    Columns include ``accuracy`` and ``ci95`` (fractions), ``ci95_over`` (``seeds`` or
    ``episodes``), ``rank``, ``bold`` (best or not separated from it), ``published``. A file
    that is not a metabench leaderboard is refused rather than half-read.
    """
    path = Path(path)
    if not path.is_file():
        raise MetabenchError(f"{path} does not exist; run `dvc repro` or `metabench report` first")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise MetabenchError(f"{path} is not a readable CSV ({error}); regenerate it with `metabench report`") from None
    missing = [column for column in LEADERBOARD_COLUMNS if column not in table]
    if missing:
        raise MetabenchError(f"{path} lacks columns {', '.join(missing)}; regenerate it with `metabench report`")
    if table.empty or not table["accuracy"].between(0, 1).all() or not (table["ci95"] >= 0).all():
        raise MetabenchError(
            f"{path} holds no rows or accuracies outside [0, 1]; regenerate it with `metabench report`"
        )
    return table
