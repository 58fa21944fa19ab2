"""The leaderboard: built only from run outputs (metrics.json, episodes.csv, train logs,
profiles), never by re-training.

Writes into ``reports/``: ``leaderboard.md`` (tables to paste into a paper),
``leaderboard.html`` (self-contained: figures embedded as data URIs, no external requests),
``figures/*.png`` and ``summary.json`` (headline numbers for ``dvc metrics show``).

The package splits the work by what it does: ``runs`` loads the run outputs, ``statistics``
aggregates and compares them, ``figures`` draws, ``writers`` writes the tables and documents;
``build`` here runs them in order.
"""

from __future__ import annotations

import json
from pathlib import Path

import seaborn as sns

from metabench import files, leaderboard, plots
from metabench.report.figures import FIGURES, Figures
from metabench.report.runs import load_runs, split_references
from metabench.report.scoring import scoring_table
from metabench.report.statistics import aggregate, pairwise
from metabench.report.writers import (
    cost_table,
    intervals_table,
    leaderboard_table,
    reference_table,
    write_html,
    write_markdown,
)


def build(
    runs_dir: Path,
    profiles_dir: Path,
    out_dir: Path,
    run_ids: list[str] | None = None,
    episodes_dir: Path | None = None,
) -> dict:
    """Write the report; return the headline numbers (also written to summary.json)."""
    runs, references = split_references(load_runs(runs_dir, profiles_dir, run_ids, episodes_dir))
    table = aggregate(runs)
    pairs = pairwise(runs)
    out_dir = Path(out_dir)
    figures = out_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    sns.set_theme(style="whitegrid", context="notebook")
    paths, captions, drawn_from = {}, {}, Figures(runs, table, pairs, references)
    for key, figure in FIGURES.items():
        paths[key] = figures / figure.file
        figure.draw(drawn_from, paths[key])
        captions[key] = figure.describe(drawn_from)

    baselines = reference_table(references)
    board = leaderboard_table(table)
    ranking = leaderboard.entries(table, pairs)
    leaderboard.write_exports(ranking, pairs, out_dir)
    pair_table = leaderboard.significance_counts(pairs)
    plots.write(runs.metrics, runs.curves, table, out_dir)  # the data of dvc.yaml's `plots:`
    summary = {f"{r.algorithm}_{r.ways}w{r.shots}s": round(float(r.accuracy), 6) for r in table.itertuples()}
    files.write_atomic(out_dir / "summary.json", json.dumps(summary, indent=1, sort_keys=True) + "\n")
    costs = cost_table(table)
    intervals = intervals_table(table)
    modes = scoring_table(runs)
    write_markdown(
        out_dir / "leaderboard.md",
        ranking,
        board,
        pair_table,
        baselines,
        table,
        runs.hyper,
        runs,
        costs,
        intervals,
        modes,
    )
    write_html(
        out_dir / "leaderboard.html",
        ranking,
        table,
        pair_table,
        baselines,
        runs.hyper,
        paths,
        captions,
        runs,
        costs,
        intervals,
        modes,
    )
    return summary
