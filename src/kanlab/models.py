"""KAN and MLP stacks built from configs, and parameter / FLOP counting (the one place for both).

Both models take ``(..., widths[0])`` and return ``(..., widths[-1])``; both are seeded by a private
``torch.Generator`` so that constructing one never touches the global RNG and the same seed always
gives the same parameters.

**Configs.** ``KAN(widths, **options)`` and ``KAN.from_config(cfg)`` build the same model (bit for
bit, for the same seed); ``build(cfg)`` picks the class from the config's type. ``model.config``
describes the model *as it is now*: a model built from it has the same architecture and tensor
shapes, so ``build(model.config).load_state_dict(model.state_dict())`` always fits. That is why
the widths (pruning removes nodes), the grid size of each layer (grid extension) and the dtype are
read from the model, while the initialisation options (``seed``, ``noise_scale``, ``grid_range``:
the initial grid) are those it was built with. The *values* of the tensors (knots moved by grid
updates, coefficients, masks, symbolic edges) are state, in ``state_dict``, not config.

**Multiplication nodes.** ``KAN([2, [3, 1], 1])`` has 3 sum nodes and 1 multiplication node in
its hidden layer (see :mod:`kanlab.mult` for the semantics). ``widths`` counts nodes per layer;
``n_sum``, ``n_mult``, ``mult_arity`` and ``has_mult`` describe the split; layer ``l`` is a plain
:class:`KANLinear` from ``widths[l]`` nodes to the ``n_sum[l+1] + sum(mult_arity[l+1])``
subnodes of the next layer, and :func:`kanlab.mult.combine` turns subnodes into nodes between
layers. A KAN without multiplication nodes never calls it (bit-identical to kanlab before them).

*Grids on products only grow.* :meth:`KAN.update_grid` (and ``extend_grid`` with data) places a
layer's grid on the data of its sum-node inputs as usual, but the grid on a multiplication node
input becomes uniform on the union of its current range and the node's values: it never shrinks.
Why: a product of small factors starts tiny (two factors of size 0.3 give 0.09) and grows
quadratically as the factors grow, so a grid fitted to the initial products (fit's grid update at
step 0) is left behind within a few steps; outside its grid an edge is its base function alone, and
LBFGS stalls. Measured on x*y with ``KAN([2, [0, 1], 1])`` (200 points, LBFGS 30 steps, sparsity
1e-3, float64, seeds 0-9): with data-fitted product grids 7 of 10 seeds find the product (3 stall
at RMSE 0.11-0.15); with growing grids 10 of 10 do, and prune -> auto_symbolic -> fit gives
``x_1*x_2`` on all of them.

**Grid size.** A KAN's grid size is :attr:`KAN.grid_size`: the largest layer grid. Every model
kanlab builds and trains has one grid size for all layers (``extend_grid`` and ``fit`` change them
together); only a layer extended on its own makes them differ, and ``model.config.grid_size`` then
lists each layer's.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from kanlab._checks import check_choice, check_finite, check_input, check_int
from kanlab.config import KANConfig, MLPConfig, dtype_name, torch_dtype
from kanlab.layers import ACTIVATIONS, KANLinear, check_coarsen
from kanlab.mult import combine, mult_flops

__all__ = ["KAN", "MLP", "build", "check_kan_input", "count_flops", "count_params", "kan_layers"]


def _generator(seed: int | None) -> torch.Generator | None:
    return None if seed is None else torch.Generator().manual_seed(seed)


class KAN(nn.Module):
    """A stack of :class:`KANLinear` layers with widths ``widths`` (e.g. ``[2, 5, 1]``, or
    ``[2, [5, 2], 1]`` for 5 sum and 2 multiplication nodes in the hidden layer).

    Keyword options are the fields of :class:`kanlab.config.KANConfig` (``grid_size``,
    ``spline_order``, ``grid_range``, ``base_activation``, ``noise_scale``, ``seed``, ``dtype``,
    ``mult_arity``),
    passed to every layer (``grid_size``, ``grid_range`` and ``base_activation`` may also give one
    value per layer); ``seed`` fixes the initialisation; ``device`` is where the tensors live.
    """

    def __init__(
        self,
        widths: Sequence[int | Sequence[int]],
        *,
        grid_size: int | Sequence[int] = 5,
        spline_order: int = 3,
        grid_range: Sequence[float] | Sequence[Sequence[float]] = (-1.0, 1.0),
        base_activation: str | Sequence[str] = "silu",
        noise_scale: float = 0.1,
        seed: int | None = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        mult_arity: int | Sequence[Sequence[int]] = 2,
    ) -> None:
        super().__init__()
        cfg = KANConfig(
            widths=widths, grid_size=grid_size, spline_order=spline_order, grid_range=grid_range,
            base_activation=base_activation, noise_scale=noise_scale, seed=seed, dtype=dtype,
            mult_arity=mult_arity,
        )  # fmt: skip
        self._built = cfg
        self.widths: list[int] = cfg.nodes  # nodes per layer (sum + multiplication)
        self.n_sum: list[int] = cfg.n_sum
        self.n_mult: list[int] = cfg.n_mult
        self.mult_arity: list[list[int]] = cfg.arities()
        self.seed = cfg.seed
        gen = _generator(cfg.seed)
        self.layers = nn.ModuleList(
            KANLinear(
                a,
                b,
                **cfg.layer_options(i),
                spline_order=cfg.spline_order,
                noise_scale=cfg.noise_scale,
                generator=gen,
                device=device,
                dtype=torch_dtype(cfg.dtype),
            )
            for i, (a, b) in enumerate(zip(self.widths[:-1], cfg.subnodes(), strict=True))
        )

    @classmethod
    def from_config(cls, config: KANConfig, *, device: torch.device | str | None = None) -> KAN:
        """The KAN ``config`` describes (the same parameters as ``KAN(widths, **options)``)."""
        if not isinstance(config, KANConfig):
            raise TypeError(f"KAN.from_config needs a KANConfig, got {type(config).__name__}")
        options = {name: getattr(config, name) for name in config.field_names()}
        return cls(options.pop("widths"), device=device, **options)

    @property
    def has_mult(self) -> bool:
        """Whether any layer has multiplication nodes."""
        return any(self.n_mult)

    @property
    def config(self) -> KANConfig:
        """The model's :class:`KANConfig` as it is now (see the module docstring)."""
        layers = list(self.layers)
        widths: list[int | tuple[int, int]] = [layers[0].in_features]
        for l_idx, layer in enumerate(layers, start=1):
            m = self.n_mult[l_idx]
            widths.append((self.n_sum[l_idx], m) if m else layer.out_features)
        return self._built.replace(
            widths=tuple(widths),
            grid_size=tuple(layer.grid_size for layer in layers),
            grid_range=tuple(tuple(layer.grid_range) for layer in layers),
            base_activation=tuple(layer.base_activation for layer in layers),
            dtype=dtype_name(layers[0].coef.dtype),
            mult_arity=tuple(tuple(ar) for ar in self.mult_arity),
        )

    def nodes_of(self, index: int, z: Tensor) -> Tensor:
        """Node values of layer ``index + 1`` from the outputs ``z`` (..., subnodes) of layer
        ``index``: :func:`kanlab.mult.combine` where that layer has multiplication nodes."""
        if not self.n_mult[index + 1]:
            return z
        return combine(z, self.n_sum[index + 1], self.mult_arity[index + 1])

    @property
    def grid_size(self) -> int:
        """The grid size G: the largest layer grid (all layers share it unless one was extended on
        its own; ``config.grid_size`` then lists each layer's)."""
        return max(layer.grid_size for layer in self.layers)

    @property
    def spline_order(self) -> int:
        return self.layers[0].spline_order

    def forward(self, x: Tensor) -> Tensor:
        """``(..., widths[0]) -> (..., widths[-1])``."""
        if not self.has_mult:
            for layer in self.layers:
                x = layer(x)
            return x
        for i, layer in enumerate(self.layers):
            x = self.nodes_of(i, layer(x))
        return x

    def layer_inputs(self, x: Tensor) -> list[Tensor]:
        """The input of each layer (its nodes' values) for the model input ``x``: a list of
        ``(batch, widths[l])``."""
        inputs = []
        for i, layer in enumerate(self.layers):
            inputs.append(x)
            x = self.nodes_of(i, layer(x))
        return inputs

    def activations(self, x: Tensor) -> list[Tensor]:
        """Edge outputs of every layer: a list of ``(batch, out_features, widths[l])``, where a
        layer's ``out_features`` are the next layer's subnodes (``widths[l+1]`` without
        multiplication nodes)."""
        acts = []
        for i, layer in enumerate(self.layers):
            phi = layer.activations(x)
            acts.append(phi)
            x = self.nodes_of(i, phi.sum(-1))
        return acts

    @torch.no_grad()
    def update_grid(self, x: Tensor, *, grid_eps: float = 0.02, margin: float = 0.0) -> None:
        """Update every layer's grid from the data, layer by layer (each layer sees the output of the
        already-updated layers before it); ``margin`` as in ``KANLinear.update_grid``."""
        check_input(x, self.widths[0], dtype=self.layers[0].coef.dtype)
        for i, layer in enumerate(self.layers):
            layer.update_grid(x, grid_eps=grid_eps, grow=self.product_inputs(i), margin=margin)
            x = self.nodes_of(i, layer(x))

    def product_inputs(self, index: int) -> list[bool] | None:
        """Which inputs of layer ``index`` are multiplication nodes (``None`` when none is): the
        inputs whose grid only grows in :meth:`update_grid` (see the module docstring)."""
        m = self.n_mult[index]
        return [False] * self.n_sum[index] + [True] * m if m else None

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
        """Grid extension of every layer to ``new_size`` intervals (see ``KANLinear.extend_grid``,
        also for ``margin``).

        A ``new_size`` below a layer's grid size is refused (before any layer changes) unless
        ``allow_coarsen=True``: coarsening only approximates the learned function."""
        for i, layer in enumerate(self.layers):
            check_coarsen(new_size, layer.grid_size, allow_coarsen, f" (layer {i})")
        for i, layer in enumerate(self.layers):
            layer.extend_grid(new_size, x, grid_eps=grid_eps, allow_coarsen=allow_coarsen,
                              grow=self.product_inputs(i), margin=margin)  # fmt: skip
            if x is not None:
                x = self.nodes_of(i, layer(x))


