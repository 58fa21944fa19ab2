"""fetch → train → evaluate → predict through the real CLI on the embedded glyphs data."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from metabench.cli import app
from metabench.config import RunConfig
from metabench.runner import evaluate_run, train_run

runner = CliRunner()
QUICK = {"iterations": 24, "val_every": 12, "val_episodes": 20, "test_episodes": 40, "queries": 5}


def run_cli(*args):
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, (result.output, result.exception)
    return result


@pytest.fixture
def workdir(tmp_path, glyphs_dir):
    shutil.copytree(glyphs_dir / "glyphs", tmp_path / "data" / "glyphs")
    (tmp_path / "params.yaml").write_text(
        "run:\n"
        + "".join(f"  {k}: {v}\n" for k, v in QUICK.items())
        + "algorithms:\n  maml:\n    hyper:\n      meta_batch: 2\n      hidden: 16\n"
        + "  protonet:\n    hyper:\n      hidden: 32\n"
    )
    return tmp_path


def cli_in(workdir, *args):
    common = [
        "--params",
        str(workdir / "params.yaml"),
        "--data-dir",
        str(workdir / "data"),
        "--runs-dir",
        str(workdir / "runs"),
    ]
    return run_cli(*args, *common)


@pytest.mark.parametrize("algorithm", ["protonet", "maml"])
def test_train_then_evaluate_writes_metrics_above_chance(workdir, algorithm):
    cli_in(workdir, "train", "--algorithm", algorithm, "--seed", "0")
    cli_in(workdir, "evaluate", "--algorithm", algorithm, "--seed", "0")
    run_dir = workdir / "runs" / f"glyphs-{algorithm}-5w1s-seed0"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    per_episode = np.loadtxt(run_dir / "episodes.csv", delimiter=",", skiprows=1)[:, 1]
    assert metrics["episodes"] == 40 == len(per_episode)
    assert metrics["accuracy"] == pytest.approx(per_episode.mean())
    assert metrics["accuracy"] > 0.35  # chance is 0.2
    # `--ranks auto`: MAML's meta-batch is split over one local rank per core, one thread each
    recorded = json.loads((run_dir / "config.json").read_text())["identity"]
    cores = len(os.sched_getaffinity(0))
    if algorithm == "maml" and cores > 1:
        assert (recorded["ranks"], recorded["threads"]) == (min(cores, 2), max(1, cores // 2))
    else:
        assert "ranks" not in recorded
    assert (run_dir / "checkpoint.pt").is_file() and (run_dir / "train_log.csv").is_file()
    # `metabench summary` tabulates the evaluated run on stdout (it once failed as soon as one existed)
    shown = run_cli("summary", "--runs-dir", str(workdir / "runs")).stdout
    assert f"{100 * metrics['accuracy']:.2f} ± {100 * metrics['ci95']:.2f}" in shown and algorithm in shown
    # both scoring modes of the same checkpoint, the headline's among them
    assert metrics["modes"][metrics["scoring"]]["accuracy"] == metrics["accuracy"]
    for scored in metrics["modes"].values():
        assert f"{100 * scored['accuracy']:.2f} ± {100 * scored['ci95']:.2f}" in shown


def test_same_seed_gives_identical_metrics_and_another_seed_differs(workdir):
    results = []
    for seed, runs in ((0, "a"), (0, "b"), (1, "c")):
        config = RunConfig(
            algorithm="protonet",
            seed=seed,
            data_dir=str(workdir / "data"),
            runs_dir=str(workdir / runs),
            hyper={"hidden": 32},
            **QUICK,
        )
        train_run(config)
        results.append(evaluate_run(config))
    assert results[0] == results[1]
    assert (workdir / "a" / results[0]["run_id"] / "episodes.csv").read_bytes() == (
        workdir / "b" / results[1]["run_id"] / "episodes.csv"
    ).read_bytes()
    assert results[2]["accuracy"] != results[0]["accuracy"]


def test_interrupted_training_resumes_to_the_same_result(workdir, monkeypatch):
    base = dict(algorithm="protonet", seed=3, data_dir=str(workdir / "data"), hyper={"hidden": 32}, **QUICK)
    straight = RunConfig(runs_dir=str(workdir / "straight"), **base)
    train_run(straight)
    expected = evaluate_run(straight)

    resumed = RunConfig(runs_dir=str(workdir / "resumed"), **base)
    from metabench.algorithms.protonet import ProtoNet

    original_step, calls = ProtoNet.meta_train_step, {"n": 0}

    def interrupt_after_17(self, batch):
        calls["n"] += 1
        if calls["n"] == 17:
            raise KeyboardInterrupt
        return original_step(self, batch)

    monkeypatch.setattr(ProtoNet, "meta_train_step", interrupt_after_17)
    with pytest.raises(KeyboardInterrupt):
        train_run(resumed)
    monkeypatch.setattr(ProtoNet, "meta_train_step", original_step)
    train_run(resumed)  # continues from the state saved at iteration 12
    assert evaluate_run(resumed) == expected


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_best_checkpoint(workdir, monkeypatch):
    from metabench import MetabenchError
    from metabench.algorithms.protonet import ProtoNet

    original_step = ProtoNet.meta_train_step

    def nan_after_15(self, batch):
        metrics = original_step(self, batch)
        if self.scheduler.last_epoch > 15:
            metrics["loss"] = float("nan")
        return metrics

    monkeypatch.setattr(ProtoNet, "meta_train_step", nan_after_15)
    config = RunConfig(
        algorithm="protonet",
        data_dir=str(workdir / "data"),
        runs_dir=str(workdir / "runs"),
        hyper={"hidden": 32},
        **QUICK,
    )
    with pytest.raises(MetabenchError, match="lower the learning rate"):
        train_run(config)
    assert (config.run_dir / "checkpoint.pt").is_file()


def test_predict_classifies_a_users_folders_of_any_size_and_mode(workdir, glyphs_dir):
    cli_in(workdir, "train", "--algorithm", "protonet", "--seed", "0")
    from metabench.data import store

    test = store.load("glyphs", glyphs_dir).split("test")
    support, query = workdir / "support", workdir / "query"
    truth = {}
    for way, cls in enumerate([0, 7, 21, 40, 90]):
        name = f"class_{way}"
        (support / name).mkdir(parents=True)
        images = test.images[test.offsets[cls] : test.offsets[cls + 1], :, :, 0]
        Image.fromarray(images[0]).convert("RGB").resize((64, 64)).save(support / name / "shot.jpg")
        for q in range(1, 4):
            filename = f"{name}_q{q}.png"
            Image.fromarray(images[q]).resize((50, 50)).convert("RGBA").save(
                (query.mkdir(exist_ok=True), query / filename)[1]
            )
            truth[filename] = name
    result = run_cli(
        "predict",
        "--checkpoint",
        str(workdir / "runs" / "glyphs-protonet-5w1s-seed0" / "checkpoint.pt"),
        "--support",
        str(support),
        "--query",
        str(query),
    )
    rows = [line.split(",") for line in result.stdout.strip().splitlines()]
    assert rows[0] == ["image", "predicted_class"]
    predictions = dict(rows[1:])
    assert set(predictions) == set(truth)
    # of 15; chance is 3, and 7 or more by chance has probability 0.018 (binomial); a quick-trained
    # model: 8 here with the channels-last body, 9 with the NCHW one
    assert sum(predictions[f] == truth[f] for f in truth) >= 7

    checkpoint = str(workdir / "runs" / "glyphs-protonet-5w1s-seed0" / "checkpoint.pt")
    shown = run_cli(
        "predict", "--checkpoint", checkpoint, "--support", str(support), "--query", str(query), "--probabilities"
    )
    rows = [line.split(",") for line in shown.stdout.strip().splitlines()]
    assert rows[0] == ["image", "predicted_class", *[f"p_class_{way}" for way in range(5)]]
    for row in rows[1:]:
        values = [float(v) for v in row[2:]]
        assert abs(sum(values) - 1) < 1e-4 and row[1] == f"class_{values.index(max(values))}"
        assert predictions[row[0]] == row[1]
    assert "warning" not in shown.stderr  # protonet's own mode is inductive

    # the other scoring mode of the same checkpoint: each set's batch statistics, with the warning
    together = run_cli(
        "predict",
        "--checkpoint",
        checkpoint,
        "--support",
        str(support),
        "--query",
        str(query),
        "--scoring",
        "transductive",
    )
    assert together.stdout.splitlines()[0] == "image,predicted_class" and len(together.stdout.splitlines()) == 16
    assert "scored transductively" in together.stderr and "--scoring inductive" in together.stderr


def test_version_prints_the_package_version_on_stdout():
    from metabench import __version__

    result = run_cli("--version")
    assert result.stdout.strip() == f"metabench {__version__}"


def test_bad_input_gives_a_one_line_error_through_the_real_command(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "metabench",
            "train",
            "--algorithm",
            "protonet",
            "--data-dir",
            str(tmp_path),
        ],  # no params.yaml here: defaults
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert lines == [f"error: dataset 'glyphs' is not in {tmp_path}; run `metabench fetch glyphs` first"]


def test_unknown_hyper_parameter_and_algorithm_are_named(workdir):
    from metabench import MetabenchError

    with pytest.raises(MetabenchError, match="valid: .*inner_lr"):
        runner.invoke(
            app,
            [
                "train",
                "--algorithm",
                "maml",
                "--hp",
                "innr_lr=0.1",
                "--data-dir",
                str(workdir / "data"),
                "--runs-dir",
                str(workdir / "runs"),
                "--params",
                str(workdir / "params.yaml"),
            ],
            catch_exceptions=False,
        )
    with pytest.raises(MetabenchError, match="choose one of .*protonet"):
        runner.invoke(
            app,
            [
                "train",
                "--algorithm",
                "mamll",
                "--data-dir",
                str(workdir / "data"),
                "--params",
                str(workdir / "params.yaml"),
            ],
            catch_exceptions=False,
        )


def test_profile_without_an_algorithm_profiles_the_whole_leaderboard(tmp_path, tiny_dataset, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(
        "leaderboard:\n  algorithms: [protonet, fomaml]\n  shots: [1, 2]\n  seeds: [0]\n"
        "run:\n  dataset: tiny\n  queries: 3\nalgorithms:\n  protonet:\n    hyper: {hidden: 8}\n"
        "  fomaml:\n    hyper: {hidden: 8, meta_batch: 2}\n"
    )
    run_cli("profile", "--params", "params.yaml", "--data-dir", str(tmp_path / "data"))
    assert not (tmp_path / "profiles").exists()  # never over the committed profiles unless asked
    written = sorted(p.name for p in (tmp_path / "runs" / "profiles").iterdir())
    assert written == [
        "tiny-fomaml-5w1s.json",
        "tiny-fomaml-5w2s.json",
        "tiny-protonet-5w1s.json",
        "tiny-protonet-5w2s.json",
    ]
    profile = json.loads((tmp_path / "runs" / "profiles" / "tiny-fomaml-5w2s.json").read_text())
    assert profile["shots"] == 2 and profile["meta_batch"] == 2 and profile["meta_train_tasks_per_second"] > 0
    assert profile["identity"]["behaviour"]["algorithm"]["FOMAML"] == 1
    # a current profile is kept (same identity); --force measures it again
    measured = (tmp_path / "runs" / "profiles" / "tiny-protonet-5w1s.json").read_bytes()
    common = ["profile", "--algorithm", "protonet", "--shots", "1", "--params", "params.yaml"]
    run_cli(*common, "--data-dir", str(tmp_path / "data"))
    assert (tmp_path / "runs" / "profiles" / "tiny-protonet-5w1s.json").read_bytes() == measured
    run_cli(*common, "--data-dir", str(tmp_path / "data"), "--force")
    assert (tmp_path / "runs" / "profiles" / "tiny-protonet-5w1s.json").read_bytes() != measured
    result = runner.invoke(app, ["profile", "--params", "params.yaml", "--out", "x.json"])
    assert result.exit_code != 0 and "--out needs --algorithm" in str(result.exception)


def test_help_is_also_dash_h_and_names_where_each_default_comes_from():
    long, short = run_cli("train", "--help"), run_cli("train", "-h")
    assert long.stdout == short.stdout
    text = " ".join(long.stdout.replace("│", " ").split())
    assert (
        "Support images per class. (default: algorithms.ALGORITHM.run.shots, else run.shots of params.yaml, else 1)"
        in text
    )


def test_an_unknown_source_is_refused_before_any_progress_bar(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "metabench", "fetch", "omniglott", "--data-dir", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: unknown dataset source 'omniglott'; choose one of glyphs")
    assert "fetch omniglott:" not in result.stderr and not (tmp_path / "data").exists()  # no bar, nothing written


def test_progress_reports_training_each_validation_and_evaluation_with_totals(workdir):
    config = RunConfig(algorithm="protonet", data_dir=str(workdir / "data"), runs_dir=str(workdir / "runs"), **QUICK)
    seen = []
    train_run(config, lambda *report: seen.append(report))
    evaluate_run(config, lambda *report: seen.append(report))
    validations = [done for phase, done, total in seen if phase == "validate" and total == config.val_episodes]
    assert validations.count(config.val_episodes) == config.iterations // config.val_every  # each one completes
    assert ("train", config.iterations, config.iterations) in seen
    # protonet: one pass per scoring mode (the embedding cache, then each episode's batch statistics)
    evaluated = [report for report in seen if report[0].startswith("evaluate")]
    assert [report for report in evaluated if report[1] == config.test_episodes] == [
        ("evaluate inductive", config.test_episodes, config.test_episodes),
        ("evaluate transductive", config.test_episodes, config.test_episodes),
    ]


def test_an_error_prints_its_text_verbatim_brackets_included(tmp_path):
    missing = tmp_path / "runs[old]"  # rich would read "[old]" as markup and drop it
    result = subprocess.run(
        [sys.executable, "-m", "metabench", "summary", "--runs-dir", str(missing)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert f"no evaluated runs in {missing}" in result.stderr.replace("\n", "")
