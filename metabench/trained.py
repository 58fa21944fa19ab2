"""A trained run loaded for use: its best weights rebuilt into the algorithm, and the checks a
caller's images go through before ``predict``. The Python API (``metabench.load_model``), the
command line (``metabench predict``) and the MLflow model (``metabench.mlflow_model``) share it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from metabench import MetabenchError, checkpoint
from metabench.algorithms import TaskShape, build_algorithm
from metabench.config import resolve_device
from metabench.scoring import check_modes


def load_trained(checkpoint_path: Path, device: torch.device):
    """Rebuild an algorithm from ``checkpoint.pt`` with its best weights; return (algorithm, meta)."""
    saved = checkpoint.load(checkpoint_path, rebuild="train the run (metabench train) or restore the file")
    missing = [key for key in ("task", "algorithm", "hyper", "weights", "dataset") if key not in saved]
    if missing:
        what = "a resumable training state" if "numpy_rng" in saved else "not a checkpoint"
        raise MetabenchError(
            f"{checkpoint_path} is {what} (no {', '.join(missing)}); give the run's checkpoint.pt, the best weights"
        )
    task = TaskShape(**saved["task"])
    algorithm = build_algorithm(saved["algorithm"], saved["hyper"], task, device)
    algorithm.load_state_dict(saved["weights"], weights_only=True)
    algorithm.train(False)
    return algorithm, saved


class TrainedModel:
    """A trained run loaded once (``load_model``), to classify any number of query sets.

    ``image_shape`` is (channels, height, width) as ``predict`` takes images; ``transductive``
    says whether one query's answer depends on the other queries in the method's own scoring
    mode (``scoring``), ``scoring_modes`` which modes ``predict`` can take (``metabench.scoring``);
    ``fixed_ways`` is the number of classes a fixed-way method (e.g. Relation Networks) was
    trained for, else None.
    """

    def __init__(self, algorithm: Any, saved: dict, device: Any) -> None:
        self._algorithm, self._device = algorithm, device
        self.algorithm = saved["algorithm"]
        height, width, channels = saved["dataset"]["image_shape"]
        self.image_shape = (channels, height, width)
        self.transductive = algorithm.evaluates_transductively
        self.scoring = algorithm.headline_scoring
        self.scoring_modes = algorithm.scoring_modes()
        self.fixed_ways = algorithm.task.test_ways if algorithm.fixed_ways else None

    def predict(self, support_x: Any, support_y: Any, query_x: Any, scoring: str | None = None) -> np.ndarray:
        """Class probabilities of ``query_x`` given a labelled support set.

        Shapes: ``support_x`` (n_support, channels, size, size) float in [0, 1] as the dataset
        store gives images (``metabench.folders.load_support`` reads folders into this),
        ``support_y`` (n_support,) int class indices 0 … ways − 1, ``query_x`` (n_query,
        channels, size, size). ``scoring``: ``inductive`` (no query's answer depends on another)
        or ``transductive``, for a method with batch norm; None: the method's own mode. Returns
        (n_query, ways) float32 probabilities (softmax of the method's scores). Input that does
        not fit the checkpoint is refused with a ``MetabenchError`` that says what it takes.
        """
        mode = scoring or self.scoring
        check_modes((mode,), self.scoring_modes, self.algorithm)
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
        scores = torch.as_tensor(self._algorithm.predict_modes(support_x, support_y, query_x, ways, (mode,))[mode])
        return torch.softmax(scores.detach().float(), dim=1).cpu().numpy()


def load_model(checkpoint: str | Path, device: str = "cpu") -> TrainedModel:
    """Load a run's ``checkpoint.pt`` (checked, best weights) for ``TrainedModel.predict``."""
    target = resolve_device(device)
    algorithm, saved = load_trained(Path(checkpoint), target)
    return TrainedModel(algorithm, saved, target)
