"""The symbolic edges of one KAN layer: edges replaced by library functions ``c * f(a*x + b) + d``.

:class:`SymbolicEdges` is a child module of :class:`kanlab.KANLinear` (``layer.symbolic``), created
when the layer's first edge is fixed, so that a purely numeric layer has no extra parameters, buffers
or state_dict keys. Its state (shapes with ``in``/``out`` the layer's widths):

- ``mask``   (in, out) 0/1 buffer: 1 = symbolic edge (the layer switches its numeric part off);
- ``fn``     (in, out) int64 buffer: index into the function names, -1 = none;
- ``names``  (n_bytes,) uint8 buffer: the function names, newline-joined UTF-8 (so a state_dict is
  self-contained and function ids never depend on registration order);
- ``affine`` (in, out, 4) Parameter: (a, b, c, d) per edge, trainable.

For evaluation the symbolic edges are sorted by function into index buffers ``index_in`` /
``index_out`` / ``flat`` (E,) and a host list of ``(name, start, end)`` groups, rebuilt (with host
syncs) only when the edges change (:meth:`set`, :meth:`unset`, loading, :meth:`select`), never in
``forward``: forward evaluates each function once on its group's (n_edges, batch) slab, never edge
by edge (:mod:`kanlab._symbolic_eval`: fused CPU kernels around torch's ``f``, or torch ops on other
devices). ``keep = 1 - mask`` (in, out) is what the layer folds into its numeric mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from kanlab._checks import check_float, check_int
from kanlab._symbolic_eval import symbolic_sum
from kanlab.functions import get_function

__all__ = ["SymbolicEdges", "check_edge"]


def check_edge(i: int, o: int, n_in: int, n_out: int) -> None:
    """Edge ``i -> o`` exists in a layer of ``n_in`` inputs and ``n_out`` outputs (else ValueError)."""
    check_int("in index i", i, minimum=0)
    check_int("out index o", o, minimum=0)
    if i >= n_in or o >= n_out:
        raise ValueError(
            f"edge (in={i}, out={o}) is outside the layer's {n_in} inputs and {n_out} outputs"
        )


class SymbolicEdges(nn.Module):
    """The symbolic edges of a layer with ``in_features`` inputs and ``out_features`` outputs
    (see the module docstring); ``n_bytes`` sizes the (empty) names buffer for loading a state."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        n_bytes: int = 0,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.in_features = check_int("in_features", in_features, minimum=1)
        self.out_features = check_int("out_features", out_features, minimum=1)
        n_in, n_out = in_features, out_features
        dtype = dtype or torch.get_default_dtype()
        self.register_buffer("mask", torch.zeros(n_in, n_out, dtype=dtype, device=device))
        self.register_buffer("fn", torch.full((n_in, n_out), -1, dtype=torch.int64, device=device))
        self.register_buffer("names", torch.zeros(n_bytes, dtype=torch.uint8, device=device))
        affine = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=dtype, device=device)
        self.affine = nn.Parameter(affine.expand(n_in, n_out, 4).clone())
        # derived by _rebuild (non-persistent: they follow the module to other devices)
        self.register_buffer("index_in", None, persistent=False)  # (E,) input of each edge
        self.register_buffer("index_out", None, persistent=False)  # (E,) output of each edge
        self.register_buffer("flat", None, persistent=False)  # (E,) into the flattened (in, out)
        self.register_buffer("keep", None, persistent=False)  # (in, out) 1 - mask
        self._rebuild()

    def extra_repr(self) -> str:
        return f"edges={len(self.edges())}, functions={self.function_names()}"

    # ------------------------------------------------------------------ the edges
    def function_names(self) -> list[str]:
        """The function vocabulary (``fn`` indexes into it)."""
        if self.names.numel() == 0:
            return []
        return bytes(self.names.cpu().tolist()).decode("utf-8").split("\n")

    def edges(self) -> dict[tuple[int, int], str]:
        """``{(in, out): function name}`` of the symbolic edges (host sync; not for hot paths)."""
        names = self.function_names()
        ii, oo = torch.nonzero(self.mask > 0, as_tuple=True)
        ids = self.fn[ii, oo]
        return {
            (int(i), int(o)): names[int(k)]
            for i, o, k in zip(ii.tolist(), oo.tolist(), ids.tolist(), strict=True)
        }

    @torch.no_grad()
    def set(
        self, i: int, o: int, name: str, affine: Sequence[float] = (1.0, 0.0, 1.0, 0.0)
    ) -> None:
        """Make edge ``i -> o`` the library function ``name`` with ``affine = (a, b, c, d)``.
        Every argument is checked before anything changes."""
        check_edge(i, o, self.in_features, self.out_features)
        fn = get_function(name)
        vals = [check_float(f"affine[{j}]", v) for j, v in enumerate(affine)]
        if len(vals) != 4:
            raise ValueError(f"affine must be 4 numbers (a, b, c, d), got {len(vals)}")
        names = self.function_names()
        if fn.name not in names:
            names.append(fn.name)
            data = list("\n".join(names).encode("utf-8"))
            self.names = torch.tensor(data, dtype=torch.uint8, device=self.mask.device)
        self.fn[i, o] = names.index(fn.name)
        self.mask[i, o] = 1.0
        self.affine[i, o] = torch.tensor(vals, dtype=self.affine.dtype)
        self._rebuild()

    @torch.no_grad()
    def unset(self, i: int, o: int) -> None:
        """Make edge ``i -> o`` numeric again (its affine parameters are kept)."""
        check_edge(i, o, self.in_features, self.out_features)
        self.mask[i, o] = 0.0
        self.fn[i, o] = -1
        self._rebuild()

    @torch.no_grad()
    def select(self, keep_in: Tensor, keep_out: Tensor) -> SymbolicEdges:
        """The symbolic edges among the inputs ``keep_in`` and outputs ``keep_out`` (int64 index
        tensors, checked by the layer), as a new module."""
        mask = self.mask
        new = SymbolicEdges(keep_in.numel(), keep_out.numel(), dtype=mask.dtype, device=mask.device)

        def pick(t: Tensor) -> Tensor:  # (in, out, ...) -> (kept in, kept out, ...)
            return t.index_select(0, keep_in).index_select(1, keep_out).contiguous()

        new.mask, new.fn, new.names = pick(mask), pick(self.fn), self.names.clone()
        new.affine = nn.Parameter(pick(self.affine), requires_grad=self.affine.requires_grad)
        new.train(self.training)
        new._rebuild()
        return new

    def _rebuild(self) -> None:
        """Sort the symbolic edges by function into the index buffers and groups of forward."""
        names = self.function_names()
        live = self.mask > 0
        ins, outs, groups, start = [], [], [], 0
        for k, name in enumerate(names):
            ii, oo = torch.nonzero(live & (self.fn == k), as_tuple=True)
            if ii.numel():
                ins.append(ii)
                outs.append(oo)
                groups.append((name, start, start + ii.numel()))
                start += ii.numel()
        bad = live & ((self.fn < 0) | (self.fn >= len(names)))
        if bool(bad.any()):
            raise ValueError(f"symbolic fn holds ids outside the function names {names}")
        empty = torch.zeros(0, dtype=torch.int64, device=self.mask.device)
        self.index_in = torch.cat(ins) if ins else empty
        self.index_out = torch.cat(outs) if outs else empty
        self.flat = self.index_in * self.out_features + self.index_out
        self.keep = 1 - self.mask
        self.groups: list[tuple[str, int, int]] = groups  # (name, start, end) runs of the edges
        self.sizes: list[int] = [e - s for _, s, e in groups]
        index = torch.stack([self.index_in, self.index_out, self.flat])  # (3, E)
        self.host_index: np.ndarray = index.cpu().numpy()  # the same rows on the host
        self.has_edges = start > 0  # host flag: any symbolic edge
        self.all_edges = bool(live.all())  # host flag: every edge symbolic (numeric branch off)

    # ------------------------------------------------------------------ evaluation
    def forward(self, x2: Tensor, mask: Tensor, *, base: Tensor | None = None) -> Tensor:
        """Sum of the symbolic edges into each output, ``(batch, in) -> (batch, out)``, each edge
        weighted by the layer's edge mask ``mask`` (in, out), plus ``base`` (batch, out) if given
        (added in the same pass). One function group at a time (:mod:`kanlab._symbolic_eval`)."""
        return symbolic_sum(
            x2, self.affine, mask, self.flat, self.index_in, self.index_out, self.groups,
            self.out_features, base=base, host_index=self.host_index,
        )  # fmt: skip

    def activations(self, x2: Tensor, mask: Tensor) -> Tensor:
        """Outputs of the symbolic edges, weighted by ``mask`` (in, out): ``(batch, in) -> (batch,
        out, in)``, zero on the numeric edges."""
        n_out, n_in, batch = self.out_features, self.in_features, x2.shape[0]
        flat = self.index_out * n_in + self.index_in  # (E,) into (out*in)
        sym = x2.new_zeros(n_out * n_in, batch)
        sym = sym.index_add(0, flat, self._values(x2, mask))  # (out*in, batch)
        return sym.T.reshape(batch, n_out, n_in)

    def _values(self, x2: Tensor, mask: Tensor) -> Tensor:
        """Outputs of the symbolic edges, transposed: ``(batch, in) -> (E, batch)`` in ``index_in``
        order. Edge-major layout: gathers copy whole rows and per-edge constants broadcast along
        rows, about twice as fast on CPU as the (batch, E) layout."""
        flat = self.flat  # (E,) index into the flattened (in, out)
        p = self.affine.reshape(-1, 4).index_select(0, flat)  # (E, 4)
        m = mask.reshape(-1).index_select(0, flat).unsqueeze(1)  # (E, 1) pruning mask
        xt = x2.T.contiguous().index_select(0, self.index_in)  # (E, batch)
        z = xt * p[:, 0:1] + p[:, 1:2]  # a*x + b (mul + add: faster backward than addcmul)
        # split (not slicing): its backward is one cat, where slices would each fill a zero tensor
        parts = [
            get_function(name).forward_fn(zg)
            for (name, _, _), zg in zip(self.groups, z.split(self.sizes, 0), strict=True)
        ]
        f = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)  # (E, batch)
        return f * (p[:, 2:3] * m) + p[:, 3:4] * m  # c*f + d, masked

    # ------------------------------------------------------------------ state
    def _load_from_state_dict(  # type: ignore[override]
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        names = state_dict.get(prefix + "names")
        if names is not None and names.numel() != self.names.numel():  # another vocabulary
            self.names = torch.zeros(names.numel(), dtype=torch.uint8, device=self.names.device)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self._rebuild()
