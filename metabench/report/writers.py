"""The report's tables and documents: the Markdown and the self-contained HTML (figures embedded
as data URIs), with the interval, cost, reference and per-run tables they hold.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import pandas as pd
from markdown_it import MarkdownIt

from metabench import files, leaderboard, published, tracking
from metabench.algorithms import REGISTRY
from metabench.report.figures import FIGURES
from metabench.report.runs import Runs
from metabench.report.scoring import NOTE as SCORING_NOTE
from metabench.report.statistics import COST_COLUMNS

FORMULAS = """\
- **Per run**: accuracy of each test episode (its queries per class); mean ± 1.96·s/√n over the
  n fixed test episodes (s: sample standard deviation).
- **Per algorithm**: mean of the per-seed means ± t₀.₉₇₅,ₖ₋₁·s/√k over k seeds (s: standard
  deviation of the seed means). With few seeds this interval is wide by design.
- **Pairwise**: for each pair scored on the same episodes, with at least two seeds in common:
  the per-seed mean accuracies paired by seed (the unit is a training run); with one seed: the
  per-episode accuracies (the unit is an episode, so only these trained models are compared).
  The mean difference ± t₀.₉₇₅,ₙ₋₁·s_d/√n and a paired t-test (`scipy.stats.ttest_rel`; the
  `test` column names the unit); p-values adjusted across all pairs of a setting by
  Benjamini-Hochberg (`scipy.stats.false_discovery_control`).
- **Episodes**: drawn once per (dataset checksum, split, ways, shots, queries, count, seed) and
  shared by every algorithm and seed; each episode draws distinct classes and distinct images,
  episodes independently of each other (with replacement across episodes: they reuse images).
- **Closed and open intervals** (Lafargue et al., "Oops, I Sampled it Again", TMLR 2024): the
  interval over all test episodes is *closed*: it measures how much the number would move with
  other episodes drawn from this same test set, not with other test images. The *open* interval
  is the t-interval over the test episodes that share no image with an earlier one (drawn
  without replacement in effect; the same episodes for every method), whose accuracies are
  independent draws of the data too; it is wider, and it is the one to compare with a figure
  measured on other test images. Neither counts training randomness: that is the seeds' interval.
- **Transductive and inductive**: the MAML family, Reptile and the LSTM meta-learner keep no
  running statistics and normalise with each batch's, so in their headline score a query's
  prediction depends on the other queries (marked ‡). Every method with batch norm is also scored
  in its other mode from the same checkpoint (section "Inductive and transductive").
"""

INTERVALS_NOTE = (
    "Closed: mean ± 1.96·s/√n over every fixed test episode; the episodes reuse test images, so it "
    "measures the sampler's randomness on this test set only. Open: mean ± t·s/√n over the episodes "
    "that share no image with an earlier one (the same episodes for every method; Lafargue et al., "
    "TMLR 2024): the uncertainty with respect to the test data itself. Use the open interval to "
    "compare with numbers measured on other test images; the seeds' interval counts training randomness."
)


def _pct(value: float, half: float | None = None) -> str:
    if value != value:
        return "–"
    return f"{100 * value:.2f}" + (f" ± {100 * half:.2f}" if half is not None and half == half else "")


def intervals_table(table: pd.DataFrame) -> pd.DataFrame:
    """Closed against open interval per algorithm and setting (the report's "Intervals" section)."""
    rows = []
    for r in table.sort_values(
        ["dataset", "ways", "shots", "accuracy"], ascending=[True, True, True, False]
    ).itertuples():
        if not r.open_episodes:
            continue
        rows.append(
            {
                "dataset": r.dataset,
                "setting": f"{r.ways}w{r.shots}s",
                "algorithm": r.algorithm,
                "closed (all episodes)": _pct(r.accuracy, r.episode_ci95) + f" (n = {r.episodes})",
                "open (image-disjoint episodes)": _pct(r.open_accuracy, r.open_ci95) + f" (n = {r.open_episodes})",
                "open / closed width": f"{r.open_ci95 / r.episode_ci95:.1f}×" if r.episode_ci95 > 0 else "",
            }
        )
    return pd.DataFrame(rows)


def cost_table(table: pd.DataFrame) -> pd.DataFrame:
    """What each method costs (profile stage), one row per (algorithm, setting)."""
    if "meta_train_tasks_per_second" not in table:
        return pd.DataFrame()
    rows = []
    for r in table.sort_values(["dataset", "shots", "algorithm"]).to_dict("records"):
        if r.get("meta_train_tasks_per_second") != r.get("meta_train_tasks_per_second"):
            continue  # no profile for this row
        row = {"dataset": r["dataset"], "setting": f"{r['ways']}w{r['shots']}s", "algorithm": r["algorithm"]}
        for key, title in COST_COLUMNS.items():
            value = r.get(key, float("nan"))
            row[title] = "–" if value != value else (f"{100 * value:.0f}%" if key == "utilisation" else f"{value:.1f}")
        rows.append(row)
    return pd.DataFrame(rows)


def markdown_link(experiment_id: str, run_id: str) -> str:
    return f"[{run_id[:8]}]({tracking.run_link(run_id, experiment_id=experiment_id)})"


def html_link(experiment_id: str, run_id: str) -> str:
    link = tracking.run_link(run_id, experiment_id=experiment_id)
    return f"<a href='{html.escape(link)}'>{html.escape(run_id[:8])}</a>"


def leaderboard_table(table: pd.DataFrame, link=markdown_link) -> pd.DataFrame:
    """Every number of every algorithm and setting: one row per algorithm, one column group per
    setting, each seed's MLflow run as a ``link`` to its page."""
    rows = []
    for (dataset, algorithm), group in table.groupby(["dataset", "algorithm"]):
        row = {"dataset": dataset, "algorithm": algorithm}
        for _, r in group.sort_values("shots").iterrows():
            setting = f"{r['ways']}w{r['shots']}s"
            row[f"{setting} acc % (seeds t-CI)"] = _pct(r["accuracy"], r["seed_ci95"])
            row[f"{setting} episode CI"] = f"± {100 * r['episode_ci95']:.2f}"
            row[f"{setting} published"] = r["published"] or "–"
            row[f"{setting} train s"] = f"{r['train_seconds']:.0f}"
            row[f"{setting} test episodes"] = r["episodes"]
            if (
                "adaptation_tasks_per_second" in r
                and r["adaptation_tasks_per_second"] == r["adaptation_tasks_per_second"]
            ):
                row[f"{setting} adapt tasks/s"] = f"{r['adaptation_tasks_per_second']:.1f}"
        row["seeds"] = int(group["seeds"].max())
        row["transductive"] = "yes" if group["transductive"].iloc[0] else "no"
        row["MLflow runs"] = " ".join(link(*run) for runs in group["mlflow_runs"] for run in runs)
        rows.append(row)
    return pd.DataFrame(rows)


def reference_table(references: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "dataset": r["dataset"],
                "setting": f"{r['ways']}w{r['shots']}s",
                "reference": f"{r['algorithm']} ({REGISTRY[r['algorithm']].paper})",
                "accuracy %": _pct(r["accuracy"], r["ci95"]),
                "episodes": int(r["episodes"]),
            }
            for r in references.sort_values(["dataset", "ways", "shots", "algorithm"]).to_dict("records")
        ]
    )


