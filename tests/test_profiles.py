"""Every profile under pipelines/ resolves: each listed run's settings and hyper-parameters validate and its
algorithm builds for the profile's image shape (a dry run of every run a profile would start)."""

from pathlib import Path

import pytest
import torch
import yaml

from metabench.algorithms import REGISTRY, TaskShape, build_algorithm
from metabench.board import leaderboard_runs
from metabench.config import load_params, resolve_run
from metabench.pipeline import BEHAVIOUR_FILE, profiles

ROOT = Path(__file__).resolve().parents[1]
PROFILES = sorted((ROOT / "pipelines").glob("*/params.yaml")) + [ROOT / "params.yaml"]
SHAPES = {"glyphs": (1, 28), "omniglot": (1, 28), "miniimagenet": (3, 84), "cifar-fs": (3, 32), "fc100": (3, 32)}


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.parent.name)
def test_every_run_of_the_profile_validates_and_builds(path):
    params = yaml.safe_load(path.read_text())
    board = params.get("leaderboard") or {"algorithms": list(params["algorithms"]), "shots": [1]}
    for algorithm in board["algorithms"]:
        for shots in board["shots"]:
            config = resolve_run(load_params(path), {"algorithm": algorithm, "shots": shots})
            channels, size = SHAPES[config.dataset.split("-vinyals")[0].split("-rot")[0]]
            hyper = dict(config.hyper, hidden=4)  # build small: the check is that settings validate
            train_ways = hyper.get("train_ways") or config.ways
            task = TaskShape(channels, size, train_ways, config.ways, train_classes=64)
            build_algorithm(algorithm, hyper, task, torch.device("cpu"))
            assert config.iterations >= 1 and config.test_episodes >= 600


# --- each profile's DVC pipeline -------------------------------------------------------------
# `dvc repro --dry` cannot dry-run a pipeline whose first stage has not run yet (DVC stops at
# the missing dataset.json, treeverse/dvc#9021), so this is the dry run: every profile's pipeline
# is written into a copy of the project, DVC resolves every stage, and each stage's command is
# parsed by the real command line and checked to write exactly the outputs the stage declares.

NAMES = profiles(ROOT)


def project_copy(target: Path) -> Path:
    """The params files of every pipeline and behaviour.json, where `metabench pipeline` expects them."""
    import shutil

    for path in [ROOT / "params.yaml", ROOT / BEHAVIOUR_FILE, *sorted((ROOT / "pipelines").glob("*/params.yaml"))]:
        (target / path.parent.relative_to(ROOT)).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / path.relative_to(ROOT))
    return target


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A DVC project holding the root pipeline and every profile's, as `metabench pipeline NAME...` writes them."""
    from dvc.repo import Repo

    from metabench.pipeline import write_all

    root = project_copy(tmp_path_factory.mktemp("project"))
    write_all(root=root, wanted=NAMES)
    Repo.init(str(root), no_scm=True)
    with Repo(str(root)) as repo:
        yield root, repo


def test_the_root_pipeline_is_a_real_committed_file_and_up_to_date():
    from metabench.pipeline import write_all

    assert (ROOT / "dvc.yaml").is_file() and not (ROOT / "dvc.yaml").is_symlink(), "DVC cannot read a linked dvc.yaml"
    assert write_all(check=True, root=ROOT) == [], "run `metabench pipeline` and commit dvc.yaml"


