"""The report's numbers come from the per-episode files, and its pieces are all there."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metabench import stats
from metabench.report import build
from metabench.run_folder import RunFolder

ROOT = Path(__file__).resolve().parents[1]


def make_runs(root, algorithms=("protonet", "maml"), seeds=(0, 1, 2), shots=(1, 5), episodes=600):
    """Run directories in the exact layout the pipeline writes, with synthetic accuracies."""
    rng = np.random.default_rng(0)
    runs_dir = root / "runs"
    for a_index, algorithm in enumerate(algorithms):
        for k in shots:
            for seed in seeds:
                run_id = f"glyphs-{algorithm}-5w{k}s-seed{seed}"
                run_dir = runs_dir / run_id
                run_dir.mkdir(parents=True)
                accuracies = np.clip(rng.normal(0.7 + 0.1 * a_index + 0.02 * k, 0.1, episodes), 0, 1).round(4)
                table = pd.DataFrame({"episode": range(episodes), "accuracy": accuracies}).to_csv(index=False)
                (run_dir / "episodes.csv").write_text(table)
                mean, half = stats.mean_interval(accuracies)
                (run_dir / "metrics.json").write_text(
                    json.dumps(
                        {
                            "accuracy": mean,
                            "ci95": half,
                            "episodes": episodes,
                            "run_id": run_id,
                            "algorithm": algorithm,
                            "dataset": "glyphs",
                            "ways": 5,
                            "shots": k,
                            "queries": 15,
                            "seed": seed,
                            "episode_seed": 0,
                            "episodes_sha256": f"episodes-{k}-{episodes}",
                            "episodes_csv_sha256": hashlib.sha256(table.encode()).hexdigest(),
                            "best_iteration": 10,
                            "val_accuracy": 0.7,
                            "transductive": algorithm == "maml",
                        }
                    )
                )
                (run_dir / "train_summary.json").write_text(json.dumps({"train_seconds": 12.5}))
                hyper = {"lr": 0.001, **({"meta_batch": 8} if algorithm == "maml" else {})}
                config = {"algorithm": algorithm, "hyper": hyper, "config": {"iterations": 300 + 100 * a_index}}
                (run_dir / "config.json").write_text(json.dumps(config))
                pd.DataFrame({"iteration": [5, 10], "loss": [1.0, 0.5], "val_accuracy": [0.5, 0.6]}).to_csv(
                    run_dir / "train_log.csv", index=False
                )
                RunFolder(run_dir).seal()  # as every writer of results does
    (root / "profiles").mkdir()
    for algorithm in algorithms:
        for k in shots:
            (root / "profiles" / f"glyphs-{algorithm}-5w{k}s.json").write_text(
                json.dumps(
                    {
                        "algorithm": algorithm,
                        "dataset": "glyphs",
                        "ways": 5,
                        "shots": k,
                        "adaptation_tasks_per_second": 10.0 if algorithm == "maml" else 200.0,
                        "meta_train_tasks_per_second": 5.0,
                        "achieved_gflops": 9.0,
                        "utilisation": 0.1,
                        "peak_rss_mb": 500.0,
                        "evaluation_episodes_per_second": 123.4 if algorithm == "protonet" else 7.0,
                    }
                )
            )
    return runs_dir


def test_report_numbers_equal_those_recomputed_from_episode_files(tmp_path):
    runs_dir = make_runs(tmp_path)
    summary = build(runs_dir, tmp_path / "profiles", tmp_path / "reports")
    for algorithm in ("protonet", "maml"):
        for k in (1, 5):
            seed_means = [
                pd.read_csv(runs_dir / f"glyphs-{algorithm}-5w{k}s-seed{s}" / "episodes.csv")["accuracy"].mean()
                for s in range(3)
            ]
            mean, half = stats.seed_interval(seed_means)
            assert summary[f"{algorithm}_5w{k}s"] == pytest.approx(mean, abs=1e-6)
            markdown = (tmp_path / "reports" / "leaderboard.md").read_text()
            assert f"{100 * mean:.2f} ± {100 * half:.2f}" in markdown


def test_report_has_pairwise_tests_formulas_and_figures(tmp_path):
    runs_dir = make_runs(tmp_path)
    build(runs_dir, tmp_path / "profiles", tmp_path / "reports")
    markdown = (tmp_path / "reports" / "leaderboard.md").read_text()
    assert "## Significance" in markdown and "Benjamini-Hochberg" in markdown and "pairwise.csv" in markdown
    pairs = pd.read_csv(tmp_path / "reports" / "pairwise.csv")
    assert len(pairs) == 2 and {"difference", "ci95", "p_value", "p_adjusted", "test"} <= set(pairs.columns)
    assert "transductive" in markdown
    for name in ("accuracy", "accuracy_vs_cost", "learning_curves", "pairwise"):
        assert (tmp_path / "reports" / "figures" / f"{name}.png").stat().st_size > 5000
    page = (tmp_path / "reports" / "leaderboard.html").read_text()
    assert page.count("data:image/png;base64,") == 4
    # the cost section shows every profile's numbers
    cost = markdown.split("## Cost")[1].split("##")[0]
    assert "eval episodes/s" in cost and "123.4" in cost and "10%" in cost
    assert "Cost (profile stage)" in page


def test_with_seeds_the_pairwise_test_is_over_per_seed_means(tmp_path):
    """Three seeds each: the unit is a training run (per-seed means paired by seed)."""
    from scipy import stats as scipy_stats

    from metabench.report.runs import load_runs
    from metabench.report.statistics import pairwise

    runs_dir = make_runs(tmp_path)
    pairs = pairwise(load_runs(runs_dir, tmp_path / "profiles"))
    row = pairs[(pairs["shots"] == 1)].iloc[0]
    per_seed = {
        a: [pd.read_csv(runs_dir / f"glyphs-{a}-5w1s-seed{s}" / "episodes.csv")["accuracy"].mean() for s in range(3)]
        for a in ("maml", "protonet")
    }
    difference = np.subtract(per_seed[row["a"]], per_seed[row["b"]])
    assert row["difference"] == pytest.approx(difference.mean())
    assert row["p_value"] == pytest.approx(scipy_stats.ttest_rel(per_seed[row["a"]], per_seed[row["b"]]).pvalue)
    assert row["test"] == "paired t over 3 seeds"


def test_with_one_seed_the_pairwise_test_is_over_episodes_and_says_so(tmp_path):
    from metabench.report.runs import load_runs
    from metabench.report.statistics import pairwise

    runs_dir = make_runs(tmp_path, seeds=(0,))
    row = pairwise(load_runs(runs_dir, tmp_path / "profiles")).iloc[0]
    episodes = {
        a: pd.read_csv(runs_dir / f"glyphs-{a}-5w{row['shots']}s-seed0" / "episodes.csv")["accuracy"]
        for a in ("maml", "protonet")
    }
    expected = stats.paired_comparison(episodes[row["a"]], episodes[row["b"]])
    assert row["difference"] == pytest.approx(expected["difference"])
    assert row["p_value"] == pytest.approx(expected["p_value"])
    assert row["test"].startswith("paired t over 600 episodes")


def test_missing_run_is_a_clear_error(tmp_path):
    from metabench import MetabenchError

    runs_dir = make_runs(tmp_path)
    with pytest.raises(MetabenchError, match="glyphs-relationnet-5w1s-seed0"):
        build(runs_dir, tmp_path / "profiles", tmp_path / "reports", run_ids=["glyphs-relationnet-5w1s-seed0"])


def test_runs_scored_on_different_episodes_are_not_paired(tmp_path):
    from metabench.report.runs import load_runs
    from metabench.report.statistics import pairwise

    runs_dir = make_runs(tmp_path, algorithms=("protonet", "maml", "anil"), seeds=(0,), shots=(1,))
    assert len(pairwise(load_runs(runs_dir, tmp_path / "profiles"))) == 3
    path = runs_dir / "glyphs-anil-5w1s-seed0" / "metrics.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "episodes_sha256": "other episodes"}))
    RunFolder(path.parent).seal()
    pairs = pairwise(load_runs(runs_dir, tmp_path / "profiles"))
    assert [(r.a, r.b) for r in pairs.itertuples()] == [("maml", "protonet")]


def test_a_stray_run_beside_the_leaderboard_is_not_reported(tmp_path):
    from metabench.board import leaderboard_runs

    runs_dir = make_runs(tmp_path, algorithms=("protonet", "maml"), seeds=(0,), shots=(1,))
    stray = make_runs(tmp_path / "stray", algorithms=("relationnet",), seeds=(0,), shots=(1,))
    shutil.copytree(stray / "glyphs-relationnet-5w1s-seed0", runs_dir / "glyphs-relationnet-5w20s-seed0")
    params = {"leaderboard": {"algorithms": ["protonet", "maml"], "shots": [1], "seeds": [0]}}
    run_ids = [config.run_id for config in leaderboard_runs(params)]
    summary = build(runs_dir, tmp_path / "profiles", tmp_path / "reports", run_ids=run_ids)
    assert set(summary) == {"protonet_5w1s", "maml_5w1s"}
    assert "relationnet" not in (tmp_path / "reports" / "leaderboard.md").read_text()


def test_reference_runs_are_reported_beside_the_ranking_with_their_episode_counts(tmp_path):
    runs_dir = make_runs(tmp_path, algorithms=("protonet", "maml"), seeds=(0,), shots=(1,), episodes=200)
    make_runs(tmp_path / "ref", algorithms=("pixelnn",), seeds=(0,), shots=(1,), episodes=200)
    shutil.copytree(tmp_path / "ref" / "runs" / "glyphs-pixelnn-5w1s-seed0", runs_dir / "glyphs-pixelnn-5w1s-seed0")
    reference = json.loads((runs_dir / "glyphs-pixelnn-5w1s-seed0" / "metrics.json").read_text())
    summary = build(runs_dir, tmp_path / "profiles", tmp_path / "reports")
    assert set(summary) == {"protonet_5w1s", "maml_5w1s"}  # not ranked
    markdown = (tmp_path / "reports" / "leaderboard.md").read_text()
    section = markdown.split("## Reference methods on the same episodes")[1].split("##")[0]
    assert "pixelnn" in section and f"{100 * reference['accuracy']:.2f}" in section and "200" in section
    ranking = markdown.split("## Reference methods")[0]
    assert "pixelnn" not in ranking
    assert "200 fixed test episodes per run" in ranking and "test episodes" in ranking  # the count of every run


def test_main_table_is_ranked_bolds_the_indistinguishable_and_exports_csv_and_latex(tmp_path):
    runs_dir = make_runs(tmp_path, algorithms=("protonet", "maml", "anil"), seeds=(0, 1, 2))
    build(runs_dir, tmp_path / "profiles", tmp_path / "reports")
    table = pd.read_csv(tmp_path / "reports" / "leaderboard.csv")
    one_shot = table[table["shots"] == 1].sort_values("rank")
    # make_runs gives anil (a_index 2) the highest accuracy, then maml, then protonet
    assert list(one_shot["algorithm"]) == ["anil", "maml", "protonet"] and list(one_shot["rank"]) == [1, 2, 3]
    assert (one_shot["ci95_over"] == "seeds").all() and (one_shot["ci95_low"] < one_shot["accuracy"]).all()
    best = one_shot.iloc[0]
    assert best["bold"] and pd.isna(best["p_adjusted_vs_best"])
    for _, row in one_shot.iloc[1:].iterrows():  # bold exactly when the adjusted test does not separate it
        assert row["bold"] == (row["p_adjusted_vs_best"] >= 0.05)
    markdown = (tmp_path / "reports" / "leaderboard.md").read_text()
    main = markdown.split("## glyphs")[1].split("##")[0]
    lines = [line for line in main.splitlines() if line.startswith("| ")]
    assert lines[0].split("|")[1].strip() == "method" and "anil" in lines[1]  # ranked, best first
    assert f"**{100 * best['accuracy']:.2f} ± {100 * best['ci95']:.2f}**" in main
    assert "published" not in lines[0]  # no published figure for glyphs: the column is dropped
    tex = (tmp_path / "reports" / "leaderboard.tex").read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex and "$\\pm$" in tex and "\\textbf{" in tex


def test_report_available_reports_the_evaluated_runs_and_names_the_missing(tmp_path, monkeypatch):
    import yaml
    from typer.testing import CliRunner

    from metabench.cli import app

    runs_dir = make_runs(tmp_path, algorithms=("protonet", "maml"), seeds=(0,), shots=(1,))
    params = {"leaderboard": {"algorithms": ["protonet", "maml", "anil"], "shots": [1], "seeds": [0]}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    options = ["report", "--params", str(tmp_path / "params.yaml"), "--runs-dir", str(runs_dir)]
    options += ["--profiles-dir", str(tmp_path / "profiles"), "--out-dir", str(tmp_path / "reports")]
    refused = CliRunner().invoke(app, options)
    assert refused.exit_code != 0 and "glyphs-anil-5w1s-seed0" in str(refused.exception)
    result = CliRunner().invoke(app, [*options, "--available"])
    assert result.exit_code == 0, result.output
    assert "left out" in result.output and "glyphs-anil-5w1s-seed0" in result.output
    assert set(json.loads((tmp_path / "reports" / "summary.json").read_text())) == {"protonet_5w1s", "maml_5w1s"}


def write_episode_file(root, shots, episodes, rng):
    """A fixed episode file as `metabench episodes` writes it; the runs' episodes_sha256 is its digest."""
    from metabench.episodes import EpisodeIndices

    images = rng.integers(0, 100_000, size=(episodes, 5, shots + 15))
    indices = EpisodeIndices(images[:, :, :shots], images[:, :, shots:], rng.integers(0, 50, size=(episodes, 5)))
    (root / "episodes").mkdir(exist_ok=True)
    np.savez(
        root / "episodes" / f"glyphs-test_{shots}.npz",
        support=indices.support,
        query=indices.query,
        classes=indices.classes,
    )
    return indices


