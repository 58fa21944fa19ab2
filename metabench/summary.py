"""A results table from run outputs only (``runs/*/metrics.json``), never re-training.

Reference methods (pixel nearest neighbour) are runs like any other, scored on the same fixed
test episodes, so every number in the table shares its episodes.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from metabench.evaluation import mode_scores, read_results
from metabench.scoring import MODES

COLUMNS = ["dataset", "algorithm", "ways", "shots", "seed", "accuracy", "ci95", "episodes", "transductive"]
# each scoring mode's accuracy and interval (metabench.scoring): NaN where the run was not scored so
MODE_COLUMNS = [f"{key}_{mode}" for mode in MODES for key in ("accuracy", "ci95")]


def _row(metrics: dict) -> dict:
    return {
        **{key: metrics[key] for key in COLUMNS},
        **dict.fromkeys(MODE_COLUMNS, float("nan")),
        **mode_scores(metrics),
    }


def table(runs_dir: Path) -> pd.DataFrame:
    """One row per evaluated run, sorted by setting and algorithm; a run whose episodes.csv does
    not match its metrics.json is an error, never a row. ``accuracy`` is the headline (the
    method's own scoring mode); ``accuracy_inductive`` and ``accuracy_transductive`` each mode's."""
    rows = [_row(read_results(p.parent)[0]) for p in sorted(Path(runs_dir).glob("*/metrics.json"))]
    if not rows:
        return pd.DataFrame(columns=COLUMNS + MODE_COLUMNS)
    runs = pd.DataFrame(rows)[COLUMNS + MODE_COLUMNS]
    return runs.sort_values(["dataset", "ways", "shots", "algorithm", "seed"]).reset_index(drop=True)
