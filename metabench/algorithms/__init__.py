"""The algorithm registry: ``list_algorithms()`` and ``get_algorithm(name)``.

Adding an algorithm is one module (a subclass of ``Algorithm`` with a ``Hyper`` dataclass)
plus one line in ``REGISTRY`` below. Reference methods (``trained = False``, e.g. pixel nearest
neighbour) are registered the same way; they are evaluated, never trained.
"""

from __future__ import annotations

from metabench import MetabenchError
from metabench.algorithms.anil import ANIL
from metabench.algorithms.base import Algorithm, TaskShape, make_hyper
from metabench.algorithms.baseline import Baseline, BaselinePP
from metabench.algorithms.maml import FOMAML, MAML
from metabench.algorithms.matchingnet import MatchingNet
from metabench.algorithms.metalstm import MetaLSTM
from metabench.algorithms.metaoptnet import MetaOptNet
from metabench.algorithms.metasgd import MetaSGD
from metabench.algorithms.pixelnn import PixelNN
from metabench.algorithms.protonet import ProtoNet
from metabench.algorithms.relationnet import RelationNet
from metabench.algorithms.reptile import Reptile
from metabench.algorithms.siamese import Siamese

REGISTRY: dict[str, type[Algorithm]] = {
    "protonet": ProtoNet,
    "maml": MAML,
    "fomaml": FOMAML,
    "reptile": Reptile,
    "metasgd": MetaSGD,
    "anil": ANIL,
    "matchingnet": MatchingNet,
    "relationnet": RelationNet,
    "siamese": Siamese,
    "baseline": Baseline,
    "baselinepp": BaselinePP,
    "metaoptnet": MetaOptNet,
    "metalstm": MetaLSTM,
    "pixelnn": PixelNN,
}


def list_algorithms() -> list[str]:
    return sorted(REGISTRY)


def get_algorithm(name: str) -> type[Algorithm]:
    if name not in REGISTRY:
        raise MetabenchError(f"unknown algorithm {name!r}; choose one of {', '.join(list_algorithms())}")
    return REGISTRY[name]


def build_algorithm(name: str, hyper: dict | None, task: TaskShape, device) -> Algorithm:
    cls = get_algorithm(name)
    return cls(make_hyper(cls.Hyper, hyper, name), task, device)


__all__ = ["Algorithm", "REGISTRY", "TaskShape", "build_algorithm", "get_algorithm", "list_algorithms"]