def test_open_intervals_are_over_the_image_disjoint_episodes_shared_by_every_method(tmp_path):
    runs_dir = make_runs(tmp_path, seeds=(0, 1))
    rng = np.random.default_rng(1)
    for k in (1, 5):
        indices = write_episode_file(tmp_path, k, 600, rng)
        for metrics_path in runs_dir.glob(f"*-5w{k}s-*/metrics.json"):
            metrics = json.loads(metrics_path.read_text())
            metrics_path.write_text(json.dumps({**metrics, "episodes_sha256": indices.digest()}))
            RunFolder(metrics_path.parent).seal()
        if k == 1:
            kept = stats.disjoint_episodes(indices.support, indices.query)
    build(runs_dir, tmp_path / "profiles", tmp_path / "reports", episodes_dir=tmp_path / "episodes")
    board = pd.read_csv(tmp_path / "reports" / "leaderboard.csv")
    row = board[(board.algorithm == "protonet") & (board.shots == 1)].iloc[0]
    per_episode = np.mean(
        [pd.read_csv(runs_dir / f"glyphs-protonet-5w1s-seed{s}" / "episodes.csv")["accuracy"] for s in (0, 1)], axis=0
    )
    assert 10 < len(kept) < 600 and row.open_episodes == len(kept)
    expected = stats.open_interval(per_episode, kept)
    assert (row.open_accuracy, row.open_ci95) == (pytest.approx(expected[0]), pytest.approx(expected[1]))
    assert (board.open_episodes > 0).all()
    text = (tmp_path / "reports" / "leaderboard.md").read_text()
    assert "## Closed and open intervals" in text and f"(n = {len(kept)})" in text and "Lafargue" in text
    assert "Closed and open intervals" in (tmp_path / "reports" / "leaderboard.html").read_text()


