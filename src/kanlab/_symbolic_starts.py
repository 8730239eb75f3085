"""Product starts for auto_symbolic's joint search: one hidden node as ``exp(sum of logs)``.

Products, ratios and power laws of inputs of one sign, ``y = s * exp(beta) * prod_i |u_i|^w_i``
(most formulas of physics), are one node of a two-layer KAN: ``log`` edges into the node and an
``exp`` edge out of it. A trained KAN rarely holds them that way: pruning leaves two to five
nodes sharing the work, and the per-edge fits of their edges (polynomials, sin, tanh) contain
neither ``log`` nor ``exp``, so no move of the search among those candidates reaches the
one-node form. A product start proposes it directly: for each node ``j`` of the last hidden
layer whose inputs each keep one sign on ``x``, the exponents come from the linear least-squares
fit of ``log(s * y)`` on ``log|u_i|`` (exact for an exact power law), and every other node of
that layer is dropped (its edges the constant ``"0"``). The joint refit then tunes all the
constants (a shift ``log(u + b)`` included, as in ``Y / (2 (1 + sigma))``).

Pure tensor code; the caller wraps the ``(name, (a, b, c, d))`` pairs into its fit records.
"""

from __future__ import annotations

from collections.abc import Container
from typing import Any

import torch
from torch import Tensor

__all__ = ["product_starts"]

Edge = tuple[int, int, int]  # (layer, out, in)
Start = dict[Edge, tuple[str, tuple[float, float, float, float]]]


@torch.no_grad()
def product_starts(model: Any, x: Tensor, target: Tensor, edges: Container[Edge]) -> list[Start]:
    """One start per eligible node of ``model``'s last hidden layer (see the module docstring).

    ``x`` (batch, in) the inputs, ``target`` (batch, 1) the values to match (one sign throughout),
    ``edges`` the edges the caller may set (every edge a start sets is one of them; an edge out of
    another node that is not one of them must already be the constant ``"0"``). A start maps
    ``(layer, out, in)`` to ``(function name, (a, b, c, d))``: ``log`` edges
    ``(sign_i, 0, w_i, 0)`` into node ``j``, the ``exp`` edge ``(1, beta, s, 0)`` out of it, the
    constant ``("0", (1, 0, 0, 0))`` on the other nodes' edges. None for a model of one layer,
    with several outputs or multiplication nodes, or a target that changes sign (empty list).
    """
    layers = list(model.layers)
    if len(layers) < 2 or target.shape[-1] != 1 or getattr(model, "has_mult", False):
        return []
    t = target.reshape(-1)
    s = 1.0 if bool((t > 0).all()) else -1.0 if bool((t < 0).all()) else 0.0
    if s == 0.0:
        return []
    last = len(layers) - 1
    hid, out = layers[last - 1], layers[last]
    u = model.layer_inputs(x)[last - 1]  # (batch, in): what the hidden layer reads
    sign = torch.where((u > 0).all(0), 1.0, torch.where((u < 0).all(0), -1.0, 0.0))  # (in,)
    log_t = torch.log(s * t)  # (batch,)
    into = [torch.nonzero(hid.mask[:, j] > 0).flatten().tolist() for j in range(hid.out_features)]
    live_out = [bool(out.mask[j, 0] > 0) for j in range(hid.out_features)]
    fixed = out.symbolic_edges() if out.symbolic_mask is not None else {}
    starts: list[Start] = []
    for j, ins in enumerate(into):
        if not ins or not live_out[j] or any(float(sign[i]) == 0.0 for i in ins):
            continue
        needed = [(last - 1, j, i) for i in ins] + [(last, 0, j)]
        if any(e not in edges for e in needed):
            continue
        others = [k for k in range(hid.out_features) if k != j and live_out[k]]
        if any((last, 0, k) not in edges and fixed.get((k, 0)) != "0" for k in others):
            continue  # another node whose output this start may not drop
        cols = [torch.log(sign[i] * u[:, i]) for i in ins]
        design = torch.stack([*cols, torch.ones_like(log_t)], 1)  # (batch, len(ins) + 1)
        sol = torch.linalg.lstsq(design, log_t.unsqueeze(1)).solution.flatten()
        if not bool(torch.isfinite(sol).all()):
            continue
        start: Start = {
            (last - 1, j, i): ("log", (float(sign[i]), 0.0, float(w), 0.0))
            for i, w in zip(ins, sol[:-1], strict=True)
        }
        start[(last, 0, j)] = ("exp", (1.0, float(sol[-1]), s, 0.0))
        zero = ("0", (1.0, 0.0, 0.0, 0.0))
        for k in others:
            for e in [(last, 0, k)] + [(last - 1, k, i) for i in into[k]]:
                if e in edges:
                    start[e] = zero
        starts.append(start)
    return starts
