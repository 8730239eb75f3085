"""Attribution scores of a KAN's edges and nodes, and pruning to the essential graph.

Scores (computed on data ``x``, as in the KAN paper):

- ``edge[l][o, i] = mean_b |phi_{l,o,i}(x_b)|``: the magnitude of edge ``i -> o`` of layer ``l``;
- ``incoming[l][j] = max_i edge[l][j, i]`` and ``outgoing[l][i] = max_o edge[l][o, i]``: the
  paper's node scores (largest incoming / outgoing edge) of layer ``l``'s outputs / inputs;
- attribution, propagated back from the outputs so that a node matters only if what it feeds
  matters: every output node has importance 1; an edge receives the share of its output node's
  importance that its magnitude has among that node's incoming edges,
  ``edge_attribution[l][o, i] = node[l+1][o] * edge[l][o, i] / sum_i' edge[l][o, i']``;
  a node's importance is the sum over its outgoing edges, ``node[l][i] = sum_o
  edge_attribution[l][o, i]``. Importances are fractions: each layer's nodes sum to the number of
  outputs, so the thresholds of :func:`prune` are scale-free (1e-2 = one per cent).

:func:`prune` masks edges whose attribution is below ``edge_threshold``, removes hidden nodes (and,
optionally, inputs) whose importance is below ``node_threshold`` or that are left without a kept
incoming or outgoing edge, by slicing the layers (``KANLinear.select``), and returns a new model; the
original is never modified.

Multiplication nodes (:mod:`kanlab.mult`): a layer's edges end at *subnodes*, so ``edge``,
``edge_attribution``, ``incoming`` are per subnode; every subnode of a multiplication node receives
that node's whole importance (each factor matters as much as the product). A multiplication node is
pruned with its subnodes and their incoming edges, and it dies when any factor is left without a
kept incoming edge: that factor is the constant 0, so the product is dead. A kept multiplication
node keeps all its factors (its arity never changes).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal, overload

import torch
from torch import Tensor, nn

from kanlab._checks import check_float
from kanlab.models import check_kan_input
from kanlab.mult import group_all, layout, subnode_owner, to_subnodes

__all__ = ["Scores", "prune", "scores"]


@dataclass(frozen=True)
class Scores:
    """Edge and node scores of a KAN on some data (see the module docstring). ``L`` = depth."""

    edge: list[Tensor]  # L tensors (out, in): mean |phi| per edge
    edge_attribution: list[Tensor]  # L tensors (out, in): importance share of each edge
    node: list[Tensor]  # L+1 tensors (widths[l],): node importance; node[L] = 1
    incoming: list[Tensor]  # L tensors (out,): largest incoming edge of layer l's outputs
    outgoing: list[Tensor]  # L tensors (widths[l],): largest outgoing edge of layer l's inputs


@torch.no_grad()
def scores(model: Any, x: Tensor) -> Scores:
    """Edge and node scores of ``model`` on the inputs ``x`` (batch, widths[0])."""
    layers, x = check_kan_input(model, x)
    edge = [phi.abs().mean(0) for phi in model.activations(x)]  # (out, in) per layer
    attribution: list[Tensor] = [torch.empty(0)] * len(layers)
    lay = layout(model)
    n_out = lay[-1][0] + len(lay[-1][1])
    node = [torch.ones(n_out, dtype=x.dtype, device=x.device)]
    for l_idx in range(len(layers) - 1, -1, -1):
        e = edge[l_idx]
        total = e.sum(1, keepdim=True)  # (out, 1)
        share = torch.where(total > 0, e / total.clamp_min(torch.finfo(e.dtype).tiny), 0.0)
        sub = to_subnodes(node[0], *lay[l_idx + 1])  # (out,): a factor has its product's importance
        attribution[l_idx] = sub.unsqueeze(1) * share
        node.insert(0, attribution[l_idx].sum(0))
    return Scores(
        edge=edge,
        edge_attribution=attribution,
        node=node,
        incoming=[e.amax(1) for e in edge],
        outgoing=[e.amax(0) for e in edge],
    )


@overload
def prune(
    model: nn.Module,
    x: Tensor,
    *,
    node_threshold: float = ...,
    edge_threshold: float = ...,
    prune_inputs: Literal[False] = ...,
    keep_input_tolerance: float | None = ...,
) -> nn.Module: ...


@overload
def prune(
    model: nn.Module,
    x: Tensor,
    *,
    node_threshold: float = ...,
    edge_threshold: float = ...,
    prune_inputs: Literal[True],
    keep_input_tolerance: float | None = ...,
) -> tuple[nn.Module, list[int]]: ...


@torch.no_grad()
def prune(
    model: nn.Module,
    x: Tensor,
    *,
    node_threshold: float = 1e-2,
    edge_threshold: float = 3e-2,
    prune_inputs: bool = False,
    keep_input_tolerance: float | None = 1e-3,
) -> nn.Module | tuple[nn.Module, list[int]]:
    """A pruned copy of the KAN ``model``, scored on the inputs ``x`` (batch, widths[0]).

    Edges with attribution ``< edge_threshold`` are masked. Hidden nodes with importance
    ``< node_threshold``, or left without a kept incoming or outgoing edge, are removed (their
    layers' tensors sliced). With ``prune_inputs=True``, input
    variables with importance ``< node_threshold`` are removed too and the call returns
    ``(model, kept_inputs)``, ``kept_inputs`` the original indices of the remaining inputs (feed
    the pruned model ``x[:, kept_inputs]``); otherwise it returns the model alone. Thresholds of 0
    keep everything (outputs identical bit for bit). Outputs keep their nodes.

    ``keep_input_tolerance`` (default 1e-3; None = off, the old behaviour): an input that the
    thresholds would cut off (no kept path to an output, or removed by ``prune_inputs``) is kept
    if masking all its edges moves the model's output on ``x`` by more than this fraction of the
    output's standard deviation (RMS, largest over the outputs): a small share of the attribution
    can still be far more than the fit's error (e.g. ``exp(sin(pi x_1)) + 0.02 x_2``), and a
    formula without the input cannot be right. Such an input keeps its strongest edge and, from
    there, the strongest edge of each node on the way to an output (reviving those nodes).

    Raises:
        ValueError: a threshold < 0 or non-finite, non-finite ``x``, or a pruning that would remove
            every node of a hidden layer (or every input); the original model is untouched.
    """
    nt = check_float("node_threshold", node_threshold, minimum=0.0)
    et = check_float("edge_threshold", edge_threshold, minimum=0.0)
    if not isinstance(prune_inputs, bool):
        raise TypeError(f"prune_inputs must be a bool, got {prune_inputs!r}")
    if keep_input_tolerance is not None:
        keep_input_tolerance = check_float(
            "keep_input_tolerance", keep_input_tolerance, minimum=0.0
        )
    layers, x = check_kan_input(model, x)
    sc = scores(model, x)
    depth = len(layers)
    edge_ok = [a >= et for a in sc.edge_attribution]  # (out, in) per layer
    alive = [imp >= nt for imp in sc.node]  # (widths[l],) per node layer
    alive[-1] = torch.ones_like(alive[-1])
    if not prune_inputs:
        alive[0] = torch.ones_like(alive[0])
    lay = layout(model)
    first = 0 if prune_inputs else 1
    _settle(alive, edge_ok, first, lay)
    if keep_input_tolerance is not None:
        connected = _connected_inputs(alive, edge_ok, lay)
        for i in range(layers[0].in_features):
            if bool(connected[i]) or _input_effect(model, x, i) <= keep_input_tolerance:
                continue
            _keep_path(i, alive, edge_ok, sc.edge_attribution, lay)
        _settle(alive, edge_ok, first, lay)
    for level in range(depth):
        if not bool(alive[level].any()):
            what = "input" if level == 0 else f"hidden layer {level}"
            raise ValueError(
                f"pruning would remove every node of {what} (largest importance there: "
                f"{float(sc.node[level].max()):.3g}; node_threshold={nt:g}, "
                f"edge_threshold={et:g}); lower the thresholds"
            )
    keep = [torch.nonzero(a).flatten() for a in alive]  # kept node indices per node layer
    keep_sub = [
        torch.nonzero(to_subnodes(a, *lay[level])).flatten() for level, a in enumerate(alive)
    ]
    new = copy.deepcopy(model)
    for l_idx, la in enumerate(new.layers):
        dead = (~edge_ok[l_idx]).T.to(la.mask.dtype)  # (in, out)
        la.set_mask(la.mask * (1 - dead))
        new.layers[l_idx] = la.select(keep[l_idx], keep_sub[l_idx + 1])
    if hasattr(new, "widths"):
        new.widths = [int(k.numel()) for k in keep]
    if getattr(model, "has_mult", False):  # the kept nodes' split and arities
        new.n_sum = [int(a[:n_sum].sum()) for a, (n_sum, _) in zip(alive, lay, strict=True)]
        new.mult_arity = [
            [ar for ar, ok in zip(arities, a[n_sum:].tolist(), strict=True) if ok]
            for a, (n_sum, arities) in zip(alive, lay, strict=True)
        ]
        new.n_mult = [len(ar) for ar in new.mult_arity]
    if prune_inputs:
        return new, [int(i) for i in keep[0].tolist()]
    return new


def _settle(alive: list[Tensor], edge_ok: list[Tensor], first: int, lay: list) -> None:
    """A node also dies when it has no kept incoming edge (it would be a constant) or no kept
    outgoing edge (nothing reads it); repeat until nothing changes (at most one pass per layer).
    A multiplication node needs a kept incoming edge into every factor (subnode). Levels below
    ``first`` (the inputs, unless they may be pruned) are left alone. ``lay``: ``mult.layout``."""
    depth = len(edge_ok)
    for _ in range(depth + 1):
        changed = False
        for level in range(first, depth):
            read = to_subnodes(alive[level + 1], *lay[level + 1])  # (out,) alive subnodes
            now = alive[level] & (edge_ok[level] & read.unsqueeze(1)).any(0)
            if level > 0:
                fed = (edge_ok[level - 1] & alive[level - 1].unsqueeze(0)).any(1)  # (subnodes,)
                now = now & group_all(fed, *lay[level])
            changed = changed or not torch.equal(now, alive[level])
            alive[level] = now
        if not changed:
            break


def _connected_inputs(alive: list[Tensor], edge_ok: list[Tensor], lay: list) -> Tensor:
    """(widths[0],) bool: which inputs reach an output through kept edges and live nodes."""
    reach = alive[-1].clone()
    for level in range(len(edge_ok) - 1, -1, -1):
        read = to_subnodes(reach, *lay[level + 1])  # (subnodes,)
        reach = alive[level] & (edge_ok[level] & read.unsqueeze(1)).any(0)
    return reach


def _input_effect(model: Any, x: Tensor, i: int) -> float:
    """How far masking every edge of input ``i`` moves the model's output on ``x``: RMS change
    over the output's standard deviation, the largest over the outputs."""
    trial = copy.deepcopy(model)
    la = trial.layers[0]
    mask = la.mask.clone()
    mask[i] = 0
    la.set_mask(mask)
    before = model(x)  # (batch, out)
    change = (trial(x) - before).square().mean(0).sqrt()
    scale = before.std(0).clamp_min(torch.finfo(before.dtype).tiny)
    return float((change / scale).max())


def _keep_path(
    i: int, alive: list[Tensor], edge_ok: list[Tensor], attr: list[Tensor], lay: list
) -> None:
    """Keep input ``i`` and a path from it to an output: at each level the strongest outgoing
    edge (by attribution) of the current node; the nodes on the way are revived (a
    multiplication node on the way lives only if its other factors are fed: ``_settle`` says)."""
    alive[0][i] = True
    node = i
    for level in range(len(edge_ok)):
        read = to_subnodes(alive[level + 1], *lay[level + 1])
        if bool((edge_ok[level][:, node] & read).any()) and level > 0:
            return  # the node already feeds a live node through a kept edge
        sub = int(torch.argmax(attr[level][:, node]))  # the strongest subnode it feeds
        edge_ok[level][sub, node] = True
        node = subnode_owner(*lay[level + 1])[sub]
        alive[level + 1][node] = True
