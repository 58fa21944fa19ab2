"""What the DVC read-command tests share: `make experiments`' own arguments, read from the
Makefile so the tests run the documented command, and its Markdown table as rows."""

import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_experiments_args() -> list[str]:
    """The arguments `make experiments` gives `dvc` (everything after ``dvc`` on its line)."""
    line = next(line for line in (ROOT / "Makefile").read_text().splitlines() if "$(RUN) dvc exp show" in line)
    return shlex.split(line.split("dvc", 1)[1])


def markdown_rows(table: str) -> tuple[list[str], list[list[str]]]:
    """The header and the body rows of a Markdown table, cells stripped."""
    header, _, *rows = [[cell.strip() for cell in row.strip("|").split("|")] for row in table.strip().splitlines()]
    return header, rows
