"""KAN 2.0 attribution scores of a KAN's nodes, edges and inputs, and pruning of inputs.

The definitions of Liu et al. 2024 ("KAN 2.0: Kolmogorov-Arnold Networks Meet Science", section on
identifying important features), computed on data ``x`` (batch, widths[0]). Layer ``l`` has edge
functions ``phi_{l,o,i}`` from node ``i`` of layer ``l`` to subnode ``o`` of layer ``l+1``; the
subnode's value is the sum of its incoming edges, ``s_{l+1,o} = sum_i phi_{l,o,i}(x_{l,i})``.
With ``std`` the standard deviation over the batch (population, ``1/batch``):

- ``E[l][o, i] = std_b phi_{l,o,i}(x_b)``: the edge's spread over the data;
- ``N[l+1][o] = std_b s_{l+1,o}``: the spread of the subnode it feeds;
- output nodes score ``A[L][j] = 1``;
- backward, layer by layer: each node's score goes to its subnodes (``sub = subnode_scores(...)``),
  an edge's score is its subnode's score times its share of that subnode's spread,
  ``B[l][o, i] = sub[l+1][o] * E[l][o, i] / N[l+1][o]`` (0 where ``N = 0``: a constant subnode
  carries no information), and a node's score is the sum over its outgoing edges,
  ``A[l][i] = sum_o B[l][o, i]``;
- input scores are ``A[0]``.

In a plain KAN subnodes are nodes and ``subnode_scores`` is the identity. A multiplication node
(KAN 2.0's MultKAN) multiplies a group of subnodes; a product needs every factor, so the node's
score is passed in full to each of its factor subnodes (not shared among them); see
:func:`subnode_scores`.

How this differs from :func:`kanlab.prune.scores` (the KAN paper's, used by :func:`kanlab.prune`):
that one measures an edge by its mean magnitude ``mean_b |phi|`` and hands a node's importance to
its incoming edges in proportion to those magnitudes, so each layer's importances sum to the number
of outputs. The mean magnitude counts a constant offset of an edge as importance although a
constant can be moved into any other edge (or the next layer's function) without changing the
model; the standard deviation counts only how much the edge *varies* with the data, which is what
carries information about the inputs. That is why KAN 2.0 switched to it: an input that the model
ignores has edges that are (nearly) constant on the data, so its score falls to (nearly) zero even
when its edges are offset. The ratio ``E / N`` is not a share: when incoming edges cancel each
other, their ratios can sum to more than 1, so these scores are not fractions (the output
nodes score 1 each; pykan averages over outputs instead, which divides every score by the number of
outputs and does not change any ratio between scores).

:func:`prune_input` removes the inputs whose score is below ``threshold`` times the largest input
score, by slicing the first layer (``KANLinear.select``), in a copy of the model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from kanlab._checks import check_float
from kanlab.models import check_kan_input

__all__ = ["Attribution", "attribute", "prune_input", "subnode_scores"]


@dataclass(frozen=True)
class Attribution:
    """KAN 2.0 attribution scores of a KAN on some data (see the module docstring); ``L`` = depth."""

    node: list[Tensor]  # L+1 tensors (widths[l],): node scores A[l]; node[L] = 1
    edge: list[Tensor]  # L tensors (out_features, in_features) of layer l: edge scores B[l]
    input: Tensor  # (widths[0],): input scores, = node[0]


def subnode_scores(model: Any, level: int, node_score: Tensor) -> Tensor:
    """The scores of the subnodes of node layer ``level`` (>= 1) given its node scores.

    ``node_score`` (widths[level],) -> (layers[level-1].out_features,). A plain KAN's subnodes are
    its nodes: the scores are returned unchanged. In a KAN with multiplication nodes
    (``model.has_mult``; layer ``level`` has ``n_sum[level]`` sum nodes, then multiplication nodes
    with ``mult_arity[level]`` factors each), the sum nodes' subnodes are the nodes themselves and
    each multiplication node passes its whole score to every one of its factor subnodes (a product
    needs each factor; the factors do not share the node's importance).
    """
    if not getattr(model, "has_mult", False):
        return node_score
    n_sum = int(model.n_sum[level])
    arity = torch.as_tensor(list(model.mult_arity[level]), device=node_score.device)
    mult = node_score[n_sum:].repeat_interleave(arity)  # (sum(arity),)
    return torch.cat([node_score[:n_sum], mult])


@torch.no_grad()
def attribute(model: nn.Module, x: Tensor) -> Attribution:
    """KAN 2.0 attribution scores of the KAN ``model`` on the inputs ``x`` (batch >= 2, widths[0]).

    Returns node scores per node layer, edge scores per layer ``(out, in)`` and input scores (the
    definitions and how they differ from :func:`kanlab.prune.scores` are in the module docstring).

    Raises:
        TypeError: ``model`` is not a kanlab KAN or ``x`` not a tensor.
        ValueError: ``x`` has the wrong shape, fewer than 2 rows (a spread needs two samples), or
            non-finite values.
    """
    layers, x = check_kan_input(model, x)
    if x.shape[0] < 2:
        raise ValueError(f"x needs at least 2 rows to measure spreads, got {x.shape[0]}")
    acts = model.activations(x)  # per layer (batch, out, in)
    spread = [phi.std(0, unbiased=False) for phi in acts]  # E[l]: (out, in)
    sub_spread = [phi.sum(-1).std(0, unbiased=False) for phi in acts]  # N[l+1]: (out,)
    n_out = int(getattr(model, "widths", [None, layers[-1].out_features])[-1])
    node = [torch.ones(n_out, dtype=x.dtype, device=x.device)]
    edge: list[Tensor] = [torch.empty(0)] * len(layers)
    for l_idx in range(len(layers) - 1, -1, -1):
        sub = subnode_scores(model, l_idx + 1, node[0])  # (out,)
        n = sub_spread[l_idx]
        ratio = torch.where(n > 0, sub / n.clamp_min(torch.finfo(n.dtype).tiny), 0.0)  # (out,)
        edge[l_idx] = ratio.unsqueeze(1) * spread[l_idx]  # (out, in)
        node.insert(0, edge[l_idx].sum(0))
    return Attribution(node=node, edge=edge, input=node[0])


@torch.no_grad()
def prune_input(
    model: nn.Module, x: Tensor, *, threshold: float = 1e-2
) -> tuple[nn.Module, list[int]]:
    """A copy of the KAN ``model`` without the inputs that score below ``threshold`` times the
    largest input score (:func:`attribute` on ``x`` (batch, widths[0])).

    Returns ``(pruned, kept_inputs)``: ``kept_inputs`` are the original indices of the remaining
    inputs, feed ``pruned`` with ``x[:, kept_inputs]``. The first layer is sliced with
    ``KANLinear.select`` (as :func:`kanlab.prune` does with ``prune_inputs=True``), so the kept
    edges compute the same functions; the removed edges' means on ``x`` are added to the top
    input's edge to the same output (to a symbolic edge's ``d``, or to every spline coefficient:
    B-splines sum to 1 inside the grid), so the prediction on ``x`` changes only by the removed
    edges' variation. The original model is not modified.

    Raises:
        ValueError: ``threshold`` not in [0, 1] (above 1 every input would go), every input scoring
            0, or the errors of :func:`attribute`.
    """
    th = check_float("threshold", threshold, minimum=0.0)
    if th > 1.0:
        raise ValueError(
            f"threshold must be <= 1 (relative to the largest input score), got {threshold!r}"
        )
    score = attribute(model, x).input
    top = float(score.max())
    if not top > 0.0:
        raise ValueError("every input scores 0 on x (the model is constant there); nothing to keep")
    keep = torch.nonzero(score >= th * top).flatten()  # the top input always stays
    gone = torch.nonzero(score < th * top).flatten()
    offset = model.layers[0].activations(x)[:, :, gone].sum(-1).mean(0)  # (out,): dropped means
    new = copy.deepcopy(model)
    first = new.layers[0]
    new.layers[0] = first.select(keep, torch.arange(first.out_features, device=keep.device))
    order = torch.argsort(score[keep], descending=True).tolist()  # kept inputs, best first
    for o, c in enumerate(offset.tolist()):
        any(_add_constant(new.layers[0], i, o, c) for i in order)  # the first edge that holds it
    if hasattr(new, "widths"):
        new.widths = [int(keep.numel()), *list(new.widths)[1:]]
    return new, [int(i) for i in keep.tolist()]


def _add_constant(layer: Any, i: int, o: int, c: float) -> bool:
    """Add the constant ``c`` to edge ``i -> o`` of ``layer``: to ``d`` of a symbolic edge, else to
    every spline coefficient (B-splines sum to 1 inside the grid's span). False, and nothing
    changed, when the edge cannot hold it (masked, or a zero spline scale)."""
    if c == 0.0:
        return True
    sym = layer.symbolic
    if float(layer.mask[i, o]) == 0.0:
        return False
    if sym is not None and float(sym.mask[i, o]) > 0:
        sym.affine[i, o, 3] += c
        return True
    s = float(layer.scale_spline[i, o])
    if s == 0.0:
        return False
    layer.coef[i, :, o] += c / s
    return True