def test_without_the_episode_files_the_report_has_no_open_intervals(tmp_path):
    runs_dir = make_runs(tmp_path, seeds=(0,))
    build(runs_dir, tmp_path / "profiles", tmp_path / "reports", episodes_dir=tmp_path / "nowhere")
    board = pd.read_csv(tmp_path / "reports" / "leaderboard.csv")
    assert (board.open_episodes == 0).all() and board.open_ci95.isna().all()
    assert "## Closed and open intervals" not in (tmp_path / "reports" / "leaderboard.md").read_text()


def test_one_run_is_one_run_not_one_runs(tmp_path):
    runs_dir = make_runs(tmp_path, algorithms=("protonet",), seeds=(0,), shots=(1,))
    build(runs_dir, tmp_path / "profiles", tmp_path / "reports")
    assert "Generated from 1 run (" in (tmp_path / "reports" / "leaderboard.md").read_text()
    assert "1 runs" not in (tmp_path / "reports" / "leaderboard.html").read_text()


def test_the_html_renders_the_method_text_as_markdown_not_raw_asterisks(tmp_path):
    runs_dir = make_runs(tmp_path, algorithms=("protonet",), seeds=(0,), shots=(1,))
    build(runs_dir, tmp_path / "profiles", tmp_path / "reports")
    page = (tmp_path / "reports" / "leaderboard.html").read_text()
    section = page.split("<h2>How the numbers are computed</h2>")[1].split("<h2>")[0]
    assert "<strong>" in section and "<code>" in section
    assert "**" not in section and "`" not in section


