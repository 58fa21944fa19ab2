"""Published accuracies (%) to stand beside ours, with the protocol they were measured under.

Source: the papers' tables as collected in shared/DESIGN.md (Conv-4 backbone unless noted).
Omniglot numbers in these papers use 1,200 training characters plus rotations as new classes
(the Vinyals-style protocol) at 28×28; metabench's ``omniglot`` store uses the Lake split without
rotations by default, so compare with care. miniImageNet reproductions commonly land 1-3 points
below the papers.
"""

from __future__ import annotations

# (dataset family, algorithm, ways, shots) -> (accuracy %, ± as published or None, citation)
PUBLISHED: dict[tuple[str, str, int, int], tuple[float, float | None, str]] = {
    ("omniglot", "maml", 5, 1): (98.7, 0.4, "Finn et al. 2017"),
    ("omniglot", "maml", 5, 5): (99.9, 0.1, "Finn et al. 2017"),
    ("omniglot", "maml", 20, 1): (95.8, 0.3, "Finn et al. 2017"),
    ("omniglot", "maml", 20, 5): (98.9, 0.2, "Finn et al. 2017"),
    ("omniglot", "fomaml", 5, 1): (98.3, 0.5, "Finn et al. 2017"),
    ("omniglot", "fomaml", 5, 5): (99.2, 0.2, "Finn et al. 2017"),
    ("omniglot", "fomaml", 20, 1): (89.4, 0.5, "Finn et al. 2017"),
    ("omniglot", "fomaml", 20, 5): (97.9, 0.1, "Finn et al. 2017"),
    ("omniglot", "protonet", 5, 1): (98.8, None, "Snell et al. 2017"),
    ("omniglot", "protonet", 5, 5): (99.7, None, "Snell et al. 2017"),
    ("omniglot", "protonet", 20, 1): (96.0, None, "Snell et al. 2017"),
    ("omniglot", "protonet", 20, 5): (98.9, None, "Snell et al. 2017"),
    ("miniimagenet", "maml", 5, 1): (48.70, 1.84, "Finn et al. 2017"),
    ("miniimagenet", "maml", 5, 5): (63.11, 0.92, "Finn et al. 2017"),
    ("miniimagenet", "fomaml", 5, 1): (48.07, 1.75, "Finn et al. 2017"),
    ("miniimagenet", "fomaml", 5, 5): (63.15, 0.91, "Finn et al. 2017"),
    ("miniimagenet", "protonet", 5, 1): (49.42, 0.78, "Snell et al. 2017"),
    ("miniimagenet", "protonet", 5, 5): (68.20, 0.66, "Snell et al. 2017"),
}

PROTOCOLS = {
    "omniglot": "papers: 1,200 training characters + rotations as classes, 28×28; MAML 600 test tasks, "
    "ProtoNets 1,000 episodes and 60-way training",
    "miniimagenet": "papers: Ravi & Larochelle split, 84×84, 600 test episodes (MAML: 32 filters)",
}


def family(dataset: str) -> str:
    """``omniglot-vinyals-rot`` and ``omniglot`` both belong to the omniglot family."""
    return dataset.split("-")[0]


def lookup(dataset: str, algorithm: str, ways: int, shots: int) -> tuple[float, float | None, str] | None:
    return PUBLISHED.get((family(dataset), algorithm, ways, shots))
