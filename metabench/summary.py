"""A results table from run outputs only (``runs/*/metrics.json``), never re-training.

Reference methods (pixel nearest neighbour) are runs like any other, scored on the same fixed
test episodes, so every number in the table shares its episodes.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from metabench.evaluation import read_results

COLUMNS = ["dataset", "algorithm", "ways", "shots", "seed", "accuracy", "ci95", "episodes", "transductive"]


def table(runs_dir: Path) -> pd.DataFrame:
    """One row per evaluated run, sorted by setting and algorithm; a run whose episodes.csv does
    not match its metrics.json is an error, never a row."""
    rows = [read_results(p.parent)[0] for p in sorted(Path(runs_dir).glob("*/metrics.json"))]
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    runs = pd.DataFrame(rows)[COLUMNS]
    return runs.sort_values(["dataset", "ways", "shots", "algorithm", "seed"]).reset_index(drop=True)
