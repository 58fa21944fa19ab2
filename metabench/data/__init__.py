"""Datasets: every source converts into the one store format (``metabench.data.store``)."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any

from metabench import MetabenchError
from metabench.data import store
from metabench.data.names import SOURCES


def fetch(source: str, options: dict[str, Any] | None, data_dir: Path, progress=None) -> store.Dataset:
    """Build dataset ``source`` with ``options`` (its params.yaml section) into ``data_dir``; a
    second fetch of the same source into the same store at once fails in one line."""
    if source not in SOURCES:
        raise MetabenchError(f"unknown dataset source {source!r}; choose one of {', '.join(SOURCES)}")
    with store.fetching(Path(data_dir), source):
        return _build(source, dict(options or {}), Path(data_dir), progress)


def _build(source: str, options: dict[str, Any], data_dir: Path, progress) -> store.Dataset:
    # each source's module (and its image, archive or font libraries) is imported only when used
    if source == "glyphs":
        from metabench.data import glyphs

        config = _configure(glyphs.GlyphsConfig, options, source)
        return glyphs.generate(config, Path(data_dir), progress)
    if source == "omniglot":
        from metabench.data import omniglot

        config = _configure(omniglot.OmniglotConfig, options, source)
        return omniglot.build(config, Path(data_dir) / "raw" / "omniglot", Path(data_dir), progress)
    if source in ("cifar-fs", "fc100"):
        from metabench.data import cifar

        config = _configure(cifar.CifarConfig, {"split": source, **options}, source)
        return cifar.build(config, Path(data_dir) / "raw" / "cifar100", Path(data_dir), progress)
    if source == "miniimagenet":
        from metabench.data import miniimagenet

        config = _configure(miniimagenet.MiniImageNetConfig, options, source)
        return miniimagenet.build(config, Path(data_dir) / "raw" / "miniimagenet", Path(data_dir), progress)
    if source == "tieredimagenet":
        from metabench.data import tieredimagenet

        config = _configure(tieredimagenet.TieredImageNetConfig, options, source)
        return tieredimagenet.build(config, Path(data_dir) / "raw" / "tieredimagenet", Path(data_dir), progress)
    if source == "folder":
        from metabench.data import folder

        return folder.build(_configure(folder.FolderConfig, options, source), Path(data_dir), progress)
    raise MetabenchError(f"unknown dataset source {source!r}; choose one of {', '.join(SOURCES)}")


def check_options(source: str, options: dict[str, Any]) -> None:
    """Refuse, in one line, an option that ``source`` does not have (values are checked by
    ``fetch``: an empty ``source`` is a valid params file until the data is fetched)."""
    modules = {"cifar-fs": "cifar", "fc100": "cifar"}
    classes = {"glyphs": "GlyphsConfig", "omniglot": "OmniglotConfig", "cifar-fs": "CifarConfig", "fc100": "CifarConfig",
               "miniimagenet": "MiniImageNetConfig", "tieredimagenet": "TieredImageNetConfig", "folder": "FolderConfig"}  # fmt: skip
    if source not in classes:
        raise MetabenchError(f"data has no source {source!r}; choose from {', '.join(SOURCES)}")
    module = importlib.import_module(f"metabench.data.{modules.get(source, source)}")
    _refuse_unknown(getattr(module, classes[source]), options, source)


def _refuse_unknown(cls, options: dict[str, Any], source: str) -> None:
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise MetabenchError(f"data.{source} has no option {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")


def _configure(cls, options: dict[str, Any], source: str):
    _refuse_unknown(cls, options, source)
    return cls(**options)
