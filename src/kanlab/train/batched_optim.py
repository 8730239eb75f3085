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
slice, vectorised over models. Per model: the flat parameter and gradient vectors (rows of an (M, n)
matrix), the search direction and step, the curvature history (rows of (M, history_size, n) buffers
with a per-model length, oldest first), the initial-Hessian scale, the iteration and evaluation counts,
the stopping tests (``tolerance_grad``, ``tolerance_change``, ``max_iter``, ``max_eval``), and the
whole strong-Wolfe line search (bracketing, cubic interpolation, zoom) as a per-model state machine.
Shared: the hyper-parameters and the closure call: one closure call evaluates every model, each at its
own trial point; models that wait (their line search or their step has finished) sit at their current
iterate and their results are ignored. The step ends when every model's step has ended.

Differences from torch, all on purpose:

* a model whose loss or gradient at any evaluation is non-finite *drops out*: its parameters return to
  its last accepted iterate (whose loss was finite), ``diverged[m]`` becomes True and it never moves
  again (torch would carry NaN into its comparisons and interpolations);
* per-model scalars (losses, steps, directional derivatives) are float64 tensors; vectors keep the
  parameters' dtype. In float64 the arithmetic is torch's, operation for operation, except that dot
  products and norms are row reductions of a matrix (summation order may differ in the last bits);