def _main_rows(page: str, heading: str = "## glyphs") -> list[list[str]]:
    main = page.split(heading)[1].split("\n## ")[0]
    return [[cell.strip() for cell in line.split("|")[1:-1]] for line in main.splitlines() if line.startswith("| ")]


def test_main_table_states_its_order_marks_ties_and_gives_each_budget_in_every_format(tmp_path):
    """Issue 30: a reader cannot misread the ranking or miss that budgets differ."""
    runs_dir = make_runs(tmp_path, algorithms=("protonet", "maml", "anil"), seeds=(0,))
    # 1 shot: anil, maml, protonet; 5 shots (shifted here): protonet, maml, anil. All three
    # average 2.0: a tie the table must mark, broken by mean accuracy
    for seed_dir, shift in [(d, 0.3) for d in runs_dir.glob("glyphs-protonet-5w5s-*")] + [
        (d, -0.3) for d in runs_dir.glob("glyphs-anil-5w5s-*")
    ]:
        metrics = json.loads((seed_dir / "metrics.json").read_text())
        table = pd.read_csv(seed_dir / "episodes.csv")
        table["accuracy"] = np.clip(table["accuracy"] + shift, 0, 1).round(4)
        text = table.to_csv(index=False)
        (seed_dir / "episodes.csv").write_text(text)
        mean, half = stats.mean_interval(table["accuracy"].to_numpy())
        metrics.update(accuracy=mean, ci95=half, episodes_csv_sha256=hashlib.sha256(text.encode()).hexdigest())
        (seed_dir / "metrics.json").write_text(json.dumps(metrics))
        RunFolder(seed_dir).seal()
    build(runs_dir, tmp_path / "profiles", tmp_path / "reports")
    markdown = (tmp_path / "reports" / "leaderboard.md").read_text()
    header, *rows = _main_rows(markdown)
    assert header[:3] == ["method", "5-way 1-shot", "5-way 5-shot"]
    column = {name: header.index(name) for name in ("avg. rank", "budget (steps × tasks)", "train s (1-shot / 5-shot)")}
    by_method = {row[0].rstrip(" ‡"): row for row in rows}
    assert [row[column["avg. rank"]] for row in rows] == ["2.0 ="] * 3
    board = pd.read_csv(tmp_path / "reports" / "leaderboard.csv").groupby("algorithm")["accuracy"].mean()
    assert [row[0].rstrip(" ‡") for row in rows] == list(board.sort_values(ascending=False).index)
    assert by_method["maml"][column["budget (steps × tasks)"]] == "400 × 8"  # meta-batch 8
    assert by_method["protonet"][column["budget (steps × tasks)"]] == "300 × 1"
    assert by_method["anil"][column["train s (1-shot / 5-shot)"]] == "12"  # the same in both: one value
    assert "rows are ordered by average rank" in markdown and "= marks an average rank" in markdown

    order = [row[0] for row in rows]
    page = (tmp_path / "reports" / "leaderboard.html").read_text()
    html_main = page.split("<h2>glyphs</h2>")[1].split("</table>")[0]
    assert [name for name in order if name in html_main] == order
    assert html_main.index(order[0]) < html_main.index(order[1]) < html_main.index(order[2])
    assert "budget (steps × tasks)" in html_main and "400 × 8" in html_main
    assert "rows are ordered by average rank" in page
    tex = (tmp_path / "reports" / "leaderboard.tex").read_text()
    assert "400 $\\times$ 8" in tex and tex.index(order[0].split()[0]) < tex.index(order[2].split()[0])


