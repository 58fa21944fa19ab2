"""Run configuration, resolved in one place.

A run is (dataset, algorithm, ways, shots, seed) plus budgets and hyper-parameters. Settings are
layered here and nowhere else: built-in defaults < params.yaml ``run`` < params.yaml
``algorithms.<name>.run`` / ``.hyper`` < command-line options. ``resolve_run`` returns one
``RunConfig`` that knows its run id, run directory, profile path and training settings.

A run is a pure function of its config and its data: the same config on the same data gives
the same outputs (bit for bit on CPU with the same thread count and torch build), so any executor
can run it and DVC can cache it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from metabench import MetabenchError

if TYPE_CHECKING:
    import torch

TOP_LEVEL_SECTIONS = ("data", "leaderboard", "run", "algorithms", "source")
# name the run readably: <dataset>-<algorithm>-<ways>w<shots>s-seed<seed>
IDENTITY = ("dataset", "algorithm", "ways", "shots", "seed")
# where and how long a run trains, never what it is: changing them continues or moves the same run
NOT_IDENTITY = (
    "device",
    "data_dir",
    "runs_dir",
    "episodes_dir",
    "iterations",
    "checkpoint_every",
    "test_episodes",
    "variant",
)
LOCATION = ("device", "data_dir", "runs_dir", "episodes_dir")  # where a run is, never what it is
DEFAULT_PARAMS = Path("params.yaml")
# what ``augment`` may be (applied to training episodes by ``episodes.augment_episode``)
AUGMENTATIONS = ("none", "crop", "flip", "crop+flip")


@dataclass
class RunConfig:
    dataset: str = "glyphs"  # name in the dataset store (see `metabench fetch`)
    algorithm: str = "protonet"  # a registered algorithm (see `metabench algorithms`)
    ways: int = 5  # classes per test episode
    shots: int = 1  # support images per class
    queries: int = 15  # query images per class in validation and test episodes
    train_queries: int = 0  # query images per class in training episodes; 0: the algorithm's protocol
    seed: int = 0  # initialisation and training-episode seed
    iterations: int = 1000  # outer updates; budgets are in iterations, never seconds
    val_every: int = 100  # validate, and save a resumable state, every this many updates
    checkpoint_every: int = 0  # also save the resumable state every this many updates (0: only when validating)
    val_episodes: int = 200  # fixed validation episodes for checkpoint selection
    test_episodes: int = 600  # fixed test episodes (>= 600 for a reportable interval)
    episode_seed: int = 0  # seed of the fixed validation/test episodes, shared by all algorithms
    augment: str = "none"  # training episodes only: none, crop, flip or crop+flip (AUGMENTATIONS)
    device: str = "auto"  # auto: CUDA when present, else CPU
    data_dir: str = "data"
    runs_dir: str = "runs"
    episodes_dir: str = ""  # the fixed validation/test episodes; "": <data_dir>/episodes
    hyper: dict[str, Any] = field(default_factory=dict)  # the algorithm's hyper-parameters
    # set by resolve_run: "" for the settings params.yaml gives, else a hash of the other settings,
    # so a run with overridden settings never shares a folder with the default run
    variant: str = ""

    def __post_init__(self) -> None:
        for name, expected in typing.get_type_hints(RunConfig).items():
            value = getattr(self, name)
            base = typing.get_origin(expected) or expected
            if type(value) is not base:  # bool is not int here: `ways: true` is a mistake
                raise MetabenchError(
                    f"run setting {name} must be {base.__name__}, got {value!r} ({type(value).__name__})"
                )
        if self.augment not in AUGMENTATIONS:
            raise MetabenchError(f"augment must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}")
        minimum = {
            "ways": 2,
            "shots": 1,
            "queries": 1,
            "iterations": 1,
            "val_every": 1,
            "val_episodes": 1,
            "test_episodes": 1,
            "train_queries": 0,
            "checkpoint_every": 0,
            "seed": 0,
            "episode_seed": 0,
        }
        for name, least in minimum.items():
            if getattr(self, name) < least:
                raise MetabenchError(f"{name} must be at least {least}, got {getattr(self, name)}")

    @staticmethod
    def format_id(dataset: Any, algorithm: Any, ways: Any, shots: Any, seed: Any) -> str:
        """The readable run id; the generated pipelines call it with DVC placeholders."""
        return f"{dataset}-{algorithm}-{ways}w{shots}s-seed{seed}"

    @staticmethod
    def format_profile(dataset: Any, algorithm: Any, ways: Any, shots: Any, variant: str = "") -> str:
        return f"{dataset}-{algorithm}-{ways}w{shots}s" + (f"-{variant}" if variant else "") + ".json"

    @property
    def episodes_path(self) -> Path:
        return Path(self.episodes_dir) if self.episodes_dir else Path(self.data_dir) / "episodes"

    @property
    def readable_id(self) -> str:
        return self.format_id(self.dataset, self.algorithm, self.ways, self.shots, self.seed)

    @property
    def run_id(self) -> str:
        return self.readable_id + (f"-{self.variant}" if self.variant else "")

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.run_id

    def profile_path(self, profiles_dir: Path | str = "profiles") -> Path:
        """Where ``metabench profile`` writes this setting's cost (the seed does not change it)."""
        return Path(profiles_dir) / self.format_profile(
            self.dataset, self.algorithm, self.ways, self.shots, self.variant
        )

    def training_settings(self) -> dict[str, Any]:
        """Everything that decides what is trained: a saved state resumes only if these match."""
        return {k: v for k, v in self.to_dict().items() if k not in NOT_IDENTITY}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def settings_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


