"""Prototypical Networks' logits against a hand computation."""

import torch

from metabench.algorithms.protonet import prototype_logits, prototypes


def test_prototypes_are_class_means():
    support = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [0.0, 2.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    torch.testing.assert_close(
        prototypes(support, labels, 2), torch.tensor([[1.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    )


def test_logits_are_negative_squared_distances_to_class_means():
    support = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [0.0, 2.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    query = torch.tensor([[1.0, 1.0], [3.0, 3.0]], dtype=torch.float64)
    # prototypes (1, 0) and (0, 3): by hand, query (1,1): 1 and 1+4=5; query (3,3): 4+9=13 and 9
    expected = -torch.tensor([[1.0, 5.0], [13.0, 9.0]], dtype=torch.float64)
    torch.testing.assert_close(prototype_logits(support, labels, query, 2), expected)


def test_label_order_of_support_does_not_matter():
    generator = torch.Generator().manual_seed(0)
    support = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    labels = torch.tensor([2, 0, 1, 1, 0, 2])
    query = torch.randn(4, 5, generator=generator, dtype=torch.float64)
    order = torch.randperm(6, generator=generator)
    torch.testing.assert_close(
        prototype_logits(support, labels, query, 3), prototype_logits(support[order], labels[order], query, 3)
    )