def test_every_mlflow_run_is_a_link_to_its_page_in_the_report(tmp_path):
    """Seed 0 recorded its experiment: the full route, in the UI's model-training view. Seed 1 was
    tracked before records named the experiment: the short route, which MLflow resolves."""
    runs_dir = make_runs(tmp_path, algorithms=("protonet",), seeds=(0, 1), shots=(1,))
    run_id, older = "0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"
    record = {"run_id": run_id, "experiment_id": "7", "tracking_uri": "sqlite:///mlflow.db"}
    (runs_dir / "glyphs-protonet-5w1s-seed0" / "mlflow_run.json").write_text(json.dumps(record))
    (runs_dir / "glyphs-protonet-5w1s-seed1" / "mlflow_run.json").write_text(json.dumps({"run_id": older}))
    build(runs_dir, tmp_path / "profiles", tmp_path / "reports")
    full = f"http://127.0.0.1:5000/#/experiments/7/runs/{run_id}?workflowType=machine_learning"
    page = (tmp_path / "reports" / "leaderboard.html").read_text()
    assert f"<a href='{full}'>01234567</a>" in page
    assert f"<a href='http://127.0.0.1:5000/#/runs/{older}'>fedcba98</a>" in page
    markdown = (tmp_path / "reports" / "leaderboard.md").read_text()
    assert f"[01234567]({full})" in markdown and f"[fedcba98](http://127.0.0.1:5000/#/runs/{older})" in markdown


