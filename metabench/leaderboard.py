"""The paste-into-a-paper leaderboard: one table per dataset, ranked, with significance marks,
and its exports (markdown, HTML, CSV with every number, LaTeX with booktabs).

Reading a row: ``mean ± interval`` per setting (the t-interval over seeds when a method has two
or more seeds, else the 95% interval over the shared test episodes, marked †); **bold** is the
best method of a setting and every method the adjusted paired test does not separate from it
(``report.pairwise``); *avg. rank* is the mean of a method's ranks over the settings and orders
the rows (``ORDER``); *budget* and *train s* say what each method was given to train.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from metabench import files, published

SIGNIFICANCE = 0.05  # adjusted p below this separates a method from the best
ORDER = (
    "rows are ordered by average rank over the settings (rank 1: the highest mean accuracy of a column), "
    "ties broken by mean accuracy; = marks an average rank another method shares"
)


def _setting(ways: int, shots: int) -> str:
    return f"{ways}-way {shots}-shot"


def entries(table: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, setting, algorithm) with every number the tables show."""
    rows = []
    for (dataset, ways, shots), group in table.groupby(["dataset", "ways", "shots"]):
        group = group.sort_values("accuracy", ascending=False)
        best = group.iloc[0]["algorithm"]
        ranks = group["accuracy"].rank(ascending=False, method="min")
        for (_, r), rank in zip(group.iterrows(), ranks):
            by_seeds = r["seeds"] >= 2 and r["seed_ci95"] == r["seed_ci95"]
            interval = float(r["seed_ci95"] if by_seeds else r["episode_ci95"])
            p_best = _p_against(pairs, dataset, ways, shots, best, r["algorithm"])
            entry = published.lookup(dataset, r["algorithm"], ways, shots)
            rows.append(
                {
                    "dataset": dataset,
                    "setting": _setting(ways, shots),
                    "ways": int(ways),
                    "shots": int(shots),
                    "algorithm": r["algorithm"],
                    "accuracy": float(r["accuracy"]),
                    "ci95": interval,
                    "ci95_over": "seeds" if by_seeds else "episodes",
                    "ci95_low": float(r["accuracy"]) - interval,
                    "ci95_high": float(r["accuracy"]) + interval,
                    "seeds": int(r["seeds"]),
                    "episodes": r["episodes"],
                    "rank": int(rank),
                    "p_adjusted_vs_best": p_best,
                    "bold": r["algorithm"] == best or (p_best == p_best and p_best >= SIGNIFICANCE),
                    "transductive": bool(r["transductive"]),
                    "published": entry[0] if entry else float("nan"),
                    "published_ci": entry[1] if entry and entry[1] is not None else float("nan"),
                    "published_source": entry[2] if entry else "",
                    "train_seconds": float(r.get("train_seconds", float("nan"))),
                    "iterations": float(r.get("iterations", float("nan"))),
                    "episodes_per_step": float(r.get("episodes_per_step", float("nan"))),
                    # over the image-disjoint test episodes (report.FORMULAS, "Closed and open")
                    "open_accuracy": float(r.get("open_accuracy", float("nan"))),
                    "open_ci95": float(r.get("open_ci95", float("nan"))),
                    "open_episodes": int(r.get("open_episodes", 0)),
                }
            )
    return pd.DataFrame(rows)


def _p_against(pairs: pd.DataFrame, dataset, ways, shots, best: str, algorithm: str) -> float:
    if algorithm == best or pairs.empty:
        return float("nan")
    match = pairs[
        (pairs["dataset"] == dataset)
        & (pairs["ways"] == ways)
        & (pairs["shots"] == shots)
        & (((pairs["a"] == best) & (pairs["b"] == algorithm)) | ((pairs["a"] == algorithm) & (pairs["b"] == best)))
    ]
    return float(match.iloc[0]["p_adjusted"]) if not match.empty else float("nan")


def _cell(row, bold: str) -> str:
    mark = "" if row["ci95_over"] == "seeds" else "†"
    text = f"{100 * row['accuracy']:.2f} ± {100 * row['ci95']:.2f}{mark}"
    return bold.format(text) if row["bold"] else text


def _budget(row) -> str:
    """``3,000 × 8``: outer steps × training tasks per step."""
    iterations, per_step = row.get("iterations", float("nan")), row.get("episodes_per_step", float("nan"))
    if iterations != iterations or per_step != per_step:  # not recorded (a leaderboard.csv from before budgets)
        return "–"
    return f"{int(iterations):,} × {int(per_step)}"


def _seconds(row) -> str:
    """Meta-training seconds per run, or – when not recorded."""
    seconds = row.get("train_seconds", float("nan"))
    return "–" if seconds != seconds else f"{seconds:.0f}"


def _per_setting(values: list[str]) -> str:
    """One value when every setting has it, else one per setting in column order."""
    return values[0] if len(set(values)) == 1 else " / ".join(values)


