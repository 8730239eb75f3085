"""Model batches: M models of one family and shape held as one module (issue 19, first part).

:class:`KANBatch` holds M KANs with the same widths, spline order and base activations; every
parameter and buffer carries a leading model dimension ``M`` and each model keeps its own knots,
so adapted grids (after ``update_grid`` with different data) work. :class:`MLPBatch` holds M MLPs
with the same widths and activation. Both share one API:

- ``Batch.stack(models)`` copies every parameter and buffer of existing models (the models are not
  changed and share no storage with the batch);
- ``Batch.from_config(config, seeds=[...])``: model m equals ``kanlab.build(config.replace(seed=s))``;
- ``batch(x)``: x ``(batch, in)`` shared by all models, or ``(M, batch, in)`` one per model ->
  ``(M, batch, out)``; row m equals ``models[m](x)`` (float64: to ~1e-15). Side-effect free;
- ``batch.unstack()``: M independent models holding exactly the batch's values.

Limits of this first version (refused with an error naming the problem): one grid size G for all M
KANs and all their layers (no padding or grouping of mixed grid sizes yet); no symbolic edges; no
multiplication nodes (:mod:`kanlab.mult`). On one
thread and small grids (G+k <= 24 basis functions; base activation silu, identity, relu or zero)
each KAN layer is one fused Numba call for all M models, spline, base branch, scales and mask
(:mod:`kanlab.kernels.cpu_batched_layer`; a shared x is read, and its basis computed, once for
all models on one grid). Otherwise the KAN spline part runs on the sparse Numba CPU kernels with a
model dimension
(:mod:`kanlab.kernels.cpu_batched`: one call for all M models) when the single-model backend
choice picks Numba (CPU, float32/float64, Numba installed, not forced to another backend); else on
the batched *reference* evaluation (dense Cox-de Boor basis per model, then one ``bmm``,
:mod:`kanlab.kernels.batched_reference`; not yet Triton on GPU). ``update_grid`` / ``extend_grid``
run the KAN's algorithm for all M models at once (:mod:`kanlab.grid_batch`), layer by layer, and
write the results in place (parameters keep their identity when their shape does not change);
model m gets its own KAN's result to rounding (often bit-identical).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from kanlab import grid_batch
from kanlab._checks import check_finite, check_float, check_input, check_int
from kanlab.config import KANConfig, MLPConfig
from kanlab.kernels.backends import choose, select_backend
from kanlab.kernels.batched_reference import batched_basis, batched_spline_product
from kanlab.layers import ACTIVATIONS, KANLinear, check_coarsen
from kanlab.models import KAN, MLP, kan_layers

__all__ = ["KANBatch", "KANBatchLayer", "MLPBatch"]

_KAN_PARAMS = ("coef", "scale_base", "scale_spline")  # KANLinear's parameters
_KAN_BUFFERS = ("knots", "mask", "grid_uniform")  # ... and its buffers (symbolic edges: refused)


def _check_seeds(seeds: object) -> list[int]:
    if isinstance(seeds, str | bytes) or not isinstance(seeds, Sequence) or not seeds:
        raise ValueError(f"seeds must be a non-empty sequence of ints, got {seeds!r}")
    return [check_int("seed", s, minimum=0) for s in seeds]


def _check_models(models: object, cls: type) -> list:
    if isinstance(models, nn.Module) or not isinstance(models, Sequence) or not models:
        raise ValueError(f"models must be a non-empty sequence of {cls.__name__}, got {models!r}")
    for m, model in enumerate(models):
        if not isinstance(model, cls):
            raise TypeError(f"models[{m}] must be a {cls.__name__}, got {type(model).__name__}")
    return list(models)


def _same(name: str, values: Sequence[object]) -> None:
    """Refuse models that differ in ``name`` (the first value that differs is named)."""
    for m, v in enumerate(values):
        if v != values[0]:
            raise ValueError(
                f"all models of a batch must have the same {name}: model 0 has {values[0]!r}, "
                f"model {m} has {v!r}"
            )


def _check_index(m: object, n_models: int) -> int:
    m = check_int("model index m", m, minimum=0)
    if m >= n_models:
        raise ValueError(f"model index m={m} is out of range for a batch of {n_models} models")
    return m


def _batch_input(x: object, n_models: int, n_in: int, dtype: torch.dtype) -> Tensor:
    """x ``(batch, in)`` (shared) or ``(M, batch, in)`` -> ``(M, batch, in)`` (a view if shared)."""
    x = check_input(x, n_in, dtype=dtype)
    if x.dim() == 2:
        return x.unsqueeze(0).expand(n_models, *x.shape)
    if x.dim() == 3 and x.shape[0] == n_models:
        return x
    raise ValueError(
        f"x must have shape (batch, {n_in}) or ({n_models}, batch, {n_in}) for a batch of "
        f"{n_models} models, got {tuple(x.shape)}"
    )


def _copy_into(module: nn.Module, name: str, value: Tensor, *, parameter: bool) -> None:
    """Set ``module.name`` to ``value`` in place when the shape is unchanged (parameters keep their
    identity, so optimisers holding them stay valid), else install a fresh tensor."""
    old = getattr(module, name)
    if old.shape == value.shape:
        with torch.no_grad():
            old.copy_(value)
    elif parameter:
        setattr(module, name, nn.Parameter(value.contiguous(), requires_grad=old.requires_grad))
    else:
        setattr(module, name, value.contiguous())


def _numba_takes(x: Tensor, knots: Tensor, coef: Tensor, scale: Tensor) -> bool:
    """Whether the batched Numba kernels run this layer call: when the single-model choice
    (:func:`kanlab.kernels.backends.choose`, which honours ``set_backend``) picks Numba for model
    0's tensors (CPU, float32/float64, one dtype, knots without grad); else the batched reference."""
    if x.shape[0] == 0:
        return False
    return choose(x[0], knots[0], coef[0], scale[0]).name == "numba"


