"""A tiny profile through the real `dvc repro` in a temporary git repository."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.dvc_tables import make_experiments_args, markdown_rows

pytestmark = pytest.mark.slow  # real `dvc repro` in a temporary repository

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "leaderboard": {"algorithms": ["protonet", "fomaml"], "shots": [1], "seeds": [0], "references": ["pixelnn"]},
    "data": {"glyphs": {"seed": 0, "max_classes_per_alphabet": 10}},
    "run": {
        "dataset": "glyphs",
        "ways": 5,
        "shots": 1,
        "queries": 5,
        "val_every": 5,
        "val_episodes": 10,
        "test_episodes": 30,
        "episode_seed": 0,
        "device": "cpu",
    },
    "algorithms": {
        "protonet": {"run": {"iterations": 10}, "hyper": {"hidden": 16}},
        "fomaml": {"run": {"iterations": 10, "train_queries": 1}, "hyper": {"hidden": 16, "meta_batch": 2}},
    },
}


def sh(repo: Path, *command: str, stdout_only: bool = False) -> str:
    # the repository's own copy of metabench runs (an edit to it is what a stage must see), not the installed one
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONPATH": str(repo)}
    result = subprocess.run(command, cwd=repo, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout if stdout_only else result.stdout + result.stderr


def sh_json(repo: Path, *command: str):
    return json.loads(sh(repo, *command, stdout_only=True))


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("pipeline")
    shutil.copytree(ROOT / "metabench", repo / "metabench", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "params.yaml").write_text(yaml.safe_dump(TINY))
    sh(repo, "metabench", "pipeline")  # the real dvc.yaml for this params.yaml, from the one template
    sh(repo, "git", "init", "-q")
    sh(repo, "dvc", "init", "-q")
    sh(repo, "dvc", "config", "core.analytics", "false")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny")
    return repo


def test_repro_builds_a_report_whose_numbers_equal_the_episode_files(repo):
    output = sh(repo, "dvc", "repro")
    assert "Running stage 'report'" in output and "Running stage 'grid'" in output
    assert _ran(repo) == {"glyphs-protonet-5w1s-seed0", "glyphs-fomaml-5w1s-seed0", "glyphs-pixelnn-5w1s-seed0"}
    summary = json.loads((repo / "reports" / "summary.json").read_text())
    markdown = (repo / "reports" / "leaderboard.md").read_text()
    for algorithm in ("protonet", "fomaml"):
        episodes = pd.read_csv(repo / "runs" / f"glyphs-{algorithm}-5w1s-seed0" / "episodes.csv")["accuracy"]
        assert len(episodes) == 30
        assert summary[f"{algorithm}_5w1s"] == pytest.approx(episodes.mean(), abs=1e-6)
        assert f"{100 * episodes.mean():.2f}" in markdown
    assert (repo / "reports" / "leaderboard.html").is_file()
    assert (repo / "profiles" / "glyphs-fomaml-5w1s.json").is_file() and (
        repo / "profiles" / "glyphs-protonet-5w1s.json"
    ).is_file()
    # the reference method is a run of its own, on the episodes stage's episodes, reported beside the ranking
    reference = json.loads((repo / "runs" / "glyphs-pixelnn-5w1s-seed0" / "metrics.json").read_text())
    protonet = json.loads((repo / "runs" / "glyphs-protonet-5w1s-seed0" / "metrics.json").read_text())
    assert reference["episodes"] == 30 and reference["episodes_sha256"] == protonet["episodes_sha256"]
    assert "## Reference methods on the same episodes" in markdown and "pixelnn" in markdown
    assert "Running stage 'episodes'" in output and list((repo / "data" / "episodes").glob("*.npz"))
    shown = sh(repo, "dvc", "metrics", "show", "--json")
    assert "fomaml_5w1s" in shown


def test_second_repro_does_nothing(repo):
    output = sh(repo, "dvc", "repro")
    assert "Running stage" not in output


def _ran(repo: Path) -> set[str]:
    """The runs the last `metabench grid` trained or evaluated (the others it kept)."""
    record = json.loads((repo / "grid.json").read_text())
    return {run["run_id"] for run in record["runs"] if run["ran"]}


def test_changing_one_algorithm_reruns_only_its_runs(repo):
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline results")
    output = sh(repo, "dvc", "exp", "run", "-S", "algorithms.fomaml.hyper.meta_batch=3")
    assert "Running stage 'grid'" in output and "Running stage 'profile'" in output
    assert _ran(repo) == {"glyphs-fomaml-5w1s-seed0"}  # protonet and the reference were kept
    assert output.count("WARNING") < 5, output  # no warning per output of other stages


def _errors(tree):
    """Every non-null ``error`` field in DVC's JSON output."""
    if isinstance(tree, dict):
        if tree.get("error"):
            yield tree["error"]
        for value in tree.values():
            yield from _errors(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _errors(value)


def test_dvc_reads_the_pipeline_from_committed_revisions(repo):
    # these commands load dvc.yaml from git revisions: they failed while pipelines were symlinks
    shown = sh_json(repo, "dvc", "exp", "show", "--json")
    assert "fomaml_5w1s" in json.dumps(shown)
    assert not list(_errors(shown)), "DVC could not read a revision's pipeline"
    experiments = [e for row in shown for e in (row.get("experiments") or [])]
    assert experiments, "the experiment of the previous test is listed"
    params = sh_json(repo, "dvc", "params", "diff", "HEAD", "--json")
    change = params["params.yaml"]["algorithms.fomaml.hyper.meta_batch"]
    assert (change["old"], change["new"]) == (2, 3)
    sh_json(repo, "dvc", "metrics", "diff", "HEAD", "--json")  # loads HEAD's metrics without error


def test_make_experiments_shows_the_headline_metrics_and_the_param_the_experiment_changed(repo):
    header, rows = markdown_rows(sh(repo, "dvc", *make_experiments_args(), stdout_only=True))
    assert {"protonet_5w1s", "fomaml_5w1s", "leaderboard.seeds"} <= set(header)
    assert "algorithms.fomaml.hyper.meta_batch" in header  # what the experiment of the test above changed
    assert "run.queries" not in header and "algorithms.protonet.hyper.hidden" not in header  # unchanged
    batches = {row[0]: row[header.index("algorithms.fomaml.hyper.meta_batch")] for row in rows}
    assert batches["workspace"] == "3" and "2" in batches.values(), batches


def _stages_run(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def test_docstrings_and_comments_in_the_shared_code_retrain_nothing(repo):
    sh(repo, "dvc", "repro")  # the workspace as the experiment left it, up to date
    for name in ("algorithms/base.py", "runner.py", "models/conv4.py"):
        module = repo / "metabench" / name
        text = module.read_text()
        start = text.index('"""') + 3  # the module docstring's first words
        module.write_text(text[:start] + "Edited. " + text[start:] + "# a comment\n")
    output = sh(repo, "dvc", "repro")
    assert not {"grid", "profile", "episodes"} & _stages_run(output), output
    assert "Running stage 'grid'" not in output
    status = sh(repo, "dvc", "status")
    assert "changed" not in status, status


def test_a_version_bump_retrains_only_that_algorithm_and_its_subclasses(repo):
    sh(repo, "dvc", "repro")
    profile = repo / "profiles" / "glyphs-protonet-5w1s.json"
    measured = profile.read_bytes()
    module = repo / "metabench" / "algorithms" / "maml.py"  # FOMAML subclasses MAML; ProtoNet does not
    text = module.read_text()
    assert "    version = 1\n" in text
    module.write_text(text.replace("    version = 1\n", "    version = 2\n", 1))
    refused = subprocess.run(
        ["metabench", "grid"],
        cwd=repo,
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONPATH": str(repo)},
    )
    assert refused.returncode != 0 and "metabench pipeline" in refused.stderr  # behaviour.json is stale
    sh(repo, "metabench", "pipeline")  # writes behaviour.json with MAML at 2
    output = sh(repo, "dvc", "repro")
    assert {"grid", "profile"} <= _stages_run(output) and "fetch" not in _stages_run(output)
    assert _ran(repo) == {"glyphs-fomaml-5w1s-seed0"}
    identity = json.loads((repo / "runs" / "glyphs-fomaml-5w1s-seed0" / "config.json").read_text())["identity"]
    assert identity["behaviour"]["algorithm"] == {"FOMAML": 1, "MAML": 2, "Algorithm": 1}
    assert profile.read_bytes() == measured  # ProtoNet's profile is current: kept, not measured again
    fomaml = json.loads((repo / "profiles" / "glyphs-fomaml-5w1s.json").read_text())
    assert fomaml["identity"]["behaviour"]["algorithm"]["MAML"] == 2


def test_dvc_plots_show_draws_the_learning_curves_and_accuracy_against_cost(repo):
    plots = sh_json(repo, "dvc", "plots", "show", "--json")["data"]
    curves = plots["learning curves 5-way 1-shot"][0]["content"]["data"]["values"]
    assert {row["filename"] for row in curves} == {"protonet.csv", "fomaml.csv"}  # one series per algorithm
    assert {int(row["iteration"]) for row in curves} == {5, 10}  # every validation of the 10 iterations
    cost = plots["accuracy vs training time 5-way 1-shot"][0]["content"]["data"]["values"]
    summary = json.loads((repo / "reports" / "summary.json").read_text())
    assert {row["algorithm"]: pytest.approx(float(row["accuracy"]), abs=1e-5) for row in cost} == {
        "protonet": summary["protonet_5w1s"],
        "fomaml": summary["fomaml_5w1s"],
    }
    assert plots["reports/figures/learning_curves.png"][0]["type"] == "image"


def test_exp_show_gives_the_headline_metrics_and_the_params_that_changed(repo):
    shown = sh_json(repo, "dvc", "exp", "show", "--json", "--only-changed")
    experiment = next(e for row in shown for e in (row.get("experiments") or []))
    data = experiment["revs"][0]["data"]
    metrics = data["metrics"]["reports/summary.json"]["data"]
    assert set(metrics) == {"protonet_5w1s", "fomaml_5w1s"}
    assert data["params"]["params.yaml"]["data"]["algorithms"]["fomaml"]["hyper"]["meta_batch"] == 3


def test_a_colleague_pulls_data_and_runs_and_reproduces_the_report_without_training(repo, tmp_path):
    remote = tmp_path / "remote"
    sh(repo, "dvc", "repro")
    sh(repo, "dvc", "remote", "add", "-d", "shared", str(remote))
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "results and remote")
    sh(repo, "dvc", "push")
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    assert not (clone / "runs").exists() and not (clone / "data" / "glyphs").exists()  # git holds neither
    sh(clone, "dvc", "pull")
    for run_id in ("glyphs-protonet-5w1s-seed0", "glyphs-fomaml-5w1s-seed0"):
        assert (clone / "runs" / run_id / "episodes.csv").read_bytes() == (
            repo / "runs" / run_id / "episodes.csv"
        ).read_bytes()
    status = sh_json(clone, "dvc", "status", "--json")
    assert status == {}, status  # nothing to re-run: the pulled runs are the pipeline's outputs
    before = (clone / "reports" / "summary.json").read_text()
    output = sh(clone, "dvc", "repro", "--force", "--single-item", "report")  # the report alone, from the pulled runs
    assert "Running stage 'grid'" not in output
    assert (clone / "reports" / "summary.json").read_text() == before
