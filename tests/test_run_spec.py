"""One resolved run spec: layering, run identity that never overwrites other work, strict settings."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from metabench import MetabenchError
from metabench.board import leaderboard_runs
from metabench.cli import app
from metabench.config import RunConfig, load_params, parse_value, resolve_run

QUICK = {"iterations": 6, "val_every": 3, "val_episodes": 10, "test_episodes": 20, "queries": 5}
PARAMS = {
    "run": {"dataset": "glyphs", **QUICK},
    "leaderboard": {"algorithms": ["protonet", "maml"], "shots": [1, 5], "seeds": [0, 1]},
    "algorithms": {"protonet": {"run": {"train_queries": 5}, "hyper": {"hidden": 8, "train_ways": 10}}},
}


def test_layers_apply_in_order_defaults_run_algorithm_then_command_line():
    config = resolve_run(PARAMS, {"algorithm": "protonet", "shots": 5}, {"iterations": 9}, {"lr": 0.01})
    assert (config.queries, config.train_queries, config.shots, config.iterations) == (5, 5, 5, 9)
    assert config.hyper == {"hidden": 8, "train_ways": 10, "lr": 0.01}
    assert config.val_every == 3 and config.episode_seed == RunConfig.episode_seed


def test_the_default_settings_keep_the_readable_id_and_overrides_get_their_own_folder():
    default = resolve_run(PARAMS, {"algorithm": "protonet", "seed": 1})
    assert default.run_id == "glyphs-protonet-5w1s-seed1" and default.variant == ""
    tuned = resolve_run(PARAMS, {"algorithm": "protonet", "seed": 1}, hyper_overrides={"lr": 0.01})
    other = resolve_run(PARAMS, {"algorithm": "protonet", "seed": 1}, hyper_overrides={"lr": 0.02})
    queries = resolve_run(PARAMS, {"algorithm": "protonet", "seed": 1}, {"train_queries": 1})
    ids = {default.run_id, tuned.run_id, other.run_id, queries.run_id}
    assert len(ids) == 4 and all(i.startswith("glyphs-protonet-5w1s-seed1") for i in ids)
    # the same override names the same folder (resume works), for every seed alike
    again = resolve_run(PARAMS, {"algorithm": "protonet", "seed": 1}, hyper_overrides={"lr": 0.01})
    assert again.run_id == tuned.run_id and tuned.run_dir != default.run_dir
    # an override equal to the params' value is the default run, not a variant
    assert resolve_run(PARAMS, {"algorithm": "protonet"}, hyper_overrides={"hidden": 8}).variant == ""
    # how long and where a run trains is not what it is: a longer budget extends the same run
    longer = resolve_run(PARAMS, {"algorithm": "protonet", "seed": 1, "device": "cpu"}, {"iterations": 60})
    assert longer.run_id == default.run_id
    assert tuned.profile_path() != default.profile_path()


def test_leaderboard_lists_exactly_its_runs():
    ids = [c.run_id for c in leaderboard_runs(PARAMS)]
    assert ids == [f"glyphs-{a}-5w{k}s-seed{s}" for a in ("protonet", "maml") for k in (1, 5) for s in (0, 1)]


@pytest.mark.parametrize(
    "setting, value, message",
    [
        ("iterations", "ten", "iterations must be int"),
        ("ways", 5.5, "ways must be int"),
        ("ways", True, "ways must be int"),
        ("ways", 1, "ways must be at least 2"),
        ("seed", -1, "seed must be at least 0"),
        ("dataset", 3, "dataset must be str"),
        ("hyper", [1, 2], "hyper must be dict"),
    ],
)
def test_every_setting_is_type_and_range_checked(setting, value, message):
    with pytest.raises(MetabenchError, match=message):
        RunConfig(**{setting: value})


@pytest.mark.fault
def test_a_section_that_is_not_a_mapping_is_an_error(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("run: [1, 2]\n")
    with pytest.raises(MetabenchError, match="section run must be a mapping"):
        load_params(path)


def test_hidden_must_be_positive():
    from metabench.algorithms import TaskShape, build_algorithm

    with pytest.raises(MetabenchError, match="hidden must be at least 1"):
        build_algorithm("protonet", {"hidden": 0}, TaskShape(1, 28, 5, 5, train_classes=10), "cpu")


@pytest.mark.fault
def test_unknown_sections_and_missing_files_are_errors(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("algoritms:\n  maml: {}\n")
    with pytest.raises(MetabenchError, match="unknown section algoritms"):
        load_params(path)
    with pytest.raises(MetabenchError, match="does not exist"):
        load_params(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    "raw, value", [("1e6", 1e6), ("0.01", 0.01), ("3", 3), ("true", True), ("[1, 2]", [1, 2]), ("sgd", "sgd")]
)
def test_command_line_values_parse_as_numbers_first(raw, value):
    assert parse_value(raw) == value and type(parse_value(raw)) is type(value)


# --- through the real command line ---------------------------------------------------------

runner = CliRunner()


@pytest.fixture
def workdir(tmp_path, glyphs_dir):
    shutil.copytree(glyphs_dir / "glyphs", tmp_path / "data" / "glyphs")
    (tmp_path / "params.yaml").write_text(json.dumps(PARAMS))  # JSON is YAML
    return tmp_path


def cli(workdir, *args, code=0):
    common = [
        "--params",
        str(workdir / "params.yaml"),
        "--data-dir",
        str(workdir / "data"),
        "--runs-dir",
        str(workdir / "runs"),
    ]
    result = runner.invoke(app, [*args, *common])
    assert result.exit_code == code, (result.output, result.exception)
    return result


def snapshot(run_dir):
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir()) if p.is_file() and p.name != "mlflow_run.json"}


def test_a_retrain_with_other_hyper_parameters_leaves_the_default_run_untouched(workdir):
    cli(workdir, "train", "--algorithm", "protonet")
    cli(workdir, "evaluate", "--algorithm", "protonet")
    default_dir = workdir / "runs" / "glyphs-protonet-5w1s-seed0"
    before = snapshot(default_dir)
    assert {"checkpoint.pt", "metrics.json", "episodes.csv"} <= set(before)
    cli(workdir, "train", "--algorithm", "protonet", "--hp", "lr=0.01")
    cli(workdir, "evaluate", "--algorithm", "protonet", "--hp", "lr=0.01")
    assert snapshot(default_dir) == before
    variants = [p for p in (workdir / "runs").iterdir() if p != default_dir]
    assert len(variants) == 1 and (variants[0] / "metrics.json").is_file()
    saved = json.loads((variants[0] / "config.json").read_text())
    assert saved["config"]["hyper"]["lr"] == 0.01 and saved["run_id"] == variants[0].name


def test_a_finished_run_with_another_config_is_kept_unless_forced(workdir):
    cli(workdir, "train", "--algorithm", "protonet")
    cli(workdir, "evaluate", "--algorithm", "protonet")
    run_dir = workdir / "runs" / "glyphs-protonet-5w1s-seed0"
    before = snapshot(run_dir)
    changed = dict(PARAMS, algorithms={"protonet": {"hyper": {"hidden": 4}}})
    other = workdir / "other.yaml"
    other.write_text(json.dumps(changed))
    result = runner.invoke(
        app,
        [
            "train",
            "--algorithm",
            "protonet",
            "--params",
            str(other),
            "--data-dir",
            str(workdir / "data"),
            "--runs-dir",
            str(workdir / "runs"),
        ],
    )
    assert result.exit_code != 0 and isinstance(result.exception, MetabenchError)
    assert "--force" in str(result.exception) and "config.hyper" in str(result.exception)
    assert snapshot(run_dir) == before
    # evaluating the finished run with the other settings is refused too: it would mislabel the numbers
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--algorithm",
            "protonet",
            "--params",
            str(other),
            "--data-dir",
            str(workdir / "data"),
            "--runs-dir",
            str(workdir / "runs"),
        ],
    )
    assert isinstance(result.exception, MetabenchError) and "trained with other" in str(result.exception)
    forced = runner.invoke(
        app,
        [
            "train",
            "--algorithm",
            "protonet",
            "--force",
            "--params",
            str(other),
            "--data-dir",
            str(workdir / "data"),
            "--runs-dir",
            str(workdir / "runs"),
        ],
    )
    assert forced.exit_code == 0, forced.output
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "episodes.csv").exists()  # stale scores removed
    assert json.loads((run_dir / "config.json").read_text())["config"]["hyper"]["hidden"] == 4


def test_the_provenance_digest_covers_the_training_code_only():
    # recorded with every run (identity.provenance) for a reader, never compared
    from metabench import sources
    from metabench.identity import training_sources

    names = sources.relative(training_sources("maml"))
    assert {
        "metabench/algorithms/maml.py",
        "metabench/algorithms/base.py",
        "metabench/models/conv4.py",
        "metabench/runner.py",
        "metabench/episodes.py",
        "metabench/config.py",
    } <= set(names)
    # the report, the tracker and other algorithms are not what trained a MAML run
    assert not {"metabench/report.py", "metabench/tracking.py", "metabench/algorithms/protonet.py"} & set(names)
    assert "metabench/algorithms/maml.py" in sources.relative(training_sources("anil"))  # ANIL subclasses MAML


@pytest.mark.fault
def test_a_missing_params_file_is_a_one_line_error(tmp_path):
    result = runner.invoke(app, ["train", "--params", str(tmp_path / "nope.yaml")])
    assert isinstance(result.exception, MetabenchError) and "does not exist" in str(result.exception)


def test_evaluation_restores_the_training_mode_even_after_an_error():
    import numpy as np

    from metabench.algorithms import TaskShape, build_algorithm
    from metabench.episodes import EpisodeIndices, ImageBank
    from metabench.evaluation import episode_accuracies
    from tests.conftest import tiny_split

    algorithm = build_algorithm("maml", {"hidden": 4, "meta_batch": 1}, TaskShape(1, 28, 5, 5, train_classes=6), "cpu")
    algorithm.train(True)
    bank = ImageBank(tiny_split(6, 4))
    episodes = EpisodeIndices(np.zeros((1, 5, 1), np.int64), np.zeros((1, 5, 1), np.int64), np.arange(5)[None])

    def fail(*args):
        raise RuntimeError("a failing episode")

    algorithm.predict_modes = fail
    with pytest.raises(RuntimeError):
        episode_accuracies(algorithm, bank, episodes)
    assert all(network.training for network in algorithm.networks().values())


def test_anil_refuses_compile_instead_of_ignoring_it():
    from metabench.algorithms import TaskShape, build_algorithm

    with pytest.raises(MetabenchError, match="anil has no compiled path"):
        build_algorithm("anil", {"hidden": 4, "compile": True, "first_order": True}, TaskShape(1, 28, 5, 5, 6), "cpu")
