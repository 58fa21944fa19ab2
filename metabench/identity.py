"""What makes two runs the same run: what they do, never the bytes of the code that did it.

A run's identity is everything that decides its numbers:

* its resolved training settings and the dataset's checksum;
* the declared **behaviour versions** of the code that computes it: the algorithm class and
  each of its parents (``Algorithm.version``, so a MAML bump reaches FOMAML, Meta-SGD and ANIL),
  the backbone it builds (``Conv4.version``) and the shared ``PROTOCOL`` below;
* what rounds its floats: torch's thread count, the number of ranks, the torch version, the
  device type and the CPU capability that selects torch's kernels.

Docstrings, refactors, messages, tracking, the launcher and file handling are not part of it, so
they are free to change. A change of behaviour bumps a version with a release note; the golden
canary (``tests/test_canary.py``) fails when behaviour changes without one. The git commit and
a digest of the sources are recorded beside the identity as provenance and never compared, the
model of lm-evaluation-harness's task ``VERSION`` and TensorFlow Datasets' ``RELEASE_NOTES``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from metabench import sources
from metabench.algorithms import Algorithm, get_algorithm
from metabench.models import BACKBONES

# The shared protocol: the training loop (episode sampling from the seed, augmentation, the order
# of steps, divergence stops), the fixed validation and test episodes, evaluation (episode
# accuracies, the embedding cache) and checkpoint selection (best validation accuracy, ties to
# the earlier iteration). Bump it, with a note, when any of them changes what a run computes.
PROTOCOL_VERSION = 1
PROTOCOL_NOTES = {
    1: "Training loop, fixed episodes, evaluation and best-validation checkpoint selection as of 806d491.",
}

# What scoring a checkpoint computes beyond the protocol's headline episode accuracies: which
# scoring modes (metabench.scoring) and files an evaluation writes. Not part of a run's identity:
# a bump re-evaluates every run (the grid compares it with metrics.json) and retrains none.
EVALUATION_VERSION = 2
EVALUATION_NOTES = {
    1: "The headline scoring mode only (episodes.csv), as of 806d491.",
    2: "Every method with batch norm scored inductively and transductively from one checkpoint "
    "(metabench.scoring): the other mode in episodes.<mode>.csv, both under metrics.json's modes.",
}


def algorithm_versions(cls: type[Algorithm]) -> dict[str, int]:
    """The declared version of ``cls`` and of every parent that declares one, by class name."""
    return {
        klass.__name__: klass.__dict__["version"]
        for klass in cls.__mro__
        if isinstance(klass, type) and issubclass(klass, Algorithm) and "version" in klass.__dict__
    }


def behaviour(algorithm: str, hyper: Any) -> dict[str, Any]:
    """The declared versions of everything that computes a run of ``algorithm`` with ``hyper``."""
    found: dict[str, Any] = {"algorithm": algorithm_versions(get_algorithm(algorithm))}
    backbone = getattr(hyper, "backbone", None)
    if backbone is not None:
        found["backbone"] = {backbone: BACKBONES[backbone].version}
    found["protocol"] = PROTOCOL_VERSION
    return found


# Instruction-set extensions beyond torch's capability level that make oneDNN pick other float32
# kernels (an AMX Xeon and an AVX-512 EPYC are both "AVX512" to ATen, and round differently), as
# torch.cpu reports them; and the environment variables that override the kernels' choice.
ISA_PROBES = {
    "avx512_bf16": "_is_avx512_bf16_supported",
    "vnni": "_is_vnni_supported",
    "amx_tile": "_is_amx_tile_supported",
    "amx_fp16": "_is_amx_fp16_supported",
}
KERNEL_ENVIRONMENT = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_CBWR")


def cpu_capability() -> str:
    """torch's kernel level (``AVX512``, ``AVX2``, ...) with the extensions in ``ISA_PROBES``."""
    extensions = [name for name, probe in ISA_PROBES.items() if getattr(torch.cpu, probe, lambda: False)()]
    return "+".join([torch.backends.cpu.get_cpu_capability(), *extensions])


def platform(device: torch.device) -> dict[str, str]:
    """What picks the kernels that round a run's floats: torch, the device type, the CPU, and
    any environment variable that overrides the kernels' choice."""
    found = {"torch": str(torch.__version__), "device": device.type, "cpu": cpu_capability()}
    if device.type == "cuda":
        found["gpu"] = torch.cuda.get_device_name(device)
    for name in KERNEL_ENVIRONMENT:
        if os.environ.get(name):
            found[name.lower()] = os.environ[name]
    return found


def run_identity(
    settings: dict[str, Any], dataset_checksum: str, versions: dict[str, Any], threads: int, ranks: int, device
) -> dict[str, Any]:
    """What must match for a saved state to be resumed, or a finished run to be kept."""
    found = {
        "config": settings,
        "dataset": dataset_checksum,
        "behaviour": versions,
        "threads": threads,
        **platform(device),
    }
    if ranks > 1:  # the ranks sum gradients in another order than one process
        found["ranks"] = ranks
    return found


def differences(saved: dict[str, Any], current: dict[str, Any]) -> str:
    """The parts of two identities that differ, for an error message (``config.lr, behaviour``)."""
    saved_config, config = saved.get("config") or {}, current.get("config") or {}
    changed = [
        f"config.{key}" for key in sorted(set(saved_config) | set(config)) if saved_config.get(key) != config.get(key)
    ]
    changed += [
        key for key in sorted(set(saved) | set(current)) if key != "config" and saved.get(key) != current.get(key)
    ]
    return ", ".join(changed) or "nothing"


# the modules every training run executes besides its algorithm's own (found by import_closure)
TRAINING = (
    "metabench.runner",
    "metabench.training",
    "metabench.prepared",
    "metabench.episodes",
    "metabench.config",
    "metabench.evaluation",
)


def training_sources(algorithm: str) -> list[Path]:
    """The files that decide what ``algorithm`` trains: its module and base classes, the
    backbones they build, the trainer, episodes, configuration and validation."""
    cls = get_algorithm(algorithm)
    modules = {klass.__module__ for klass in cls.__mro__ if klass.__module__.startswith(sources.PACKAGE)}
    modules.add(cls.Hyper.__module__)
    closure = sources.import_closure(*modules)
    trainer = [sources.ROOT / (name.replace(".", "/") + ".py") for name in TRAINING]
    # the trainer's own helpers (tracking, checkpoint files, the store) do not change what is learnt
    return sorted(set(closure) | set(trainer))


def provenance(algorithm: str) -> dict[str, Any]:
    """Where a run's code came from: recorded with every run for a reader, never compared."""
    return {"git_commit": sources.git_commit(), "source_digest": sources.digest(training_sources(algorithm))}
