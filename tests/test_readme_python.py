"""README's "From Python" block runs as it stands, from a project root after `metabench fetch glyphs`."""

from __future__ import annotations

import importlib
import pkgutil
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import metabench

ROOT = Path(__file__).resolve().parent.parent


def readme_python_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("### From Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_from_python_block_runs(tmp_path, glyphs_dir):
    shutil.copytree(glyphs_dir / "glyphs", tmp_path / "data" / "glyphs")
    shutil.copy(ROOT / "params.yaml", tmp_path)
    (tmp_path / "reports").mkdir()
    shutil.copy(ROOT / "reports" / "leaderboard.csv", tmp_path / "reports")
    script = tmp_path / "example.py"
    script.write_text(readme_python_block())
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr
    accuracy = re.search(r"glyphs-protonet-5w1s-seed7: ([\d.]+) ± ([\d.]+) %", done.stdout)
    assert accuracy and 50 < float(accuracy.group(1)) <= 100, done.stdout
    assert re.search(r"\[[0-4]( [0-4]){4}\]", done.stdout)  # five predicted labels
    assert "protonet" in done.stdout  # the leaderboard rows
    # outside the pipeline's outputs (runs/), under a name of its own
    assert list((tmp_path / "examples" / "runs").glob("glyphs-protonet-5w1s-seed7/checkpoint.pt"))
    assert not (tmp_path / "runs").exists()


def test_the_api_is_what_the_package_exports():
    # importing a submodule sets the package attribute of its name: none may be named like an API call
    for module in pkgutil.walk_packages(metabench.__path__, "metabench."):
        if not module.name.endswith("__main__"):  # that one runs the command line
            importlib.import_module(module.name)
    for name in ("train", "evaluate", "predict", "load_leaderboard", "fetch", "run_config"):
        assert callable(getattr(metabench, name)) and getattr(metabench, name).__doc__
    with pytest.raises(AttributeError):
        metabench.no_such_call  # noqa: B018


def test_run_config_layers_params_and_refuses_unknown_settings(tmp_path):
    config = metabench.run_config("maml", params=ROOT / "params.yaml", shots=5)
    assert (config.shots, config.iterations, config.hyper["inner_lr"]) == (5, 400, 0.4)
    assert config.run_id == "glyphs-maml-5w5s-seed0"  # the params' own run: no variant
    changed = metabench.run_config("maml", params=ROOT / "params.yaml", hyper={"inner_lr": 0.1})
    assert changed.variant and changed.run_id.startswith("glyphs-maml-5w1s-seed0-")
    with pytest.raises(metabench.MetabenchError, match="unknown run setting shot; valid: .*shots"):
        metabench.run_config("maml", shot=5)


def test_load_leaderboard_checks_the_file(tmp_path):
    board = metabench.load_leaderboard(ROOT / "reports" / "leaderboard.csv")
    assert set(board["algorithm"]) >= {"protonet", "maml"} and board["accuracy"].between(0, 1).all()
    with pytest.raises(metabench.MetabenchError, match="does not exist; run `dvc repro`"):
        metabench.load_leaderboard(tmp_path / "missing.csv")
    other = tmp_path / "other.csv"
    pd.DataFrame({"algorithm": ["x"], "accuracy": [0.5]}).to_csv(other, index=False)
    with pytest.raises(metabench.MetabenchError, match="lacks columns dataset"):
        metabench.load_leaderboard(other)
    wrong = tmp_path / "wrong.csv"
    board.assign(accuracy=board["accuracy"] * 100).to_csv(wrong, index=False)  # percentages, not fractions
    with pytest.raises(metabench.MetabenchError, match="outside"):
        metabench.load_leaderboard(wrong)