def parse_value(raw: str) -> Any:
    """A command-line value: int, float (``1e6`` included, which YAML reads as a string), else YAML."""
    for convert in (int, float):
        try:
            return convert(raw)
        except ValueError:
            pass
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise MetabenchError(f"cannot read value {raw!r} ({str(error).splitlines()[0]}); quote it or fix it") from error


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``--hp key=value`` pairs into a dict."""
    values = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise MetabenchError(f"--hp expects key=value, got {pair!r}")
        values[key] = parse_value(raw)
    return values


def load_params(path: Path | str | None) -> dict[str, Any]:
    """Read a params file: ``None`` means ./params.yaml when present, else built-in defaults only.

    A file named explicitly must exist; unknown top-level sections are errors (a typo such as
    ``algoritms:`` would otherwise train with defaults), and so is a key given twice. Commands
    read params through ``params_check.load_checked``, which also checks every key and value.
    """
    if path is None:
        if not DEFAULT_PARAMS.is_file():
            return {}
        path = DEFAULT_PARAMS
    path = Path(path)
    if not path.is_file():
        raise MetabenchError(f"params file {path} does not exist; give an existing file with --params")
    try:
        params = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as error:
        raise MetabenchError(f"{path} is not valid YAML ({_yaml_reason(error)}); fix the file") from error
    if not isinstance(params, dict):
        raise MetabenchError(f"{path} must be a mapping of sections ({', '.join(TOP_LEVEL_SECTIONS)})")
    unknown = sorted(set(params) - set(TOP_LEVEL_SECTIONS))
    if unknown:
        raise MetabenchError(f"{path} has unknown section {', '.join(unknown)}; valid: {', '.join(TOP_LEVEL_SECTIONS)}")
    for name in ("data", "leaderboard", "run", "algorithms"):
        if params.get(name) is not None and not isinstance(params[name], dict):
            raise MetabenchError(f"{path}: section {name} must be a mapping, got {type(params[name]).__name__}")
    return params


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping: YAML keeps the last one
    silently, so a second ``protonet:`` block would drop the first one whole."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def _yaml_reason(error: yaml.YAMLError) -> str:
    """YAML's reason with its line and column, on one line."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem


def _layer(params: dict[str, Any], options: dict[str, Any], hyper_overrides: dict[str, Any], where: str) -> RunConfig:
    values = dict(params.get("run") or {})
    algorithm = options.get("algorithm") or values.get("algorithm", RunConfig.algorithm)
    section = (params.get("algorithms") or {}).get(algorithm) or {}
    if not isinstance(section, dict) or set(section) - {"run", "hyper"}:
        raise MetabenchError(f"{where}: algorithms.{algorithm} may only hold 'run' and 'hyper' mappings")
    for part in ("run", "hyper"):
        if section.get(part) is not None and not isinstance(section[part], dict):
            raise MetabenchError(f"{where}: algorithms.{algorithm}.{part} must be a mapping")
    values.update(section.get("run") or {})
    values.update(options)
    values["hyper"] = {**(section.get("hyper") or {}), **hyper_overrides}
    valid = set(RunConfig.__dataclass_fields__) - {"variant"}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise MetabenchError(f"{where}: run has no setting {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
    try:
        return RunConfig(**values)
    except MetabenchError as error:  # say where the value came from: the file, and whose run
        raise MetabenchError(f"{where}, run of {algorithm}: {error}") from None


def resolve_run(
    params: dict[str, Any],
    selection: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    hyper_overrides: dict[str, Any] | None = None,
    where: str = "params",
) -> RunConfig:
    """The one resolved run spec.

    ``selection`` picks a run of the params (identity and location: algorithm, dataset, ways,
    shots, seed, device, data_dir, runs_dir, episodes_dir); ``overrides`` (other run settings) and
    ``hyper_overrides`` change what is trained. A run whose training settings differ from what
    the params give for its selection gets a ``variant`` (a hash of those settings) in its id,
    so it can never train into the default run's folder.
    """
    selection = {k: v for k, v in (selection or {}).items() if v is not None}
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    stray = sorted(set(selection) - set(IDENTITY) - set(LOCATION))
    if stray:
        raise MetabenchError(f"{', '.join(stray)} change what is trained; pass them as overrides, not as the selection")
    default = _layer(params, selection, {}, where)
    config = _layer(params, {**selection, **overrides}, dict(hyper_overrides or {}), where)
    if config.training_settings() != default.training_settings():
        differs = {k: v for k, v in config.training_settings().items() if k not in IDENTITY}
        config.variant = settings_hash(differs)
    return config


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; anything else is passed to torch."""
    import torch  # here, not at the top: the command line starts without torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MetabenchError(f"device {name!r} requested but CUDA is not available; use --device auto or cpu")
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise MetabenchError(f"unknown device {name!r}; use auto, cpu or cuda") from error
