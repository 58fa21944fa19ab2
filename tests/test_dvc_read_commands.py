"""DVC's read commands on the committed default pipeline, as a new user runs them in a clone:
nothing fails to load (no profile pipeline is collected until written), `make experiments`
shows every headline metric with its value, `dvc dag` draws one pipeline."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.dvc_tables import make_experiments_args, markdown_rows

ROOT = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).with_name("dvc"))
pytestmark = pytest.mark.slow  # DVC reads the git history (a few seconds per command)


def dvc(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [DVC, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"COLUMNS": "200", "PATH": str(Path(sys.executable).parent)},
    )
    assert done.returncode == 0, done.stderr
    assert "failed to load" not in (done.stdout + done.stderr).lower()
    return done


def test_make_experiments_shows_every_headline_metric_and_the_leaderboard_params():
    header, rows = markdown_rows(dvc(*make_experiments_args()).stdout)
    headline = json.loads((ROOT / "reports" / "summary.json").read_text())
    assert set(headline) <= set(header) and "leaderboard.seeds" in header
    workspace = dict(zip(header, next(row for row in rows if row[0] == "workspace")))
    for name, value in headline.items():
        assert float(workspace[name]) == pytest.approx(value, abs=5e-5), name


def test_metrics_show_and_dag_show_the_default_pipeline_alone():
    metrics = dvc("metrics", "show").stdout
    assert "reports/summary.json" in metrics and "pipelines/" not in metrics
    dag = dvc("dag").stdout
    assert max(len(line) for line in dag.splitlines()) <= 100
    stages = set(re.findall(r"\| ([a-z-]+) \|", dag))
    assert stages == {"check-params", "fetch", "episodes", "grid", "profile", "report"}
