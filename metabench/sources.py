"""Which of the package's source files a step executes.

One answer serves two purposes: a saved training state resumes only while these files are
unchanged (an edit elsewhere, say a comment in report.py, must not restart a long run), and the
generated DVC pipelines list exactly these files as each stage's code dependencies.
"""

from __future__ import annotations

import hashlib
import importlib
import sys
import types
from pathlib import Path

PACKAGE = "metabench"
ROOT = Path(__file__).resolve().parent.parent

# the modules every training run executes besides its algorithm's own (found by import_closure)
TRAINING = ("metabench.runner", "metabench.episodes", "metabench.config", "metabench.evaluation")


def _referenced_modules(module: types.ModuleType) -> set[str]:
    """Package modules that ``module`` names at its top level (imported modules, classes, functions)."""
    names = set()
    is_package = hasattr(module, "__path__")
    for value in vars(module).values():
        if isinstance(value, types.ModuleType) and is_package:
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
    own files with ``training_sources``.
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


def training_sources(algorithm: str) -> list[Path]:
    """The files that decide what ``algorithm`` trains: its module and base classes, the
    backbones they build, the trainer, episodes, configuration and validation."""
    from metabench.algorithms import get_algorithm

    cls = get_algorithm(algorithm)
    modules = {klass.__module__ for klass in cls.__mro__ if klass.__module__.startswith(PACKAGE)}
    modules.add(cls.Hyper.__module__)
    closure = import_closure(*modules)
    trainer = [ROOT / (name.replace(".", "/") + ".py") for name in TRAINING]
    # the trainer's own helpers (tracking, checkpoint files, the store) do not change what is learnt
    return sorted(set(closure) | set(trainer))


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