# ---------------------------------------------------------------------- KANs
class KANBatchLayer(nn.Module):
    """M :class:`KANLinear` layers of one shape as one layer ``(M, batch, in) -> (M, batch, out)``.

    Parameters (shapes): ``coef`` (M, in, G+k, out), ``scale_base`` (M, in, out),
    ``scale_spline`` (M, in, out). Buffers: ``knots`` (M, in, G+2k+1) (each model its own),
    ``mask`` (M, in, out), ``grid_uniform`` (M,) bool. Slice m of each is layer m's tensor.
    """

    def __init__(self, layers: Sequence[KANLinear]) -> None:
        super().__init__()
        first = layers[0]
        for name in ("in_features", "out_features", "spline_order", "base_activation"):
            _same(f"layer {name}", [getattr(la, name) for la in layers])
        _same("grid size (one G for all models and layers in this version)",
              [la.grid_size for la in layers])  # fmt: skip
        _same("dtype", [la.coef.dtype for la in layers])
        _same("device", [la.coef.device for la in layers])
        for m, la in enumerate(layers):
            if la.symbolic is not None and la.symbolic.has_edges:
                raise ValueError(
                    f"model {m} has symbolic edges: a model batch does not support them yet"
                )
        self.in_features = first.in_features
        self.out_features = first.out_features
        self.spline_order = first.spline_order
        self.base_activation = first.base_activation
        for name in _KAN_PARAMS:
            grads = [getattr(la, name).requires_grad for la in layers]
            _same(f"requires_grad of {name}", grads)
            stacked = torch.stack([getattr(la, name).detach() for la in layers])  # a copy
            setattr(self, name, nn.Parameter(stacked, requires_grad=grads[0]))
        for name in _KAN_BUFFERS:
            self.register_buffer(name, torch.stack([getattr(la, name) for la in layers]))

    @property
    def n_models(self) -> int:
        return self.coef.shape[0]

    @property
    def grid_size(self) -> int:
        """G, shared by the M models."""
        return self.knots.shape[-1] - 2 * self.spline_order - 1

    def extra_repr(self) -> str:
        return (
            f"n_models={self.n_models}, in_features={self.in_features}, "
            f"out_features={self.out_features}, grid_size={self.grid_size}, "
            f"spline_order={self.spline_order}, base_activation={self.base_activation!r}"
        )

    def _fused(self, x: Tensor) -> bool:
        """Whether the fused layer kernel (:mod:`kanlab.kernels.cpu_batched_layer`) runs this call:
        where the batched Numba kernels would (:func:`_numba_takes`), on one thread, for grids of
        at most ``MAX_DENSE_BASIS`` basis functions and the base activations it fuses."""
        if torch.get_num_threads() != 1:
            return False
        xm = x if x.dim() == 2 else x[0]
        if not _numba_takes(xm[None], self.knots, self.coef, self.scale_spline):
            return False  # (also without Numba: the module below imports it)
        from kanlab.kernels.cpu_batched_layer import takes

        return takes(self.coef.shape[2], self.base_activation)

    def forward(self, x: Tensor) -> Tensor:
        """``(M, batch, in)``, or ``(batch, in)`` shared by the M models, -> ``(M, batch, out)``;
        writes nothing."""
        if self._fused(x):
            from kanlab.kernels import cpu_batched_layer  # (imported, and compiled, on first use)

            return cpu_batched_layer.kan_layer(
                x, self.knots, self.coef, self.scale_spline, self.scale_base, self.mask,
                self.grid_uniform, spline_order=self.spline_order,
                base_activation=self.base_activation,
            )  # fmt: skip
        return self._forward_unfused(x)

    def _forward_unfused(self, x: Tensor, *, per_model_base: bool = False) -> Tensor:
        """forward without the fused layer kernel: the batched sparse Numba kernels, else the
        batched reference. ``per_model_base``: the base branch by one ``addmm`` per model, as
        :class:`KANLinear` computes it (with Numba, each row is then bit-identical to the model's
        own forward: the grid methods rely on it; one ``baddbmm`` may round differently)."""
        if x.dim() == 2:  # shared: the other kernels take one row per model
            x = x.unsqueeze(0).expand(self.n_models, *x.shape)
        scale_spline = self.scale_spline * self.mask  # (M, in, out)
        if _numba_takes(x, self.knots, self.coef, scale_spline):
            from kanlab.kernels import cpu_batched  # (imported, and compiled, on first use only)

            y = cpu_batched.batched_spline(
                x, self.knots, self.coef, self.spline_order, self.grid_uniform, scale=scale_spline
            )
        else:
            weight = self.coef * scale_spline.unsqueeze(2)  # (M, in, G+k, out)
            y = batched_spline_product(x, self.knots, weight, self.spline_order)  # (M, batch, out)
        if self.base_activation == "zero":
            return y
        act, scale = ACTIVATIONS[self.base_activation], self.scale_base * self.mask
        if per_model_base:  # (the activation per model too: vectorised tails round differently)
            return torch.stack([torch.addmm(y[m], act(x[m]), scale[m]) for m in range(len(y))])
        return torch.baddbmm(y, act(x), scale)  # y + act(x) @ (scale_base * mask), per model

    def activations(self, x: Tensor) -> Tensor:
        """Edge outputs ``phi_{o,i}(x_i)`` per model: ``(M, batch, in) -> (M, batch, out, in)``
        (``KANLinear.activations`` per model, on the batched reference basis); summing over the
        last dimension gives ``forward(x)`` to rounding. Differentiable; writes nothing."""
        weight = self.coef * (self.scale_spline * self.mask).unsqueeze(2)  # (M, in, G+k, out)
        basis = batched_basis(x, self.knots, self.spline_order)  # (M, batch, in, G+k)
        phi = torch.einsum("mbig,migo->mboi", basis, weight)
        if self.base_activation != "zero":
            base = ACTIVATIONS[self.base_activation](x)  # (M, batch, in)
            phi = phi + base.unsqueeze(2) * (self.scale_base * self.mask).transpose(1, 2)[:, None]
        return phi

    def state_of(self, m: int) -> dict[str, Tensor]:
        """Model m's layer state as a :class:`KANLinear` state dict (copies)."""
        names = (*_KAN_PARAMS, *_KAN_BUFFERS)
        return {name: getattr(self, name)[m].detach().clone() for name in names}

    def set_grid(self, knots: Tensor, coef: Tensor, uniform: Tensor) -> None:
        """Install new knots ``(M, in, G'+2k+1)``, coefficients ``(M, in, G'+k, out)`` and uniform
        flags ``(M,)`` (in place where the shapes are unchanged, as ``KANLinear._set_grid``)."""
        fresh = torch.empty(coef.shape, dtype=self.coef.dtype, device=self.coef.device)
        # standard strides for a new Parameter (a solver's output can be column-major)
        _copy_into(self, "coef", fresh.copy_(coef), parameter=True)
        _copy_into(self, "knots", knots.to(self.knots.dtype), parameter=False)
        self.grid_uniform.copy_(uniform)

    def load_layers(self, layers: Sequence[KANLinear]) -> None:
        """Copy M layers' tensors into this batch layer (in place where the shapes are unchanged)."""
        fresh = KANBatchLayer(layers)  # the same checks as stack
        if fresh.n_models != self.n_models:
            raise ValueError(f"expected {self.n_models} layers, got {fresh.n_models}")
        for name in _KAN_PARAMS:
            _copy_into(self, name, getattr(fresh, name), parameter=True)
        for name in _KAN_BUFFERS:
            _copy_into(self, name, getattr(fresh, name), parameter=False)