class MLP(nn.Module):
    """A multi-layer perceptron ``widths[0] -> ... -> widths[-1]`` with ``activation`` between layers
    (none after the last). Weights and biases are drawn like ``torch.nn.Linear``'s default,
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)), from a generator seeded by ``seed``."""

    def __init__(
        self,
        widths: Sequence[int],
        *,
        activation: str = "silu",
        seed: int | None = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
    ) -> None:
        super().__init__()
        cfg = MLPConfig(widths=widths, activation=activation, seed=seed, dtype=dtype)
        self._built = cfg
        self.widths = list(cfg.widths)
        self.activation = cfg.activation
        self.seed = cfg.seed
        gen = _generator(cfg.seed)
        dtype = torch_dtype(cfg.dtype) or torch.get_default_dtype()
        self.layers = nn.ModuleList()
        for a, b in zip(self.widths[:-1], self.widths[1:], strict=True):
            # Built on the meta device: nn.Linear's own initialisation would draw from the global RNG.
            lin = nn.Linear(a, b, device="meta", dtype=dtype).to_empty(device=device or "cpu")
            bound = 1.0 / math.sqrt(a)
            with torch.no_grad():
                for p in (lin.weight, lin.bias):
                    p.copy_((torch.rand(p.shape, generator=gen, dtype=dtype) * 2 - 1) * bound)
            self.layers.append(lin)

    @classmethod
    def from_config(cls, config: MLPConfig, *, device: torch.device | str | None = None) -> MLP:
        """The MLP ``config`` describes (the same parameters as ``MLP(widths, **options)``)."""
        if not isinstance(config, MLPConfig):
            raise TypeError(f"MLP.from_config needs an MLPConfig, got {type(config).__name__}")
        return cls(config.widths, activation=config.activation, seed=config.seed,
                   dtype=config.dtype, device=device)  # fmt: skip

    @property
    def config(self) -> MLPConfig:
        """The model's :class:`MLPConfig` as it is now: widths and dtype read from the layers."""
        layers = list(self.layers)
        return self._built.replace(
            widths=(layers[0].in_features, *(lin.out_features for lin in layers)),
            activation=self.activation,
            dtype=dtype_name(layers[0].weight.dtype),
        )

    def forward(self, x: Tensor) -> Tensor:
        """``(..., widths[0]) -> (..., widths[-1])``."""
        check_input(x, self.widths[0], dtype=self.layers[0].weight.dtype)
        act = ACTIVATIONS[self.activation]
        for i, lin in enumerate(self.layers):
            x = lin(x)
            if i < len(self.layers) - 1:
                x = act(x)
        return x


