"""Every profile under pipelines/ resolves: each listed run's settings and hyper-parameters validate and its
algorithm builds for the profile's image shape (a dry run of every run a profile would start)."""

from pathlib import Path

import pytest
import torch
import yaml

from metabench.algorithms import TaskShape, build_algorithm
from metabench.cli import _run_config

ROOT = Path(__file__).resolve().parents[1]
PROFILES = sorted((ROOT / "pipelines").glob("*/params.yaml")) + [ROOT / "params.yaml"]
SHAPES = {"glyphs": (1, 28), "omniglot": (1, 28), "miniimagenet": (3, 84), "cifar-fs": (3, 32), "fc100": (3, 32)}


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.parent.name)
def test_every_run_of_the_profile_validates_and_builds(path):
    params = yaml.safe_load(path.read_text())
    board = params.get("leaderboard") or {"algorithms": list(params["algorithms"]), "shots": [1]}
    for algorithm in board["algorithms"]:
        for shots in board["shots"]:
            config = _run_config(path, {"algorithm": algorithm, "shots": shots}, [])
            channels, size = SHAPES[config.dataset.split("-vinyals")[0].split("-rot")[0]]
            hyper = dict(config.hyper, hidden=4)  # build small: the check is that settings validate
            train_ways = hyper.get("train_ways") or config.ways
            task = TaskShape(channels, size, train_ways, config.ways, train_classes=64)
            build_algorithm(algorithm, hyper, task, torch.device("cpu"))
            assert config.iterations >= 1 and config.test_episodes >= 600
