"""Reference methods (pixel nearest neighbour) are registered methods with run outputs of their
own, scored on the pipeline's fixed episodes; the report reads them and never the data store."""

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from metabench.algorithms import TaskShape, build_algorithm
from metabench.board import leaderboard_runs
from metabench.cli import app
from metabench.episodes import EpisodeSpec, ImageBank, sample_indices
from metabench.evaluation import episode_accuracies

runner = CliRunner()


def nearest_neighbour_float64(bank: ImageBank, episodes) -> np.ndarray:
    """Independent computation: brute-force 1-NN in float64 numpy, one query at a time."""
    accuracies = []
    for e in range(len(episodes)):
        support = bank.batch(episodes.support[e].reshape(-1)).double().flatten(1).numpy()
        labels = np.repeat(np.arange(episodes.support.shape[1]), episodes.support.shape[2])
        correct = 0
        for way, query_row in enumerate(episodes.query[e]):
            for index in query_row:
                image = bank.batch(np.array([index])).double().flatten(1).numpy()[0]
                distances = np.sqrt(((support - image) ** 2).sum(1))
                correct += labels[np.argmin(distances)] == way
        accuracies.append(correct / episodes.query[e].size)
    return np.array(accuracies)


@pytest.mark.parametrize("shots", [1, 3])
def test_pixelnn_equals_brute_force_nearest_neighbour(tiny_dataset, shots):
    dataset, _ = tiny_dataset
    test = dataset.split("test")
    episodes = sample_indices(test, EpisodeSpec(4, shots, 3), 12, np.random.default_rng(shots))
    pixelnn = build_algorithm("pixelnn", {}, TaskShape(1, 28, 4, 4), torch.device("cpu"))
    bank = ImageBank(test)
    expected = nearest_neighbour_float64(bank, episodes)
    np.testing.assert_array_equal(episode_accuracies(pixelnn, bank, episodes), expected)  # the cached path
    np.testing.assert_array_equal(episode_accuracies(pixelnn, bank, episodes, cached=False), expected)


def test_reference_is_evaluated_never_trained(tmp_path, glyphs_dir):
    shutil.copytree(glyphs_dir / "glyphs", tmp_path / "data" / "glyphs")
    (tmp_path / "params.yaml").write_text("run:\n  test_episodes: 40\n  queries: 5\n")
    common = ["--params", str(tmp_path / "params.yaml"), "--data-dir", str(tmp_path / "data")]
    common += ["--runs-dir", str(tmp_path / "runs")]
    trained = runner.invoke(app, ["train", "--algorithm", "pixelnn", *common])
    assert trained.exit_code != 0 and "nothing to train" in str(trained.exception)
    result = runner.invoke(app, ["evaluate", "--algorithm", "pixelnn", *common])
    assert result.exit_code == 0, (result.output, result.exception)
    run_dir = tmp_path / "runs" / "glyphs-pixelnn-5w1s-seed0"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    per_episode = np.loadtxt(run_dir / "episodes.csv", delimiter=",", skiprows=1)[:, 1]
    assert metrics["episodes"] == 40 == len(per_episode) and metrics["accuracy"] == pytest.approx(per_episode.mean())
    assert (
        metrics["best_iteration"] is None
        and json.loads((run_dir / "config.json").read_text())["algorithm"] == "pixelnn"
    )


def test_leaderboard_scores_references_once_per_setting_and_keeps_them_out_of_the_algorithms():
    board = {"algorithms": ["protonet"], "shots": [1, 5], "seeds": [0, 1], "references": ["pixelnn"]}
    runs = [config.run_id for config in leaderboard_runs({"leaderboard": board})]
    assert runs[-2:] == ["glyphs-pixelnn-5w1s-seed0", "glyphs-pixelnn-5w5s-seed0"] and len(runs) == 6
    with pytest.raises(Exception, match="move them to leaderboard.references"):
        leaderboard_runs({"leaderboard": {**board, "algorithms": ["protonet", "pixelnn"]}})
    with pytest.raises(Exception, match="move them to leaderboard.algorithms"):
        leaderboard_runs({"leaderboard": {**board, "references": ["protonet"]}})


def test_episodes_command_makes_the_sets_train_and_evaluate_then_read(tmp_path, glyphs_dir):
    shutil.copytree(glyphs_dir / "glyphs", tmp_path / "data" / "glyphs")
    (tmp_path / "params.yaml").write_text(
        "leaderboard:\n  algorithms: [protonet]\n  shots: [1, 5]\n  seeds: [0]\n  references: [pixelnn]\n"
        "run:\n  test_episodes: 30\n  val_episodes: 10\n  queries: 5\n"
    )
    episodes_dir = tmp_path / "episodes"
    common = ["--params", str(tmp_path / "params.yaml"), "--data-dir", str(tmp_path / "data")]
    result = runner.invoke(app, ["episodes", *common, "--episodes-dir", str(episodes_dir)])
    assert result.exit_code == 0, (result.output, result.exception)
    made = sorted(p.name for p in episodes_dir.glob("*.npz"))
    assert len(made) == 4  # val and test for each of the two shots; references add no other setting
    stamps = {p: p.stat().st_mtime_ns for p in episodes_dir.glob("*.npz")}
    evaluated = runner.invoke(
        app,
        [
            "evaluate",
            "--algorithm",
            "pixelnn",
            *common,
            "--runs-dir",
            str(tmp_path / "runs"),
            "--episodes-dir",
            str(episodes_dir),
        ],
    )
    assert evaluated.exit_code == 0, (evaluated.output, evaluated.exception)
    assert {p: p.stat().st_mtime_ns for p in episodes_dir.glob("*.npz")} == stamps  # read, not remade
    assert not (tmp_path / "data" / "episodes").exists()  # nothing written beside the data instead
