"""A params file checked whole before anything runs.

``dvc repro`` runs this first (stage ``params``): a misspelt key in any algorithm's block, a
leaderboard entry that is not registered, a data option a source does not have or a
hyper-parameter of the wrong type stops the pipeline in seconds, before a stage deletes or
rewrites an output, instead of in whichever stage first reads that block minutes later.
Duplicate keys are refused by ``config.load_params`` itself.
"""

from __future__ import annotations

from typing import Any

from metabench import MetabenchError
from metabench.algorithms import REGISTRY, get_algorithm, list_algorithms, make_hyper
from metabench.board import leaderboard_runs
from metabench.config import load_params, resolve_run
from metabench.data import SOURCES, check_options

LEADERBOARD_KEYS = ("algorithms", "shots", "seeds", "references")


def check_params(params: dict[str, Any], where: str) -> int:
    """Every section of ``params`` as the commands will read it; returns how many runs it defines.

    Raises a one-line ``MetabenchError`` naming the file and the key at the first mistake.
    """
    for source, options in (params.get("data") or {}).items():
        if options is not None and not isinstance(options, dict):
            raise MetabenchError(f"{where}: data.{source} must be a mapping of options")
        check_options(source, options or {})
    if params.get("source") is not None and params["source"] not in SOURCES:
        raise MetabenchError(f"{where}: source {params['source']!r} is unknown; choose one of {', '.join(SOURCES)}")
    resolve_run(params, {}, where=where)  # the run section alone
    configs = []
    for name in params.get("algorithms") or {}:
        if name not in REGISTRY:
            raise MetabenchError(
                f"{where}: algorithms.{name} is not a registered algorithm; choose one of {', '.join(list_algorithms())}"
            )
        configs.append(resolve_run(params, {"algorithm": name}, where=where))
    board = params.get("leaderboard")
    if board:
        unknown = sorted(set(board) - set(LEADERBOARD_KEYS))
        if unknown:
            raise MetabenchError(
                f"{where}: leaderboard has no key {', '.join(unknown)}; valid: {', '.join(LEADERBOARD_KEYS)}"
            )
        configs += leaderboard_runs(params, where)
    for config in configs:
        make_hyper(get_algorithm(config.algorithm).Hyper, config.hyper, f"{where}: {config.algorithm}")
    return len(configs)


def load_checked(path) -> dict[str, Any]:
    """``config.load_params``, then every key and value checked (``check_params``): how every
    command reads its params file."""
    params = load_params(path)
    if params:
        check_params(params, str(path or "params.yaml"))
    return params