class KANBatch(nn.Module):
    """M KANs of one shape as one module: ``(batch, in)`` or ``(M, batch, in)`` -> ``(M, batch, out)``.

    Build it with :meth:`stack` or :meth:`from_config` (see the module docstring for limits).
    ``layers`` holds one :class:`KANBatchLayer` per KAN layer.
    """

    def __init__(self, models: Sequence[KAN]) -> None:
        super().__init__()
        models = _check_models(models, KAN)
        for m, model in enumerate(models):
            if model.has_mult:
                raise ValueError(
                    f"KANBatch does not hold KANs with multiplication nodes (model {m} has widths "
                    f"{model.config.to_dict()['widths']}); train them one by one with kanlab.fit"
                )
        stacks = [kan_layers(model) for model in models]
        _same("widths", [list(model.widths) for model in models])
        self._configs = tuple(model.config for model in models)  # per model: seed, grid_range ...
        self.layers = nn.ModuleList(
            KANBatchLayer([layers[i] for layers in stacks]) for i in range(len(stacks[0]))
        )

    @classmethod
    def stack(cls, models: Sequence[KAN]) -> KANBatch:
        """A batch holding copies of every parameter and buffer of ``models`` (unchanged)."""
        return cls(models)

    @classmethod
    def from_config(
        cls,
        config: KANConfig,
        *,
        seeds: Sequence[int],
        device: torch.device | str | None = None,
    ) -> KANBatch:
        """M fresh KANs: model m is ``kanlab.build(config.replace(seed=seeds[m]))``."""
        if not isinstance(config, KANConfig):
            raise TypeError(f"KANBatch.from_config needs a KANConfig, got {type(config).__name__}")
        seeds = _check_seeds(seeds)
        return cls([KAN.from_config(config.replace(seed=s), device=device) for s in seeds])

    @property
    def n_models(self) -> int:
        return len(self._configs)

    @property
    def widths(self) -> list[int]:
        return [self.layers[0].in_features, *(layer.out_features for layer in self.layers)]

    @property
    def grid_size(self) -> int:
        return self.layers[0].grid_size

    @property
    def spline_order(self) -> int:
        return self.layers[0].spline_order

    @property
    def configs(self) -> tuple[KANConfig, ...]:
        """Each model's :class:`KANConfig` as it is now (its seed and initial options, the grid
        size of the batch)."""
        return tuple(cfg.replace(grid_size=self.grid_size) for cfg in self._configs)

    def forward(self, x: Tensor) -> Tensor:
        """x ``(batch, in)`` (shared) or ``(M, batch, in)`` -> ``(M, batch, out)``."""
        shared = isinstance(x, Tensor) and x.dim() == 2
        x = _batch_input(x, self.n_models, self.widths[0], self.layers[0].coef.dtype)
        if shared:  # the first layer takes a shared x as it is (its kernels read it once)
            x = x[0]
        for layer in self.layers:
            x = layer(x)
        return x

    def activations(self, x: Tensor) -> list[Tensor]:
        """Edge outputs of every layer per model: a list of ``(M, batch, widths[l+1], widths[l])``
        (``KAN.activations`` per model; x as in forward). The last one summed over its last
        dimension is the batch's output."""
        x = _batch_input(x, self.n_models, self.widths[0], self.layers[0].coef.dtype)
        acts = []
        for layer in self.layers:
            phi = layer.activations(x)
            acts.append(phi)
            x = phi.sum(-1)
        return acts

    def unstack(self) -> list[KAN]:
        """M independent KANs holding exactly the batch's values (copies)."""
        return [self.unstack_one(m) for m in range(self.n_models)]

    def unstack_one(self, m: int) -> KAN:
        """Model m alone: an independent KAN holding exactly its values in the batch (copies)."""
        m = _check_index(m, self.n_models)
        config = self._configs[m].replace(grid_size=self.grid_size)
        model = KAN.from_config(config, device=self.layers[0].coef.device)
        state = {
            f"layers.{i}.{name}": value
            for i, layer in enumerate(self.layers)
            for name, value in layer.state_of(m).items()
        }
        model.load_state_dict(state)
        for i, layer in enumerate(self.layers):
            for name in _KAN_PARAMS:
                getattr(model.layers[i], name).requires_grad_(getattr(layer, name).requires_grad)
        model.train(self.training)
        return model

    def _grid_data(self, x: Tensor, layer: int) -> Tensor:
        """Refuse grid data a KAN layer would refuse (fewer than 2 samples, NaN or Inf), naming
        the first model at fault. x ``(M, batch, in)``."""
        if x.shape[1] < 2:
            raise ValueError(f"x must have at least 2 samples to place a grid, got {x.shape[1]}")
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            m = int(bad.flatten(1).any(1).nonzero()[0])
            check_finite(f"the grid data of model {m} (input of layer {layer})", x[m])
        return x

    def _regrid(
        self, x: Tensor | None, new_size: int, grid_eps: float, margin: float = 0.0
    ) -> None:
        """Layer by layer, as ``KAN.update_grid`` / ``extend_grid``: new knots of ``new_size``
        intervals from x ``(M, batch, in)`` (None: uniform on each grid range), the coefficients
        refitted (:mod:`kanlab.grid_batch`); the next layer sees the updated layer's output. On an
        error every layer keeps its state."""
        saved = [(la.coef, la.coef.detach().clone(), la.knots.clone(), la.grid_uniform.clone())
                 for la in self.layers]  # fmt: skip
        try:
            for i, layer in enumerate(self.layers):
                k = layer.spline_order
                if x is None:
                    knots, samples = grid_batch.range_knots(layer.knots, new_size, k)
                    flat = True
                else:
                    samples = self._grid_data(x, i)
                    knots = grid_batch.data_knots(samples, new_size, k, grid_eps, margin=margin)
                    flat = grid_eps == 1.0
                layer.set_grid(*grid_batch.refit(
                    samples, layer.knots, layer.coef, layer.grid_uniform, knots,
                    new_uniform=flat, spline_order=k,
                ))  # fmt: skip
                if x is not None and i + 1 < len(self.layers):
                    x = layer._forward_unfused(x, per_model_base=True)
        except Exception:
            for layer, (coef, values, knots, uniform) in zip(self.layers, saved, strict=True):
                with torch.no_grad():
                    coef.copy_(values)
                layer.coef = coef  # (the Parameter an optimiser may hold)
                _copy_into(layer, "knots", knots, parameter=False)
                layer.grid_uniform.copy_(uniform)
            raise

    def _data(self, x: Tensor | None) -> Tensor | None:
        return None if x is None else _batch_input(x, self.n_models, self.widths[0], self.dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.layers[0].coef.dtype

    @torch.no_grad()
    def update_grid(self, x: Tensor, *, grid_eps: float = 0.02, margin: float = 0.0) -> None:
        """``KAN.update_grid`` on every model: x ``(batch, in)`` shared or ``(M, batch, in)``.
        Batched over the models (:mod:`kanlab.grid_batch`); model m gets what its KAN's own
        method gives it (bit-identical on the Numba CPU kernels)."""
        grid_eps = check_float("grid_eps", grid_eps, minimum=0.0)
        if grid_eps > 1:
            raise ValueError(f"grid_eps must be in [0, 1], got {grid_eps}")
        margin = check_float("margin", margin, minimum=0.0)
        x = _batch_input(x, self.n_models, self.widths[0], self.dtype)
        self._regrid(x, self.grid_size, grid_eps, margin)

    @torch.no_grad()
    def extend_grid(
        self,
        new_size: int,
        x: Tensor | None = None,
        *,
        grid_eps: float = 0.02,
        allow_coarsen: bool = False,
        margin: float = 0.0,
    ) -> None:
        """``KAN.extend_grid`` on every model (x: None, ``(batch, in)`` shared or ``(M, batch, in)``),
        batched as :meth:`update_grid`; the coefficients get new Parameters when their shape
        changes. ``margin``: with ``x`` only here (the batch's extension without data keeps each
        grid range)."""
        check_int("new_size", new_size, minimum=1)
        for i, layer in enumerate(self.layers):
            check_coarsen(new_size, layer.grid_size, allow_coarsen, f" (layer {i})")
        margin = check_float("margin", margin, minimum=0.0)
        if margin > 0 and x is None:
            raise ValueError("KANBatch.extend_grid: margin needs the data x (without x: use 0)")
        self._regrid(self._data(x), new_size, grid_eps, margin)


# ---------------------------------------------------------------------- MLPs
class _LinearBatch(nn.Module):
    """M ``nn.Linear`` of one shape: ``weight`` (M, out, in), ``bias`` (M, out)."""

    def __init__(self, layers: Sequence[nn.Linear]) -> None:
        super().__init__()
        for name in ("weight", "bias"):
            grads = [getattr(lin, name).requires_grad for lin in layers]
            _same(f"requires_grad of {name}", grads)
            stacked = torch.stack([getattr(lin, name).detach() for lin in layers])  # a copy
            setattr(self, name, nn.Parameter(stacked, requires_grad=grads[0]))

    def forward(self, x: Tensor) -> Tensor:
        """``(M, batch, in) -> (M, batch, out)``: ``bias + x @ weight^T`` per model."""
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))


