"""The DVC pipelines, written from one template: the root ``dvc.yaml`` (the default profile)
and ``pipelines/<profile>/dvc.yaml``.

DVC reads real files from git revisions (``dvc exp show``, ``dvc params diff``), so every
pipeline is a generated file, not a link; ``metabench pipeline`` rewrites them and
``metabench pipeline --check`` (run by the tests) fails when one is out of date. A profile's
``dvc.yaml`` is written only when asked for (``metabench pipeline PROFILE``) and kept current
from then on: DVC reads every ``dvc.yaml`` in the project, so profiles nobody runs would put
hundreds of their params in ``dvc exp show`` and "failed to load" in ``dvc metrics show`` and
``dvc plots show`` of the default pipeline. Each stage lists
as ``params`` exactly the keys it reads. What the runs compute is a dependency through the
declared behaviour versions (``behaviour.json``, written here too), never the bytes of the
source, so a docstring or a refactor re-runs nothing; the report, which is plain code over the
run outputs, depends on its own modules' bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from metabench import MetabenchError, plots, sources
from metabench.algorithms import get_algorithm, list_algorithms
from metabench.identity import EVALUATION_VERSION, PROTOCOL_VERSION, algorithm_versions
from metabench.models import BACKBONES
from metabench.params_check import load_checked

# run settings that only evaluation reads; every other `run` key changes what is trained
EVALUATION_ONLY = ("test_episodes",)
# the declared behaviour versions of every algorithm, backbone and the protocol (``behaviour_record``):
# the grid, profile and episodes stages depend on this generated file, not on the .py files
BEHAVIOUR_FILE = "behaviour.json"
# run keys each stage's command sets itself (--algorithm, --shots, --seed): params.yaml's value is unused
SET_BY_COMMAND = ("algorithm", "shots", "seed")
# the params stage's output: constant while params.yaml is valid, so a valid edit re-runs only what reads it
PARAMS_CHECKED = "params.checked.json"
EPISODE_READS = ("dataset", "ways", "queries", "val_episodes", "test_episodes", "episode_seed")


@dataclass
class Layout:
    """Where one pipeline's stages run and find things, relative to its dvc.yaml."""

    folder: Path  # the pipeline's folder, relative to the project root
    profile: bool  # a profile folder: data in the shared store, recorded by dataset.json

    @property
    def up(self) -> str:
        return "../" * len(self.folder.parts)

    def code(self, files: list[Path]) -> list[str]:
        return [self.up + name for name in sources.relative(files)]

    @property
    def options(self) -> str:
        return " --params params.yaml --data-dir ../../data" if self.profile else ""

    @property
    def data(self) -> str:
        return "dataset.json" if self.profile else "data/${run.dataset}"

    @property
    def episodes(self) -> str:
        """The pipeline's own fixed episodes (profiles share the data store, not the episodes)."""
        return "episodes" if self.profile else "data/episodes"

    @property
    def episodes_option(self) -> str:
        return " --episodes-dir episodes" if self.profile else ""


def _keys(section: dict | None, prefix: str, keep) -> list[str]:
    return [f"{prefix}.{key}" for key in sorted(section or {}) if keep(key) and key not in SET_BY_COMMAND]


