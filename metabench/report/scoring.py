"""The report's inductive-against-transductive table: every method with batch norm scored both
ways from the same checkpoints on the same episodes (``metabench.scoring``), with the mode of its
published figures marked, so a comparison with a paper is made in the paper's mode.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from metabench import published, stats
from metabench.report.runs import Runs
from metabench.scoring import INDUCTIVE, MODES, TRANSDUCTIVE

PAPER_MARK = "◆"
NOTE = (
    f"Every method with batch norm, scored both ways from the same checkpoints on the same episodes "
    f"(`metabench/scoring.py`). *Transductive*: the queries normalised together with their own batch "
    f"statistics (ANIL's: with the support set's too), so a query's prediction depends on the others. "
    f"*Inductive*: no query sees another: "
    f"running statistics where the network keeps them, otherwise every image normalised with the "
    f"support set's statistics. {PAPER_MARK}: the mode of the method's published figures, as its "
    f"reference code scores (`metabench/published.py` names the file); compare with a paper only in "
    f"that mode. *headline*: the mode of the ranking above. Intervals as in the ranking: over seeds "
    f"with two or more, else over episodes; the difference is paired on the same episodes."
)


def _interval(per_seed: list[np.ndarray]) -> tuple[float, float]:
    """Mean and 95% half-width: t over the seed means with two or more seeds, else over episodes."""
    if len(per_seed) >= 2:
        return stats.seed_interval([float(np.mean(a)) for a in per_seed])
    return stats.mean_interval(per_seed[0])


def _difference(transductive: list[np.ndarray], inductive: list[np.ndarray]) -> dict[str, float]:
    """Transductive minus inductive, paired by seed (two or more) or by episode (one seed)."""
    if len(transductive) >= 2:
        return stats.paired_comparison([np.mean(a) for a in transductive], [np.mean(a) for a in inductive])
    return stats.paired_comparison(transductive[0], inductive[0])


def scoring_table(runs: Runs) -> pd.DataFrame:
    """One row per (dataset, setting, algorithm) scored in both modes by every seed."""
    rows = []
    keys = ["dataset", "ways", "shots", "algorithm"]
    for (dataset, ways, shots, algorithm), group in runs.metrics.groupby(keys):
        scored = [runs.scored.get(run_id, {}) for run_id in group.sort_values("seed")["run_id"]]
        if not all(set(MODES) <= set(modes) for modes in scored):
            continue  # one mode only (no batch norm), or evaluated before scoring modes
        paper = published.PAPER_SCORING.get(algorithm, ("",))[0]
        row = {"dataset": dataset, "setting": f"{ways}w{shots}s", "algorithm": algorithm}
        for mode in (INDUCTIVE, TRANSDUCTIVE):
            mean, half = _interval([modes[mode] for modes in scored])
            row[f"{mode} %"] = f"{100 * mean:.2f} ± {100 * half:.2f}" + (f" {PAPER_MARK}" if paper == mode else "")
        difference = _difference([m[TRANSDUCTIVE] for m in scored], [m[INDUCTIVE] for m in scored])
        row["transductive − inductive (points)"] = (
            f"{100 * difference['difference']:+.2f} ± {100 * difference['ci95']:.2f}"
        )
        row["headline"] = group["scoring"].iloc[0]
        row["seeds"] = len(scored)
        rows.append(row)
    return pd.DataFrame(rows)
