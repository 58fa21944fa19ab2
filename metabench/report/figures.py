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
import pandas as pd
import seaborn as sns
from adjustText import adjust_text
from matplotlib import ticker

from metabench.report.runs import Runs


def _accuracy_caption(data: Figures) -> str:
    seeds = data.table["seeds"]
    parts = ["Accuracy per algorithm and setting, best at the top"]
    if (seeds >= 2).any():
        parts.append("with two or more seeds: mean over seeds ± t-interval, grey dots are the seeds")
    if (seeds < 2).any():
        parts.append("with one seed: its accuracy ± the 95% interval over the shared test episodes")
    if not data.references.empty:
        parts.append(
            "dashed line: " + ", ".join(sorted(data.references["algorithm"].unique())) + " (reference, not trained)"
        )
    return "; ".join(parts) + "."


def _figure_accuracy(table: pd.DataFrame, references: pd.DataFrame, path: Path) -> None:
    """What the legend says is what is drawn: the interval over seeds only where there are
    seeds, the episodes' interval otherwise, and the reference methods as lines."""
    settings = sorted(table[["ways", "shots"]].drop_duplicates().itertuples(index=False))
    height = max(3.0, 0.32 * table["algorithm"].nunique() + 1.4)
    fig, axes = plt.subplots(1, len(settings), figsize=(5.2 * len(settings), height), squeeze=False)
    colours = sns.color_palette("colorblind")
    for ax, (ways, k) in zip(axes[0], settings):
        part = table[(table["ways"] == ways) & (table["shots"] == k)].sort_values("accuracy")
        for seeded, group in part.groupby(part["seeds"] >= 2):
            ax.errorbar(
                100 * group["accuracy"],
                group["algorithm"],
                xerr=100 * (group["seed_ci95"] if seeded else group["episode_ci95"]).fillna(0),
                fmt="o",
                capsize=4,
                color=colours[0] if seeded else colours[1],
                label="mean over seeds ± t-interval" if seeded else "one seed ± 95% interval over test episodes",
            )
        first = True
        for _, row in part[part["seeds"] >= 2].iterrows():
            ax.scatter(
                [100 * a for a in row["seed_accuracies"]],
                [row["algorithm"]] * len(row["seed_accuracies"]),
                s=12,
                color="grey",
                alpha=0.7,
                zorder=3,
                label="one seed's accuracy" if first else None,
            )
            first = False
        drawn = (
            references[(references["ways"] == ways) & (references["shots"] == k)]
            if not references.empty
            else references
        )
        for i, (algorithm, group) in enumerate(drawn.groupby("algorithm")):
            ax.axvline(
                100 * group["accuracy"].mean(),
                color="black",
                linestyle=("--", ":", "-.")[i % 3],
                linewidth=1,
                label=f"{algorithm} (reference)",
            )
        ax.set_title(f"{ways}-way {k}-shot")
        ax.set_xlabel("test accuracy (%)")
    legend = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.legend(legend.values(), legend.keys(), loc="upper center", ncol=min(3, len(legend)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _figure_cost(table: pd.DataFrame, path: Path) -> None:
    fig = cost_figure(table)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cost_figure(table: pd.DataFrame) -> plt.Figure:
    """Accuracy against test-time adaptation throughput and against meta-training time (log x),
    one row per setting: settings differ by far more than methods do (5-shot scores crowd into a
    few points), so each row gets its own accuracy axis. Every point is labelled with its method;
    adjustText moves the labels apart and draws a leader where one moved."""
    axes_of = {
        "adaptation_tasks_per_second": "test-time adaptation (tasks/s, log scale)",
        "train_seconds": "meta-training time per run (s, log scale)",
    }
    settings = sorted({(int(w), int(k)) for w, k in zip(table["ways"], table["shots"])})
    fig, axes = plt.subplots(len(settings), 2, figsize=(12, 4.2 * len(settings)), squeeze=False)
    colours = dict(zip(settings, sns.color_palette("colorblind")))
    labelled = []
    for row, setting in zip(axes, settings):
        group = table[(table["ways"] == setting[0]) & (table["shots"] == setting[1])]
        for ax, (column, label) in zip(row, axes_of.items()):
            data = group[group[column].notna()] if column in group else group.iloc[0:0]
            ax.set_title(f"{setting[0]}-way {setting[1]}-shot", fontsize=10)
            ax.set_xlabel(label)
            ax.set_ylabel("test accuracy (%)")
            if data.empty:
                ax.text(0.5, 0.5, "no profiles yet (run the profile stage)", ha="center", va="center")
                ax.set_xticks([])
                continue
            ax.scatter(data[column], 100 * data["accuracy"], s=36, color=colours[setting], zorder=3)
            ax.set_xscale("log")
            # ticks at 1, 2 and 5 of each decade, as plain numbers: less than two decades would
            # otherwise print overlapping minor labels such as 2×10¹ 3×10¹ 4×10¹
            ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
            ax.margins(x=0.15, y=0.12)  # room for the labels of the outermost points
            texts = [
                ax.text(x, 100 * y, name, fontsize=8, color=colours[setting])
                for x, y, name in zip(data[column], data["accuracy"], data["algorithm"])
            ]
            labelled.append((ax, texts, list(data[column]), list(100 * data["accuracy"])))
    fig.tight_layout()  # first: adjustText places labels in the final layout's display space
    for ax, texts, x, y in labelled:
        # a step limit, not adjustText's default one-second time limit: the same labels on every machine
        adjust_text(texts, x=x, y=y, ax=ax, iter_lim=1000, arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.6})
    return fig


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


def _figure_pairs(pairs: pd.DataFrame, table: pd.DataFrame, path: Path) -> None:
    """Which pairs differ: a symbol per cell (▲ row better, ▼ worse, · not separated by the
    adjusted test), coloured by the difference on one scale for every panel; rows and columns in
    rank order (best first), so the blocks of methods that do not differ show; numbers stay in
    pairwise.csv."""
    settings = sorted(pairs[["ways", "shots"]].drop_duplicates().itertuples(index=False)) if not pairs.empty else []
    size = max(4.0, 0.36 * len(set(pairs["a"]) | set(pairs["b"])) + 2) if not pairs.empty else 4.0
    limit = max(1.0, float((100 * pairs["difference"].abs()).max())) if not pairs.empty else 1.0
    panels = max(len(settings), 1)
    fig, axes = plt.subplots(
        1, panels + 1, figsize=(size * panels + 0.8, size), squeeze=False, width_ratios=[1] * panels + [0.04]
    )
    for ax, (ways, k) in zip(axes[0], settings):
        part = pairs[(pairs["ways"] == ways) & (pairs["shots"] == k)]
        named = set(part["a"]) | set(part["b"])
        scores = table[(table["ways"] == ways) & (table["shots"] == k)].set_index("algorithm")["accuracy"]
        names = sorted(named, key=lambda name: (-scores.get(name, float("-inf")), name))
        grid = pd.DataFrame(0.0, index=names, columns=names)
        labels = pd.DataFrame("", index=names, columns=names)
        for _, row in part.iterrows():
            for x, y, sign in ((row["a"], row["b"], 1), (row["b"], row["a"], -1)):
                grid.loc[x, y] = sign * 100 * row["difference"]
                separated = row["p_adjusted"] < 0.05
                labels.loc[x, y] = ("▲" if sign * row["difference"] > 0 else "▼") if separated else "·"
        sns.heatmap(
            grid,
            annot=labels,
            fmt="",
            cmap="RdBu",
            vmin=-limit,
            vmax=limit,
            cbar=False,  # one scale for every panel: drawn once, beside the last
            square=True,
            annot_kws={"fontsize": 8},
            ax=ax,
        )
        ax.set_title(f"{ways}-way {k}-shot, best first (▲/▼ adjusted p < 0.05)", fontsize=10)
        ax.tick_params(labelsize=8)
    scale = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(-limit, limit), "RdBu")
    fig.colorbar(scale, cax=axes[0][-1], label="row − column (points)")
    if not settings:
        axes[0][0].text(0.5, 0.5, "one algorithm only: nothing to compare", ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass
class Figures:
    """What a figure may draw from: the loaded runs, the aggregated table, the pairwise tests,
    the reference methods' runs (one row each)."""

    runs: Runs
    table: pd.DataFrame
    pairs: pd.DataFrame
    references: pd.DataFrame


@dataclass
class Figure:
    file: str  # under reports/figures/
    caption: str | Callable[[Figures], str]  # a function when what is drawn depends on the runs

    draw: Callable[[Figures, Path], None]

    def describe(self, data: Figures) -> str:
        return self.caption(data) if callable(self.caption) else self.caption


# Adding a figure: one function of (Figures, path) above, one entry here.
FIGURES: dict[str, Figure] = {
    "accuracy": Figure(
        "accuracy.png",
        _accuracy_caption,
        lambda data, path: _figure_accuracy(data.table, data.references, path),
    ),
    "cost": Figure(
        "accuracy_vs_cost.png",
        "Accuracy against test-time adaptation throughput (left) and meta-training time (right), "
        "one row per setting with its own accuracy axis; each point labelled with its method, a grey "
        "leader where the label had to move.",
        lambda data, path: _figure_cost(data.table, path),
    ),
    "curves": Figure(
        "learning_curves.png",
        lambda data: (
            "Validation accuracy during meta-training, per algorithm and setting"
            + (": mean over seeds, band = range of seeds." if (data.table["seeds"] >= 2).any() else " (one seed).")
        ),
        lambda data, path: _figure_curves(data.runs.curves, path),
    ),
    "pairs": Figure(
        "pairwise.png",
        "Pairwise differences (row − column, one colour scale), methods best first; ▲/▼ where the "
        "adjusted test separates them, · where not.",
        lambda data, path: _figure_pairs(data.pairs, data.table, path),
    ),
}
