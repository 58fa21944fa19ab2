"""Reproduction pages, ``reports/reproductions/<algorithm>.md``: a paper's Omniglot figure beside
ours at the paper's protocol, from the run's own files (never re-trained).

Each page shows the published figure and the protocol it was measured under, our test accuracy
on the same protocol (Vinyals split with rotations as classes, 28×28, the paper's ways, shots
and test episodes: ``pipelines/omniglot_paper/params.yaml``), the budget we trained for against
the paper's, the validation learning curve (table and figure) and whether it was still rising,
the fully resolved configuration, the commands that reproduce the run, and what the paper's
full budget would cost at the speed measured here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from scipy import stats

from metabench import MetabenchError, files, published
from metabench.config import RunConfig
from metabench.evaluation import read_results
from metabench.run_folder import CONFIG, METRICS, TRAIN_LOG, TRAIN_SUMMARY, RunFolder

# A rise of the least-squares line through the last third of the validation curve larger than
# this (points) counts as "still rising": more training would likely close part of the gap.
RISING_POINTS = 0.2


@dataclass(frozen=True)
class Paper:
    """What the paper measured its Omniglot figure with, and where the protocol comes from."""

    protocol: str  # the paper's training and test protocol, in words
    reference: str  # the reference code (or the paper section) our settings follow


PAPERS = {
    "protonet": Paper(
        "60-way training episodes with 5 queries per class and as many shots as at test; Adam 1e-3 "
        "halved every 2,000 episodes; trained until validation accuracy stopped improving; 1,000 test episodes",
        "jakesnell/prototypical-networks `scripts/train/few_shot/run_train.py` defaults",
    ),
    "maml": Paper(
        "meta-batch 32; one inner SGD step at 0.4 in training, three at test; K queries per class in "
        "training; Adam 1e-3; 60,000 meta-steps; 600 test tasks",
        "cbfinn/maml `main.py` and the README's Omniglot command",
    ),
    "fomaml": Paper(
        "MAML's protocol with the first-order meta-gradient (the inner gradients treated as constants)",
        "cbfinn/maml `main.py` with `--stop_grad=True`",
    ),
    "metasgd": Paper(
        "MAML's protocol (one inner step, meta-batch 32) with a learned step size per weight",
        "Li et al. 2017, Section 4.1",
    ),
    "reptile": Paper(
        "meta-batch 5; 5 inner Adam steps (β₁ = 0, 1e-3) on mini-batches of 10 of 10 images per class; "
        "outer step 1.0 annealed to 0 over 100,000 meta-steps; 50 inner steps at test (transductive)",
        "openai/supervised-reptile `run_omniglot.py` flags in its README",
    ),
    "matchingnet": Paper(
        "episodes of the test's ways and shots; cosine attention over the support set; full context "
        "embeddings did not help on Omniglot (paper, Section 4.1.1)",
        "Vinyals et al. 2016, Table 1; attention scale from CloserLookFewShot `methods/matchingnet.py`",
    ),
    "relationnet": Paper(
        "5-way 1-shot training episodes with 19 queries per class; Adam 1e-3; MSE on one-hot relation scores",
        "floodsung/LearningToCompare_FSL `omniglot/omniglot_train_one_shot.py`",
    ),
    "siamese": Paper(
        "verification network trained on same/different pairs, one-shot tasks scored by the best pair "
        "(Koch et al. 2015); the figure is Vinyals et al.'s reimplementation, fine-tuned",
        "Vinyals et al. 2016, Table 1",
    ),
}


@dataclass(frozen=True)
class Reproduced:
    """One trained and evaluated run's files, read once, with the paper's figure for its setting."""

    config: RunConfig
    metrics: dict
    summary: dict
    resolved: dict  # config.json
    points: pd.DataFrame  # the validation curve (``curve``)
    figure: tuple[float, float | None, str]  # the paper's (accuracy %, ±, citation)

    @property
    def mode(self) -> str:
        """The scoring mode the page compares in: the paper's (``published.PAPER_SCORING``, read
        from its reference code), else the run's own (no reference code says)."""
        return published.PAPER_SCORING.get(self.config.algorithm, (self.metrics["scoring"],))[0]

    @property
    def accuracy(self) -> tuple[float, float]:
        """Test accuracy and its 95% half-width, in %, in ``mode`` (like with like)."""
        scored = self.metrics["modes"][self.mode]
        return 100 * scored["accuracy"], 100 * scored["ci95"]

    @property
    def other_modes(self) -> dict[str, tuple[float, float]]:
        """The run's score in every other mode, in %: shown beside, never compared with the paper."""
        return {
            mode: (100 * scored["accuracy"], 100 * scored["ci95"])
            for mode, scored in self.metrics["modes"].items()
            if mode != self.mode
        }

    @property
    def trained(self) -> int:
        return int(self.metrics["iterations"])