def stages(params: dict[str, Any], layout: Layout) -> dict[str, Any]:
    """Every stage of one pipeline for ``params`` (a profile's params.yaml)."""
    board = params.get("leaderboard") or {}
    if not board.get("algorithms"):
        raise MetabenchError(f"{layout.folder / 'params.yaml'} has no leaderboard.algorithms to build a pipeline from")
    run = params.get("run") or {}
    cli = sources.ROOT / "metabench" / "cli.py"
    behaviour = layout.up + BEHAVIOUR_FILE  # what the runs compute, by declared versions (never source bytes)
    runs_option = " --runs-dir runs" if layout.profile else ""
    fetch_cmd = (
        f"metabench fetch ${{source}}{layout.options} --record dataset.json"
        if layout.profile
        else "metabench fetch ${run.dataset}"
    )
    sections = ["data", "leaderboard", "run", "algorithms", *(["source"] if layout.profile else [])]
    out: dict[str, Any] = {
        # first, and before every other stage (fetch depends on its output): a misspelt key stops
        # the pipeline here, before any stage deletes or rewrites an output
        "check-params": {
            "cmd": f"metabench check-params --params params.yaml --record {PARAMS_CHECKED}",
            "params": sections,
            "outs": [{PARAMS_CHECKED: {"cache": False, "persist": True}}],
        },
        "fetch": {
            "cmd": fetch_cmd,
            "deps": [PARAMS_CHECKED, *layout.code([sources.ROOT / "metabench" / "data", cli])],
            "params": ["data.${source}" if layout.profile else "data.${run.dataset}"],
            "outs": [{layout.data: {"cache": False}} if layout.profile else layout.data],
        },
    }
    out["episodes"] = {
        "cmd": f"metabench episodes{layout.options}{layout.episodes_option}",
        "deps": [layout.data, behaviour],
        "params": ["leaderboard", *_keys(run, "run", lambda key: key in EPISODE_READS), "algorithms"],
        "outs": [layout.episodes],
    }
    out["grid"] = {
        "cmd": f"metabench grid{layout.options}{layout.episodes_option}{runs_option}",
        "deps": [layout.data, layout.episodes, behaviour],
        "params": ["leaderboard", "run", "algorithms"],
        # runs/ persists: the grid keeps every run whose identity is still the one asked for
        # grid.json persists too: an interrupted or failed grid leaves the last complete record
        "outs": [{"runs": {"persist": True}}, {"grid.json": {"cache": False, "persist": True}}],
    }
    # one process profiles every setting: 26 interpreter starts cost more than the profiles;
    # profiles/ persists: the stage keeps every profile whose identity is still current
    out["profile"] = {
        "cmd": f"metabench profile{layout.options} --out-dir profiles",
        "deps": [layout.data, behaviour],
        "params": ["leaderboard", *_keys(run, "run", lambda key: key not in EVALUATION_ONLY), "algorithms"],
        "outs": [{"profiles": {"cache": False, "persist": True}}],
    }
    report_options = " --params params.yaml --runs-dir runs --profiles-dir profiles --out-dir reports"
    out["report"] = {
        "cmd": f"metabench report{report_options + layout.episodes_option if layout.profile else ''}",
        "deps": ["runs", "profiles", layout.episodes, *layout.code(sources.import_closure("metabench.report") + [cli])],
        "params": ["leaderboard", *_keys(run, "run", lambda key: key in ("dataset", "ways"))],
        "outs": [
            {f"reports/{name}": {"cache": False}}
            for name in (
                "leaderboard.md",
                "leaderboard.html",
                "leaderboard.csv",
                "leaderboard.tex",
                "pairwise.csv",
                "figures",
                plots.FOLDER,
            )
        ],
        "metrics": [{"reports/summary.json": {"cache": False}}],
    }
    return out


def plot_definitions(params: dict[str, Any]) -> list[Any]:
    """dvc.yaml's top-level ``plots:``: learning curves and accuracy against cost per setting
    (data written by ``metabench.plots``), then the report's figures as images."""
    board, run = params.get("leaderboard") or {}, params.get("run") or {}
    ways = run.get("ways", 5)
    out: list[Any] = []
    for shots in board.get("shots", [run.get("shots", 1)]):
        name = f"{ways}-way {shots}-shot"
        out.append(
            {
                f"learning curves {name}": {
                    "template": "linear",
                    "x": "iteration",
                    "y": {f"reports/{plots.curve_path(ways, shots, a)}": "val_accuracy" for a in board["algorithms"]},
                    "x_label": "meta-training iteration",
                    "y_label": "validation accuracy (mean over seeds)",
                }
            }
        )
        out.append(
            {
                f"accuracy vs training time {name}": {
                    "template": "scatter",
                    "x": {f"reports/{plots.cost_path(ways, shots)}": "train_seconds"},
                    "y": {f"reports/{plots.cost_path(ways, shots)}": "accuracy"},
                    "x_label": "meta-training seconds",
                    "y_label": "test accuracy (mean over seeds)",
                }
            }
        )
    out += [f"reports/figures/{name}" for name in ("accuracy.png", "accuracy_vs_cost.png", "learning_curves.png")]
    return out