@pytest.mark.parametrize("seeds", [(0,), (0, 1, 2)], ids=["one_seed", "three_seeds"])
def test_figure_captions_say_what_is_drawn(tmp_path, seeds):
    """One seed: no seed dots and no seeds' interval are promised; the reference is drawn."""
    from PIL import Image

    runs_dir = make_runs(tmp_path, algorithms=("protonet", "maml", "pixelnn"), seeds=seeds)
    build(runs_dir, tmp_path / "profiles", tmp_path / "reports")
    page = (tmp_path / "reports" / "leaderboard.html").read_text()
    captions = page.split("<figcaption>")[1:]
    accuracy, curves = captions[0], captions[2]
    assert "dashed line: pixelnn (reference, not trained)" in accuracy
    if len(seeds) == 1:
        assert "grey dots" not in accuracy and "over the shared test episodes" in accuracy
        assert "band" not in curves and "(one seed)" in curves
    else:
        assert "grey dots are the seeds" in accuracy and "band = range of seeds" in curves
    with Image.open(tmp_path / "reports" / "figures" / "accuracy.png") as image:
        assert image.width > 500


def test_the_cost_figure_labels_every_point_with_no_two_labels_overlapping():
    """On the committed leaderboard's numbers (5-shot scores crowd within half a point): one
    panel per setting and cost axis, every method's name once per panel, no two names overlapping."""
    import matplotlib.pyplot as plt

    from metabench.report.figures import cost_figure

    table = pd.read_csv(ROOT / "reports" / "leaderboard.csv")
    for i, row in table.iterrows():
        profile = ROOT / "profiles" / f"{row['dataset']}-{row['algorithm']}-{row['ways']}w{row['shots']}s.json"
        table.loc[i, "adaptation_tasks_per_second"] = json.loads(profile.read_text())["adaptation_tasks_per_second"]
    fig = cost_figure(table)
    renderer = fig.canvas.get_renderer()
    assert len(fig.axes) == 2 * table["shots"].nunique()
    for ax in fig.axes:
        labels = [text for text in ax.texts if text.get_text() in set(table["algorithm"])]
        setting = table[table["shots"] == int(ax.get_title().split("-way ")[1].split("-shot")[0])]
        assert sorted(text.get_text() for text in labels) == sorted(setting["algorithm"]), ax.get_title()
        boxes = [text.get_window_extent(renderer) for text in labels]
        overlapping = [
            (labels[a].get_text(), labels[b].get_text())
            for a in range(len(boxes))
            for b in range(a + 1, len(boxes))
            if boxes[a].overlaps(boxes[b])
        ]
        assert not overlapping, (ax.get_title(), overlapping)
    plt.close(fig)


def test_the_cost_figure_is_the_same_on_a_slow_machine(monkeypatch):
    """Label placement stops after a number of steps, not after adjustText's default second: a
    machine where each step seems to take a minute draws the same labels."""
    import io
    import itertools

    import adjustText
    import matplotlib.pyplot as plt

    from metabench.report.figures import cost_figure

    table = pd.read_csv(ROOT / "reports" / "leaderboard.csv").assign(adaptation_tasks_per_second=float("nan"))

    def png() -> bytes:
        fig = cost_figure(table)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=60)
        plt.close(fig)
        return buffer.getvalue()

    quick = png()
    clock = itertools.count(step=60.0)
    monkeypatch.setattr(adjustText, "timer", lambda: next(clock))
    assert png() == quick
