"""The leaderboard: built only from run outputs (metrics.json, episodes.csv, train logs,
profiles), never by re-training.

Writes into ``reports/``: ``leaderboard.md`` (tables to paste into a paper),
``leaderboard.html`` (self-contained: figures embedded as data URIs, no external requests),
``figures/*.png`` and ``summary.json`` (headline numbers for ``dvc metrics show``).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import itertools
import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from metabench import MetabenchError, files, leaderboard, plots, published, stats
from metabench.algorithms import REGISTRY
from metabench.evaluation import read_results

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
- **Transductive**: MAML-family methods normalise with each episode's batch statistics, so a
  query's prediction depends on the other queries; this is marked per algorithm.
"""


INTERVALS_NOTE = (
    "Closed: mean ± 1.96·s/√n over every fixed test episode; the episodes reuse test images, so it "
    "measures the sampler's randomness on this test set only. Open: mean ± t·s/√n over the episodes "
    "that share no image with an earlier one (the same episodes for every method; Lafargue et al., "
    "TMLR 2024): the uncertainty with respect to the test data itself. Use the open interval to "
    "compare with numbers measured on other test images; the seeds' interval counts training randomness."
)


@dataclass
class Runs:
    metrics: pd.DataFrame  # one row per run
    episodes: dict[str, np.ndarray]  # run_id -> per-episode accuracy
    curves: pd.DataFrame  # run_id, algorithm, shots, seed, iteration, val_accuracy
    profiles: pd.DataFrame
    disjoint: dict[str, np.ndarray] = field(default_factory=dict)  # episodes sha256 -> image-disjoint episodes


