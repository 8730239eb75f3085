"""Optimisers over a batch of M independent models: every parameter has a leading model dimension.

The objective of a batch is the *sum* of the M per-model losses, so the gradient of model m's slice is
model m's own gradient. What each optimiser keeps per model:

**Adam / AdamW** (:func:`batched_adam`): torch's own optimisers already are exactly per model on the
stacked parameters: every update is elementwise, and the only shared quantity, the step count of the
bias correction, is the same for every model while all models step together. A model that has
dropped out (diverged) must not move: :func:`step_frozen` zeroes its gradient slice before the step and
restores its parameter slice after it (its moment estimates decay meanwhile; they are never used again
unless the caller revives the model, which kanlab does not).

**LBFGS** (:class:`BatchedLBFGS`): torch's ``LBFGS(line_search_fn="strong_wolfe")`` run on each model's
slice. Each model's step is a Python generator (:func:`_model_step`) that is torch's code line for
line on Python floats: the stopping tests (``tolerance_grad``, ``tolerance_change``, ``max_iter``,
``max_eval``) and the whole strong-Wolfe line search (bracketing, cubic interpolation, zoom). It
yields what it needs of the vectors: a new direction, an evaluation at x + t d, or the acceptance of
a step. The batch serves each kind of request for all the models that wait on it at once: the
curvature memory and the vectorised two-loop recursion (rows of (M, history_size, n) slot buffers;
each model's own slot order and length), one closure call for every model's trial point, and the
row updates of x and g. Models that wait (their step has finished) sit at their current iterate.
The step ends when every model's step has ended. Why this shape: the scalar bookkeeping costs
what it costs torch (a few Python operations per model and evaluation, no masked tensor ops), and
the vector work is a handful of tensor operations per request whatever M is; gradients are never
copied (a line search holds the (M, n) gradient matrix of an evaluation; vector state is replaced,
never written in place).

Differences from torch, all on purpose:

* a model whose loss or directional derivative (non-finite whenever its gradient is) at any
  evaluation is non-finite *drops out*: its parameters stay at its last accepted iterate (whose
  loss was finite), ``diverged[m]`` becomes True and it never moves again (torch would carry NaN
  into its comparisons and interpolations);
* per-model scalars (losses, steps, directional derivatives) are Python floats (float64); vectors
  keep the parameters' dtype. In float64 the arithmetic is torch's, operation for operation, except
  that dot products are row reductions of a matrix (summation order may differ in the last bits);
* only ``line_search_fn="strong_wolfe"`` is offered (kanlab's setting).
* ``history_size`` defaults to 10 (kanlab's setting; torch's default is 100).

How it plugs into ``fit``: the model batch's parameters (leading dimension M) go in; the closure
computes the (M,) per-model objectives, calls ``losses.sum().backward()`` and returns them. For one
model, ``BatchedLBFGS(model_params, n_models=1, stacked=False)`` is a drop-in for
``torch.optim.LBFGS`` (``fit`` runs it so; the tests check it against torch).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["BatchedLBFGS", "batched_adam", "step_frozen"]


def _numba_installed() -> bool:
    from kanlab.kernels import _HAS_NUMBA

    return _HAS_NUMBA


# torch's strong-Wolfe constants; torch's LBFGS calls its line search without passing its own
# ``tolerance_change``, so the zoom's bracket-width test always uses 1e-9
_C1, _C2, _LS_TOL = 1e-4, 0.9, 1e-9
_DIRECTION, _EVAL, _ACCEPT = 0, 1, 2  # what a model's step asks of the batch


def batched_adam(
    params: Iterable[Tensor],
    *,
    lr: float,
    weight_decay: float = 0.0,
    decoupled: bool = False,
    no_decay: Sequence[Tensor] = (),
) -> torch.optim.Optimizer:
    """Adam (``decoupled=False``, L2 weight decay) or AdamW over stacked parameters: exactly per model.

    Train with the summed per-model loss. See the module docstring for why nothing more is needed, and
    :func:`step_frozen` for models that must stop moving. ``no_decay``: more parameters, in a group
    of their own without weight decay (``fit``'s free-knot logits).
    """
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    groups: list[dict[str, Any]] = [{"params": list(params)}]
    if no_decay:
        groups.append({"params": list(no_decay), "weight_decay": 0.0})
    return cls(groups, lr=lr, weight_decay=weight_decay)


@torch.no_grad()
def step_frozen(optimizer: torch.optim.Optimizer, frozen: Tensor) -> None:
    """One ``optimizer.step()`` in which the models with ``frozen[m]`` True keep their parameters.

    Their gradient slices are zeroed first (so NaN gradients of a diverged model reach no state) and
    their parameter slices are restored afterwards; the other models' updates are untouched, since every
    Adam(W) update is elementwise.
    """
    params = [p for g in optimizer.param_groups for p in g["params"]]
    frozen = frozen.to(dtype=torch.bool)
    for p in params:
        if p.shape[0] != frozen.shape[0]:
            raise ValueError(
                f"frozen has {frozen.shape[0]} models but a parameter has shape {tuple(p.shape)}"
            )
    idx = frozen.nonzero().flatten()
    saved = [p[idx].clone() for p in params]
    for p in params:
        if p.grad is not None:
            p.grad[idx] = 0.0
    optimizer.step()
    for p, s in zip(params, saved, strict=True):
        p[idx] = s


def _cubic(x1: float, f1: float, g1: float, x2: float, f2: float, g2: float,
           lo: float | None = None, hi: float | None = None) -> float:  # fmt: skip
    """torch's ``_cubic_interpolate`` on Python floats (bounds default to the interval)."""
    if lo is None or hi is None:
        lo, hi = (x1, x2) if x1 <= x2 else (x2, x1)
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1**2 - g1 * g2
    if d2_square >= 0:
        d2 = math.sqrt(d2_square)
        if x1 <= x2:
            min_pos = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
        else:
            min_pos = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
        return min(max(min_pos, lo), hi)
    return (lo + hi) / 2.0


def _model_step(
    opt: BatchedLBFGS, m: int, loss: float, lr: float, max_iter: int, max_eval: int,
    tol_grad: float, tol_change: float,
) -> Generator[tuple, Any, None]:  # fmt: skip
    """Model ``m``'s part of one step, line for line torch's ``LBFGS.step`` after its first
    evaluation, on Python floats. The vectors belong to the caller, who serves the requests that
    this generator yields, batched over all models that wait on the same kind of request:

    - ``(_DIRECTION,)`` -> ``(gtd, d_norm, |g|_1, first, G)``: a new direction for m (``G``'s row m
      is m's gradient; a gradient travels as the (M, n) matrix of its evaluation, never copied);
    - ``(_EVAL, t)`` -> ``(f, gtd, G)``: objective, directional derivative and gradient at x + t d;
    - ``(_ACCEPT, t, G)`` -> ``(max|g|, max|t d|)``: x <- x + t d, g <- G's row m.
    """
    current_evals, n_iter = 1, 0
    while n_iter < max_iter:
        n_iter += 1
        gtd, d_norm, g_abs_sum, first, g = yield (_DIRECTION,)
        prev_loss = loss
        t = min(1.0, 1.0 / g_abs_sum if g_abs_sum > 0 else math.inf) * lr if first else lr
        opt._t[m] = t
        if gtd > -tol_change:
            return
        # torch's _strong_wolfe: bracketing ...
        f, max_ls = loss, max_eval - current_evals
        f_new, gtd_new, g_new = yield (_EVAL, t)
        ls_evals, ls_iter, done = 1, 0, False
        t_prev, f_prev, g_prev, gtd_prev = 0.0, f, g, gtd
        while ls_iter < max_ls:
            if f_new > (f + _C1 * t * gtd) or (ls_iter > 1 and f_new >= f_prev):
                br, br_f, br_g = [t_prev, t], [f_prev, f_new], [g_prev, g_new]
                br_gtd = [gtd_prev, gtd_new]
                break
            if abs(gtd_new) <= -_C2 * gtd:
                br, br_f, br_g, br_gtd, done = [t], [f_new], [g_new], [gtd_new], True
                break
            if gtd_new >= 0:
                br, br_f, br_g = [t_prev, t], [f_prev, f_new], [g_prev, g_new]
                br_gtd = [gtd_prev, gtd_new]
                break
            tmp = t
            t = _cubic(t_prev, f_prev, gtd_prev, t, f_new, gtd_new, t + 0.01 * (t - t_prev), t * 10)
            t_prev, f_prev, g_prev, gtd_prev = tmp, f_new, g_new, gtd_new
            f_new, gtd_new, g_new = yield (_EVAL, t)
            ls_evals += 1
            ls_iter += 1
        if ls_iter == max_ls:
            br, br_f, br_g = [0.0, t], [f, f_new], [g, g_new]
        # ... and zoom
        insuf = False
        low, high = (0, 1) if br_f[0] <= br_f[-1] else (1, 0)
        while not done and ls_iter < max_ls:
            if abs(br[1] - br[0]) * d_norm < _LS_TOL:
                break
            t = _cubic(br[0], br_f[0], br_gtd[0], br[1], br_f[1], br_gtd[1])
            b_max, b_min = max(br), min(br)
            eps = 0.1 * (b_max - b_min)
            if min(b_max - t, t - b_min) < eps:
                if insuf or t >= b_max or t <= b_min:
                    t = b_max - eps if abs(t - b_max) < abs(t - b_min) else b_min + eps
                    insuf = False
                else:
                    insuf = True
            else:
                insuf = False
            f_new, gtd_new, g_new = yield (_EVAL, t)
            ls_evals += 1
            ls_iter += 1
            if f_new > (f + _C1 * t * gtd) or f_new >= br_f[low]:
                br[high], br_f[high], br_g[high], br_gtd[high] = t, f_new, g_new, gtd_new
                low, high = (0, 1) if br_f[0] <= br_f[1] else (1, 0)
            else:
                if abs(gtd_new) <= -_C2 * gtd:
                    done = True
                elif gtd_new * (br[high] - br[low]) >= 0:
                    br[high], br_f[high] = br[low], br_f[low]
                    br_g[high], br_gtd[high] = br_g[low], br_gtd[low]
                br[low], br_f[low], br_g[low], br_gtd[low] = t, f_new, g_new, gtd_new
        t, loss = br[low], br_f[low]
        opt._t[m] = t
        g_max, step_max = yield (_ACCEPT, t, br_g[low])
        current_evals += ls_evals
        if (
            n_iter == max_iter
            or current_evals >= max_eval
            or g_max <= tol_grad
            or step_max <= tol_change
            or abs(loss - prev_loss) < tol_change
        ):
            return


class BatchedLBFGS:
    """L-BFGS with a strong-Wolfe line search, run independently on each of M models.

    ``params``: tensors whose first dimension is the model dimension (size ``n_models``); with
    ``stacked=False`` the parameters of one model as they are (``n_models`` must be 1; ``fit``'s
    way), whose closure may return its loss as a scalar.
    ``step(closure)``: the closure zeroes the gradients, computes the (M,) per-model losses, calls
    ``losses.sum().backward()`` and returns the losses; ``step`` returns the losses at the step's start.
    Per-model state after a step: ``diverged`` (dropped out for good), ``converged`` (gradient below
    ``tolerance_grad`` at the step's start), ``active`` (neither), ``n_iter`` and ``func_evals``
    (totals, as torch's state), ``step_iters`` and ``step_evals`` (of the last step); (M,) CPU tensors.
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        *,
        n_models: int,
        lr: float = 1.0,
        max_iter: int = 20,
        max_eval: int | None = None,
        history_size: int = 10,
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9,
        line_search_fn: str | None = "strong_wolfe",
        stacked: bool = True,
    ) -> None:
        self.params: list[Tensor] = list(params)
        if not self.params:
            raise ValueError("BatchedLBFGS got no parameters")
        if n_models < 1:
            raise ValueError(f"n_models must be >= 1, got {n_models}")
        if not stacked and n_models != 1:
            raise ValueError(f"stacked=False takes one model's parameters: n_models must be 1, "
                             f"got {n_models}")  # fmt: skip
        for p in self.params:
            if stacked and (p.dim() == 0 or p.shape[0] != n_models):
                raise ValueError(
                    f"every parameter needs a leading model dimension of size n_models={n_models}, "
                    f"got shape {tuple(p.shape)}"
                )
        if line_search_fn != "strong_wolfe":
            raise ValueError(f"line_search_fn must be 'strong_wolfe', got {line_search_fn!r}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.max_eval = max_iter * 5 // 4 if max_eval is None else max_eval
        if max_iter < 1 or self.max_eval < 1 or history_size < 1:
            raise ValueError(
                f"max_iter, max_eval and history_size must be >= 1, got {max_iter}, "
                f"{self.max_eval}, {history_size}"
            )
        self.stacked = stacked
        self.M, self.lr, self.max_iter, self.H = n_models, float(lr), max_iter, history_size
        self.tol_grad, self.tol_change = tolerance_grad, tolerance_change
        p0 = self.params[0]
        self.n = sum(p.numel() for p in self.params) // n_models
        M, n, H = self.M, self.n, self.H
        vec = {"dtype": p0.dtype, "device": p0.device}
        zeros = torch.zeros(M, dtype=torch.long)
        self.n_iter, self.func_evals = zeros.clone(), zeros.clone()
        self.step_iters, self.step_evals = zeros.clone(), zeros.clone()
        self.diverged = torch.zeros(M, dtype=torch.bool)
        self.converged = torch.zeros(M, dtype=torch.bool)
        # per model, across steps (as torch's state): vectors as rows, scalars as Python floats.
        # Vector state is never written in place (a new tensor replaces it), so the line searches
        # can hold on to gradient matrices without copying them.
        self.d = torch.zeros(M, n, **vec)
        self.prev_flat_grad = torch.zeros(M, n, **vec)
        self.old_dirs = torch.zeros(M, H, n, **vec)  # curvature pairs, in slots ...
        self.old_stps = torch.zeros(M, H, n, **vec)
        self._pairs = [(self.old_dirs[:, i], self.old_stps[:, i]) for i in range(H)]  # slot views
        self._pairs1 = [(a.view(-1), b.view(-1)) for a, b in self._pairs] if M == 1 else []
        self._arange = torch.arange(M, device=p0.device)
        # ... each model's, by age (newest first): its slots and ro = 1 / y.s
        self._slot_age: list[list[int]] = [[] for _ in range(M)]
        self._ro_age: list[list[float]] = [[] for _ in range(M)]
        self._h_diag = [1.0] * M
        self._t = [0.0] * M
        self._n_iter = [0] * M
        self._func_evals = [0] * M
        # many models' directions on CPU: one Numba call (kanlab.kernels.cpu_lbfgs) instead of
        # ~80 small tensor operations; False: the torch recursion
        self.numba_two_loop = (
            M > 1 and p0.device.type == "cpu" and p0.dtype in (torch.float32, torch.float64)
            and _numba_installed()
        )  # fmt: skip

    @property
    def active(self) -> Tensor:
        """(M,) bool: models that neither diverged nor had converged at the last step's start."""
        return ~(self.diverged | self.converged)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the parameters' gradients (as ``torch.optim.Optimizer.zero_grad``)."""
        for p in self.params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_().zero_()

    # -- flat views ------------------------------------------------------------------------------
    def _flat_params(self) -> Tensor:
        return torch.cat([p.detach().reshape(self.M, -1) for p in self.params], 1)

    def _flat_grad(self) -> Tensor:  # (a new tensor: cat copies)
        return torch.cat(
            [
                p.new_zeros(self.M, p.numel() // self.M)
                if p.grad is None
                else p.grad.reshape(self.M, -1)
                for p in self.params
            ],
            1,
        )

    def _set_params(self, x: Tensor) -> None:
        off = 0
        for p in self.params:
            k = p.numel() // self.M
            p.copy_(x[:, off : off + k].view_as(p))
            off += k

    def _evaluate(self, closure: Callable[[], Tensor]) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            losses = closure()
        if isinstance(losses, Tensor) and not self.stacked and losses.dim() == 0:
            losses = losses.reshape(1)
        if not isinstance(losses, Tensor) or losses.shape != (self.M,):
            shape = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
            raise ValueError(f"the closure must return the (M,) = ({self.M},) losses, got {shape}")
        return losses.detach().double(), self._flat_grad()

    def _col(self, values: list[float] | np.ndarray) -> Tensor:
        """(M, 1) column of per-model scalars in the vectors' dtype and device."""
        v = torch.from_numpy(np.asarray(values, dtype=np.float64))
        return v.to(dtype=self.d.dtype, device=self.d.device).unsqueeze(1)

    def _rowdot(self, a: Tensor, b: Tensor) -> Tensor:
        """(M,) row dot products; for one model torch's ``dot``, as torch's LBFGS."""
        if self.M == 1:
            return torch.dot(a.view(-1), b.view(-1)).view(1)
        return torch.linalg.vecdot(a, b)

    def _rows(self, rows: list[int], new: Tensor, old: Tensor) -> Tensor:
        """``old`` with ``rows`` taken from ``new`` (``new`` itself when that is every row)."""
        if len(rows) == self.M:
            return new
        sel = np.zeros(self.M, dtype=bool)
        sel[rows] = True
        return torch.where(torch.from_numpy(sel).to(old.device).unsqueeze(1), new, old)

    # -- the step --------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor]) -> Tensor:
        M = self.M
        self._x = self._flat_params()
        orig_loss, G = self._evaluate(closure)
        self._g = G
        losses = orig_loss.tolist()
        g_max = G.abs().amax(1).tolist()
        self._div = div = self.diverged.tolist()
        conv = [False] * M
        self._iters, self._evals = [0] * M, [0] * M
        self._gens: dict[int, Generator[tuple, Any, None]] = {}
        self._pending: dict[int, tuple] = {}
        for m in range(M):
            if div[m]:
                continue
            self._evals[m] = 1
            if not (math.isfinite(losses[m]) and math.isfinite(g_max[m])):
                div[m] = True
            elif g_max[m] <= self.tol_grad:
                conv[m] = True
            else:
                gen = _model_step(self, m, losses[m], self.lr, self.max_iter, self.max_eval,
                                  self.tol_grad, self.tol_change)  # fmt: skip
                self._gens[m] = gen
                self._pending[m] = next(gen)
        pending = self._pending
        while pending:
            accept = [m for m, r in pending.items() if r[0] == _ACCEPT]
            if accept:
                self._accept(accept)
            turn = [m for m, r in pending.items() if r[0] == _DIRECTION]
            if turn:
                self._direction(turn)
            if pending:  # every model left waits for an evaluation
                self._eval_round(closure)
        self._set_params(self._x)
        self._x = self._g = self._gens = None  # type: ignore[assignment]  # (release them)
        for m in range(M):
            self._func_evals[m] += self._evals[m]
        self.diverged = torch.tensor(div, dtype=torch.bool)
        self.converged = torch.tensor(conv, dtype=torch.bool)
        self.n_iter = torch.tensor(self._n_iter, dtype=torch.long)
        self.func_evals = torch.tensor(self._func_evals, dtype=torch.long)
        self.step_iters = torch.tensor(self._iters, dtype=torch.long)
        self.step_evals = torch.tensor(self._evals, dtype=torch.long)
        return orig_loss

    def _send(self, m: int, answer: tuple) -> None:
        try:
            self._pending[m] = self._gens[m].send(answer)
        except StopIteration:
            del self._pending[m], self._gens[m]

    def _drop(self, m: int) -> None:
        """Model m diverged: it stops where it is (its last accepted iterate) for good."""
        self._div[m] = True
        self._gens.pop(m).close()
        del self._pending[m]

    def _accept(self, ms: list[int]) -> None:
        """x <- x + t d and g <- the line search's gradient, for the models ``ms``."""
        M, d, pending = self.M, self.d, self._pending
        ts = np.zeros(M)
        groups: dict[int, tuple[Tensor, list[int]]] = {}
        for m in ms:
            _, ts[m], G = pending[m]
            groups.setdefault(id(G), (G, []))[1].append(m)
        if M == 1:
            t = float(ts[0])
            self._x = torch.add(self._x, d, alpha=t)
            step = d.mul(t)
        else:  # (rows with t = 0 stay exactly where they are)
            tcol = self._col(ts)
            self._x = torch.addcmul(self._x, tcol, d)
            step = d * tcol
        g = self._g
        for G, rows in groups.values():
            g = self._rows(rows, G, g)
        self._g = g
        stats = torch.stack([g.abs().amax(1), step.abs().amax(1)]).tolist()
        for m in ms:
            self._send(m, (stats[0][m], stats[1][m]))

    def _direction(self, ms: list[int]) -> None:
        """A new L-BFGS direction for the models ``ms`` (each at the start of an iteration)."""
        g = self._g
        first, later = [], []
        for m in ms:
            self._iters[m] += 1
            self._n_iter[m] += 1
            (first if self._n_iter[m] == 1 else later).append(m)
        for m in first:
            self._slot_age[m], self._ro_age[m], self._h_diag[m] = [], [], 1.0
        d = self.d
        if later:
            d = self._two_loop(later, g)
        if first:
            d = self._rows(first, g.neg(), d)
        self.d = d
        self.prev_flat_grad = self._rows(ms, g, self.prev_flat_grad)
        stats = [self._rowdot(g, d), d.abs().amax(1)]
        if first:
            stats.append(g.abs().sum(1))
        vals = torch.stack(stats).double().tolist()
        bad = []
        for m in ms:
            gtd = vals[0][m]
            if not math.isfinite(gtd):
                bad.append(m)
                self._drop(m)
                continue
            g_abs = vals[2][m] if self._n_iter[m] == 1 else 0.0
            self._send(m, (gtd, vals[1][m], g_abs, self._n_iter[m] == 1, g))
        if bad:  # a finite direction for them: their trial points stay at x
            self.d = self._rows(bad, torch.zeros_like(d), d)

    def _two_loop(self, ms: list[int], g: Tensor) -> Tensor:
        """The curvature-memory update and torch's two-loop recursion for the models ``ms``; the
        other rows of the result are ``self.d``'s. Recursions of different lengths run side by side,
        aligned by age (newest pair first); a model's missing pairs get ro = 0, which makes their
        coefficients exactly 0 and leaves its vectors unchanged."""
        M, H = self.M, self.H
        y = g - self.prev_flat_grad
        if M == 1:  # one model: 1-d vectors and torch's dot, as torch's LBFGS
            s = self.d * self._t[0]
            y1, s1 = y.view(-1), s.view(-1)
            ys, yy = ([v] for v in torch.stack([torch.dot(y1, s1), torch.dot(y1, y1)]).tolist())
        else:
            s = self.d * self._col(self._t)
            dots = torch.stack([torch.linalg.vecdot(y, s), torch.linalg.vecdot(y, y)])
            ys, yy = dots.double().tolist()
        push, slots = [], []
        for m in ms:  # a new pair, in the model's oldest slot once its memory is full
            if ys[m] > 1e-10:
                ages, ros = self._slot_age[m], self._ro_age[m]
                slot = ages[-1] if len(ages) == H else len(ages)
                ages.insert(0, slot)
                ros.insert(0, 1.0 / ys[m])
                del ages[H:], ros[H:]
                self._h_diag[m] = ys[m] / yy[m]
                push.append(m)
                slots.append(slot)
        if push:
            if len(push) == M and all(sl == slots[0] for sl in slots):
                self.old_dirs[:, slots[0]] = y
                self.old_stps[:, slots[0]] = s
            else:
                r_, s_ = torch.from_numpy(np.array(push)), torch.from_numpy(np.array(slots))
                self.old_dirs[r_, s_] = y[r_]
                self.old_stps[r_, s_] = s[r_]
        if M > 1 and self.numba_two_loop:
            return self._two_loop_numba(ms, g)
        ro_t: Sequence[Tensor | float]  # per age: (M,), or a float for one model
        if M == 1:
            ro_t, g_, dot = self._ro_age[0], g.view(-1), torch.dot
            pairs = [self._pairs1[sl] for sl in self._slot_age[0]]
        else:
            # per model and age: the slot and ro; a model without a pair at an age (or not in ms)
            # gets ro = 0 and the slot of a model with the longest history (any slot would do,
            # and equal slots need no gather)
            fill = max((self._slot_age[m] for m in ms), key=len)
            n_old, chosen = len(fill), set(ms)
            slot_rows, ro_rows = [], []
            for m in range(M):
                ages = self._slot_age[m] if m in chosen else []
                slot_rows.append(ages + fill[len(ages) :])
                ro_rows.append(self._ro_age[m] + [0.0] * (n_old - len(ages)) if ages else
                               [0.0] * n_old)  # fmt: skip
            ro_np = np.array(ro_rows, dtype=np.float64).reshape(M, n_old).T.copy()
            ro_t = torch.from_numpy(ro_np).to(dtype=g.dtype, device=g.device).unbind(0)
            g_, dot = g, torch.linalg.vecdot
            if all(row == fill for row in slot_rows):  # (the usual case: views made once)
                pairs = [self._pairs[sl] for sl in fill]
            else:
                idx = torch.from_numpy(np.array(slot_rows).T.copy()).to(g.device)  # (age, M)
                at = self._arange[None, :]
                dirs_all, stps_all = self.old_dirs[at, idx], self.old_stps[at, idx]
                pairs = list(zip(dirs_all.unbind(0), stps_all.unbind(0), strict=True))
        n_old = len(pairs)
        q = g_.neg()
        al = []
        # (M,) coefficients broadcast as a column; one model's are 0-d
        col = (lambda v: v) if M == 1 else (lambda v: v.unsqueeze(1))
        for age in range(n_old):  # newest first
            dirs, stps = pairs[age]
            a = col(dot(stps, q).mul_(ro_t[age]))
            al.append(a)
            q = torch.addcmul(q, a, dirs, value=-1)
        r = q * (self._h_diag[0] if M == 1 else self._col(self._h_diag))
        for age in range(n_old - 1, -1, -1):  # oldest first
            dirs, stps = pairs[age]
            be = col(dot(dirs, r).mul_(ro_t[age]))
            r = torch.addcmul(r, al[age] - be, stps)
        r = r.view(M, -1)
        return self._rows(ms, r, self.d)

    def _two_loop_numba(self, ms: list[int], g: Tensor) -> Tensor:
        """:meth:`_two_loop`'s recursion for the models ``ms`` in one call of
        :func:`kanlab.kernels.cpu_lbfgs.two_loop` (the memory already updated)."""
        from kanlab.kernels.cpu_lbfgs import two_loop

        M, H = self.M, self.H
        slots = np.zeros((M, H), dtype=np.int64)
        ros = np.zeros((M, H))
        counts = np.zeros(M, dtype=np.int64)
        for m in ms:
            k = len(self._slot_age[m])
            counts[m] = k
            slots[m, :k] = self._slot_age[m]
            ros[m, :k] = self._ro_age[m]
        out = self.d.clone(memory_format=torch.contiguous_format)
        two_loop(g.contiguous().numpy(), self.old_dirs.numpy(), self.old_stps.numpy(), slots, ros,
                 counts, np.asarray(self._h_diag, dtype=np.float64),
                 np.asarray(ms, dtype=np.int64), out.numpy())  # fmt: skip
        return out

    def _eval_round(self, closure: Callable[[], Tensor]) -> None:
        """One closure call: each waiting model at its trial point x + t d, the others at x."""
        M, d, pending = self.M, self.d, self._pending
        ts = np.zeros(M)
        for m, r in pending.items():
            ts[m] = r[1]
        if M == 1:
            trial = torch.add(self._x, d, alpha=float(ts[0]))
        else:
            trial = torch.addcmul(self._x, self._col(ts), d)
        self._set_params(trial)
        losses, G = self._evaluate(closure)
        vals = torch.stack([losses, self._rowdot(G, d).double()]).tolist()
        for m in list(pending):
            self._evals[m] += 1
            f, gtd = vals[0][m], vals[1][m]
            if math.isfinite(f) and math.isfinite(gtd):
                self._send(m, (f, gtd, G))
            else:
                self._drop(m)
