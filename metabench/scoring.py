"""Scoring modes: whether a query's prediction may depend on the other queries of its episode.

Batch norm decides it. A network with running statistics maps each image on its own; one that
normalises with the statistics of the batch it sees (the MAML family, Reptile, the LSTM
meta-learner: they keep no running statistics) lets every query move the others' logits. Papers
report either, often without saying so, and the two differ by points (fmu2/PyTorch-MAML's README;
Nichol et al. 2018, Table 2, with and without transduction). So every method with batch norm is
scored both ways from the same checkpoint, on the same episodes:

* ``transductive``: the support set and the query set are each normalised with their own batch
  statistics, the queries together (cbfinn/maml's evaluation, supervised-reptile's
  ``--transductive``, LearningToCompare_FSL's test, which never calls ``eval()``); ANIL's
  embeds support and queries as one batch, as it always has;
* ``inductive``: no query sees another. A network with running statistics uses them (the
  evaluation-mode default of every metric method's reference); one without normalises every
  image with the statistics of the support set alone, the labelled data a deployed model has
  (MetaBN in Bronskill et al. 2020, "TaskNorm", Section 3; fmu2/PyTorch-MAML's inductive setting
  keeps per-episode running statistics of the support passes to the same end). It costs what the
  transductive pass costs. supervised-reptile's non-transductive evaluation instead forwards the
  support set with each query in turn (N·K + 1 images per query: about 25 times the cost for
  5-shot), whose statistics include that query's own one image.

A method without batch norm (pixel nearest neighbour) is inductive only.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

INDUCTIVE = "inductive"
TRANSDUCTIVE = "transductive"
MODES = (INDUCTIVE, TRANSDUCTIVE)


def check_modes(modes: tuple[str, ...], available: tuple[str, ...], algorithm: str) -> None:
    """Refuse, in one line, a mode ``algorithm`` cannot be scored in."""
    from metabench import MetabenchError

    unknown = [mode for mode in modes if mode not in available]
    if unknown:
        raise MetabenchError(
            f"{algorithm} cannot be scored {unknown[0]!r}: it is scored {' or '.join(available)} "
            f"(metabench.scoring); choose one of those"
        )


def _norm_with_leading_statistics(norm: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, rows: int) -> torch.Tensor:
    """``norm`` applied to ``x`` with the batch statistics of its first ``rows`` images (biased
    variance, as batch norm normalises), every row alike.

    The statistics come from a training-mode ``F.batch_norm`` of those rows into fresh buffers
    (momentum 1: the buffers become the batch's mean and unbiased variance), which on CPU is
    about twice as fast as ``torch.var_mean`` over the batch and spatial dimensions."""
    mean = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
    variance = torch.ones_like(mean)
    F.batch_norm(x[:rows], mean, variance, None, None, True, 1.0, norm.eps)
    count = x[:rows].numel() // x.shape[1]
    biased = variance * ((count - 1) / count) if count > 1 else torch.zeros_like(variance)
    return F.batch_norm(x, mean, biased, norm.weight, norm.bias, False, 0.0, norm.eps)


@contextlib.contextmanager
def statistics_of_leading_rows(networks: list[nn.Module], rows: int) -> Iterator[None]:
    """Within the block, every batch norm of ``networks`` normalises its whole input with the
    statistics of the input's first ``rows`` images: forward ``cat([support, query])`` and each
    query is normalised with the support set's statistics alone (the inductive mode of a network
    without running statistics). Running statistics are neither used nor updated; parameters are
    read at call time, so ``torch.func.functional_call`` with adapted weights works inside."""
    norms = [m for network in networks for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.forward = types.MethodType(lambda self, x: _norm_with_leading_statistics(self, x, rows), norm)
    try:
        yield
    finally:
        for norm in norms:
            del norm.forward
