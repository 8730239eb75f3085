"""The AI Feynman equation table (Udrescu & Tegmark 2020), a safe evaluator for its formulas, and the
``feynman/...`` registry built from it (one entry per row not listed in EXCLUDED).

Formulas are parsed with :mod:`ast` and *interpreted* node by node on numpy arrays: only numbers, the
row's variable names, ``pi``, ``+ - * / **`` (and unary ``+ -``) and a whitelist of one-argument
functions are accepted. Nothing is ever passed to ``eval``/``exec``/``compile``.
"""

from __future__ import annotations

import ast
import csv
import functools
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kanlab.datasets.record import DatasetEntry
from kanlab.datasets.synthetic import synthetic_entry

__all__ = [
    "EXCLUDED",
    "FUNCTIONS",
    "FeynmanRow",
    "FormulaError",
    "check_formula",
    "entries",
    "evaluate_formula",
    "load_table",
]

#: Functions a formula may call (all unary, on numpy float64 arrays).
FUNCTIONS = {
    "exp": np.exp,
    "sqrt": np.sqrt,
    "sin": np.sin,
    "cos": np.cos,
    "tan": np.tan,
    "tanh": np.tanh,
    "sinh": np.sinh,
    "cosh": np.cosh,
    "arcsin": np.arcsin,
    "arccos": np.arccos,
    "arctan": np.arctan,
    "arctanh": np.arctanh,
    "asin": np.arcsin,
    "acos": np.arccos,
    "atan": np.arctan,
    "log": np.log,
    "ln": np.log,
    "abs": np.abs,
}
CONSTANTS = {"pi": math.pi}
_BINOPS = {
    ast.Add: np.add,
    ast.Sub: np.subtract,
    ast.Mult: np.multiply,
    ast.Div: np.divide,
    ast.Pow: np.power,
}
_MAX_LEN = 2000  # formulas longer than this are refused outright
_MAX_DEPTH = 100  # deeper expression trees are refused (no recursion errors while evaluating)

#: Rows of the table left out of the registry, with the reason (checked by the tests: each one
#: must really fail, every other row must evaluate finitely on its ranges).
EXCLUDED: dict[str, str] = {}


class FormulaError(ValueError):
    """A formula uses something outside the safe subset, or cannot be parsed."""


def _check(node: ast.AST, variables: frozenset[str]) -> None:
    if isinstance(node, ast.Expression):
        _check(node.body, variables)
    elif isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise FormulaError(f"only real numbers are allowed as constants, got {node.value!r}")
    elif isinstance(node, ast.Name):
        if node.id not in variables and node.id not in CONSTANTS:
            raise FormulaError(
                f"unknown name {node.id!r}; allowed: variables {sorted(variables)} and "
                f"constants {sorted(CONSTANTS)}"
            )
    elif isinstance(node, ast.BinOp):
        if type(node.op) not in _BINOPS:
            raise FormulaError(f"operator {type(node.op).__name__} is not allowed")
        _check(node.left, variables)
        _check(node.right, variables)
    elif isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, ast.USub | ast.UAdd):
            raise FormulaError(f"unary operator {type(node.op).__name__} is not allowed")
        _check(node.operand, variables)
    elif isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            what = node.func.id if isinstance(node.func, ast.Name) else ast.dump(node.func)
            raise FormulaError(
                f"call of {what!r} is not allowed; allowed functions: {sorted(FUNCTIONS)}"
            )
        if node.keywords or len(node.args) != 1:
            raise FormulaError(f"{node.func.id}() takes exactly one positional argument")
        _check(node.args[0], variables)
    else:
        raise FormulaError(f"{type(node).__name__} is not allowed in a formula")


@functools.lru_cache(maxsize=512)
def _parse(formula: str, variables: frozenset[str]) -> ast.Expression:
    if not isinstance(formula, str) or len(formula) > _MAX_LEN:
        raise FormulaError(f"a formula must be a string of at most {_MAX_LEN} characters")
    try:
        tree = ast.parse(formula.strip(), mode="eval")
        _check(tree, variables)
        _depth(tree.body, 0)
    except SyntaxError as e:
        raise FormulaError(f"cannot parse formula {formula!r}: {e.msg}") from None
    except RecursionError:
        raise FormulaError(f"formula is nested too deeply (limit {_MAX_DEPTH})") from None
    return tree