def build(config: KANConfig | MLPConfig, *, device: torch.device | str | None = None) -> KAN | MLP:
    """The model a config describes: a :class:`KAN` for a :class:`KANConfig`, an :class:`MLP` for
    an :class:`MLPConfig`."""
    if isinstance(config, KANConfig):
        return KAN.from_config(config, device=device)
    if isinstance(config, MLPConfig):
        return MLP.from_config(config, device=device)
    raise TypeError(f"build needs a KANConfig or an MLPConfig, got {type(config).__name__}")


def count_params(model: nn.Module | KANConfig | MLPConfig, *, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of a model, or of the model a config describes (computed
    without building it; equal to the built model's count).

    For a KAN layer: ``in*out*(G+k)`` coefficients plus ``2*in*out`` scales; for a linear layer
    ``in*out + out``. A model counts what it holds now: frozen parameters are left out unless
    ``trainable_only=False``, and symbolic edges add their affine constants."""
    if isinstance(model, KANConfig):
        return sum(
            _kan_layer_params(a, b, g, model.spline_order)
            for a, b, g in zip(model.nodes[:-1], model.subnodes(), model.layer_grid_sizes(),
                               strict=True)
        )  # fmt: skip
    if isinstance(model, MLPConfig):
        return sum(_linear_params(a, b) for a, b in itertools.pairwise(model.widths))
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _kan_layer_params(n_in: int, n_out: int, grid: int, k: int) -> int:
    return n_in * n_out * (grid + k) + 2 * n_in * n_out  # coefficients, scale_base, scale_spline


def _linear_params(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


# FLOPs per scalar for the elementwise functions (one add, multiply, divide or exp = 1 FLOP).
ACTIVATION_FLOPS = {"silu": 4, "identity": 0, "zero": 0, "gelu": 8, "relu": 1, "tanh": 5}


def _basis_flops_sparse(k: int) -> int:
    # interval and local coordinate: subtract, multiply, floor, subtract = 4; then level p of the
    # cardinal recursion makes p+1 values, each (a*N1 + b*N2)/p with a, b linear in u = 6 FLOPs.
    return 4 + sum(6 * (p + 1) for p in range(1, k + 1))


def _basis_flops_dense(n_basis: int, k: int) -> int:
    # Cox-de Boor over all functions: level 0 two comparisons per interval, level p one value per
    # function with two ratios (2 sub + 1 div each) and a multiply-add: 9 FLOPs.
    n_int = n_basis + k
    return 2 * n_int + sum(9 * (n_int - p) for p in range(1, k + 1))


def _kan_layer_flops(n_in: int, n_out: int, grid: int, k: int, base: str, mode: str) -> int:
    """FLOPs per sample of one KAN layer (see :func:`count_flops`)."""
    f_b = ACTIVATION_FLOPS.get(base, 4)
    if mode == "sparse":
        per_input = _basis_flops_sparse(k) + f_b
        per_edge = 2 * (k + 1) + 2
    else:
        per_input = _basis_flops_dense(grid + k, k) + f_b
        per_edge = 2 * (grid + k) + 2
    return n_in * per_input + n_in * n_out * per_edge


def _linear_flops(n_in: int, n_out: int, bias: bool = True) -> int:
    return 2 * n_in * n_out + (n_out if bias else 0)


def _config_flops(config: KANConfig | MLPConfig, mode: str) -> int:
    """FLOPs per sample of the model ``config`` describes (the walk below, without the model)."""
    if isinstance(config, MLPConfig):
        pairs = list(itertools.pairwise(config.widths))
        hidden = sum(config.widths[1:-1]) * ACTIVATION_FLOPS.get(config.activation, 4)
        return sum(_linear_flops(a, b) for a, b in pairs) + hidden
    pairs = list(zip(config.nodes[:-1], config.subnodes(), strict=True))
    return sum(
        _kan_layer_flops(
            a, b, opts["grid_size"], config.spline_order, opts["base_activation"], mode
        )
        for i, (a, b) in enumerate(pairs)
        for opts in [config.layer_options(i)]
    ) + mult_flops(config.arities())


def count_flops(
    model: nn.Module | KANConfig | MLPConfig, batch: int = 1, *, mode: str = "sparse"
) -> int:
    """Floating-point operations of one forward pass on ``batch`` samples, of a model or of the
    model a config describes (computed without building it; equal to the built model's count).

    KAN layer (in -> out, grid G, order k), per sample:

    - ``mode="sparse"`` (what kanlab computes):
      ``in * (4 + sum_{p=1..k} 6(p+1) + f_b) + in * out * (2(k+1) + 2)``: the k+1 non-zero bases of
      each input by the cardinal recursion, the base function b (f_b FLOPs, SiLU = 4), then per edge
      k+1 multiply-adds for the spline and one multiply-add for the base branch.
    - ``mode="dense"`` (what dense formulations such as efficient-kan compute, and the count papers
      use): ``in * (2(G+2k) + sum_{p=1..k} 9(G+2k-p) + f_b) + in * out * (2(G+k) + 2)``: the full
      Cox-de Boor basis and a dense product with all G+k coefficients per edge.

    Here ``out`` counts the layer's outputs: the next layer's subnodes. A multiplication node of
    arity a adds ``a - 1`` multiplies per sample.

    Linear layer: ``2 * in * out + out``, plus the activation's FLOPs per hidden unit for an MLP.
    """
    check_choice("mode", mode, ["sparse", "dense"])
    check_int("batch", batch, minimum=0)
    if isinstance(model, KANConfig | MLPConfig):
        return _config_flops(model, mode) * batch
    total = 0
    for module in model.modules():
        if isinstance(module, KANLinear):
            total += _kan_layer_flops(
                module.in_features, module.out_features, module.grid_size, module.spline_order,
                module.base_activation, mode,
            )  # fmt: skip
        elif isinstance(module, nn.Linear):
            total += _linear_flops(module.in_features, module.out_features, module.bias is not None)
        if isinstance(module, MLP):
            hidden = sum(module.widths[1:-1])
            total += hidden * ACTIVATION_FLOPS.get(module.activation, 4)
        if isinstance(module, KAN):
            total += mult_flops(module.mult_arity)
    return total * batch


# ---------------------------------------------------------------------- model checks
# Shared by prune, plot and symbolic: what counts as a KAN there, and its input.


def kan_layers(model: object) -> list[KANLinear]:
    """The layers of a kanlab KAN: ``model.layers``, a non-empty sequence of :class:`KANLinear`
    whose widths chain (TypeError if not a KAN, ValueError if the widths do not chain)."""
    layers = getattr(model, "layers", None)
    if layers is None or not len(layers) or not all(isinstance(la, KANLinear) for la in layers):
        raise TypeError(
            f"model must be a kanlab KAN (layers of KANLinear), got {type(model).__name__}"
        )
    layers = list(layers)
    if getattr(model, "has_mult", False):  # layer l+1 reads widths[l+1] nodes made of subnodes
        nodes, n_sum, arities = model.widths, model.n_sum, model.mult_arity  # type: ignore[attr-defined]
        for l_idx, layer in enumerate(layers):
            n_sub = n_sum[l_idx + 1] + sum(arities[l_idx + 1])
            if layer.in_features != nodes[l_idx] or layer.out_features != n_sub:
                raise ValueError(
                    f"layer {l_idx} maps {layer.in_features} -> {layer.out_features} but the "
                    f"nodes say {nodes[l_idx]} -> {n_sub} subnodes"
                )
        return layers
    for l_idx in range(len(layers) - 1):
        n_out, n_in = layers[l_idx].out_features, layers[l_idx + 1].in_features
        if n_out != n_in:
            raise ValueError(
                f"layer {l_idx} has {n_out} outputs but layer {l_idx + 1} has {n_in} inputs"
            )
    return layers


def check_kan_input(model: object, x: object) -> tuple[list[KANLinear], Tensor]:
    """The KAN's layers (:func:`kan_layers`) and its input ``x``, checked: a finite tensor of
    shape (batch >= 1, widths[0])."""
    layers = kan_layers(model)
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    n_in = layers[0].in_features
    if x.dim() != 2 or x.shape[1] != n_in or x.shape[0] < 1:
        raise ValueError(f"x must have shape (batch >= 1, {n_in}), got {tuple(x.shape)}")
    return layers, check_finite("x", x)
