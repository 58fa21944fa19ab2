"""The data behind ``dvc.yaml``'s ``plots:`` (``dvc plots show``/``diff``, editor integrations).

DVC draws one series per file, so each series is a file of its own:

* ``reports/plots/curves-<W>w<K>s/<algorithm>.csv``: validation accuracy against meta-training
  iteration (``iteration``, ``val_accuracy``; mean over seeds at each validated iteration);
* ``reports/plots/cost-<W>w<K>s.csv``: one row per algorithm (``algorithm``, ``accuracy``,
  ``train_seconds``, ``adaptation_tasks_per_second``), drawn as accuracy against cost.

``pipeline.plot_definitions`` declares the same paths; both take them from here.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pandas as pd

from metabench import files

FOLDER = "plots"  # under the report's folder
CURVE_COLUMNS = ("iteration", "val_accuracy")
COST_COLUMNS = ("algorithm", "accuracy", "train_seconds", "adaptation_tasks_per_second")


def setting(ways: int, shots: int) -> str:
    return f"{ways}w{shots}s"


def curve_path(ways: int, shots: int, algorithm: str) -> str:
    return f"{FOLDER}/curves-{setting(ways, shots)}/{algorithm}.csv"


def cost_path(ways: int, shots: int) -> str:
    return f"{FOLDER}/cost-{setting(ways, shots)}.csv"


def write(metrics: pd.DataFrame, curves: pd.DataFrame, table: pd.DataFrame, out_dir: Path) -> list[str]:
    """Write every plot file under ``out_dir/plots`` (replaced as a whole: no stale series stays)."""
    out_dir = Path(out_dir)
    staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".{FOLDER}."))
    written = []
    (staging / FOLDER).mkdir()
    try:
        if not curves.empty:
            ways_of = metrics.set_index("run_id")["ways"]
            curves = curves.assign(ways=curves["run_id"].map(ways_of))
            for (ways, shots, algorithm), group in curves.groupby(["ways", "shots", "algorithm"]):
                mean = group.groupby("iteration", as_index=False)["val_accuracy"].mean()
                written.append(_write_csv(staging, curve_path(ways, shots, algorithm), mean[list(CURVE_COLUMNS)]))
        for (ways, shots), group in table.groupby(["ways", "shots"]):
            rows = group.sort_values("accuracy", ascending=False).reindex(columns=list(COST_COLUMNS))
            written.append(_write_csv(staging, cost_path(ways, shots), rows))
        target = out_dir / FOLDER
        if target.exists():
            shutil.rmtree(target)
        (staging / FOLDER).rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written


def _write_csv(root: Path, relative: str, frame: pd.DataFrame) -> str:
    files.write_atomic(root / relative, frame.to_csv(index=False, float_format="%.6g"))
    return relative
