"""Reproduction pages (metabench/reproduction.py): written from a real trained and evaluated run."""

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from metabench.cli import app
from metabench.data import store
from metabench.reproduction import still_rising
from metabench.run_folder import RunFolder
from tests.conftest import tiny_split

PROFILE = """run:
  dataset: omniglot-vinyals-rot
  ways: 5
  queries: 5
  val_every: 4
  val_episodes: 10
  test_episodes: 30
algorithms:
  protonet:
    run: {iterations: 20000, train_queries: 5}
    hyper: {hidden: 8, train_ways: 10}
"""


@pytest.fixture
def profile(tmp_path):
    """A paper-style profile over a tiny store named like the Omniglot one (so its paper figure applies)."""
    splits = {"train": tiny_split(12, 20, seed=1), "val": tiny_split(6, 20, seed=2), "test": tiny_split(6, 20, seed=3)}
    store.save(store.Dataset("omniglot-vinyals-rot", splits, {"source": "test"}), tmp_path / "data")
    (tmp_path / "paper.yaml").write_text(PROFILE)
    return tmp_path


def run(*args):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def test_a_page_sets_the_papers_figure_beside_the_run_with_its_budget_curve_and_commands(profile, monkeypatch):
    monkeypatch.chdir(profile)
    monkeypatch.setenv("METABENCH_TRACKING", "off")
    common = ["--params", "paper.yaml", "--algorithm", "protonet", "--data-dir", "data", "--runs-dir", "runs"]
    run("train", *common, "--iterations", "12")
    run("evaluate", *common)
    out = run("reproduction", "--params", "paper.yaml", "--runs-dir", "runs", "--out-dir", "pages")
    page = (profile / "pages" / "protonet.md").read_text()
    assert "pages/protonet.md" in out and (profile / "pages" / "protonet-5w1s.png").stat().st_size > 1000
    assert "| paper (Snell et al. 2017) | 98.80 |" in page
    # like with like: the paper's figure is inductive (prototypical-networks evaluates in eval mode),
    # so the page compares the run's inductive score, and shows the transductive one beside
    assert "60-way training episodes" in page and "; inductive |" in page
    assert "| metabench, this run, inductive | **" in page
    assert "| metabench, the same checkpoint, transductive |" in page and "not compared with the paper" in page
    assert "points**, both inductive. The paper's figure is inductive as its reference code scores" in page
    assert "60-way training episodes" in page  # the paper's protocol, in words
    assert "(95% interval over 30 test episodes, seed 0)" in page
    assert "12 outer steps × 1 task(s)" in page and "20,000 outer steps (0.1% of it trained here)" in page
    assert "| 4 |" in page and "| 12 |" in page  # the validation curve, every validation
    assert "metabench train --params paper.yaml --algorithm protonet --shots 1 --seed 0 --iterations 12" in page
    assert '"train_ways": 10' in page  # the resolved configuration
    index = (profile / "pages" / "README.md").read_text()
    assert "| [protonet](protonet.md) | 98.80 (Snell et al. 2017) |" in index and "| 12 of 20,000 |" in index
    assert " (inductive) |" in index

    # an evaluation from before scoring modes would compare across modes: refused in one line
    run_dir = next((profile / "runs").iterdir())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("modes", "scoring"):
        metrics.pop(key)
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    RunFolder(run_dir).seal()
    result = CliRunner().invoke(
        app, ["reproduction", "--params", "paper.yaml", "--runs-dir", "runs", "--out-dir", "pages"]
    )
    assert result.exit_code != 0
    assert str(result.exception).startswith(f"{run_dir.name} was not scored inductive, the mode of the paper's figure")
    assert "\n" not in str(result.exception) and "metabench evaluate" in str(result.exception)


def test_an_unevaluated_run_or_an_algorithm_without_a_paper_is_refused_in_one_line(profile, monkeypatch):
    monkeypatch.chdir(profile)
    result = CliRunner().invoke(app, ["reproduction", "--params", "paper.yaml", "--runs-dir", "runs"])
    assert "has no test metrics; train and evaluate it first" in str(result.exception)
    result = CliRunner().invoke(app, ["reproduction", "--params", "paper.yaml", "--algorithm", "baseline"])
    assert "no reproduction page for baseline" in str(result.exception)


def test_still_rising_compares_the_last_third_of_the_curve():
    def points(values):
        return pd.DataFrame({"step": range(len(values)), "val_accuracy": values})

    assert still_rising(points([90.0, 95.0, 96.0, 96.5, 97.0, 97.6]))
    assert not still_rising(points([90.0, 95.0, 97.0, 97.1, 97.0, 97.1]))
    assert still_rising(points([90.0, 99.0])) and not still_rising(points([99.0, 99.1]))  # two validations
    assert not still_rising(points([99.0]))  # one validation: nothing to tell
    # a noisy curve: its last value is below the first of its last third, yet the trend rises
    noisy = [88.0, 91.0, 94.0, 93.7, 94.0, 95.5, 94.6, 95.7, 96.3, 95.1, 96.6, 96.8, 97.2, 94.1, 97.3, 96.1, 97.4, 97.4]
    noisy += [97.5, 97.1]
    assert noisy[-1] < noisy[-6] and still_rising(points(noisy))


def test_the_budget_to_close_a_gap_extrapolates_the_last_slope():
    from metabench.reproduction import steps_to_close

    def points(values):
        return pd.DataFrame({"step": [500 * (i + 1) for i in range(len(values))], "val_accuracy": values})

    rising = points([90.0, 93.0, 94.0, 95.0])  # the last third (two validations): 1 point per 500 steps
    assert steps_to_close(rising, -2.5) == 1250
    # six validations: the least-squares slope of the last two (0.5 points per 500 steps)
    assert steps_to_close(points([80.0, 85.0, 88.0, 90.0, 91.5, 92.0]), -1.0) == 1000
    assert steps_to_close(rising, 0.3) is None  # above the paper: nothing to close
    assert steps_to_close(points([90.0, 97.0, 97.1, 97.1]), -2.0) is None  # flat at the end
