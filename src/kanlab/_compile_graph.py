"""Expression tree -> levelled graph of KAN nodes, the first half of :func:`kanlab.compile_formula`.

A KAN node in layer ``D`` computes from nodes of layer ``D - 1`` either

- a **sum**: one *combination* ``sum_k c_k f_k(a_k u_k + b_k) + d`` (each term is one edge), or
- a **product**: one combination per factor (each factor is one subnode), multiplied.

:class:`Graph` turns a sympy expression into such nodes (see :meth:`Graph.node`). Every term of a
node at depth ``D`` reads a node at depth exactly ``D - 1``: a term whose node is shallower is
carried up by identity nodes (``sum{x(u)}``), so the graph *is* the layer structure and laying it
out is a walk from the root (:mod:`kanlab.compile`). Nodes are shared: a node is identified by its
kind and its terms (a frozen key), so ``x*y`` used twice, or two carries of ``x`` to the same
layer, is one node.

Two terms of one combination cannot read the same node (a layer has one edge per (input, output)
pair); the second is *lifted* into a node of its own one layer above its input (a layer more only
when that input sits right below the combination: ``x + sin(x)`` needs two layers).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from kanlab.functions import function_names, library

__all__ = ["Combo", "Graph", "Node", "Term", "sympy_functions"]


@dataclass(frozen=True)
class Term:
    """One edge ``c * f(a * u + b)`` from node ``node`` (``fn`` a library name; ``"x"``: a=1, b=0)."""

    node: int
    fn: str
    a: float
    b: float
    c: float
    label: str = field(default="", compare=False)  # the sympy subexpression, for messages


@dataclass(frozen=True)
class Combo:
    """A sum of terms plus a constant ``d`` (a sum node, or one factor of a product node)."""

    terms: tuple[Term, ...]
    d: float


@dataclass(frozen=True)
class Node:
    """A KAN node: ``kind`` "input" (variable ``var``), "sum" (one part) or "mult" (one part per
    factor); every term of its parts reads a node of depth ``depth - 1``."""

    kind: str
    parts: tuple[Combo, ...]
    depth: int
    var: int = -1


def _sp() -> Any:
    import sympy  # lazy: `import kanlab` must not import sympy

    return sympy


def sympy_functions() -> tuple[dict[Any, str], dict[Any, str]]:
    """The library seen from sympy: ``({sympy function class: name}, {exponent: name})``.

    Read off each entry's ``sympy_fn`` applied to a dummy symbol: ``F(z)`` maps ``F`` (sin, exp,
    Abs, ...), ``z**e`` maps the exponent (x^2, 1/x, sqrt, ...). Entries of other shapes (gaussian,
    sigmoid) are not matched; the first entry of a shape wins (registration order)."""
    sp = _sp()
    z = sp.Symbol("z")
    funcs: dict[Any, str] = {}
    powers: dict[Any, str] = {}
    for name, rec in library().items():
        try:
            e = rec.sympy_fn(z)
        except Exception:  # a user entry whose sympy_fn cannot take a bare symbol: not matchable
            continue
        if isinstance(e, sp.Pow) and e.base == z and e.exp.is_Number:
            powers.setdefault(e.exp, name)
        elif isinstance(e, sp.Function) and e.args == (z,):
            funcs.setdefault(type(e), name)
    return funcs, powers


def constant(expr: Any) -> float:
    """A constant sympy expression as a finite float (ValueError naming it otherwise)."""
    try:
        v = float(expr)
    except (TypeError, ValueError):
        raise ValueError(f"the constant {expr} is not a real number") from None
    if not math.isfinite(v):
        raise ValueError(f"the constant {expr} is not finite")
    return v


class Graph:
    """The nodes of one formula over ``n_var`` inputs (node ``i`` < ``n_var`` is input ``i``).

    ``symbols`` maps each free symbol of the formula to its input index. ``max_arity`` (None: no
    limit) splits longer products into a balanced tree of products of at most that many factors.
    """

    def __init__(self, symbols: dict[Any, int], n_var: int, *, max_arity: int | None) -> None:
        self.symbols = symbols
        self.max_arity = max_arity
        self.nodes: list[Node] = []
        self._ids: dict[Node, int] = {}
        self._funcs, self._powers = sympy_functions()
        for i in range(n_var):
            self._add(Node("input", (), 0, var=i))

    # ------------------------------------------------------------------ nodes
    def _add(self, node: Node) -> int:
        if node not in self._ids:
            self._ids[node] = len(self.nodes)
            self.nodes.append(node)
        return self._ids[node]

    def depth(self, n: int) -> int:
        return self.nodes[n].depth

    def root(self, expr: Any) -> int:
        """The output node of ``expr``: a node of depth >= 1 (a bare input is carried once)."""
        sp = _sp()
        if not (expr.free_symbols & set(self.symbols)):
            return self.sum_node(Combo((), constant(expr)))
        n = self.node(expr) if isinstance(expr, sp.Mul) else self.sum_node(self.combo(expr))
        return n if self.depth(n) >= 1 else self.carry(n, 1)

    def node(self, expr: Any) -> int:
        """The node computing ``expr`` (non-constant): an input, a product node for a product of
        two or more non-constant factors (the numeric coefficient folded into the first factor),
        else a sum node."""
        sp = _sp()
        if expr in self.symbols:
            return self.symbols[expr]
        if isinstance(expr, sp.Mul):
            coef, factors = self._split_mul(expr)
            if len(factors) >= 2:
                parts = [self.combo(f) for f in factors]
                first = parts[0]
                parts[0] = Combo(tuple(_scaled(t, coef) for t in first.terms), first.d * coef)
                return self.mult_node(parts)
        return self.sum_node(self.combo(expr))

    def sum_node(self, combo: Combo) -> int:
        depth, (part,) = self._place([combo], product=False)
        return self._add(Node("sum", (part,), depth))

    def mult_node(self, parts: list[Combo]) -> int:
        arity = self.max_arity
        while arity is not None and len(parts) > arity:  # a balanced tree of smaller products
            groups = [parts[k : k + arity] for k in range(0, len(parts), arity)]
            parts = [
                g[0] if len(g) == 1 else Combo((_ident(self.mult_node(g)),), 0.0) for g in groups
            ]
        depth, placed = self._place(parts, product=True)
        return self._add(Node("mult", tuple(placed), depth))

    def carry(self, n: int, depth: int) -> int:
        """Node ``n`` carried up to ``depth`` by a chain of identity nodes."""
        while self.depth(n) < depth:
            n = self._add(Node("sum", (Combo((_ident(n),), 0.0),), self.depth(n) + 1))
        return n

    # ------------------------------------------------------------------ combinations
    def combo(self, expr: Any, scale: float = 1.0) -> Combo:
        """``scale * expr`` as a sum of terms plus a constant (sums and constant multiples of sums
        are flattened into one combination)."""
        sp = _sp()
        if not (expr.free_symbols & set(self.symbols)):
            return Combo((), scale * constant(expr))
        if isinstance(expr, sp.Add):
            terms: list[Term] = []
            d = 0.0
            for arg in expr.args:
                part = self.combo(arg, scale)
                terms.extend(part.terms)
                d += part.d
            return Combo(tuple(terms), d)
        if isinstance(expr, sp.Mul):
            coef, factors = self._split_mul(expr)
            if len(factors) == 1:
                return self.combo(factors[0], scale * coef)
            return Combo((_ident(self.node(sp.Mul(*factors)), scale * coef, expr),), 0.0)
        return Combo((self.term(expr, scale),), 0.0)

    def term(self, expr: Any, c: float) -> Term:
        """``c * expr`` as one edge: a variable, a library function or power of an argument, or a
        power turned into ``exp(e * log(base))``; anything else is refused."""
        sp = _sp()
        label = str(expr)
        if expr in self.symbols:
            return _ident(self.symbols[expr], c, label)
        if isinstance(expr, sp.Pow):
            return self._power(expr.base, expr.exp, c, label)
        if isinstance(expr, sp.Function) and type(expr) in self._funcs and len(expr.args) == 1:
            a, b, u = self.affine(expr.args[0])
            return Term(u, self._funcs[type(expr)], a, b, c, label)
        name = expr.func.__name__ if isinstance(expr, sp.Function) else type(expr).__name__
        raise ValueError(
            f"cannot compile {expr}: {name} is not in the symbolic library (library functions: "
            f"{', '.join(function_names())}; register one with kanlab.functions.register_function)"
        )

    def affine(self, expr: Any) -> tuple[float, float, int]:
        """``expr = a * u + b`` with ``u`` a node (``u`` is a sum node unless ``expr`` is an affine
        function of a single node)."""
        part = self.combo(expr)
        if len(part.terms) == 1 and part.terms[0].fn == "x":
            t = part.terms[0]
            return t.c, part.d, t.node
        return 1.0, 0.0, self.sum_node(part)

    def _power(self, base: Any, exp: Any, c: float, label: str) -> Term:
        fixed = set(self.symbols)
        if not (base.free_symbols & fixed):  # b**e = exp(log(b) * e)
            lb = constant(base)
            if lb <= 0:
                raise ValueError(f"cannot compile {label}: the base {base} of a power is not > 0")
            a, b, u = self.affine(exp)
            return Term(u, "exp", a * math.log(lb), b * math.log(lb), c, label)
        if exp.is_Number and exp in self._powers:
            a, b, u = self.affine(base)
            return Term(u, self._powers[exp], a, b, c, label)
        # any other power: exp(e * log(base)), exact where base > 0 (checked on the ranges)
        a, b, u = self.affine(base)
        log_base = Combo((Term(u, "log", a, b, 1.0, f"log({base})"),), 0.0)
        if not (exp.free_symbols & fixed):
            return Term(self.sum_node(log_base), "exp", constant(exp), 0.0, c, label)
        return Term(self.mult_node([self.combo(exp), log_base]), "exp", 1.0, 0.0, c, label)

    def _split_mul(self, expr: Any) -> tuple[float, list[Any]]:
        """A product's constant coefficient (a float) and its non-constant factors."""
        fixed = set(self.symbols)
        coef = 1.0
        factors = []
        for f in expr.args:
            if f.free_symbols & fixed:
                factors.append(f)
            else:
                coef *= constant(f)
        return coef, factors

    # ------------------------------------------------------------------ placement
    def _place(self, parts: list[Combo], *, product: bool) -> tuple[int, list[Combo]]:
        """The depth of a node with these parts and the parts rewritten so that every term reads
        a node one layer below: the shallowest depth that works (see the module docstring)."""
        parts = [_merged(p) for p in parts]
        reads = [self.depth(t.node) for p in parts for t in p.terms]
        depth = 1 + max(reads, default=0)
        placed = [self._arrange(p, depth, product) for p in parts]
        if any(p is None for p in placed):  # two terms read one node right below: one more layer
            depth += 1
            placed = [self._arrange(p, depth, product) for p in parts]
        return depth, placed  # type: ignore[return-value]

    def _arrange(self, part: Combo, depth: int, product: bool) -> Combo | None:
        """``part`` for a node at ``depth``: terms reading shallower nodes pre-summed into one node
        where that fits (not all of a sum's terms: that node would be the sum itself), repeated
        reads lifted, everything carried to ``depth - 1``; None if two terms read the same node
        at ``depth - 1``."""
        top = depth - 1
        direct = [t for t in part.terms if self.depth(t.node) == top]
        low = [t for t in part.terms if self.depth(t.node) < top]
        if len({t.node for t in direct}) < len(direct):
            return None
        if len(low) >= 2 and (
            product or direct
        ):  # sum them below, carry one node instead of several
            n = self.sum_node(Combo(tuple(low), 0.0))
            if self.depth(n) <= top:
                low = [_ident(n)]
        seen = {t.node for t in direct}
        terms = list(direct)
        for t in low:
            n = self.carry(t.node, top)
            if n in seen:  # a second read of a node: the term gets its own node one layer up
                t = _ident(self.sum_node(Combo((t,), 0.0)), 1.0, t.label)
                n = self.carry(t.node, top)
                if n in seen:  # pragma: no cover - lifting always gives a new node
                    raise RuntimeError(f"compile_formula: cannot place the term {t.label}")
            seen.add(n)
            terms.append(_moved(t, n))
        return Combo(tuple(sorted(terms, key=_order)), part.d)


def _ident(n: int, c: float = 1.0, label: str = "") -> Term:
    return Term(n, "x", 1.0, 0.0, c, str(label))


def _scaled(t: Term, s: float) -> Term:
    return Term(t.node, t.fn, t.a, t.b, t.c * s, t.label)


def _moved(t: Term, n: int) -> Term:
    return Term(n, t.fn, t.a, t.b, t.c, t.label)


def _order(t: Term) -> tuple[int, str, float, float]:
    return (t.node, t.fn, t.a, t.b)


def _merged(part: Combo) -> Combo:
    """Terms with the same node, function and argument merged (their ``c`` added)."""
    total: dict[tuple[int, str, float, float], float] = defaultdict(float)
    labels: dict[tuple[int, str, float, float], str] = {}
    for t in part.terms:
        total[_order(t)] += t.c
        labels.setdefault(_order(t), t.label)
    terms = tuple(Term(*k, c, labels[k]) for k, c in total.items())
    return Combo(terms, part.d)