def _notes(table: pd.DataFrame) -> list[str]:
    notes = []
    for dataset in sorted(table["dataset"].unique()):
        protocol = published.PROTOCOLS.get(published.family(dataset))
        if protocol:
            notes.append(f"Published numbers for {dataset}: {protocol}.")
    return notes


def _episode_counts(runs: Runs) -> str:
    counts = sorted(set(runs.metrics["episodes"]))
    if len(counts) == 1:
        return f"{counts[0]} fixed test episodes per run, shared by every algorithm and seed."
    return f"fixed test episodes per run: {', '.join(map(str, counts))} (column *test episodes*); only runs on identical episodes are compared."


def write_markdown(
    path,
    ranking,
    board,
    pairs,
    baselines,
    table,
    hyper,
    runs: Runs,
    costs: pd.DataFrame,
    intervals: pd.DataFrame,
    modes: pd.DataFrame,
) -> None:
    lines = [
        "# metabench leaderboard",
        "",
        f"Generated from {_count(len(runs.metrics), 'run')} (`runs/*/metrics.json`, `episodes.csv`); "
        f"{_episode_counts(runs)} Every number and interval: `leaderboard.csv`; LaTeX: `leaderboard.tex`.",
        "",
    ]
    for dataset in sorted(ranking["dataset"].unique()):
        lines += [
            f"## {dataset}",
            "",
            leaderboard.ranked(ranking, dataset).to_markdown(index=False, disable_numparse=True),
            "",
            leaderboard.legend(ranking, dataset),
            "",
        ]
    if not baselines.empty:
        lines += [
            "## Reference methods on the same episodes",
            "",
            baselines.to_markdown(index=False, disable_numparse=True),
            "",
        ]
    if not modes.empty:
        lines += [
            "## Inductive and transductive",
            "",
            modes.to_markdown(index=False, disable_numparse=True),
            "",
            SCORING_NOTE,
            "",
        ]
    if not intervals.empty:
        lines += [
            "## Closed and open intervals",
            "",
            intervals.to_markdown(index=False, disable_numparse=True),
            "",
            INTERVALS_NOTE,
            "",
        ]
    if not costs.empty:
        lines += [
            "## Cost (profile stage, this machine)",
            "",
            costs.to_markdown(index=False, disable_numparse=True),
            "",
            "Measured on freshly initialised weights with the run's settings; GFLOP/s from "
            "`torch.utils.flop_counter`, relative to a float32 matmul measured in the same process.",
            "",
        ]
    if not pairs.empty:
        lines += [
            "## Significance (paired tests on shared episodes, Benjamini-Hochberg adjusted)",
            "",
            pairs.to_markdown(index=False),
            "",
            "Every pair's difference, interval and p-values: `pairwise.csv`.",
            "",
        ]
    lines += [
        "## Per-run details",
        "",
        board.to_markdown(index=False, disable_numparse=True),
        "",
        "*acc*: mean over seeds ± 95% t-interval over seeds; *episode CI*: mean per-run ± 1.96·s/√n over "
        "episodes; *train s*: meta-training seconds per run on the machine that made the report; "
        "*adapt tasks/s*: test-time episodes per second (profile stage).",
        "",
    ]
    lines += ["## How the numbers are computed", "", FORMULAS]
    for note in _notes(table):
        lines += [f"- {note}"]
    lines += ["", "## Hyper-parameters (fully resolved, from each run's config.json)", ""]
    scored = dict(zip(table["algorithm"], table["transductive"]))  # as each run was evaluated (metrics.json)
    for algorithm, values in sorted(hyper.items()):
        transductive = "transductive" if scored.get(algorithm) else "not transductive"
        lines += [f"- **{algorithm}** ({transductive}): `{json.dumps(values, sort_keys=True)}`"]
    lines += [
        "",
        "Figures: "
        + ", ".join(f"`figures/{f.file}`" for f in FIGURES.values())
        + " (all embedded in `leaderboard.html`).",
        "",
    ]
    files.write_atomic(path, "\n".join(lines))