def disjoint_by_digest(episodes_dir: Path | None) -> dict[str, np.ndarray]:
    """For every fixed episode file in ``episodes_dir``: its digest (the ``episodes_sha256`` of
    the runs scored on it) -> the positions of its image-disjoint episodes. Matching by digest,
    never by file name, means a run is only ever paired with the very episodes it was scored on."""
    from metabench.episodes import EpisodeIndices

    found = {}
    for path in sorted(Path(episodes_dir).glob("*.npz")) if episodes_dir else []:
        try:
            with np.load(path) as saved:
                indices = EpisodeIndices(saved["support"], saved["query"], saved["classes"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            continue  # not an episode file; a run whose episodes are missing gets no open interval
        found[indices.digest()] = stats.disjoint_episodes(indices.support, indices.query)
    return found


def load_runs(
    runs_dir: Path, profiles_dir: Path, run_ids: list[str] | None = None, episodes_dir: Path | None = None
) -> Runs:
    """Read run outputs; with ``run_ids`` exactly those runs (a missing one is an error). The
    fixed episodes in ``episodes_dir`` give the open intervals (none without them)."""
    rows, episodes, curves = [], {}, []
    if run_ids is None:
        paths = sorted(Path(runs_dir).glob("*/metrics.json"))
    else:
        paths = [Path(runs_dir) / run_id / "metrics.json" for run_id in run_ids]
        missing = [p.parent.name for p in paths if not p.is_file()]
        if missing:
            raise MetabenchError(
                f"runs {', '.join(missing)} have no metrics.json; run `dvc repro` (after `metabench pipeline` if the leaderboard changed)"
            )
    for metrics_path in paths:
        run_dir = metrics_path.parent
        metrics, accuracies = read_results(run_dir)  # refused unless episodes.csv is the one metrics.json describes
        summary_path = run_dir / "train_summary.json"
        if summary_path.is_file():
            metrics["train_seconds"] = files.read_json(summary_path, "training summary", "retrain the run")[
                "train_seconds"
            ]
        mlflow_path = run_dir / "mlflow_run.json"
        metrics["mlflow_run_id"] = json.loads(mlflow_path.read_text())["run_id"] if mlflow_path.is_file() else ""
        rows.append(metrics)
        episodes[metrics["run_id"]] = accuracies
        log_path = run_dir / "train_log.csv"
        if log_path.is_file():
            log = pd.read_csv(log_path)
            if "val_accuracy" in log:
                log = log.dropna(subset=["val_accuracy"])[["iteration", "val_accuracy"]]
                curves.append(
                    log.assign(
                        run_id=metrics["run_id"],
                        algorithm=metrics["algorithm"],
                        shots=metrics["shots"],
                        seed=metrics["seed"],
                        dataset=metrics["dataset"],
                    )
                )
    if not rows:
        raise MetabenchError(f"no evaluated runs in {runs_dir}; run the train and evaluate stages first")
    profiles = [json.loads(p.read_text()) for p in sorted(Path(profiles_dir).glob("*.json"))]
    return Runs(
        pd.DataFrame(rows),
        episodes,
        pd.concat(curves) if curves else pd.DataFrame(),
        pd.DataFrame(profiles),
        disjoint_by_digest(episodes_dir),
    )


def aggregate(runs: Runs) -> pd.DataFrame:
    """One row per (dataset, ways, shots, algorithm): seed statistics and costs."""
    out = []
    keys = ["dataset", "ways", "shots", "algorithm"]
    for (dataset, ways, shots, algorithm), group in runs.metrics.groupby(keys):
        mean, half = stats.seed_interval(group["accuracy"])
        row = {
            "dataset": dataset,
            "ways": ways,
            "shots": shots,
            "algorithm": algorithm,
            "accuracy": mean,
            "seed_ci95": half,
            "seeds": len(group),
            "episode_ci95": float(group["ci95"].mean()),
            "episodes": ", ".join(str(n) for n in sorted(set(group["episodes"]))),  # per run, usually one count
            "train_seconds": float(group["train_seconds"].mean()) if "train_seconds" in group else float("nan"),
            "transductive": bool(group["transductive"].iloc[0]),
            "mlflow_run_ids": " ".join(r[:8] for r in group["mlflow_run_id"] if r),
            "seed_accuracies": list(group.sort_values("seed")["accuracy"]),
            **_open(runs, group),
        }
        if not runs.profiles.empty:
            match = runs.profiles[
                (runs.profiles["algorithm"] == algorithm)
                & (runs.profiles["shots"] == shots)
                & (runs.profiles["dataset"] == dataset)
                & (runs.profiles["ways"] == ways)
            ]
            if not match.empty:
                profile = match.iloc[0]
                row.update({key: float(profile.get(key, float("nan"))) for key in COST_COLUMNS})
        entry = published.lookup(dataset, algorithm, ways, shots)
        row["published"] = (
            (f"{entry[0]}" + (f" ± {entry[1]}" if entry[1] is not None else "") + f" ({entry[2]})") if entry else ""
        )
        out.append(row)
    return pd.DataFrame(out)


def _open(runs: Runs, group: pd.DataFrame) -> dict[str, float]:
    """The open interval of one algorithm and setting: per image-disjoint episode, the mean over
    seeds; then the t-interval over those episodes. NaN when its episodes are not at hand."""
    hashes = set(group["episodes_sha256"].dropna()) if "episodes_sha256" in group else set()
    kept = runs.disjoint.get(next(iter(hashes))) if len(hashes) == 1 else None
    if kept is None:
        return {"open_accuracy": float("nan"), "open_ci95": float("nan"), "open_episodes": 0}
    pooled = np.mean([runs.episodes[run_id] for run_id in group["run_id"]], axis=0)
    mean, half, count = stats.open_interval(pooled, kept)
    return {"open_accuracy": mean, "open_ci95": half, "open_episodes": count}


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


def pairwise(runs: Runs) -> pd.DataFrame:
    """Paired comparisons between every two algorithms of each (dataset, ways, shots).

    Runs are paired only when they were scored on identical episodes (the same
    ``episodes_sha256`` in every seed of both algorithms); runs from before that hash was
    recorded are never paired. The unit of the test is the seed when both algorithms have at
    least two seeds in common: a paired t-test on the per-seed mean accuracies (seed i of one
    against seed i of the other), so training randomness counts, not only episode sampling.
    With one seed it falls back to the per-episode paired t-test, which only says how sure we
    are about these particular trained models; the ``test`` column says which was used.
    """
    rows = []
    metrics = runs.metrics
    if "episodes_sha256" not in metrics:
        return pd.DataFrame(rows)
    for (dataset, ways, shots), group in metrics.groupby(["dataset", "ways", "shots"]):
        pooled, episodes_of, seed_means = {}, {}, {}
        for algorithm, runs_of in group.groupby("algorithm"):
            hashes = set(runs_of["episodes_sha256"].dropna())
            if len(hashes) != 1 or runs_of["episodes_sha256"].isna().any():
                continue  # its seeds were scored on different episodes: nothing to pair them on
            pooled[algorithm] = np.mean([runs.episodes[r] for r in runs_of["run_id"]], axis=0)
            episodes_of[algorithm] = hashes.pop()
            seed_means[algorithm] = dict(zip(runs_of["seed"], runs_of["accuracy"]))
        setting = []
        for a, b in itertools.combinations(sorted(pooled), 2):
            if episodes_of[a] != episodes_of[b]:
                continue
            seeds = sorted(set(seed_means[a]) & set(seed_means[b]))
            if len(seeds) >= 2:
                per_seed = ([seed_means[a][s] for s in seeds], [seed_means[b][s] for s in seeds])
                result, test = stats.paired_comparison(*per_seed), f"paired t over {len(seeds)} seeds"
            else:
                result = stats.paired_comparison(pooled[a], pooled[b])
                test = f"paired t over {len(pooled[a])} episodes (one seed: training randomness not counted)"
            setting.append({"dataset": dataset, "ways": ways, "shots": shots, "a": a, "b": b, **result, "test": test})
        if setting:
            adjusted = stats.adjust_p_values([r["p_value"] for r in setting])
            for row, p in zip(setting, adjusted):
                row["p_adjusted"] = float(p)
            rows += setting
    return pd.DataFrame(rows)


def _pct(value: float, half: float | None = None) -> str:
    if value != value:
        return "–"
    return f"{100 * value:.2f}" + (f" ± {100 * half:.2f}" if half is not None and half == half else "")


MARKERS = "os^Dv<>pP*XhH8d"


def _styles(algorithms) -> dict[str, tuple]:
    """One (colour, marker) per algorithm, stable across figures: 20 distinct colours
    (``tab20``) combined with 15 markers, so 13+ methods stay tellable apart."""
    names = sorted(set(algorithms))
    colours = sns.color_palette("tab20", 20)
    return {name: (colours[(2 * i) % 20 + (i // 10) % 2], MARKERS[i % len(MARKERS)]) for i, name in enumerate(names)}


def _figure_accuracy(table: pd.DataFrame, path: Path) -> None:
    shots = sorted(table["shots"].unique())
    height = max(3.0, 0.32 * table["algorithm"].nunique() + 1.2)
    fig, axes = plt.subplots(1, len(shots), figsize=(5.2 * len(shots), height), squeeze=False)
    for ax, k in zip(axes[0], shots):
        part = table[table["shots"] == k].sort_values("accuracy")
        ax.errorbar(
            100 * part["accuracy"],
            part["algorithm"],
            xerr=100 * part["seed_ci95"].fillna(0),
            fmt="o",
            capsize=4,
            color=sns.color_palette()[0],
            label="mean over seeds ± t-interval",
        )
        for _, row in part.iterrows():
            ax.scatter(
                [100 * a for a in row["seed_accuracies"]],
                [row["algorithm"]] * len(row["seed_accuracies"]),
                s=12,
                color="grey",
                alpha=0.7,
                zorder=3,
                label="one seed" if _ == part.index[0] else None,
            )
        ax.set_title(f"{part['ways'].iloc[0]}-way {k}-shot")
        ax.set_xlabel("test accuracy (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=2, fontsize=8, frameon=False, bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _figure_cost(table: pd.DataFrame, path: Path) -> None:
    """Accuracy against test-time adaptation throughput and against meta-training time, both log x."""
    axes_of = {
        "adaptation_tasks_per_second": "test-time adaptation (tasks/s, log scale)",
        "train_seconds": "meta-training time per run (s, log scale)",
    }
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), squeeze=False)
    styles = _styles(table["algorithm"])
    drawn = set()
    for ax, (column, label) in zip(axes[0], axes_of.items()):
        data = table[table[column].notna()] if column in table else table.iloc[0:0]
        if data.empty:
            ax.text(0.5, 0.5, "no profiles yet (run the profile stage)", ha="center", va="center")
            ax.set_xticks([])
        for _, row in data.iterrows():
            colour, marker = styles[row["algorithm"]]
            filled = row["shots"] == data["shots"].min()
            ax.scatter(
                row[column],
                100 * row["accuracy"],
                s=55,
                marker=marker,
                color=colour if filled else "none",
                edgecolors=colour,
                linewidths=1.5,
                label=row["algorithm"] if row["algorithm"] not in drawn else None,
            )
            drawn.add(row["algorithm"])
        if not data.empty:
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    handles2, labels2 = axes[0][1].get_legend_handles_labels()
    legend = dict(zip(labels + labels2, handles + handles2))
    fig.legend(legend.values(), legend.keys(), loc="center left", bbox_to_anchor=(0.86, 0.5), fontsize=8, frameon=False)
    shots = sorted(table["shots"].unique())
    if len(shots) > 1:
        fig.text(0.01, 0.01, f"filled: {shots[0]}-shot; hollow: {', '.join(map(str, shots[1:]))}-shot", fontsize=8)
    fig.tight_layout(rect=(0, 0.03, 0.85, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _figure_curves(curves: pd.DataFrame, path: Path) -> None:
    """Validation accuracy per algorithm (one small panel each), one line per shot setting; with
    several seeds, the line is their mean and the band their range."""
    if curves.empty:
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.text(0.5, 0.5, "no training logs", ha="center", va="center")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return
    algorithms = sorted(curves["algorithm"].unique())
    columns = min(5, len(algorithms))
    rows = -(-len(algorithms) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.1 * rows + 0.6), squeeze=False, sharey=True)
    palette = dict(zip(sorted(curves["shots"].unique()), sns.color_palette("colorblind")))
    for ax, algorithm in zip(axes.flat, algorithms):
        part = curves[curves["algorithm"] == algorithm]
        for shots, of_shots in part.groupby("shots"):
            by_iteration = of_shots.groupby("iteration")["val_accuracy"]
            mean = 100 * by_iteration.mean()
            ax.plot(mean.index, mean.values, color=palette[shots], label=f"{shots}-shot")
            if of_shots["seed"].nunique() > 1:
                ax.fill_between(
                    mean.index, 100 * by_iteration.min(), 100 * by_iteration.max(), color=palette[shots], alpha=0.25
                )
        ax.set_title(algorithm, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(algorithms) :]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("val. accuracy (%)", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("meta-training iteration", fontsize=8)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _figure_pairs(pairs: pd.DataFrame, path: Path) -> None:
    """Which pairs differ: a symbol per cell (▲ row better, ▼ worse, · not separated by the
    adjusted test), coloured by the difference; numbers stay in pairwise.csv."""
    settings = sorted(pairs[["ways", "shots"]].drop_duplicates().itertuples(index=False)) if not pairs.empty else []
    size = max(4.0, 0.36 * len(set(pairs["a"]) | set(pairs["b"])) + 2) if not pairs.empty else 4.0
    fig, axes = plt.subplots(1, max(len(settings), 1), figsize=(size * max(len(settings), 1), size), squeeze=False)
    for ax, (ways, k) in zip(axes[0], settings):
        part = pairs[(pairs["ways"] == ways) & (pairs["shots"] == k)]
        names = sorted(set(part["a"]) | set(part["b"]))
        grid = pd.DataFrame(0.0, index=names, columns=names)
        labels = pd.DataFrame("", index=names, columns=names)
        for _, row in part.iterrows():
            for x, y, sign in ((row["a"], row["b"], 1), (row["b"], row["a"], -1)):
                grid.loc[x, y] = sign * 100 * row["difference"]
                separated = row["p_adjusted"] < 0.05
                labels.loc[x, y] = ("▲" if sign * row["difference"] > 0 else "▼") if separated else "·"
        limit = max(1.0, float(np.abs(grid.to_numpy()).max()))
        sns.heatmap(
            grid,
            annot=labels,
            fmt="",
            cmap="RdBu",
            vmin=-limit,
            vmax=limit,
            cbar=True,
            square=True,
            annot_kws={"fontsize": 8},
            ax=ax,
            cbar_kws={"label": "row − column (points)", "shrink": 0.7},
        )
        ax.set_title(f"{ways}-way {k}-shot (▲/▼ adjusted p < 0.05)", fontsize=10)
        ax.tick_params(labelsize=8)
    if not settings:
        axes[0][0].text(0.5, 0.5, "one algorithm only: nothing to compare", ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


COST_COLUMNS = {  # profile field -> column title in the cost table
    "meta_train_tasks_per_second": "meta-train tasks/s",
    "adaptation_tasks_per_second": "adapt tasks/s (one episode)",
    "evaluation_episodes_per_second": "eval episodes/s (evaluator)",
    "achieved_gflops": "GFLOP/s (meta-train)",
    "utilisation": "of matmul peak",
    "peak_rss_mb": "peak RSS MB",
}


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


def leaderboard_table(table: pd.DataFrame) -> pd.DataFrame:
    """The paste-into-a-paper table: one row per algorithm, one column per shot setting."""
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
        row["MLflow runs"] = " ".join(group["mlflow_run_ids"])
        rows.append(row)
    return pd.DataFrame(rows)


@dataclass
class Figures:
    """What a figure may draw from: the loaded runs, the aggregated table, the pairwise tests."""

    runs: Runs
    table: pd.DataFrame
    pairs: pd.DataFrame


@dataclass
class Figure:
    file: str  # under reports/figures/
    caption: str
    draw: Callable[[Figures, Path], None]


# Adding a figure: one function of (Figures, path) above, one entry here.
FIGURES: dict[str, Figure] = {
    "accuracy": Figure(
        "accuracy.png",
        "Accuracy per algorithm and shot: mean over seeds with its t-interval; grey dots are seeds.",
        lambda data, path: _figure_accuracy(data.table, path),
    ),
    "cost": Figure(
        "accuracy_vs_cost.png",
        "Accuracy against test-time adaptation throughput (left) and meta-training time (right).",
        lambda data, path: _figure_cost(data.table, path),
    ),
    "curves": Figure(
        "learning_curves.png",
        "Validation accuracy during meta-training, per algorithm: mean over seeds, band = range of seeds.",
        lambda data, path: _figure_curves(data.runs.curves, path),
    ),
    "pairs": Figure(
        "pairwise.png",
        "Pairwise differences (row − column, colour); ▲/▼ where the adjusted test separates them, · where not.",
        lambda data, path: _figure_pairs(data.pairs, path),
    ),
}


def is_reference(algorithm: str) -> bool:
    """A reference method (nothing trained): reported beside the ranking, not in it."""
    return algorithm in REGISTRY and not REGISTRY[algorithm].trained


def split_references(runs: Runs) -> tuple[Runs, pd.DataFrame]:
    """The ranked runs, and the reference methods' runs (one row per run)."""
    mask = runs.metrics["algorithm"].map(is_reference)
    ranked = dataclasses.replace(runs, metrics=runs.metrics[~mask].reset_index(drop=True))
    if ranked.metrics.empty:
        raise MetabenchError("only reference methods were evaluated; train and evaluate an algorithm first")
    return ranked, runs.metrics[mask]


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
    paths = {}
    for key, figure in FIGURES.items():
        paths[key] = figures / figure.file
        figure.draw(Figures(runs, table, pairs), paths[key])

    baselines = reference_table(references)
    board = leaderboard_table(table)
    ranking = leaderboard.entries(table, pairs)
    leaderboard.write_exports(ranking, pairs, out_dir)
    pair_table = leaderboard.significance_counts(pairs)
    hyper = {}
    for run_id in sorted(runs.metrics["run_id"]):  # the reported runs only, never a stray folder's
        config_path = Path(runs_dir) / run_id / "config.json"
        if config_path.is_file():
            config = json.loads(config_path.read_text())
            hyper.setdefault(config["algorithm"], config["hyper"])

    plots.write(runs.metrics, runs.curves, table, out_dir)  # the data of dvc.yaml's `plots:`
    summary = {f"{r.algorithm}_{r.ways}w{r.shots}s": round(float(r.accuracy), 6) for r in table.itertuples()}
    files.write_atomic(out_dir / "summary.json", json.dumps(summary, indent=1, sort_keys=True) + "\n")
    costs = cost_table(table)
    intervals = intervals_table(table)
    _write_markdown(
        out_dir / "leaderboard.md", ranking, board, pair_table, baselines, table, hyper, runs, costs, intervals
    )
    _write_html(
        out_dir / "leaderboard.html", ranking, board, pair_table, baselines, hyper, paths, runs, costs, intervals
    )
    return summary


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


def _write_markdown(
    path, ranking, board, pairs, baselines, table, hyper, runs: Runs, costs: pd.DataFrame, intervals: pd.DataFrame
) -> None:
    lines = [
        "# metabench leaderboard",
        "",
        f"Generated from {len(runs.metrics)} runs (`runs/*/metrics.json`, `episodes.csv`); "
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
    for algorithm, values in sorted(hyper.items()):
        transductive = (
            "transductive" if REGISTRY.get(algorithm) and REGISTRY[algorithm].transductive else "not transductive"
        )
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


def _write_html(
    path,
    ranking,
    board,
    pairs,
    baselines,
    hyper,
    figures: dict,
    runs: Runs,
    costs: pd.DataFrame,
    intervals: pd.DataFrame,
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
        f"<p>{len(runs.metrics)} runs; {html.escape(_episode_counts(runs))} Every number: "
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
            f"<figure><img alt='{key}' src='{_embed(figure)}'><figcaption>{html.escape(FIGURES[key].caption)}</figcaption></figure>"
        )
    if not baselines.empty:
        parts += ["<h2>Reference methods on the same episodes</h2>", _scroll(baselines.to_html(index=False, border=0))]
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
    parts += ["<h2>Per-run details</h2>", _scroll(board.to_html(index=False, escape=True, border=0))]
    formulas = "".join(
        f"<li>{html.escape(line[2:])}</li>"
        for line in FORMULAS.replace("\n  ", " ").splitlines()
        if line.startswith("- ")
    )
    parts += ["<h2>How the numbers are computed</h2>", f"<ul>{formulas}</ul>", "<h2>Hyper-parameters</h2><ul>"]
    for algorithm, values in sorted(hyper.items()):
        parts.append(
            f"<li><b>{html.escape(algorithm)}</b>: <code>{html.escape(json.dumps(values, sort_keys=True))}</code></li>"
        )
    parts.append("</ul></body></html>")
    files.write_atomic(path, "\n".join(parts))