* only ``line_search_fn="strong_wolfe"`` is offered (kanlab's setting).
* ``history_size`` defaults to 10 (kanlab's setting; torch's default is 100).

How it plugs into ``fit``: the model batch's parameters (leading dimension M) go in; the closure
computes the (M,) per-model objectives, calls ``losses.sum().backward()`` and returns them. For M = 1
the same code is a drop-in for ``torch.optim.LBFGS`` (the tests check it against torch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

__all__ = ["BatchedLBFGS", "batched_adam", "step_frozen"]

# torch's strong-Wolfe constants; torch's LBFGS calls its line search without passing its own
# ``tolerance_change``, so the zoom's bracket-width test always uses 1e-9
_C1, _C2, _LS_TOL = 1e-4, 0.9, 1e-9
_BR, _ZOOM, _IDLE = 0, 1, 2  # line-search phase per model


def batched_adam(
    params: Iterable[Tensor], *, lr: float, weight_decay: float = 0.0, decoupled: bool = False
) -> torch.optim.Optimizer:
    """Adam (``decoupled=False``, L2 weight decay) or AdamW over stacked parameters: exactly per model.

    Train with the summed per-model loss. See the module docstring for why nothing more is needed, and
    :func:`step_frozen` for models that must stop moving.
    """
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    return cls(list(params), lr=lr, weight_decay=weight_decay)


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


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(-1).double()


def _cubic(x1, f1, g1, x2, f2, g2, lo=None, hi=None) -> Tensor:
    """torch's ``_cubic_interpolate``, elementwise over models (bounds default to the interval)."""
    if lo is None:
        lo, hi = torch.minimum(x1, x2), torch.maximum(x1, x2)
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1**2 - g1 * g2
    d2 = d2_square.clamp(min=0).sqrt()
    fwd = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
    bwd = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
    min_pos = torch.where(x1 <= x2, fwd, bwd)
    return torch.where(
        d2_square >= 0, torch.minimum(torch.maximum(min_pos, lo), hi), (lo + hi) / 2.0
    )


def _set(dst: Tensor, mask: Tensor, src: Tensor | float) -> None:
    """``dst[m] = src[m]`` for the models in ``mask`` (one ``where``: cheaper than masked indexing)."""
    dst.copy_(torch.where(mask.view(-1, *([1] * (dst.dim() - 1))), src, dst))


def _put(dst: Tensor, mask: Tensor, col: Tensor, val: Tensor) -> None:
    """``dst[m, col[m]] = val[m]`` for the models in ``mask``."""
    rows = mask.nonzero().flatten()
    dst[rows, col[rows]] = val[rows].to(dst.dtype)


class BatchedLBFGS:
    """L-BFGS with a strong-Wolfe line search, run independently on each of M models.

    ``params``: tensors whose first dimension is the model dimension (size ``n_models``).
    ``step(closure)``: the closure zeroes the gradients, computes the (M,) per-model losses, calls
    ``losses.sum().backward()`` and returns the losses; ``step`` returns the losses at the step's start.
    Per-model state after a step: ``diverged`` (dropped out for good), ``converged`` (gradient below
    ``tolerance_grad`` at the step's start), ``active`` (neither), ``n_iter`` and ``func_evals``
    (totals, as torch's state), ``step_iters`` and ``step_evals`` (of the last step).
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
    ) -> None:
        self.params: list[Tensor] = list(params)
        if not self.params:
            raise ValueError("BatchedLBFGS got no parameters")
        if n_models < 1:
            raise ValueError(f"n_models must be >= 1, got {n_models}")
        for p in self.params:
            if p.dim() == 0 or p.shape[0] != n_models:
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
        self.M, self.lr, self.max_iter, self.H = n_models, float(lr), max_iter, history_size
        self.tol_grad, self.tol_change = tolerance_grad, tolerance_change
        p0 = self.params[0]
        self.n = sum(p[0].numel() for p in self.params)
        M, n, H, dev = self.M, self.n, self.H, p0.device
        vec = {"dtype": p0.dtype, "device": dev}
        f64 = {"dtype": torch.float64, "device": dev}
        i64 = {"dtype": torch.long, "device": dev}
        self.n_iter = torch.zeros(M, **i64)
        self.func_evals = torch.zeros(M, **i64)
        self.step_iters = torch.zeros(M, **i64)
        self.step_evals = torch.zeros(M, **i64)
        self.diverged = torch.zeros(M, dtype=torch.bool, device=dev)
        self.converged = torch.zeros(M, dtype=torch.bool, device=dev)
        self.d = torch.zeros(M, n, **vec)
        self.t = torch.zeros(M, **f64)
        self.old_dirs = torch.zeros(M, H, n, **vec)
        self.old_stps = torch.zeros(M, H, n, **vec)
        self.ro = torch.zeros(M, H, **f64)
        self.hist_len = torch.zeros(M, **i64)
        self.H_diag = torch.ones(M, **f64)
        self.prev_flat_grad = torch.zeros(M, n, **vec)
        self.prev_loss = torch.zeros(M, **f64)

    @property
    def active(self) -> Tensor:
        """(M,) bool: models that neither diverged nor had converged at the last step's start."""
        return ~(self.diverged | self.converged)

    # -- flat views ------------------------------------------------------------------------------
    def _flat_params(self) -> Tensor:
        return torch.cat([p.detach().reshape(self.M, -1) for p in self.params], 1).clone()

    def _flat_grad(self) -> Tensor:
        return torch.cat(
            [
                p.new_zeros(self.M, p[0].numel()) if p.grad is None else p.grad.reshape(self.M, -1)
                for p in self.params
            ],
            1,
        )

    def _set_params(self, x: Tensor) -> None:
        off = 0
        for p in self.params:
            k = p[0].numel()
            p.copy_(x[:, off : off + k].view_as(p))
            off += k

    def _evaluate(self, closure: Callable[[], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
        self._set_params(x)
        with torch.enable_grad():
            losses = closure()
        if not isinstance(losses, Tensor) or losses.shape != (self.M,):
            shape = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
            raise ValueError(f"the closure must return the (M,) = ({self.M},) losses, got {shape}")
        return losses.detach().double(), self._flat_grad().clone()

    # -- the step --------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor]) -> Tensor:
        M, H, dev = self.M, self.H, self.d.device
        tol_c = self.tol_change
        x = self._flat_params()
        orig_loss, g = self._evaluate(closure, x)
        loss = orig_loss.clone()
        alive = ~self.diverged
        self.func_evals += alive.long()
        self.diverged |= ~(torch.isfinite(loss) & torch.isfinite(g).all(1))
        self.converged = (g.abs().amax(1) <= self.tol_grad) & ~self.diverged
        current_evals = alive.long()
        n_iter = torch.zeros(M, dtype=torch.long, device=dev)
        running = ~(self.diverged | self.converged)  # in this step (not yet stopped)
        phase = torch.full((M,), _IDLE, dtype=torch.long, device=dev)
        z = torch.zeros(M, dtype=torch.float64, device=dev)
        # line-search state
        f0, gtd0, d_norm = z.clone(), z.clone(), z.clone()
        t_prev, f_prev, gtd_prev = z.clone(), z.clone(), z.clone()
        g0, g_prev = torch.zeros_like(g), torch.zeros_like(g)
        max_ls = torch.zeros_like(n_iter)
        ls_iter, ls_evals = torch.zeros_like(n_iter), torch.zeros_like(n_iter)
        bt = torch.zeros(M, 2, dtype=torch.float64, device=dev)
        bf, bgtd = bt.clone(), bt.clone()
        bg = torch.zeros(M, 2, g.shape[1], dtype=g.dtype, device=dev)
        low, high = torch.zeros_like(n_iter), torch.ones_like(n_iter)
        insuf = torch.zeros(M, dtype=torch.bool, device=dev)
        ls_done = torch.zeros_like(insuf)
        rows = torch.arange(M, device=dev)

        def start_iterations(mask: Tensor) -> None:
            """Begin an outer iteration for ``mask``: direction, step guess, line-search start."""
            nonlocal g0, g_prev
            if not mask.any():
                return
            n_iter.add_(mask.long())
            self.n_iter.add_(mask.long())
            first = mask & (self.n_iter == 1)
            later = mask & ~first
            if first.any():
                _set(self.hist_len, first, 0)
                _set(self.H_diag, first, 1.0)
                _set(self.ro, first, 0.0)  # empty slots have ro = 0: they drop out of the loops
            if later.any():  # update the memory
                y = g - self.prev_flat_grad
                s = self.d * self.t.to(g.dtype)[:, None]
                ys = _dot(y, s)
                upd = later & (ys > 1e-10)
                if upd.any():
                    full = upd & (self.hist_len == H)
                    if full.any():  # drop the oldest pair
                        self.old_dirs[full] = self.old_dirs[full].roll(-1, 1)
                        self.old_stps[full] = self.old_stps[full].roll(-1, 1)
                        self.ro[full] = self.ro[full].roll(-1, 1)
                    pos = torch.where(full, H - 1, self.hist_len)
                    r_ = upd.nonzero().flatten()
                    self.old_dirs[r_, pos[r_]] = y[r_]
                    self.old_stps[r_, pos[r_]] = s[r_]
                    self.ro[r_, pos[r_]] = 1.0 / ys[r_]
                    _set(self.H_diag, upd, ys / _dot(y, y))
                    self.hist_len.add_((upd & ~full).long())
            # two-loop recursion (newest pair first) up to the longest history; a model's empty
            # slots have ro = 0, so their coefficients are exactly 0 and leave q and r unchanged
            n_hist = int(self.hist_len[mask].max())
            q = g.neg()
            al = torch.zeros(M, H, dtype=torch.float64, device=dev)
            for i in range(n_hist - 1, -1, -1):
                a = _dot(self.old_stps[:, i], q) * self.ro[:, i]
                al[:, i] = a
                q = q - a.to(q.dtype)[:, None] * self.old_dirs[:, i]
            r = q * self.H_diag.to(q.dtype)[:, None]
            for i in range(n_hist):
                be = _dot(self.old_dirs[:, i], r) * self.ro[:, i]
                r = r + (al[:, i] - be).to(r.dtype)[:, None] * self.old_stps[:, i]
            _set(self.d, mask, torch.where(first[:, None], g.neg(), r))
            _set(self.prev_flat_grad, mask, g)
            _set(self.prev_loss, mask, loss)
            t_first = torch.clamp(1.0 / g.abs().sum(1).double(), max=1.0) * self.lr
            _set(self.t, mask, torch.where(first, t_first, self.lr))
            gtd = _dot(g, self.d)
            stop = mask & (gtd > -tol_c)
            running.logical_and_(~stop)
            go = mask & ~stop
            for dst, src in ((f0, loss), (g0, g), (gtd0, gtd), (t_prev, 0.0), (f_prev, loss)):
                _set(dst, go, src)
            for dst, src in ((g_prev, g), (gtd_prev, gtd), (ls_iter, 0), (ls_evals, 0)):
                _set(dst, go, src)
            _set(d_norm, go, self.d.abs().amax(1).double())
            _set(max_ls, go, self.max_eval - current_evals)
            _set(insuf, go, False)
            _set(ls_done, go, False)
            _set(phase, go, _BR)

        def zoom_trial(mask: Tensor) -> Tensor:
            """The zoom loop's head for ``mask``: the models that still need a trial point get one."""
            b0, b1 = bt[:, 0], bt[:, 1]
            small = mask & ((b1 - b0).abs() * d_norm < _LS_TOL)
            need = mask & ~small
            t = _cubic(b0, bf[:, 0], bgtd[:, 0], b1, bf[:, 1], bgtd[:, 1])
            bmax, bmin = torch.maximum(b0, b1), torch.minimum(b0, b1)
            eps = 0.1 * (bmax - bmin)
            near = torch.minimum(bmax - t, t - bmin) < eps
            move = near & (insuf | (t >= bmax) | (t <= bmin))
            moved = torch.where((t - bmax).abs() < (t - bmin).abs(), bmax - eps, bmin + eps)
            t = torch.where(move, moved, t)
            insuf[need] = (near & ~move)[need]
            self.t[need] = t[need]
            return small  # these models' line searches end here

        def finish_ls(mask: Tensor) -> None:
            """End the line search of ``mask``: take the low bracket end and run the outer tests."""
            if not mask.any():
                return
            phase[mask] = _IDLE
            r_ = mask.nonzero().flatten()
            lo_ = low[r_]
            self.t[r_] = bt[r_, lo_]
            loss[r_] = bf[r_, lo_]
            g[r_] = bg[r_, lo_]
            x[r_] = x[r_] + self.t[r_].to(x.dtype)[:, None] * self.d[r_]
            current_evals[r_] += ls_evals[r_]
            self.func_evals[r_] += ls_evals[r_]
            stop = (
                (n_iter == self.max_iter)
                | (current_evals >= self.max_eval)
                | (g.abs().amax(1) <= self.tol_grad)
                | ((self.d * self.t.to(g.dtype)[:, None]).abs().amax(1) <= tol_c)
                | ((loss - self.prev_loss).abs() < tol_c)
            )
            running[mask & stop] = False
            start_iterations(mask & ~stop)

        start_iterations(running.clone())
        while (running & (phase != _IDLE)).any():
            need = running & (phase != _IDLE)
            trial = torch.where(need[:, None], x + self.t.to(x.dtype)[:, None] * self.d, x)
            f_new, g_new = self._evaluate(closure, trial)
            bad = need & ~(torch.isfinite(f_new) & torch.isfinite(g_new).all(1))
            if bad.any():
                self.diverged |= bad
                running[bad] = False
                phase[bad] = _IDLE
                need = need & ~bad
            gtd_new = _dot(g_new, self.d)
            t = self.t
            ls_evals[need] += 1
            armijo_fail = f_new > (f0 + _C1 * t * gtd0)
            curv_ok = gtd_new.abs() <= -_C2 * gtd0
            # zoom: update the bracket with the new point
            zm = need & (phase == _ZOOM)
            ls_iter[zm] += 1
            rep_high = zm & (armijo_fail | (f_new >= bf[rows, low]))
            keep = zm & ~rep_high
            ls_done[keep & curv_ok] = True
            flip = keep & ~curv_ok & (gtd_new * (bt[rows, high] - bt[rows, low]) >= 0)
            for arr in (bt, bf, bgtd, bg):
                _put(arr, flip, high, arr[rows, low])
            for arr, val in ((bt, t), (bf, f_new), (bgtd, gtd_new), (bg, g_new)):
                _put(arr, rep_high, high, val)
                _put(arr, keep, low, val)
            lo_first = bf[:, 0] <= bf[:, 1]
            low[rep_high] = torch.where(lo_first, 0, 1)[rep_high]
            high[rep_high] = torch.where(lo_first, 1, 0)[rep_high]
            zoom_end = zm & (ls_done | (ls_iter >= max_ls))
            # bracketing phase
            br = need & (phase == _BR)
            ls_iter[br & (ls_evals > 1)] += 1
            exhausted = br & (ls_iter == max_ls)
            chk = br & ~exhausted
            to_zoom1 = chk & (armijo_fail | ((ls_iter > 1) & (f_new >= f_prev)))
            done_br = chk & ~to_zoom1 & curv_ok
            to_zoom2 = chk & ~to_zoom1 & ~done_br & (gtd_new >= 0)
            to_zoom = to_zoom1 | to_zoom2
            interp = chk & ~to_zoom1 & ~done_br & ~to_zoom2
            pair = to_zoom | exhausted
            bt[pair] = torch.stack([torch.where(exhausted, 0.0, t_prev), t], 1)[pair]
            bf[pair] = torch.stack([torch.where(exhausted, f0, f_prev), f_new], 1)[pair]
            bgtd[pair] = torch.stack([torch.where(exhausted, gtd0, gtd_prev), gtd_new], 1)[pair]
            g_lo = torch.where(exhausted[:, None], g0, g_prev)
            bg[pair] = torch.stack([g_lo, g_new], 1)[pair]
            one = done_br
            bt[one], bf[one] = t[one, None].expand(-1, 2), f_new[one, None].expand(-1, 2)
            bgtd[one] = gtd_new[one, None].expand(-1, 2)
            bg[one] = g_new[one, None].expand(-1, 2, -1)
            lo_first = bf[:, 0] <= bf[:, 1]
            low[pair | one] = torch.where(lo_first, 0, 1)[pair | one]
            high[pair | one] = torch.where(lo_first, 1, 0)[pair | one]
            insuf[to_zoom] = False
            phase[to_zoom] = _ZOOM
            if interp.any():
                new_t = _cubic(
                    t_prev, f_prev, gtd_prev, t, f_new, gtd_new, t + 0.01 * (t - t_prev), t * 10
                )
                t_prev[interp], f_prev[interp] = t[interp], f_new[interp]
                g_prev[interp], gtd_prev[interp] = g_new[interp], gtd_new[interp]
                self.t[interp] = new_t[interp]
            # zoom heads for the models still zooming; then end the finished line searches
            zoomers = (zm & ~zoom_end) | to_zoom
            small = zoom_trial(zoomers)
            finish_ls(zoom_end | exhausted | done_br | small)
        self._set_params(x)
        self.step_iters, self.step_evals = n_iter, current_evals
        return orig_loss
