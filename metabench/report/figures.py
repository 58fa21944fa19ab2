"""The report's figures (PNG, seaborn on matplotlib's Agg backend): accuracy, accuracy against
cost, learning curves and the pairwise differences. Adding one: a function of (Figures, path)
and one entry of ``FIGURES``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from metabench.report.runs import Runs

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