def _scroll(table_html: str) -> str:
    """A table that scrolls sideways inside the page when it is wider than the page."""
    return f"<div class='scroll'>{table_html}</div>"


def _embed(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def write_html(
    path,
    ranking,
    table,
    pairs,
    baselines,
    hyper,
    figures: dict,
    captions: dict,
    runs: Runs,
    costs: pd.DataFrame,
    intervals: pd.DataFrame,
    modes: pd.DataFrame,
) -> None:
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px}"
        "th{background:#f3f3f3}img{max-width:100%;display:block;margin:1em 0}code{font-size:12px}"
        ".scroll{overflow-x:auto;max-width:100%}td{white-space:nowrap}"
    )
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>metabench leaderboard</title>"
        f"<style>{style}</style></head><body>",
        "<h1>metabench leaderboard</h1>",
        f"<p>{_count(len(runs.metrics), 'run')}; {html.escape(_episode_counts(runs))} Every number: "
        "<code>leaderboard.csv</code>; LaTeX: <code>leaderboard.tex</code>.</p>",
    ]
    for dataset in sorted(ranking["dataset"].unique()):
        main = leaderboard.ranked(ranking, dataset, bold="<b>{}</b>")
        parts += [
            f"<h2>{html.escape(dataset)}</h2>",
            _scroll(main.to_html(index=False, escape=False, border=0)),
            f"<p><small>{html.escape(leaderboard.legend(ranking, dataset).replace('**', ''))}</small></p>",
        ]
    for key, figure in figures.items():
        parts.append(
            f"<figure><img alt='{key}' src='{_embed(figure)}'><figcaption>{html.escape(captions[key])}</figcaption></figure>"
        )
    if not baselines.empty:
        parts += ["<h2>Reference methods on the same episodes</h2>", _scroll(baselines.to_html(index=False, border=0))]
    if not modes.empty:
        note = MarkdownIt("commonmark", {"html": False}).renderInline(SCORING_NOTE)
        parts += [
            "<h2>Inductive and transductive</h2>",
            _scroll(modes.to_html(index=False, border=0)),
            f"<p><small>{note}</small></p>",
        ]
    if not intervals.empty:
        parts += [
            "<h2>Closed and open intervals</h2>",
            _scroll(intervals.to_html(index=False, border=0)),
            f"<p><small>{html.escape(INTERVALS_NOTE)}</small></p>",
        ]
    if not costs.empty:
        parts += ["<h2>Cost (profile stage)</h2>", _scroll(costs.to_html(index=False, border=0))]
    if not pairs.empty:
        parts += [
            "<h2>Significance</h2>",
            _scroll(pairs.to_html(index=False, border=0)),
            "<p>Every pair's difference, interval and p-values: <code>pairwise.csv</code>.</p>",
        ]
    # every cell is a number or a registered name, except the run links built by html_link
    board = leaderboard_table(table, link=html_link)
    parts += ["<h2>Per-run details</h2>", _scroll(board.to_html(index=False, escape=False, border=0))]
    # rendered by a Markdown library (raw HTML in the text is escaped): emphasis and code as in the .md
    formulas = MarkdownIt("commonmark", {"html": False}).render(FORMULAS)
    parts += ["<h2>How the numbers are computed</h2>", formulas, "<h2>Hyper-parameters</h2><ul>"]
    for algorithm, values in sorted(hyper.items()):
        parts.append(
            f"<li><b>{html.escape(algorithm)}</b>: <code>{html.escape(json.dumps(values, sort_keys=True))}</code></li>"
        )
    parts.append("</ul></body></html>")
    files.write_atomic(path, "\n".join(parts))


def _count(number: int, noun: str) -> str:
    """``1 run``, ``28 runs``."""
    return f"{number} {noun}{'' if number == 1 else 's'}"