def load(config: RunConfig) -> Reproduced:
    """Read ``config``'s run; a run without test metrics or a setting without a paper figure is an error."""
    run_dir = config.run_dir
    if not (run_dir / METRICS).is_file():
        raise MetabenchError(f"{config.run_id} has no test metrics; train and evaluate it first")
    figure = published.lookup(config.dataset, config.algorithm, config.ways, config.shots)
    if figure is None:
        raise MetabenchError(f"no published figure for {config.algorithm} at {config.ways}-way {config.shots}-shot")
    folder, retrain = RunFolder(run_dir), f"retrain the run (metabench train --force) or remove {run_dir}"
    metrics, _ = read_results(run_dir)  # checked against the manifest and re-derived from episodes.csv
    paper_mode = published.PAPER_SCORING.get(config.algorithm, (metrics.get("scoring"),))[0]
    if paper_mode not in (metrics.get("modes") or {}):
        raise MetabenchError(
            f"{config.run_id} was not scored {paper_mode or 'in a named mode'}, the mode of the paper's figure, so a page "
            f"would compare across modes; score it again from its checkpoint (metabench evaluate, or dvc repro)"
        )
    return Reproduced(
        config,
        metrics,
        folder.read_json_verified(TRAIN_SUMMARY, retrain),
        folder.read_json_verified(CONFIG, retrain),
        curve(run_dir),
        figure,
    )


def curve(run_dir: Path) -> pd.DataFrame:
    """Validation accuracy (%) by outer step, with the training seconds at each validation."""
    retrain = f"retrain the run (metabench train --force) or remove {run_dir}"
    log = RunFolder(run_dir).read_table_verified(TRAIN_LOG, retrain, ("iteration", "val_accuracy", "seconds"))
    rows = log.dropna(subset=["val_accuracy"])
    return pd.DataFrame(
        {
            "step": rows["iteration"].astype(int),
            "val_accuracy": 100 * rows["val_accuracy"],
            "minutes": rows["seconds"] / 60,
        }
    ).reset_index(drop=True)


