"""The benchmark gate: fail when a hot path got slower *relative to the machine*.

``python -m benchmarks.gate NOW.json BASELINE_DIR [--limit 0.5]`` reads the run pytest-benchmark
just wrote (``--benchmark-json``) and the committed baseline of this CPU kind
(``benchmarks/baseline/<capability>/*/0001_*.json``). Each gated time is divided by the machine
reference measured in the same run (``benchmarks/test_machine_reference.py``), in both files, and
the gate fails when that ratio grew by more than ``limit``. Raw seconds differ by 20-50% between
CI machines of one CPU kind, which no useful threshold survives; a ratio of two workloads timed
side by side does not move with the machine. Times are each benchmark's fastest round: noise
from neighbours only ever adds time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REFERENCE = "test_machine_reference"


def fastest_rounds(path: Path) -> dict[str, float]:
    """Each benchmark's fastest round in seconds, by its test name (parameters included)."""
    try:
        data = json.loads(path.read_text())
        return {entry["name"]: float(entry["stats"]["min"]) for entry in data["benchmarks"]}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SystemExit(f"{path} is not a pytest-benchmark result ({error}); run `make benchmarks` again") from error


def baseline_file(folder: Path) -> Path | None:
    found = sorted(folder.glob("*/0001_*.json"))
    return found[0] if found else None


def compare(now: dict[str, float], then: dict[str, float], limit: float) -> tuple[list[str], list[str]]:
    """The table's lines and the regressions' lines."""
    relative = REFERENCE in now and REFERENCE in then
    unit = "× reference" if relative else "s (raw: the baseline predates the machine reference)"
    lines = [f"{'benchmark':<58} {'baseline':>10} {'now':>10} {'change':>8}   ({unit})"]
    failures = []
    for name in sorted(now):
        if name == REFERENCE:
            continue
        if name not in then:
            lines.append(f"{name:<58} {'-':>10} {now[name]:>10.4g} {'new':>8}")
            continue
        old, new = (then[name] / then[REFERENCE], now[name] / now[REFERENCE]) if relative else (then[name], now[name])
        change = new / old - 1
        lines.append(f"{name:<58} {old:>10.4g} {new:>10.4g} {change:>+8.0%}")
        if change > limit:
            failures.append(
                f"{name} is {change:.0%} slower than the baseline ({unit.split(' (')[0]}; limit {limit:.0%})"
            )
    if relative:
        lines.append(f"machine reference: {then[REFERENCE]:.4g} s in the baseline, {now[REFERENCE]:.4g} s now")
    return lines, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("now", type=Path, help="this run's --benchmark-json file")
    parser.add_argument("baseline", type=Path, help="benchmarks/baseline/<capability>")
    parser.add_argument("--limit", type=float, default=0.5, help="the largest slowdown allowed (0.5: 50%%)")
    args = parser.parse_args(argv)
    now = fastest_rounds(args.now)
    found = baseline_file(args.baseline)
    if found is None:
        print(
            f"no benchmark baseline in {args.baseline}/: measured, not compared (make benchmark-baseline records one)"
        )
        return 0
    lines, failures = compare(now, fastest_rounds(found), args.limit)
    print(f"benchmark gate against {found}")
    print("\n".join(lines))
    if failures:
        print("Performance has regressed:\n  " + "\n  ".join(failures))
        return 1
    print(f"no gated benchmark is more than {args.limit:.0%} slower than the baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