class MLPBatch(nn.Module):
    """M MLPs of the same widths and activation as one module: ``(batch, in)`` or
    ``(M, batch, in)`` -> ``(M, batch, out)``. ``layers`` holds one ``_LinearBatch`` per layer."""

    def __init__(self, models: Sequence[MLP]) -> None:
        super().__init__()
        models = _check_models(models, MLP)
        _same("widths", [list(model.widths) for model in models])
        _same("activation", [model.activation for model in models])
        _same("dtype", [model.layers[0].weight.dtype for model in models])
        _same("device", [model.layers[0].weight.device for model in models])
        self._configs = tuple(model.config for model in models)
        self.activation = models[0].activation
        self.layers = nn.ModuleList(
            _LinearBatch([model.layers[i] for model in models])
            for i in range(len(models[0].layers))
        )

    @classmethod
    def stack(cls, models: Sequence[MLP]) -> MLPBatch:
        """A batch holding copies of every parameter of ``models`` (unchanged)."""
        return cls(models)

    @classmethod
    def from_config(
        cls,
        config: MLPConfig,
        *,
        seeds: Sequence[int],
        device: torch.device | str | None = None,
    ) -> MLPBatch:
        """M fresh MLPs: model m is ``kanlab.build(config.replace(seed=seeds[m]))``."""
        if not isinstance(config, MLPConfig):
            raise TypeError(f"MLPBatch.from_config needs an MLPConfig, got {type(config).__name__}")
        seeds = _check_seeds(seeds)
        return cls([MLP.from_config(config.replace(seed=s), device=device) for s in seeds])

    @property
    def n_models(self) -> int:
        return len(self._configs)

    @property
    def widths(self) -> list[int]:
        return list(self._configs[0].widths)

    @property
    def configs(self) -> tuple[MLPConfig, ...]:
        return self._configs

    def forward(self, x: Tensor) -> Tensor:
        """x ``(batch, in)`` (shared) or ``(M, batch, in)`` -> ``(M, batch, out)``."""
        shared = isinstance(x, Tensor) and x.dim() == 2
        x = _batch_input(x, self.n_models, self.widths[0], self.layers[0].weight.dtype)
        if shared:  # the fused first layer reads a shared x once (others take the expanded view)
            x = x[0]
        act = ACTIVATIONS[self.activation]
        last = len(self.layers) - 1
        for i, lin in enumerate(self.layers):
            if i < last and self._fused(x, lin):
                from kanlab.kernels import cpu_batched_mlp  # (imported, and compiled, on first use)

                x = cpu_batched_mlp.linear_act(x, lin.weight, lin.bias, activation=self.activation)
                continue
            if x.dim() == 2:
                x = x.unsqueeze(0).expand(self.n_models, *x.shape)
            x = lin(x)
            if i < last:
                x = act(x)
        return x

    def numba_runs(self, x: Tensor, w: Tensor | None = None) -> bool:
        """Whether this batch's fused Numba kernels may run on inputs like ``x`` (``(rows, in)`` or
        ``(M, rows, in)``) with parameters like ``w`` (default: the first layer's weight): M >= 2
        (a single model keeps torch's ops), CPU float32/float64 on one torch thread, x of w's dtype
        and device, and Numba the kernel backend (``set_backend`` honoured)."""
        w = self.layers[0].weight if w is None else w
        return not (
            self.n_models < 2
            or torch.get_num_threads() != 1
            or w.device.type != "cpu"
            or w.dtype not in (torch.float32, torch.float64)
            or x.dtype != w.dtype
            or x.device != w.device
            or select_backend(x if x.dim() == 2 else x[0]).name != "numba"
        )

    def _fused(self, x: Tensor, lin: _LinearBatch) -> bool:
        """Whether the fused hidden layer (:mod:`kanlab.kernels.cpu_batched_mlp`) runs this layer:
        CPU float32/float64 on one torch thread, where the kernel backend is Numba
        (``set_backend`` honoured), M >= 2 (a single model keeps torch's ops), and where it pays
        (:func:`~kanlab.kernels.cpu_batched_mlp.pays`: SiLU, few inputs, M x out large)."""
        w = lin.weight
        if not self.numba_runs(x, w):
            return False
        from kanlab.kernels.cpu_batched_mlp import pays

        return pays(self.n_models, w.shape[2], w.shape[1], self.activation)

    def unstack(self) -> list[MLP]:
        """M independent MLPs holding exactly the batch's values (copies)."""
        return [self.unstack_one(m) for m in range(self.n_models)]

    def unstack_one(self, m: int) -> MLP:
        """Model m alone: an independent MLP holding exactly its values in the batch (copies)."""
        m = _check_index(m, self.n_models)
        model = MLP.from_config(self._configs[m], device=self.layers[0].weight.device)
        state = {
            f"layers.{i}.{name}": getattr(lin, name)[m].detach().clone()
            for i, lin in enumerate(self.layers)
            for name in ("weight", "bias")
        }
        model.load_state_dict(state)
        for i, lin in enumerate(self.layers):
            for name in ("weight", "bias"):
                getattr(model.layers[i], name).requires_grad_(getattr(lin, name).requires_grad)
        model.train(self.training)
        return model
