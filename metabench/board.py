"""The runs a params file's ``leaderboard`` section asks for: every algorithm × shots × seed,
then each reference method × shots, resolved (``config.resolve_run``) and checked against the
registry (a reference method listed as an algorithm, or the reverse, is refused).
"""

from __future__ import annotations

from typing import Any

from metabench import MetabenchError
from metabench.algorithms import get_algorithm
from metabench.config import RunConfig, resolve_run


def leaderboard_runs(params: dict[str, Any], where: str = "params", **location: Any) -> list[RunConfig]:
    """Every run of the params' ``leaderboard`` section, in order: algorithm × shots × seed, then
    each reference method × shots (seed 0: a reference has nothing random to seed)."""
    board = params.get("leaderboard") or {}
    missing = [key for key in ("algorithms", "shots", "seeds") if not board.get(key)]
    if missing:
        raise MetabenchError(f"{where}: leaderboard needs {', '.join(missing)} (lists)")
    references = board.get("references") or []
    for kind, names, trained in (("algorithms", board["algorithms"], True), ("references", references, False)):
        wrong = [name for name in names if get_algorithm(name).trained != trained]
        if wrong:
            other = "references" if trained else "algorithms"
            raise MetabenchError(
                f"{where}: leaderboard.{kind} lists {', '.join(wrong)}; move them to leaderboard.{other}"
            )
    trained_runs = [(a, k, s) for a in board["algorithms"] for k in board["shots"] for s in board["seeds"]]
    reference_runs = [(a, k, 0) for a in references for k in board["shots"]]
    return [
        resolve_run(params, {"algorithm": a, "shots": k, "seed": s, **location}, where=where)
        for a, k, s in trained_runs + reference_runs
    ]


def profiled_settings(params: dict[str, Any], where: str = "params", shots: int | None = None) -> list[tuple[str, int]]:
    """(algorithm, shots) of every setting the profile stage measures: each algorithm of the
    leaderboard at each of its shot counts (or at ``shots``); reference methods cost nothing to train."""
    board = params.get("leaderboard") or {}
    if not board.get("algorithms"):
        raise MetabenchError(f"{where} has no leaderboard.algorithms; pass --algorithm")
    return [(name, count) for name in board["algorithms"] for count in ([shots] if shots else board.get("shots", [1]))]
