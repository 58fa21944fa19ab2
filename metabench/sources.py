"""The package's source files: which ones a step executes (its import closure), their digest,
and the checkout's git commit.

The report stage lists its import closure as its DVC code dependencies; a run records the
digest of the files that trained it as provenance (``identity.provenance``), never to compare:
what a run is, is its declared behaviour (``metabench.identity``).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import subprocess
import sys
import types
from pathlib import Path

PACKAGE = "metabench"
ROOT = Path(__file__).resolve().parent.parent


def _referenced_modules(module: types.ModuleType) -> set[str]:
    """Package modules that ``module`` names at its top level (imported modules, classes, functions)."""
    names = set()
    is_package = hasattr(module, "__path__")
    for value in vars(module).values():
        if isinstance(value, types.ModuleType) and is_package and value.__name__.startswith(module.__name__ + "."):
            continue  # a package holds its imported submodules as attributes; it does not run them all
        name = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
        if isinstance(name, str) and (name == PACKAGE or name.startswith(PACKAGE + ".")):
            names.add(name)
    return names


# the algorithm registry dispatches by name: a caller runs one algorithm's module, not all of them
REGISTRY = "metabench.algorithms"


def import_closure(*module_names: str, skip: tuple[str, ...] = (REGISTRY,)) -> list[Path]:
    """Source files of ``module_names`` and of every package module they reach, sorted.

    Modules in ``skip`` are neither listed nor followed (see ``REGISTRY``); add the algorithm's
    own files with ``identity.training_sources``.
    """
    seen, todo = set(skip), list(module_names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        module = sys.modules.get(name) or importlib.import_module(name)
        todo.extend(_referenced_modules(module) - seen)
    found = seen - set(skip)
    files = {
        Path(sys.modules[name].__file__).resolve() for name in found if getattr(sys.modules[name], "__file__", None)
    }
    return sorted(files)


def digest(files: list[Path]) -> str:
    """sha256 over the files' package-relative paths and bytes."""
    hasher = hashlib.sha256()
    for path in sorted(files):
        hasher.update(path.relative_to(ROOT).as_posix().encode())
        hasher.update(path.read_bytes())
    return hasher.hexdigest()


def relative(files: list[Path], start: Path = ROOT) -> list[str]:
    """Paths relative to the project root, as a pipeline lists them."""
    return [path.relative_to(start).as_posix() for path in files]


@functools.cache
def git_commit() -> str | None:
    """The checkout's commit, with ``+dirty`` when the package has uncommitted changes; None
    outside a git checkout. Provenance only: recorded with runs, never compared."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", PACKAGE],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+dirty" if dirty else "")) or None
