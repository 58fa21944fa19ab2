"""The command line's smaller traps: each mistake a researcher makes is one line that says what
to do, and the help reads as rendered text."""

import shutil

import pytest
from typer.testing import CliRunner

from metabench import MetabenchError
from metabench.cli import app

runner = CliRunner()


@pytest.fixture
def work(tmp_path, glyphs_dir):
    shutil.copytree(glyphs_dir / "glyphs", tmp_path / "data" / "glyphs")
    (tmp_path / "params.yaml").write_text("run:\n  iterations: 2\n  val_every: 1\n  val_episodes: 2\n")
    return tmp_path


def invoke(work, *args):
    common = ["--params", str(work / "params.yaml"), "--data-dir", str(work / "data"), "--runs-dir", str(work / "runs")]
    return runner.invoke(app, [*args, *common])


def refused(result, *fragments):
    assert result.exit_code != 0 and isinstance(result.exception, MetabenchError), (result.output, result.exception)
    message = str(result.exception)
    assert "\n" not in message and all(fragment in message for fragment in fragments), message
    return message


def test_train_without_an_algorithm_asks_for_one_instead_of_training_protonet(work):
    refused(invoke(work, "train"), "pass --algorithm", "protonet", "maml")
    assert not (work / "runs").exists()


def test_an_unknown_dataset_names_real_sources_not_a_misspelt_one(work):
    message = refused(invoke(work, "train", "--algorithm", "protonet", "--dataset", "glyph"), "glyphs, omniglot")
    assert "fetch glyph`" not in message
    message = refused(invoke(work, "train", "--algorithm", "protonet", "--dataset", "imagenet"), "miniimagenet")
    assert "fetch imagenet`" not in message


def test_a_yaml_error_gives_its_line_and_column(work):
    (work / "params.yaml").write_text("run:\n  iterations: 2\n   ways: [5\n")
    refused(invoke(work, "train", "--algorithm", "protonet"), "params.yaml", "line 3")


def test_a_type_error_names_the_file_and_the_algorithm(work):
    (work / "params.yaml").write_text("algorithms:\n  maml:\n    run:\n      ways: five\n")
    refused(invoke(work, "train", "--algorithm", "protonet"), "params.yaml", "maml", "ways must be int")


def test_a_refused_train_leaves_no_empty_run_folder(work):
    (work / "params.yaml").write_text("run:\n  iterations: 2\n  ways: 400\n")  # more ways than glyphs' classes
    refused(invoke(work, "train", "--algorithm", "protonet"))
    assert not (work / "runs").exists() or not any((work / "runs").iterdir())


def test_help_is_rendered_text_without_markup_or_swallowed_placeholders():
    for command in ([], ["train"], ["evaluate"], ["grid"], ["report"]):
        text = runner.invoke(app, [*command, "--help"], terminal_width=200).output
        assert "``" not in text and "algorithms..run" not in text, text
        assert "<bool>" not in text, "a flag takes no value: its help shows no type"
    train = runner.invoke(app, ["train", "--help"], terminal_width=200).output
    assert "algorithms.ALGORITHM.run.shots" in train
    assert "<int>" in train or "<str>" in train  # options that take a value still show its type


def test_the_mlflow_model_module_prints_no_type_hint_request():
    """MLflow's request for type hints on predict (with raw ANSI escapes) used to print twice per
    tracked run; the model's signature is explicit, so metabench drops it where it arises."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-W", "default", "-c", "import metabench.mlflow_model"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "Add type hints" not in done.stderr and "\x1b[" not in done.stderr