HEADER = """\
# Generated by `metabench pipeline` from {params} and metabench/pipeline.py: edit those, not this
# file, then run `metabench pipeline` again (a test fails while a pipeline is out of date).
# `{command}` checks every key of the params file first (stage `check-params`: a mistake stops
# the pipeline before any output is touched), fetches the data, makes the fixed episodes (stage `episodes`), trains and
# evaluates every algorithm x shots x seed of the leaderboard and scores the reference methods
# on the same episodes (stage `grid`: `metabench grid` runs them several at a time and keeps
# every run whose identity is unchanged: settings, data, declared behaviour versions in
# behaviour.json, threads, torch and CPU), profiles each setting's cost (stage `profile`, on a
# quiet machine; current profiles are kept) and writes the report.
"""


def render(params_path: Path, root: Path = sources.ROOT) -> str:
    folder = params_path.parent.resolve().relative_to(root.resolve())
    layout = Layout(folder, profile=folder != Path("."))
    params = load_checked(params_path)
    document = {"stages": stages(params, layout), "plots": plot_definitions(params)}
    body = yaml.safe_dump(document, sort_keys=False, width=120)
    command = f"dvc repro {folder.as_posix()}/dvc.yaml" if layout.profile else "dvc repro"
    return HEADER.format(params=(folder / "params.yaml").as_posix(), command=command) + body


def profiles(root: Path = sources.ROOT) -> list[str]:
    """The profile folders under ``pipelines/`` (each with a params.yaml)."""
    return [path.parent.name for path in sorted((root / "pipelines").glob("*/params.yaml"))]


def pipeline_params(root: Path = sources.ROOT, wanted: list[str] = ()) -> list[Path]:
    """The params file of every pipeline to write: the root's (the default profile), each
    profile in ``wanted``, and each profile whose ``dvc.yaml`` was written before."""
    known = profiles(root)
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        raise MetabenchError(
            f"no profile {', '.join(unknown)} under {root / 'pipelines'}; profiles: {', '.join(known)}"
        )
    chosen = [name for name in known if name in wanted or (root / "pipelines" / name / "dvc.yaml").is_file()]
    return [root / "params.yaml", *(root / "pipelines" / name / "params.yaml" for name in chosen)]


def behaviour_record() -> str:
    """``behaviour.json``: the declared version of every algorithm (with its parents), backbone,
    the shared protocol and evaluation, as the pipelines' dependency on what the runs compute."""
    record = {
        "protocol": PROTOCOL_VERSION,
        "evaluation": EVALUATION_VERSION,
        "algorithms": {name: algorithm_versions(get_algorithm(name)) for name in list_algorithms()},
        "backbones": {name: cls.version for name, cls in sorted(BACKBONES.items())},
    }
    return json.dumps(record, indent=1, sort_keys=True) + "\n"


def require_current_behaviour(root: Path = sources.ROOT) -> None:
    """In a source checkout, refuse to run while ``behaviour.json`` disagrees with the declared
    versions: DVC decides from that file whether runs are stale, so a bump it does not show would
    leave old results in place."""
    path = root / BEHAVIOUR_FILE
    if path.is_file() and path.read_text() != behaviour_record():
        raise MetabenchError(
            f"{path} is out of date with the declared behaviour versions; run `metabench pipeline`, then `dvc repro`"
        )


def write_all(check: bool = False, root: Path = sources.ROOT, wanted: list[str] = ()) -> list[Path]:
    """Write the dvc.yaml of the root pipeline, of each profile in ``wanted`` and of each profile
    written before, and ``behaviour.json``; with ``check``, return those out of date instead."""
    stale = []
    generated = [
        (params_path.parent / "dvc.yaml", render(params_path, root)) for params_path in pipeline_params(root, wanted)
    ]
    for target, text in [*generated, (root / BEHAVIOUR_FILE, behaviour_record())]:
        current = target.read_text() if target.is_file() and not target.is_symlink() else None
        if current != text:
            stale.append(target)
            if not check:
                target.unlink(missing_ok=True)
                target.write_text(text)
    return stale