def ranked(table: pd.DataFrame, dataset: str, bold: str = "**{}**") -> pd.DataFrame:
    """The main table of one dataset, one column per setting, rows in ``ORDER``'s order, each
    with its budget beside its scores."""
    part = table[table["dataset"] == dataset]
    settings = sorted(part[["ways", "shots"]].drop_duplicates().itertuples(index=False))
    rows = []
    for algorithm, group in part.groupby("algorithm"):
        by_setting = {(r["ways"], r["shots"]): r for _, r in group.iterrows()}
        present = [by_setting[s] for s in settings if s in by_setting]
        row = {"method": algorithm + (" ‡" if group["transductive"].any() else "")}
        for ways, shots in settings:
            r = by_setting.get((ways, shots))
            row[_setting(ways, shots)] = _cell(r, bold) if r is not None else "–"
        row["avg. rank"] = round(float(group["rank"].mean()), 1)
        row["budget (steps × tasks)"] = _per_setting([_budget(r) for r in present])
        row["train s"] = _per_setting([_seconds(r) for r in present])
        row["seeds"] = str(int(group["seeds"].max()))
        published_values = [by_setting[s]["published"] if s in by_setting else float("nan") for s in settings]
        row["published"] = " / ".join("–" if v != v else f"{v:g}" for v in published_values)
        row["_order"] = (group["rank"].mean(), -group["accuracy"].mean())
        rows.append(row)
    frame = pd.DataFrame(rows).sort_values("_order").drop(columns="_order")
    shared = frame["avg. rank"].duplicated(keep=False)
    frame["avg. rank"] = [f"{v:.1f}" + (" =" if tie else "") for v, tie in zip(frame["avg. rank"], shared)]
    if len(settings) > 1:  # several values in a cell: say which is which
        ways = {w for w, _ in settings}
        order = " / ".join(f"{k}-shot" if len(ways) == 1 else _setting(w, k) for w, k in settings)
        frame = frame.rename(columns={"train s": f"train s ({order})"})
    if not part["published"].notna().any():
        frame = frame.drop(columns="published")  # no published figure for any method here
    elif len(settings) > 1:
        frame = frame.rename(columns={"published": "published (" + " / ".join(_setting(*s) for s in settings) + ")"})
    return frame.reset_index(drop=True)


def legend(table: pd.DataFrame, dataset: str) -> str:
    part = table[table["dataset"] == dataset]
    sources = sorted({s for s in part["published_source"] if s})
    notes = [
        ORDER,
        "mean ± 95% interval: over seeds (t-interval), or † over the shared test episodes when a method has one seed",
        f"**bold**: the best method and those the adjusted paired test does not separate from it (p ≥ {SIGNIFICANCE})",
        "‡ transductive (batch statistics of the whole episode)",
        "budget: outer steps × training tasks per step, as params.yaml gives them; train s: meta-training "
        "seconds per run on the machine that trained it (one value for every setting, or one per setting)",
    ]
    if sources:
        protocol = published.PROTOCOLS.get(published.family(dataset), "")
        notes.append("published: " + "; ".join(sources) + (f" ({protocol})" if protocol else ""))
    return "; ".join(notes) + "."


def to_latex(table: pd.DataFrame, dataset: str) -> str:
    """A booktabs table ready to ``\\input``: bold as ``\\textbf``, ± as ``$\\pm$``."""
    frame = ranked(table, dataset, bold="\\textbf{{{}}}")
    columns = list(frame.columns)
    lines = [
        "% generated by metabench report; needs \\usepackage{booktabs}",
        "\\begin{tabular}{l" + "c" * (len(columns) - 1) + "}",
        "\\toprule",
        " & ".join(_tex(c) for c in columns) + " \\\\",
        "\\midrule",
    ]
    for _, row in frame.iterrows():
        lines.append(" & ".join(_tex(str(row[c])) for c in columns) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", ""]
    return "\n".join(lines)


def _tex(text: str) -> str:
    text = text.replace("±", "$\\pm$").replace("†", "$^\\dagger$").replace("‡", "$^\\ddagger$")
    text = text.replace("×", "$\\times$")
    return text.replace("–", "--").replace("%", "\\%").replace("_", "\\_")


def write_exports(table: pd.DataFrame, pairs: pd.DataFrame, out_dir: Path) -> list[Path]:
    """leaderboard.csv (every number), leaderboard.tex (one table per dataset) and pairwise.csv."""
    out_dir = Path(out_dir)
    paths = [out_dir / "leaderboard.csv", out_dir / "leaderboard.tex", out_dir / "pairwise.csv"]
    files.write_atomic(paths[0], table.to_csv(index=False))
    tex = [f"% {dataset}\n" + to_latex(table, dataset) for dataset in sorted(table["dataset"].unique())]
    files.write_atomic(paths[1], "\n".join(tex))
    files.write_atomic(paths[2], pairs.to_csv(index=False) if not pairs.empty else "")
    return paths


def significance_counts(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per setting: how many pairs were compared and how many differ (adjusted p < 0.05)."""
    if pairs.empty:
        return pd.DataFrame()
    rows = []
    for (dataset, ways, shots), group in pairs.groupby(["dataset", "ways", "shots"]):
        rows.append(
            {
                "dataset": dataset,
                "setting": _setting(ways, shots),
                "pairs": len(group),
                "differ (adjusted p < 0.05)": int((group["p_adjusted"] < SIGNIFICANCE).sum()),
                "test": group["test"].iloc[0] if "test" in group else "",
            }
        )
    return pd.DataFrame(rows)
