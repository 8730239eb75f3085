"""Multiplication nodes (KAN 2.0's MultKAN): the node operation and the node <-> subnode maps.

A plain KAN layer's nodes are *sum nodes*: node ``o`` of layer ``l+1`` is ``sum_i phi_{o,i}(x_i)``
over the nodes ``x_i`` of layer ``l``. KAN 2.0 (Liu et al., 2024, "KAN 2.0: Kolmogorov-Arnold
Networks Meet Science") adds *multiplication nodes*: a layer's widths entry ``[n_sum, n_mult]``
gives ``n_sum`` sum nodes followed by ``n_mult`` multiplication nodes. Multiplication node ``j``
multiplies ``arity_j >= 2`` *subnodes*; each subnode is itself a sum of edge functions, exactly
like a sum node. So the edge layer feeding layer ``l+1`` (a plain :class:`kanlab.KANLinear`) has
``n_sub = n_sum + sum(arities)`` outputs (subnodes), and the node values are

    node[o] = sub[o]                                   for o < n_sum      (sum nodes)
    node[n_sum + j] = prod_{t < arity_j} sub[s_j + t]  for j < n_mult     (multiplication nodes)

with ``s_j = n_sum + sum(arities[:j])``: node ``j``'s group of consecutive subnodes.
:func:`combine` is that map; a product of arity ``a`` costs ``a - 1`` multiplies per sample.

Conventions (``kanlab.KAN`` attributes): ``widths[l]`` counts the NODES of layer ``l`` (what layer
``l``'s edges read), ``n_sum[l]``/``n_mult[l]`` split it (``n_mult[0] = 0``: the inputs are plain),
``mult_arity[l]`` lists the arity of each multiplication node of layer ``l`` (``[]`` where none).
A config's widths entry ``[n, 0]`` is the plain int ``n``, so a KAN without multiplication nodes is
the same model, config and file as before multiplication nodes existed.

The helpers here are pure (plain ints and tensors); :mod:`kanlab.config` validates with them and
:mod:`kanlab.models`, :mod:`kanlab.prune`, :mod:`kanlab.symbolic` and :mod:`kanlab.plot` use the
node <-> subnode maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from kanlab._checks import check_int

__all__ = [
    "combine",
    "group_all",
    "layer_arities",
    "layout",
    "mult_flops",
    "n_subnodes",
    "normalize_arity",
    "normalize_widths",
    "split_widths",
    "subnode_groups",
    "subnode_owner",
    "to_subnodes",
    "widths_label",
]

Width = int | tuple[int, int]


def _is_seq(value: object) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def normalize_widths(widths: object) -> tuple[Width, ...]:
    """KAN widths in normal form: the input entry an int >= 1, every later entry an int >= 1 (sum
    nodes only) or a tuple ``(n_sum, n_mult)`` with ``n_mult >= 1`` (a pair with ``n_mult == 0`` is
    the int ``n_sum``). Errors name the offending entry."""
    if not _is_seq(widths):
        raise TypeError(
            f"widths must be a sequence of ints or [n_sum, n_mult] pairs, got {widths!r}"
        )
    assert isinstance(widths, Sequence)
    if len(widths) < 2:
        raise ValueError(
            f"widths must have at least two entries (inputs, outputs), got {list(widths)}"
        )
    out: list[Width] = []
    for i, w in enumerate(widths):
        if not _is_seq(w):
            out.append(check_int(f"widths[{i}]", w, minimum=1))
            continue
        if i == 0:
            raise ValueError(
                f"widths[0] (the inputs) must be an int, got {list(w)!r}: "
                "multiplication nodes need edges feeding them"
            )
        if len(w) != 2:
            raise ValueError(f"widths[{i}] must be an int or a pair [n_sum, n_mult], got {w!r}")
        n_sum = check_int(f"widths[{i}][0] (n_sum)", w[0], minimum=0)
        n_mult = check_int(f"widths[{i}][1] (n_mult)", w[1], minimum=0)
        if n_sum + n_mult < 1:
            raise ValueError(f"widths[{i}] must have at least one node, got {list(w)!r}")
        out.append((n_sum, n_mult) if n_mult else n_sum)
    return tuple(out)


def widths_label(widths: Sequence[int | Sequence[int]]) -> str:
    """Widths as a compact label: ints as they are, a layer ``(n_sum, n_mult)`` as
    ``"{n_sum}+{n_mult}x"``, comma-separated: ``(2, (2, 1), 1) -> "2,2+1x,1"`` (what sweeps and
    reports print)."""
    return ",".join(str(w) if not _is_seq(w) else f"{w[0]}+{w[1]}x" for w in widths)


def split_widths(widths: Sequence[Width]) -> tuple[list[int], list[int]]:
    """``(n_sum, n_mult)``: the sum and multiplication node counts of each layer of normalised
    widths (``n_mult[l] = 0`` for an int entry)."""
    n_sum = [w if isinstance(w, int) else w[0] for w in widths]
    n_mult = [0 if isinstance(w, int) else w[1] for w in widths]
    return n_sum, n_mult


def normalize_arity(mult_arity: object, n_mult: Sequence[int]) -> int | tuple[tuple[int, ...], ...]:
    """``mult_arity`` in normal form for layers with ``n_mult`` multiplication nodes each.

    One int >= 2 for every multiplication node, or one sequence per layer (inputs first) of one
    arity per multiplication node. Equal arities collapse to the int; with no multiplication node
    at all the arity is meaningless and becomes the default 2 (so configs compare equal)."""
    if not _is_seq(mult_arity):
        arity = check_int("mult_arity", mult_arity, minimum=2)
        return arity if sum(n_mult) else 2
    assert isinstance(mult_arity, Sequence)
    if len(mult_arity) != len(n_mult):
        raise ValueError(
            f"mult_arity must be one int or one sequence per layer of widths ({len(n_mult)}), "
            f"got {len(mult_arity)}: {mult_arity!r}"
        )
    per_layer: list[tuple[int, ...]] = []
    for l_idx, (ar, m) in enumerate(zip(mult_arity, n_mult, strict=True)):
        if not _is_seq(ar) or len(ar) != m:
            raise ValueError(
                f"mult_arity[{l_idx}] must list one arity per multiplication node of layer "
                f"{l_idx} ({m}), got {ar!r}"
            )
        per_layer.append(
            tuple(check_int(f"mult_arity[{l_idx}][{j}]", a, minimum=2) for j, a in enumerate(ar))
        )
    values = {a for ar in per_layer for a in ar}
    if len(values) <= 1:
        return values.pop() if values else 2
    return tuple(per_layer)


def layer_arities(
    mult_arity: int | Sequence[Sequence[int]], n_mult: Sequence[int]
) -> list[list[int]]:
    """The arity of each multiplication node, per layer (``[]`` where there is none), from a
    normalised ``mult_arity``."""
    if isinstance(mult_arity, int):
        return [[mult_arity] * m for m in n_mult]
    return [list(ar) for ar in mult_arity]


def n_subnodes(n_sum: int, arities: Sequence[int]) -> int:
    """Subnodes feeding a layer of ``n_sum`` sum nodes and multiplication nodes of ``arities``: the
    ``out_features`` of the edge layer before it."""
    return n_sum + sum(arities)


def subnode_groups(n_sum: int, arities: Sequence[int]) -> list[list[int]]:
    """For each node (sum nodes first), the indices of the subnodes it is made of: ``[o]`` for sum
    node ``o``, a consecutive group of ``arity`` indices for a multiplication node."""
    groups = [[o] for o in range(n_sum)]
    start = n_sum
    for a in arities:
        groups.append(list(range(start, start + a)))
        start += a
    return groups


def subnode_owner(n_sum: int, arities: Sequence[int]) -> list[int]:
    """For each subnode, the index of the node it feeds (the inverse of :func:`subnode_groups`)."""
    return [node for node, group in enumerate(subnode_groups(n_sum, arities)) for _ in group]


def layout(model: object) -> list[tuple[int, list[int]]]:
    """``(n_sum, arities)`` of every node layer of a KAN (inputs first), read from its
    ``n_sum``/``mult_arity`` when it has multiplication nodes (``has_mult``), else from its layers'
    widths (every node a sum node)."""
    if getattr(model, "has_mult", False):
        return list(zip(model.n_sum, model.mult_arity, strict=True))  # type: ignore[attr-defined]
    layers = list(model.layers)  # type: ignore[attr-defined]
    return [(layers[0].in_features, [])] + [(la.out_features, []) for la in layers]


def to_subnodes(values: Tensor, n_sum: int, arities: Sequence[int]) -> Tensor:
    """Per-node values ``(..., n_sum + len(arities))`` repeated onto each node's subnodes:
    ``(..., n_sum + sum(arities))`` (the identity without multiplication nodes)."""
    if not arities:
        return values
    sizes = torch.tensor([1] * n_sum + list(arities), device=values.device)
    return values.repeat_interleave(sizes, dim=-1)


def group_all(flags: Tensor, n_sum: int, arities: Sequence[int]) -> Tensor:
    """Per-node "all of its subnodes": boolean ``(..., n_sub) -> (..., n_sum + len(arities))``."""
    if not arities:
        return flags
    parts = [flags[..., :n_sum]]
    parts += [
        flags[..., g[0] : g[-1] + 1].all(-1, keepdim=True)
        for g in subnode_groups(n_sum, arities)[n_sum:]
    ]
    return torch.cat(parts, dim=-1)


def mult_flops(arities: Sequence[Sequence[int]]) -> int:
    """Multiplies per sample of the multiplication nodes with ``arities`` (per layer, per node):
    ``arity - 1`` each."""
    return sum(a - 1 for layer in arities for a in layer)


def combine(z: Tensor, n_sum: int, arities: Sequence[int]) -> Tensor:
    """Node values from subnode values: ``(..., n_sum + sum(arities)) -> (..., n_sum + len(arities))``.

    The first ``n_sum`` subnodes pass through (sum nodes); each following group of ``arities[j]``
    consecutive subnodes is multiplied into multiplication node ``j``. Products are taken factor by
    factor (no ``prod`` with its division-based gradient), so gradients of every order are exact."""
    n_sub = n_subnodes(n_sum, arities)
    if z.dim() < 1 or z.shape[-1] != n_sub:
        raise ValueError(
            f"combine needs (..., {n_sub}) subnode values for {n_sum} sum node(s) and arities "
            f"{list(arities)}, got shape {tuple(z.shape)}"
        )
    if not arities:
        return z
    sums, rest = z[..., :n_sum], z[..., n_sum:]
    if len(set(arities)) == 1:  # one arity: consecutive groups are a reshape
        groups = rest.unflatten(-1, (len(arities), arities[0]))  # (..., n_mult, arity)
    else:  # pad each group to the largest arity with a factor 1 (index n_sub - n_sum: a ones column)
        width = max(arities)
        index = torch.full((len(arities), width), n_sub - n_sum, dtype=torch.long)
        start = 0
        for j, a in enumerate(arities):
            index[j, :a] = torch.arange(start, start + a)
            start += a
        ones = torch.ones_like(rest[..., :1])
        groups = torch.cat([rest, ones], dim=-1)[..., index.to(z.device)]  # (..., n_mult, width)
    prod = groups[..., 0]
    for t in range(1, groups.shape[-1]):
        prod = prod * groups[..., t]
    return torch.cat([sums, prod], dim=-1)