def last_third(points: pd.DataFrame) -> pd.DataFrame:
    """The curve's last third, at least its last two validations."""
    return points.iloc[-max(2, len(points) // 3) :]


def tail_slope(points: pd.DataFrame) -> float:
    """Validation points per outer step over the curve's last third, by least squares: one noisy
    validation neither makes nor hides a trend."""
    tail = last_third(points)
    return float(stats.linregress(tail["step"], tail["val_accuracy"]).slope)


def still_rising(points: pd.DataFrame) -> bool:
    """Whether the least-squares line through the curve's last third rises by more than
    RISING_POINTS across it."""
    if len(points) < 2:
        return False
    tail = last_third(points)
    return tail_slope(points) * float(tail["step"].iloc[-1] - tail["step"].iloc[0]) > RISING_POINTS


def steps_to_close(points: pd.DataFrame, gap: float) -> int | None:
    """More outer steps that would close ``gap`` points (negative: we are below the paper) at the
    slope of the curve's last third: a lower bound, as learning curves flatten. None when there is
    no gap to close or the curve is not rising."""
    if gap >= 0 or not still_rising(points):
        return None
    return math.ceil(-gap / tail_slope(points))


def closing_text(points: pd.DataFrame, gap: float, seconds_per_step: float) -> list[str]:
    """The page's line on the budget that would close the gap (none when nothing is to close)."""
    more = steps_to_close(points, gap)
    if more is None:
        return []
    return [
        f"- Closing the gap: at the slope of the last third of the curve ({1000 * tail_slope(points):.2f} points "
        f"per 1,000 steps, least squares) the {-gap:.2f} points need at least **{more:,} more outer steps** "
        f"({more * seconds_per_step / 3600:.1f} core-hours here); a lower bound, since learning curves flatten."
    ]


def rising_text(points: pd.DataFrame) -> str:
    if len(points) < 2:
        return "cannot tell (one validation)"
    return "yes" if still_rising(points) else "no"


def page(run: Reproduced, full_iterations: int, commands: list[str], figure: str) -> str:
    """The markdown page of one trained and evaluated run."""
    config, metrics, summary, resolved, points = run.config, run.metrics, run.summary, run.resolved, run.points
    paper = PAPERS[config.algorithm]
    value, plus_minus, citation = run.figure
    ours, half = run.accuracy
    trained = run.trained
    tasks = resolved["hyper"].get("meta_batch", 1)
    seconds = float(summary["train_seconds"])
    hours = full_iterations * seconds / max(trained, 1) / 3600
    published_text = f"{value:.2f}" + (f" ± {plus_minus}" if plus_minus is not None else "")
    stated = config.algorithm in published.PAPER_SCORING
    paper_mode = run.mode if stated else "mode not stated"
    mode_note = (
        f"The paper's figure is {run.mode} as its reference code scores "
        f"({published.PAPER_SCORING[config.algorithm][1]}); `metabench/scoring.py` says what each mode is."
        if stated
        else f"No reference code from the authors says how the figure was scored; this page compares in the "
        f"run's own mode ({run.mode}) and shows the other beside it."
    )
    lines = [
        f"# {config.algorithm} on Omniglot, {config.ways}-way {config.shots}-shot: paper and metabench",
        "",
        "| | test accuracy % | protocol |",
        "|---|---|---|",
        f"| paper ({citation}) | {published_text} | {paper.protocol}; {paper_mode} |",
        f"| metabench, this run, {run.mode} | **{ours:.2f} ± {half:.2f}** (95% interval over {metrics['episodes']:,} "
        f"test episodes, seed {config.seed}) | the paper's settings as far as this suite has them "
        f"({paper.reference}); Vinyals split with rotations as classes, 28×28 |",
        *(
            f"| metabench, the same checkpoint, {mode} | {score:.2f} ± {width:.2f} | not compared with the paper |"
            for mode, (score, width) in run.other_modes.items()
        ),
        "",
        f"Gap: **{ours - value:+.2f} points**, both {run.mode}. {mode_note}",
        "",
        "## Budget",
        "",
        f"- Trained: {trained:,} outer steps × {tasks} task(s) in {seconds / 60:.1f} minutes on one core "
        f"({summary.get('threads', '?')} thread, {summary.get('device', 'cpu')}); best validation at step "
        f"{summary['best_iteration']:,}.",
        f"- The paper's budget in this profile: {full_iterations:,} outer steps ({100 * trained / full_iterations:.1f}% "
        f"of it trained here). At this run's speed the full budget would take **{hours:.1f} core-hours** of this "
        "CPU; GPU-hours are not measured (no GPU has been lent to this project).",
        f"- Validation accuracy still rising at the end: **{rising_text(points)}** (more than "
        f"{RISING_POINTS} points along the least-squares line through the last third of the curve).",
        *closing_text(points, ours - value, seconds / max(trained, 1)),
        "",
        "## Learning curve (validation episodes of the validation classes)",
        "",
    ]
    lines += [f"![validation accuracy]({figure})", ""]
    lines += ["| outer step | minutes | validation accuracy % |", "|---|---|---|"]
    lines += [f"| {r.step:,} | {r.minutes:.1f} | {r.val_accuracy:.2f} |" for r in points.itertuples()]
    lines += [
        "",
        "## Reproduce",
        "",
        "```bash",
        *commands,
        "```",
        "",
        "## Resolved configuration",
        "",
        "```json",
        json.dumps({"config": resolved["config"], "hyper": resolved["hyper"], "task": resolved["task"]}, indent=1),
        "```",
        "",
    ]
    return "\n".join(lines)


def learning_curve_figure(points: pd.DataFrame, published_value: float, path: Path, title: str) -> None:
    """The validation curve beside the paper's test figure, as a small PNG."""
    import matplotlib  # here: matplotlib costs a second to import and only the figures need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3), dpi=110)
    axis.plot(points["step"], points["val_accuracy"], marker="o", label="metabench, validation")
    axis.axhline(published_value, color="grey", linestyle="--", label="paper, test")
    axis.set_xlabel("outer step")
    axis.set_ylabel("accuracy %")
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


def summary_row(run: Reproduced, full_iterations: int) -> str:
    """One line of the pages' index: paper, ours, gap, budget, minutes, still rising."""
    config, (value, _, citation), (ours, half) = run.config, run.figure, run.accuracy
    trained, rising = run.trained, rising_text(run.points)
    minutes = run.summary["train_seconds"] / 60
    return (
        f"| [{config.algorithm}]({config.algorithm}.md) | {value:.2f} ({citation}) | {ours:.2f} ± {half:.2f} ({run.mode}) | "
        f"{ours - value:+.2f} | {trained:,} of {full_iterations:,} | {minutes:.1f} | {rising} |"
    )


def write_pages(
    configs: list[RunConfig], full_iterations: dict[str, int], params_path: str, out_dir: Path
) -> list[Path]:
    """One page (and figure) per run in ``configs`` that has a paper entry, then the index
    (``README.md``: one row per page); returns the pages."""
    written, rows = [], []
    for config in configs:
        if config.algorithm not in PAPERS:
            continue
        run = load(config)
        full = full_iterations[config.algorithm]
        selection = f"--params {params_path} --algorithm {config.algorithm} --shots {config.shots} --seed {config.seed}"
        commands = [
            f"metabench fetch omniglot --params {params_path}   # data.omniglot.source: the zips' URL or folder",
            f"metabench train {selection} --iterations {run.trained} --ranks 1   # OMP_NUM_THREADS=1: one core",
            f"metabench evaluate {selection}",
            f"metabench reproduction --params {params_path} --algorithm {config.algorithm}   # this page",
        ]
        figure_name = f"{config.algorithm}-{config.ways}w{config.shots}s.png"
        title = f"{config.algorithm}, Omniglot {config.ways}-way {config.shots}-shot"
        learning_curve_figure(run.points, run.figure[0], out_dir / figure_name, title)
        path = out_dir / f"{config.algorithm}.md"
        files.write_atomic(path, page(run, full, commands, figure_name))
        written.append(path)
        rows.append(summary_row(run, full))
    if rows:
        files.write_atomic(out_dir / "README.md", index(rows, params_path))
    return written


def index(rows: list[str], params_path: str) -> str:
    """The index page: every reproduction in one table."""
    return "\n".join(
        [
            "# Reproductions: the papers' Omniglot figures beside metabench at their protocol",
            "",
            f"Runs of `{params_path}` (5-way 1-shot, seed 0, one thread each, two runs at a time on a "
            "2-core machine), written by `metabench reproduction`. Accuracy ± 95% interval over the profile's test episodes; the budget is "
            "outer steps trained against the paper's; still rising: the least-squares line through the last "
            f"third of its validation curve rose by more than {RISING_POINTS} points.",
            "",
            "| algorithm | paper % | metabench % | gap (points) | outer steps trained | train minutes | still rising |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
