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

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from metabench import MetabenchError
from metabench.config import RunConfig

if TYPE_CHECKING:
    from metabench.data.download import ProgressCallback
    from metabench.runner import Progress

# the identity and location of a run; every other keyword is a run setting that changes what is trained
_SELECTION = ("dataset", "ways", "shots", "seed", "device", "data_dir", "runs_dir", "episodes_dir")
LEADERBOARD_COLUMNS = ("dataset", "setting", "ways", "shots", "algorithm", "accuracy", "ci95", "ci95_over", "rank")


def fetch(
    source: str,
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
    from metabench.config import load_params
    from metabench.data import fetch as fetch_source

    configured = dict(((load_params(params).get("data") or {}).get(source)) or {})
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
    import dataclasses

    from metabench.config import load_params, resolve_run

    valid = {f.name for f in dataclasses.fields(RunConfig)} - {"algorithm", "hyper", "variant"}
    unknown = sorted(set(settings) - valid)
    if unknown:
        raise MetabenchError(f"unknown run setting {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
    selection = {"algorithm": algorithm, **{k: v for k, v in settings.items() if k in _SELECTION}}
    overrides = {k: v for k, v in settings.items() if k not in _SELECTION}
    where = str(params or "built-in defaults")
    return resolve_run(load_params(params), selection, overrides, dict(hyper or {}), where=where)


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
    from metabench.runner import train_run

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
    of the 95% interval over episodes), ``episodes`` and the run's identity; the per-episode
    accuracies are in ``<run_dir>/episodes.csv``.
    """
    from metabench.runner import evaluate_run

    return evaluate_run(_config(run, params, hyper, settings), progress)


class TrainedModel:
    """A trained run loaded once (``load_model``), to classify any number of query sets.

    ``image_shape`` is (channels, height, width) as ``predict`` takes images; ``transductive``
    says whether one query's answer depends on the other queries; ``fixed_ways`` is the number
    of classes a fixed-way method (e.g. Relation Networks) was trained for, else None.
    """

    def __init__(self, algorithm: Any, saved: dict, device: Any) -> None:
        from metabench.algorithms import get_algorithm

        self._algorithm, self._device = algorithm, device
        self.algorithm = saved["algorithm"]
        height, width, channels = saved["dataset"]["image_shape"]
        self.image_shape = (channels, height, width)
        self.transductive = get_algorithm(self.algorithm).transductive
        self.fixed_ways = algorithm.task.test_ways if algorithm.fixed_ways else None

    def predict(self, support_x: Any, support_y: Any, query_x: Any) -> np.ndarray:
        """Class probabilities of ``query_x`` given a labelled support set.

        Shapes: ``support_x`` (n_support, channels, size, size) float in [0, 1] as the dataset
        store gives images (``metabench.folders.load_support`` reads folders into this),
        ``support_y`` (n_support,) int class indices 0 … ways − 1, ``query_x`` (n_query,
        channels, size, size). Returns (n_query, ways) float32 probabilities (softmax of the
        method's scores). Input that does not fit the checkpoint is refused with a
        ``MetabenchError`` that says what it takes.
        """
        import torch

        support_x = torch.as_tensor(np.asarray(support_x, dtype=np.float32), device=self._device)
        support_y = torch.as_tensor(np.asarray(support_y, dtype=np.int64), device=self._device)
        query_x = torch.as_tensor(np.asarray(query_x, dtype=np.float32), device=self._device)
        for name, images in (("support_x", support_x), ("query_x", query_x)):
            if images.dim() != 4 or tuple(images.shape[1:]) != self.image_shape:
                raise MetabenchError(
                    f"{name} has shape {tuple(images.shape)}; this checkpoint takes (n, {', '.join(map(str, self.image_shape))})"
                )
        if support_y.dim() != 1 or len(support_y) != len(support_x):
            raise MetabenchError(f"support_y must be one class index per support image ({len(support_x)})")
        ways = int(support_y.max()) + 1
        if sorted(set(support_y.tolist())) != list(range(ways)):
            raise MetabenchError("support_y must use every class index 0 … ways − 1")
        if self.fixed_ways is not None and ways != self.fixed_ways:
            raise MetabenchError(
                f"this {self.algorithm} checkpoint is {self.fixed_ways}-way but the support set has "
                f"{ways} classes; give {self.fixed_ways} classes"
            )
        scores = torch.as_tensor(self._algorithm.predict(support_x, support_y, query_x, ways))
        return torch.softmax(scores.detach().float(), dim=1).cpu().numpy()


def load_model(checkpoint: str | Path, device: str = "cpu") -> TrainedModel:
    """Load a run's ``checkpoint.pt`` (checked, best weights) for ``TrainedModel.predict``."""
    from metabench.config import resolve_device
    from metabench.runner import load_trained

    target = resolve_device(device)
    algorithm, saved = load_trained(Path(checkpoint), target)
    return TrainedModel(algorithm, saved, target)


def predict(
    checkpoint: str | Path,
    support_x: Any,
    support_y: Any,
    query_x: Any,
    device: str = "cpu",
) -> np.ndarray:
    """Class probabilities of ``query_x`` given a labelled support set (``metabench predict``).

    Shapes: ``support_x`` (n_support, channels, size, size) float in [0, 1] as the dataset store
    gives images (``metabench.folders.load_support`` reads folders into this), ``support_y``
    (n_support,) int class indices 0 … ways − 1, ``query_x`` (n_query, channels, size, size).
    Returns (n_query, ways) float32 probabilities (softmax of the method's scores).
    A transductive method's answer for one query depends on the others (see the checkpoint's
    algorithm in ``metabench algorithms``): classify queries together. To classify several
    query sets with one checkpoint, ``load_model`` it once.
    """
    return load_model(checkpoint, device).predict(support_x, support_y, query_x)


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
