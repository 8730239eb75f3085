"""Pictures of a KAN: the network diagram with every edge's learned curve, and training curves.

matplotlib is imported inside the functions (``import kanlab`` stays light) and only its
object-oriented API is used (``matplotlib.figure.Figure``, no pyplot state), so this works under any
backend, including Agg on a headless machine. Every function returns the Figure; nothing is written
unless ``path`` is given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kanlab.models import check_kan_input
from kanlab.mult import layout, subnode_groups
from kanlab.prune import scores

__all__ = ["plot", "plot_history"]

_SYMBOLIC_COLOR = "tab:red"
_NUMERIC_COLOR = "black"


def _names(given: Sequence[str] | None, n: int, default: str, what: str) -> list[str]:
    if given is None:
        return [f"{default}_{k + 1}" for k in range(n)]
    names = [str(v) for v in given]
    if len(names) != n:
        raise ValueError(f"{what} must have {n} names, got {len(names)}: {names!r}")
    return names


def _save(fig: Any, path: str | Path | None, dpi: int) -> None:
    if path is not None:
        fig.savefig(Path(path), dpi=dpi, bbox_inches="tight")


@torch.no_grad()
def plot(
    model: Any,
    x: Tensor,
    *,
    in_vars: Sequence[str] | None = None,
    out_vars: Sequence[str] | None = None,
    title: str | None = None,
    beta: float = 3.0,
    path: str | Path | None = None,
    dpi: int = 150,
) -> Any:
    """The network diagram of the KAN ``model`` evaluated on the inputs ``x`` (batch, widths[0]).

    Inputs are at the bottom, outputs at the top. Between two node layers every live edge (mask on)
    gets a small inset with its curve ``phi(x_i)`` over the data; lines join the input node, the
    inset and the output node. Edges are drawn with opacity ``tanh(beta * attribution)`` (see
    :func:`kanlab.prune.scores`), so unimportant edges fade out; symbolic edges are red and titled
    with their function. Inset axes carry the label ``"edge:<layer>:<in>:<out>"``.
    ``in_vars``/``out_vars`` name the inputs and outputs (default x_1.., y_1..). ``path``: also
    save the figure there (format from the suffix, e.g. .png or .svg). Returns the Figure.

    Multiplication nodes (:mod:`kanlab.mult`) are drawn as a "x" marker joined by grey lines to
    their subnodes (small grey dots just below the node layer), where that layer's edges end.
    """
    layers, x = check_kan_input(model, x)
    from matplotlib.figure import Figure

    lay = layout(model)  # (n_sum, arities) per node layer
    widths = [n_sum + len(arities) for n_sum, arities in lay]  # nodes per layer
    ins = _names(in_vars, widths[0], "x", "in_vars")
    outs = _names(out_vars, widths[-1], "y", "out_vars")
    sc = scores(model, x)
    inputs = model.layer_inputs(x)
    acts = model.activations(x)
    depth = len(layers)

    n_slots = max(la.in_features * la.out_features for la in layers)
    fig_w = min(max(4.0, 0.9 * n_slots), 24.0)
    fig = Figure(figsize=(fig_w, 2.6 * depth + 0.6))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    margin = 0.08
    row = (1 - 2 * margin) / depth  # vertical distance between node layers

    def node_xy(level: int, j: int) -> tuple[float, float]:
        return (j + 0.5) / widths[level], margin + level * row

    def sub_xy(level: int, s: int) -> tuple[float, float]:
        """Where layer ``level - 1``'s edges end: the node itself, or, in a layer with
        multiplication nodes, a small subnode dot just below the node layer."""
        n_sum, arities = lay[level]
        if not arities:
            return node_xy(level, s)
        return (s + 0.5) / (n_sum + sum(arities)), margin + (level - 0.12) * row

    for level, w in enumerate(widths):
        n_sum, arities = lay[level]
        y = margin + level * row
        ax.scatter([node_xy(level, j)[0] for j in range(n_sum)], [y] * n_sum, s=40, c="black",
                   zorder=3)  # fmt: skip
        if arities:  # multiplication nodes: a "x" marker, joined to their subnodes
            mx = [node_xy(level, j)[0] for j in range(n_sum, w)]
            ax.scatter(mx, [y] * len(mx), s=90, c="black", marker="$\\times$", zorder=3)
            for node, group in enumerate(subnode_groups(n_sum, arities)):
                for s_idx in group:
                    (sx, sy), (nx, ny) = sub_xy(level, s_idx), node_xy(level, node)
                    ax.plot([sx, nx], [sy, ny], color="grey", lw=0.8)
                    ax.scatter([sx], [sy], s=10, c="grey", zorder=3)
    for j, name in enumerate(ins):
        px, py = node_xy(0, j)
        ax.text(px, py - 0.03, name, ha="center", va="top", fontsize=10)
    for j, name in enumerate(outs):
        px, py = node_xy(depth, j)
        ax.text(px, py + 0.03, name, ha="center", va="bottom", fontsize=10)

    for l_idx, la in enumerate(layers):
        n_in, n_out = la.in_features, la.out_features
        slot = 0.9 / (n_in * n_out)
        size_w = min(0.8 * slot, 0.5 * row * fig.get_figheight() / fig_w)
        size_h = size_w * fig_w / fig.get_figheight()
        y_mid = margin + (l_idx + 0.5) * row
        symbolic = la.symbolic_edges()
        mask = la.mask.detach().cpu()
        xi = inputs[l_idx].detach().cpu()
        phi = acts[l_idx].detach().cpu()
        attr = sc.edge_attribution[l_idx].detach().cpu()
        for i in range(n_in):
            order = torch.argsort(xi[:, i])
            for o in range(n_out):
                if float(mask[i, o]) == 0:
                    continue
                cx = 0.05 + (i * n_out + o + 0.5) * slot
                alpha = max(math.tanh(beta * float(attr[o, i])), 0.05)
                color = _SYMBOLIC_COLOR if (i, o) in symbolic else _NUMERIC_COLOR
                (x0, y0), (x1, y1) = node_xy(l_idx, i), sub_xy(l_idx + 1, o)
                ax.plot([x0, cx], [y0, y_mid - size_h / 2], color=color, alpha=alpha, lw=1)
                ax.plot([cx, x1], [y_mid + size_h / 2, y1], color=color, alpha=alpha, lw=1)
                inset = fig.add_axes(
                    (cx - size_w / 2, y_mid - size_h / 2, size_w, size_h),
                    label=f"edge:{l_idx}:{i}:{o}",
                )
                inset.plot(xi[order, i].numpy(), phi[order, o, i].numpy(), color=color, alpha=alpha)
                inset.set_xticks([])
                inset.set_yticks([])
                for spine in inset.spines.values():
                    spine.set_alpha(alpha)
                if (i, o) in symbolic:
                    inset.set_title(symbolic[(i, o)], fontsize=8, color=color, pad=2)
    if title:
        ax.text(0.5, 1.0, title, ha="center", va="bottom", fontsize=12)
    _save(fig, path, dpi)
    return fig


def plot_history(
    history: Any,
    *,
    log: bool = True,
    title: str | None = None,
    path: str | Path | None = None,
    dpi: int = 150,
) -> Any:
    """Training curves of a :class:`kanlab.train.History` (``train_loss`` and ``test_loss`` per
    step, whichever are present and non-empty). ``log``: logarithmic y axis. Returns the Figure."""
    from matplotlib.figure import Figure

    curves = {
        name: list(getattr(history, name))
        for name in ("train_loss", "test_loss")
        if getattr(history, name, None) is not None and len(getattr(history, name))
    }
    if not curves:
        raise ValueError("history has no train_loss or test_loss values to plot")
    fig = Figure(figsize=(5.0, 3.5))
    ax = fig.add_subplot(1, 1, 1)
    for name, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, label=name.replace("_", " "))
    if log and all(v > 0 for values in curves.values() for v in values):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    _save(fig, path, dpi)
    return fig