def _depth(node: ast.AST, d: int) -> None:
    """Refuse expression trees deeper than _MAX_DEPTH (the evaluator recurses once per level)."""
    if d > _MAX_DEPTH:
        raise RecursionError
    for child in ast.iter_child_nodes(node):
        _depth(child, d + 1)


def check_formula(formula: str, variables: object) -> None:
    """Raise FormulaError unless ``formula`` is in the safe subset over ``variables``."""
    _parse(formula, frozenset(variables))  # type: ignore[arg-type]


def _eval(node: ast.AST, env: Mapping[str, np.ndarray]) -> np.ndarray | float:
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        return env[node.id] if node.id in env else CONSTANTS[node.id]
    if isinstance(node, ast.BinOp):
        return _BINOPS[type(node.op)](_eval(node.left, env), _eval(node.right, env))
    if isinstance(node, ast.UnaryOp):
        v = _eval(node.operand, env)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.Call):
        return FUNCTIONS[node.func.id](_eval(node.args[0], env))  # type: ignore[attr-defined]
    raise FormulaError(f"{type(node).__name__} is not allowed in a formula")  # pragma: no cover


def evaluate_formula(formula: str, values: Mapping[str, object]) -> np.ndarray:
    """Evaluate a formula on arrays ``values`` (name -> array of shape (n,)) -> (n,) float64.

    Refuses anything outside the safe subset (FormulaError). Invalid operations yield NaN/Inf
    silently here (numpy's errors are suppressed); callers check finiteness.
    """
    env = {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}
    tree = _parse(formula, frozenset(env))
    n = next(iter(env.values())).shape if env else ()
    with np.errstate(all="ignore"):
        out = _eval(tree.body, env)
    return np.broadcast_to(np.asarray(out, dtype=np.float64), n).copy()


@dataclass(frozen=True)
class FeynmanRow:
    """One row of FeynmanEquations.csv."""

    filename: str  # e.g. "I.6.2a"
    number: int  # row number in the table
    output: str  # name of the formula's output
    formula: str  # the formula, in the safe subset
    variables: tuple[str, ...]  # input names, in table order
    ranges: tuple[tuple[float, float], ...]  # [low, high] of each input


@functools.lru_cache(maxsize=1)
def load_table() -> tuple[FeynmanRow, ...]:
    """Parse the shipped table (read once, then cached)."""
    text = (
        resources.files("kanlab.datasets").joinpath("data/FeynmanEquations.csv").read_text("utf-8")
    )
    rows = []
    for r in csv.DictReader(io.StringIO(text)):
        if not r.get("Filename", "").strip():
            continue
        n_var = int(r["# variables"])
        names = tuple(r[f"v{i}_name"].strip() for i in range(1, n_var + 1))
        ranges = tuple((float(r[f"v{i}_low"]), float(r[f"v{i}_high"])) for i in range(1, n_var + 1))
        rows.append(
            FeynmanRow(
                filename=r["Filename"].strip(),
                number=int(r["Number"]),
                output=r["Output"].strip(),
                formula=r["Formula"].strip(),
                variables=names,
                ranges=ranges,
            )
        )
    return tuple(rows)


def entries() -> list[DatasetEntry]:
    """One regression entry per row of the table, except the rows in :data:`EXCLUDED`."""
    out = []
    for row in load_table():
        if row.filename in EXCLUDED:
            continue

        def fn(x: Tensor, row: Any = row) -> Tensor:
            vals = {v: x[:, i].numpy() for i, v in enumerate(row.variables)}
            return torch.from_numpy(evaluate_formula(row.formula, vals))

        formula = f"{row.output} = {row.formula}"
        out.append(synthetic_entry(
            f"feynman/{row.filename}", fn, row.ranges,
            description=f"Feynman equation {row.filename}: {formula}", formula=formula,
            feature_names=row.variables, target_name=row.output,
            source=f"AI Feynman (Udrescu & Tegmark 2020), FeynmanEquations.csv row {row.number}",
            extra_meta={"feynman_number": row.number},
        ))  # fmt: skip
    return out
