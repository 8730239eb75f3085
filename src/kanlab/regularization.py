"""The KAN paper's sparsity regulariser, computed on the real edge activations.

For a layer with edge outputs ``phi_{o,i}(x_i)`` on a batch (``layer.activations(x)``, shape
``(batch, out, in)``):

- the L1 norm of an edge is the mean magnitude over the batch, ``|phi_{o,i}|_1 = mean_b |phi_{o,i}(x_{b,i})|``;
- the layer's L1 is the sum over its edges, ``|Phi|_1 = sum_{o,i} |phi_{o,i}|_1``;
- the layer's entropy is that of the normalised edge norms,
  ``S(Phi) = -sum_{o,i} p_{o,i} log p_{o,i}`` with ``p_{o,i} = |phi_{o,i}|_1 / |Phi|_1``.

The regulariser is ``sum_layers (lamb_l1 * |Phi|_1 + lamb_entropy * S(Phi))`` (paper eq. 2.20); the
training loss adds it multiplied by ``lamb``. A tiny ``eps`` keeps the normalisation and the logarithm
finite (and differentiable) when every edge, or one edge, is exactly zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from kanlab._checks import check_float

__all__ = [
    "edge_l1",
    "layer_entropy",
    "layer_l1",
    "regularizer_from_norms",
    "sparsity_regularizer",
]

EPS = 1e-12  # in the normalisation and the logarithm; far below any meaningful edge norm


def edge_l1(acts: Tensor) -> Tensor:
    """Edge norms ``(batch, out, in) -> (out, in)``: the mean over the batch of ``|phi_{o,i}|``."""
    if acts.dim() != 3:
        raise ValueError(f"acts must have shape (batch, out, in), got {tuple(acts.shape)}")
    return acts.abs().mean(dim=0)


def layer_l1(acts: Tensor) -> Tensor:
    """The layer's L1: the sum of its edge norms (a 0-dim tensor)."""
    return edge_l1(acts).sum()


def layer_entropy(acts: Tensor, *, eps: float = EPS) -> Tensor:
    """Entropy of the normalised edge norms of one layer (a 0-dim tensor, >= 0)."""
    return regularizer_from_norms([edge_l1(acts)], lamb_l1=0.0, lamb_entropy=1.0, eps=eps)


def regularizer_from_norms(
    norms: Sequence[Tensor],
    *,
    lamb_l1: float = 1.0,
    lamb_entropy: float = 2.0,
    eps: float = EPS,
) -> Tensor:
    """The regulariser from each layer's edge norms ``(out, in)`` (see :func:`edge_l1`).

    The split lets data-parallel training all-reduce the norms (means over the *global* batch)
    before the non-linear entropy is taken.
    """
    lamb_l1 = check_float("lamb_l1", lamb_l1, minimum=0.0)
    lamb_entropy = check_float("lamb_entropy", lamb_entropy, minimum=0.0)
    if len(norms) == 0:
        raise ValueError("need at least one layer's activations")
    total = norms[0].new_zeros(())
    for n in norms:
        p = n / (n.sum() + eps)
        total = total + lamb_l1 * n.sum() - lamb_entropy * (p * torch.log(p + eps)).sum()
    return total


def sparsity_regularizer(
    acts: Sequence[Tensor],
    *,
    lamb_l1: float = 1.0,
    lamb_entropy: float = 2.0,
    eps: float = EPS,
) -> Tensor:
    """``sum_l (lamb_l1 * |Phi_l|_1 + lamb_entropy * S(Phi_l))`` over the layers' activations.

    acts: one ``(batch, out, in)`` tensor per layer, as returned by ``KAN.activations(x)``.
    Returns a 0-dim tensor (differentiable with respect to the activations).
    """
    norms = [edge_l1(a) for a in acts]
    return regularizer_from_norms(norms, lamb_l1=lamb_l1, lamb_entropy=lamb_entropy, eps=eps)
