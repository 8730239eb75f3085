"""Structure discovery: the tree of separable variable groups of a function (KAN 2.0's Hessian tests).

Liu et al. 2024 ("KAN 2.0", section on modularity) test separability with derivatives on data. For a
group ``S`` of variables (the others held fixed, see below) and ``A``, ``B`` a split of ``S``:

- additive, ``f = g(A) + h(B)``: ``d2f/dxa dxb = 0`` for all ``a in A``, ``b in B``;
- multiplicative, ``f = c + g(A) h(B)``: the same for ``log|f - c|``; written without the log (no
  singularity where ``f = c``) it is ``M_ab = (f - c) f_ab - f_a f_b = 0``. A constant ``c`` is
  allowed because an additive parent can move constants between its terms; kanlab fits it by least
  squares, ``c = sum M0 * f_ab / sum f_ab^2`` with ``M0 = f f_ab - f_a f_b`` (``c = 0`` when the
  Hessian vanishes);
- generalized, ``f = F(g(A) + h(B))``: then ``f_i / f_j = g_i(A) / h_j(B)`` for ``i in A``,
  ``j in B``, so (KAN 2.0's test) every ratio of first derivatives is multiplicatively separable:
  ``d2 log|f_i| / dxa dxb`` is the same for every ``i in S``. kanlab computes it as
  ``D_i[a, b] = (f_i f_iab - f_ia f_ib) / f_i^2`` from third derivatives (points where some
  ``|f_i|`` is below 1e-3 of its RMS are left out) and measures its spread over ``i`` (max - min).
  The test is necessary, and sufficient for two single variables.

Every measure is made dimensionless with the data's spreads ``s_a = std(x_a)`` and the size of
``f``'s first-order variation over the group, ``sigma = rms_x sqrt(sum_{a in S} (f_a s_a)^2)``:
``add[a, b] = rms(f_ab) s_a s_b / sigma``, ``mul[a, b] = rms(M_ab) s_a s_b / (rms(f - c) sigma)``,
``gen[a, b] = rms(max_i D_i - min_i D_i) s_a s_b``. Two variables *interact* when the measure is
above ``tol``: roughly, when the cross term changes ``f`` by more than ``tol`` of its variation
over the data. Inputs with ``rms(f_a) s_a / sigma < tol`` are reported as unused.

The tree: at a group ``S``, build the graph of interacting variables for the additive measure; if it
has several connected components, ``S`` is their sum; else the same with the multiplicative
measure (a product), else with the generalized one (``F(sum)``), else ``S`` is not separable. Each
component is analysed the same way, as a function of its own variables with all others held at
one data row (the row where ``|f - c|`` is largest, so that no other factor vanishes there).
Products of factors that keep one sign on the data are also exponentials of sums
(``exp(a) exp(b) = exp(a + b)``), which the tests cannot tell apart; when a product also has
factors that change sign, kanlab groups its constant-sign factors into one generalized sum
``F(...)``: for ``exp(sin x1 + x2^2) * x3`` on [-1, 1]^3 that reads ``F(x1 + x2) * x3``. When all
factors keep their sign the product is kept (``x1 * x2`` on [1, 2]^2).

``f`` must act row by row (``f(x)[b]`` depends on ``x[b]`` only): the derivatives are taken of
``f(x).sum()``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from kanlab._checks import check_float

__all__ = ["SeparabilityTree", "plot_separability", "separability"]

KINDS = ("var", "add", "mul", "gen", "none")


@dataclass(frozen=True)
class SeparabilityTree:
    """A node of the separability tree. ``kind``: "var" (one variable), "add" (sum of the
    children), "mul" (product, up to an additive constant), "gen" (``F`` of the sum of the
    children), "none" (the group does not separate). ``variables`` are 0-based input indices;
    ``unused`` (at the root) lists the inputs ``f`` does not depend on."""

    kind: str
    variables: tuple[int, ...]
    children: tuple[SeparabilityTree, ...] = ()
    unused: tuple[int, ...] = ()

    def __str__(self) -> str:
        if self.kind == "var":
            return f"x{self.variables[0] + 1}"
        if self.kind == "none":
            return "g(" + ", ".join(f"x{v + 1}" for v in self.variables) + ")"
        parts = [str(c) for c in self.children]
        if self.kind == "mul":
            parts = [
                f"({p})" if c.kind == "add" else p
                for p, c in zip(parts, self.children, strict=True)
            ]
            return " * ".join(parts)
        text = " + ".join(parts)
        return f"F({text})" if self.kind == "gen" else text


def _as_function(f_or_model: Any) -> Callable[[Tensor], Tensor]:
    if isinstance(f_or_model, nn.Module):
        dtype = next(f_or_model.parameters()).dtype

        def fn(x: Tensor) -> Tensor:
            return f_or_model(x.to(dtype)).to(x.dtype)

        return fn
    if not callable(f_or_model):
        raise TypeError(f"f_or_model must be a callable or a KAN, got {type(f_or_model).__name__}")
    return f_or_model


def _values(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    y = fn(x)
    if not isinstance(y, Tensor):
        raise TypeError(f"f must return a torch.Tensor, got {type(y).__name__}")
    if y.dim() == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.shape != (x.shape[0],):
        raise ValueError(f"f must map (batch, n) to (batch,) or (batch, 1), got {tuple(y.shape)}")
    return y


def derivatives(
    fn: Callable[[Tensor], Tensor], x: Tensor, *, third: bool = False
) -> tuple[Tensor, ...]:
    """``f``, its gradient (batch, n), Hessian (batch, n, n) and, with ``third``, third
    derivatives (batch, n, n, n) at the rows of ``x`` (batch, n), by autograd (``f`` row-wise)."""
    x = x.detach().requires_grad_(True)
    n = x.shape[1]
    y = _values(fn, x)
    g = _grad(y.sum(), x, create=True)  # (batch, n)
    h = torch.stack([_grad(g[:, a].sum(), x, create=third) for a in range(n)], 1)  # (b, n, n)
    out: tuple[Tensor, ...] = (y.detach(), g.detach(), h.detach())
    if third:  # t[b, i, a, c] = d3 f / dx_i dx_a dx_c
        t = [torch.stack([_grad(h[:, i, a].sum(), x) for a in range(n)], 1) for i in range(n)]
        out = (*out, torch.stack(t, 1).detach())
    return out


def _grad(out: Tensor, x: Tensor, *, create: bool = False) -> Tensor:
    """d out / d x (zeros where ``out`` does not depend on ``x``), keeping the graph."""
    if not out.requires_grad:
        return torch.zeros_like(x)
    (d,) = torch.autograd.grad(out, x, create_graph=create, retain_graph=True, allow_unused=True)
    return torch.zeros_like(x) if d is None else d


def _rms(t: Tensor, dim: int = 0) -> Tensor:
    return t.pow(2).mean(dim).sqrt()


def _components(strong: Tensor) -> list[list[int]]:
    """Connected components of the graph with adjacency ``strong`` (m, m) bool."""
    m = strong.shape[0]
    seen, comps = [False] * m, []
    for start in range(m):
        if seen[start]:
            continue
        stack, comp = [start], []
        seen[start] = True
        while stack:
            a = stack.pop()
            comp.append(a)
            for b in range(m):
                if bool(strong[a, b]) and not seen[b]:
                    seen[b] = True
                    stack.append(b)
        comps.append(sorted(comp))
    return comps


class _Analysis:
    def __init__(self, fn: Callable[[Tensor], Tensor], spread: Tensor, tol: float) -> None:
        self.fn, self.spread, self.tol = fn, spread, tol

    def measures(self, x: Tensor, group: list[int]) -> dict[str, Any]:
        y, g, h = derivatives(self.fn, x)
        idx = torch.tensor(group)
        s = self.spread[idx]  # (m,)
        gs, hs = g[:, idx], h[:, idx][:, :, idx]  # (batch, m), (batch, m, m)
        sigma = float(_rms((gs * s).pow(2).sum(1).sqrt()))
        ss = s.unsqueeze(1) * s.unsqueeze(0)  # (m, m)
        off = ~torch.eye(len(group), dtype=torch.bool)
        m0 = y[:, None, None] * hs - gs.unsqueeze(2) * gs.unsqueeze(1)  # (batch, m, m)
        den = float(hs[:, off].pow(2).sum())
        c = float((m0[:, off] * hs[:, off]).sum()) / den if den > 0 else 0.0
        mm = m0 - c * hs
        tiny = torch.finfo(y.dtype).tiny
        add = _rms(hs) * ss / max(sigma, tiny)
        mul = _rms(mm) * ss / max(float(_rms(y - c)) * sigma, tiny)
        ref = int((y - c).abs().argmax())
        return {"add": add, "mul": mul, "c": c, "ref": ref, "sigma": sigma, "g": gs, "s": s}

    def generalized(self, x: Tensor, group: list[int]) -> Tensor:
        _, g, h, t = derivatives(self.fn, x, third=True)
        idx = torch.tensor(group)
        gs, hs = g[:, idx], h[:, idx][:, :, idx]
        ts = t[:, idx][:, :, idx][:, :, :, idx]  # (batch, i, a, b)
        ok = (gs.abs() > 1e-3 * _rms(gs)).all(1)  # (batch,)
        if int(ok.sum()) < 2:
            return torch.full((len(group), len(group)), float("inf"))
        gi = gs[ok].unsqueeze(2).unsqueeze(3)  # (b, i, 1, 1)
        hia = hs[ok].unsqueeze(3)  # (b, i, a, 1)
        hib = hs[ok].unsqueeze(2)  # (b, i, 1, b)
        d = (gi * ts[ok] - hia * hib) / gi.pow(2)  # (b, i, a, b): d2 log|f_i| / dxa dxb
        spread_i = d.amax(1) - d.amin(1)  # (b, a, b)
        s = self.spread[idx]
        return _rms(spread_i) * s.unsqueeze(1) * s.unsqueeze(0)

    def split(self, x: Tensor, group: list[int]) -> SeparabilityTree:
        if len(group) == 1:
            return SeparabilityTree("var", (group[0],))
        meas = self.measures(x, group)
        off = ~torch.eye(len(group), dtype=torch.bool)
        for kind in ("add", "mul", "gen"):
            w = meas[kind] if kind != "gen" else self.generalized(x, group)
            comps = _components((w > self.tol) & off)
            if len(comps) > 1:
                return self._node(kind, x, group, comps, meas)
        return SeparabilityTree("none", tuple(group))

    def _restrict(self, x: Tensor, group: list[int], keep: list[int], ref: int) -> Tensor:
        """``x`` with every variable of ``group`` outside ``keep`` held at row ``ref``."""
        z = x.clone()
        for v in group:
            if v not in keep:
                z[:, v] = x[ref, v]
        return z

    def _node(
        self, kind: str, x: Tensor, group: list[int], comps: list[list[int]], meas: dict
    ) -> SeparabilityTree:
        ref = meas["ref"]
        parts = [[group[i] for i in comp] for comp in comps]
        kids = {tuple(p): self.split(self._restrict(x, group, p, ref), p) for p in parts}
        if kind == "mul":
            c = meas["c"]
            one_sign = []
            for p in parts:  # the factor's values on the data, up to a constant multiple
                v = _values(self.fn, self._restrict(x, group, p, ref)).detach() - c
                one_sign.append(bool(v.min() * v.max() > 0))
            merge = [p for p, keep in zip(parts, one_sign, strict=True) if keep]
            if 2 <= len(merge) < len(parts):
                gen = SeparabilityTree(
                    "gen", tuple(sorted(v for p in merge for v in p)),
                    tuple(kids[tuple(p)] for p in merge),
                )  # fmt: skip
                rest = [kids[tuple(p)] for p in parts if p not in merge]
                children = sorted([gen, *rest], key=lambda t: t.variables[0])
                return SeparabilityTree("mul", tuple(group), tuple(children))
        return SeparabilityTree(
            "mul" if kind == "mul" else kind, tuple(group), tuple(kids.values())
        )


def separability(f_or_model: Any, x: Tensor, *, tol: float = 1e-2) -> SeparabilityTree:
    """The tree of separable variable groups of ``f_or_model`` on the data ``x`` (batch >= 2, n).

    ``f_or_model``: a callable mapping a tensor (batch, n) to (batch,) or (batch, 1), row by row,
    or a KAN (any ``nn.Module``; its second and third derivatives go through the kernels it runs
    on, which are differentiable to any order).
    ``tol``: the interaction size (relative, see the module docstring) above which two variables
    count as interacting. Use float64 for functions with exact structure. The tests, the scale and
    the grouping rules are in the module docstring.

    Raises:
        TypeError: ``f_or_model`` not callable, ``x`` not a floating tensor, ``f`` not returning a
            tensor.
        ValueError: ``x`` not (batch >= 2, n >= 1) or non-finite, ``tol`` < 0, ``f`` returning
            another shape.
    """
    tol = check_float("tol", tol, minimum=0.0)
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(f"x must have shape (batch >= 2, n >= 1), got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x has non-finite values")
    return _tree(_as_function(f_or_model), x.detach(), tol)


def _tree(fn: Callable[[Tensor], Tensor], x: Tensor, tol: float) -> SeparabilityTree:
    spread = x.std(0, unbiased=False)
    analysis = _Analysis(fn, spread, tol)
    everything = list(range(x.shape[1]))
    meas = analysis.measures(x, everything)
    first = _rms(meas["g"]) * meas["s"] / max(meas["sigma"], torch.finfo(x.dtype).tiny)
    used = [v for v in everything if float(first[v]) >= tol]
    unused = tuple(v for v in everything if v not in used)
    if not used:
        return SeparabilityTree("none", (), (), unused)
    z = analysis._restrict(x, everything, used, meas["ref"])
    tree = analysis.split(z, used)
    return SeparabilityTree(tree.kind, tree.variables, tree.children, unused)


def plot_separability(tree: SeparabilityTree, *, ax: Any = None) -> Any:
    """Draw ``tree`` (leaves = variables at the bottom, operators above); returns the Figure.
    matplotlib is imported here only."""
    import matplotlib.pyplot as plt

    if not isinstance(tree, SeparabilityTree):
        raise TypeError(f"tree must be a SeparabilityTree, got {type(tree).__name__}")
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(4, 3))
    else:
        fig = ax.figure
    label = {"add": "+", "mul": "×", "gen": "F(+)"}
    leaves: list[int] = [0]

    def depth(t: SeparabilityTree) -> int:
        return 1 + max((depth(c) for c in t.children), default=0)

    top = depth(tree)

    def draw(t: SeparabilityTree, level: int) -> tuple[float, float]:
        if not t.children:
            xpos, ypos = float(leaves[0]), 0.0
            leaves[0] += 1
            text = str(t) if t.variables else "const"
        else:
            pts = [draw(c, level + 1) for c in t.children]
            xpos, ypos = sum(p[0] for p in pts) / len(pts), float(top - level)
            for px, py in pts:
                ax.plot([xpos, px], [ypos, py], color="0.5", lw=1, zorder=1)
            text = label[t.kind]
        ax.text(
            xpos, ypos, text, ha="center", va="center", zorder=2,
            bbox={"boxstyle": "round", "fc": "white", "ec": "0.3"},
        )  # fmt: skip
        return xpos, ypos

    draw(tree, 1)
    ax.set_xlim(-0.7, max(leaves[0] - 1, 0) + 0.7)
    ax.set_ylim(-0.6, top - 1 + 0.6)
    ax.set_axis_off()
    if tree.unused:
        ax.set_title("unused: " + ", ".join(f"x{v + 1}" for v in tree.unused), fontsize=9)
    return fig
