"""docs/evaluation.md's per-episode format, as a researcher outside metabench reads it: the
documented example runs on two evaluated runs, its digest recipe gives the episodes_sha256 that
metabench records, and its images and labels are the episodes metabench scores."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from metabench.cli import app
from metabench.data import store
from metabench.episodes import EpisodeIndices, ImageBank

ROOT = Path(__file__).resolve().parents[1]
PARAMS = (
    "run:\n  iterations: 4\n  val_every: 2\n  val_episodes: 4\n  test_episodes: 20\n  queries: 5\n"
    "algorithms:\n  protonet:\n    hyper:\n      hidden: 8\n  maml:\n    hyper:\n      hidden: 8\n      meta_batch: 2\n"
)


def documented_example() -> str:
    section = (ROOT / "docs" / "evaluation.md").read_text().split("## Per-episode results", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def project(tmp_path_factory, glyphs_dir) -> Path:
    """A project root with two evaluated runs on the same fixed episodes (MLflow off: not the subject)."""
    root = tmp_path_factory.mktemp("project")
    shutil.copytree(glyphs_dir / "glyphs", root / "data" / "glyphs")
    (root / "params.yaml").write_text(PARAMS)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("METABENCH_TRACKING", "off")
        for algorithm in ("protonet", "maml"):
            options = ["--params", str(root / "params.yaml"), "--data-dir", str(root / "data")]
            options += ["--runs-dir", str(root / "runs"), "--ranks", "1"]
            result = CliRunner().invoke(app, ["train", "--algorithm", algorithm, "--evaluate", *options])
            assert result.exit_code == 0, (result.output, result.exception)
    return root


def test_the_documented_example_pairs_two_runs_on_their_shared_episodes(project):
    script = project / "pair.py"
    script.write_text(documented_example())
    done = subprocess.run([sys.executable, str(script)], cwd=project, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr  # the example asserts the digest itself
    line = re.fullmatch(r"([+-]\d+\.\d\d) points over (\d+) episodes, p = (\S+)\n", done.stdout)
    assert line and int(line.group(2)) == 20, done.stdout
    runs = {name: project / "runs" / f"glyphs-{name}-5w1s-seed0" for name in ("protonet", "maml")}
    accuracies = {name: np.loadtxt(run / "episodes.csv", delimiter=",", skiprows=1)[:, 1] for name, run in runs.items()}
    assert float(line.group(1)) == pytest.approx(100 * (accuracies["protonet"] - accuracies["maml"]).mean(), abs=0.005)


def test_the_documented_layout_is_the_episodes_metabench_scores(project):
    (path,) = (project / "data" / "episodes").glob("glyphs-test-*_5w1s5q_n20_seed0.npz")
    with np.load(path) as saved:
        support, query, classes = saved["support"], saved["query"], saved["classes"]
    images = np.load(project / "data" / "glyphs" / "test.images.npy")
    offsets = np.load(project / "data" / "glyphs" / "test.offsets.npy")
    # every image of way w is of class classes[e, w]: offsets bound each class's images
    for indices in (support, query):
        assert (offsets[classes][..., None] <= indices).all() and (indices < offsets[classes + 1][..., None]).all()
    # what the example reads is what metabench's evaluator feeds the network, label w for way w
    episode = ImageBank(store.load("glyphs", project / "data").split("test")).episodes(
        EpisodeIndices(support, query, classes)[0:1]
    )
    ways, shots = support.shape[1:]
    by_hand = torch.from_numpy(images[support[0]].reshape(ways * shots, 28, 28, 1)).permute(0, 3, 1, 2) / 255.0
    assert torch.equal(episode.support_x[0], by_hand)
    assert episode.query_x.shape[1] == query.shape[1] * query.shape[2]
    assert episode.support_y[0].tolist() == [w for w in range(ways) for _ in range(shots)]
    recorded = json.loads((project / "runs" / "glyphs-maml-5w1s-seed0" / "metrics.json").read_text())
    assert recorded["episodes_sha256"] == EpisodeIndices(support, query, classes).digest()