def test_a_profile_pipeline_is_written_when_asked_for_and_kept_current_from_then_on(tmp_path):
    """Profiles nobody ran stay out of DVC's read commands (dvc exp show, metrics show, plots show)."""
    from metabench.pipeline import write_all

    root = project_copy(tmp_path)
    assert write_all(root=root) == [root / "dvc.yaml"]
    assert not list((root / "pipelines").glob("*/dvc.yaml"))
    assert write_all(root=root, wanted=["omniglot_cpu"]) == [root / "pipelines" / "omniglot_cpu" / "dvc.yaml"]
    assert "dvc repro pipelines/omniglot_cpu/dvc.yaml" in (root / "pipelines" / "omniglot_cpu" / "dvc.yaml").read_text()
    assert write_all(check=True, root=root) == []
    pipeline = root / "pipelines" / "omniglot_cpu" / "dvc.yaml"
    pipeline.write_text(pipeline.read_text() + "# edited by hand\n")
    assert write_all(check=True, root=root) == [root / "pipelines" / "omniglot_cpu" / "dvc.yaml"]
    with pytest.raises(Exception, match="no profile omniglot_gpu .*profiles: cifarfs_conv4"):
        write_all(root=root, wanted=["omniglot_gpu"])


def _parse(command: str):
    """The sub-command and its parsed options, exactly as `metabench` would see them."""
    import shlex

    import typer.main

    from metabench.cli import app

    args = shlex.split(command)
    assert args[0] == "metabench"
    group = typer.main.get_command(app)
    return args[1], group.commands[args[1]].make_context(args[1], args[2:]).params


@pytest.mark.parametrize("name", NAMES)
def test_pipeline_stages_resolve_and_their_commands_write_the_declared_outputs(generated, name):
    root, dvc_repo = generated
    folder = root / "pipelines" / name
    params = yaml.safe_load((folder / "params.yaml").read_text())
    stages = dvc_repo.stage.collect(str(folder / "dvc.yaml"))
    kinds = [stage.name.split("@")[0].split("-")[0] for stage in stages]
    assert "train" not in kinds and "evaluate" not in kinds  # every run is the grid stage's
    assert kinds.count("fetch") == kinds.count("report") == kinds.count("episodes") == kinds.count("grid") == 1
    assert kinds.count("profile") == kinds.count("check") == 1  # one process profiles every setting
    for stage in stages:
        assert Path(stage.wdir) == folder
        outs = {Path(str(out.fs_path)) for out in stage.outs}
        command, options = _parse(stage.cmd)
        assert command == stage.name
        if command == "check-params":  # the first stage: every other stage runs after it
            assert outs == {folder / options["record"]} and options["params"] == Path("params.yaml")
            continue
        code = {Path(str(dep.fs_path)).resolve() for dep in stage.deps if "metabench" in str(dep.fs_path)}
        deps = {Path(str(dep.fs_path)).resolve() for dep in stage.deps}
        if command in ("episodes", "grid", "profile"):  # what the runs compute: declared versions, not bytes
            assert not code and (root / BEHAVIOUR_FILE).resolve() in deps
        settings = folder / options["params"]
        assert settings == folder / "params.yaml"
        if command == "fetch":
            assert options["source"] == params["source"] and params["source"] in params["data"]
            assert outs == {folder / options["record"]}
        elif command == "episodes":
            assert outs == {folder / options["episodes_dir"]}  # the pipeline's own, never another's
        elif command == "grid":
            assert outs == {folder / options["runs_dir"], folder / options["record"]}
            assert next(out for out in stage.outs if out.def_path == "runs").persist  # finished runs are kept
            # DVC deletes a stage's outputs before running it unless they persist: an interrupted
            # or failed grid must leave the last complete grid.json
            assert next(out for out in stage.outs if out.def_path == options["record"].name).persist
            deps = {Path(str(dep.fs_path)) for dep in stage.deps}
            assert folder / options["episodes_dir"] in deps  # scored on the episodes stage's output
            for config in leaderboard_runs(load_params(settings), runs_dir=options["runs_dir"]):
                assert REGISTRY[config.algorithm]  # every run's settings resolve and name a registered method
        elif command == "profile":
            assert options["algorithm"] is None and outs == {folder / options["out_dir"]} == {folder / "profiles"}
            assert all(out.persist for out in stage.outs)  # measured profiles survive a failed stage
        else:
            assert {out.parent for out in outs} == {folder / options["out_dir"]}
        if command != "report":  # the report reads run outputs only
            assert (folder / options["data_dir"]).resolve() == (root / "data").resolve()
