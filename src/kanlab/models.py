"""KAN and MLP stacks, and parameter / FLOP counting.

Both models take ``(..., widths[0])`` and return ``(..., widths[-1])``; both are seeded by a private
``torch.Generator`` so that constructing one never touches the global RNG and the same seed always
gives the same parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from kanlab._checks import check_choice, check_input, check_int, check_widths
from kanlab.layers import ACTIVATIONS, KANLinear

__all__ = ["KAN", "MLP", "count_flops", "count_params"]


def _generator(seed: int | None) -> torch.Generator | None:
    if seed is None:
        return None
    check_int("seed", seed, minimum=0)
    return torch.Generator().manual_seed(seed)


class KAN(nn.Module):
    """A stack of :class:`KANLinear` layers with widths ``widths`` (e.g. ``[2, 5, 1]``).

    Keyword options are passed to every layer (``grid_size``, ``spline_order``, ``grid_range``,
    ``base_activation``, ``noise_scale``); ``seed`` fixes the initialisation.
    """

    def __init__(
        self,
        widths: Sequence[int],
        *,
        grid_size: int = 5,
        spline_order: int = 3,
        grid_range: Sequence[float] = (-1.0, 1.0),
        base_activation: str = "silu",
        noise_scale: float = 0.1,
        seed: int | None = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.widths = check_widths(widths)
        gen = _generator(seed)
        self.seed = seed
        self.layers = nn.ModuleList(
            KANLinear(
                a,
                b,
                grid_size=grid_size,
                spline_order=spline_order,
                grid_range=grid_range,
                base_activation=base_activation,
                noise_scale=noise_scale,
                generator=gen,
                device=device,
                dtype=dtype,
            )
            for a, b in zip(self.widths[:-1], self.widths[1:], strict=True)
        )

    @property
    def grid_size(self) -> int:
        """The grid size G shared by all layers (an error if layers differ)."""
        sizes = {layer.grid_size for layer in self.layers}
        if len(sizes) != 1:
            raise ValueError(f"layers have different grid sizes {sorted(sizes)}")
        return sizes.pop()

    @property
    def spline_order(self) -> int:
        return self.layers[0].spline_order

    def forward(self, x: Tensor) -> Tensor:
        """``(..., widths[0]) -> (..., widths[-1])``."""
        for layer in self.layers:
            x = layer(x)
        return x

    def layer_inputs(self, x: Tensor) -> list[Tensor]:
        """The input of each layer for the model input ``x``: a list of ``(batch, widths[l])``."""
        inputs = []
        for layer in self.layers:
            inputs.append(x)
            x = layer(x)
        return inputs

    def activations(self, x: Tensor) -> list[Tensor]:
        """Edge outputs of every layer: a list of ``(batch, widths[l+1], widths[l])``."""
        acts = []
        for layer in self.layers:
            phi = layer.activations(x)
            acts.append(phi)
            x = phi.sum(-1)
        return acts

    @torch.no_grad()
    def update_grid(self, x: Tensor, *, grid_eps: float = 0.02) -> None:
        """Update every layer's grid from the data, layer by layer (each layer sees the output of the
        already-updated layers before it)."""
        check_input(x, self.widths[0], dtype=self.layers[0].coef.dtype)
        for layer in self.layers:
            layer.update_grid(x, grid_eps=grid_eps)
            x = layer(x)

    @torch.no_grad()
    def extend_grid(
        self, new_size: int, x: Tensor | None = None, *, grid_eps: float = 0.02
    ) -> None:
        """Grid extension of every layer to ``new_size`` intervals (see ``KANLinear.extend_grid``)."""
        for layer in self.layers:
            layer.extend_grid(new_size, x, grid_eps=grid_eps)
            if x is not None:
                x = layer(x)


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
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.widths = check_widths(widths)
        self.activation = check_choice("activation", activation, list(ACTIVATIONS))
        self.seed = seed
        gen = _generator(seed)
        dtype = dtype or torch.get_default_dtype()
        self.layers = nn.ModuleList()
        for a, b in zip(self.widths[:-1], self.widths[1:], strict=True):
            # Built on the meta device: nn.Linear's own initialisation would draw from the global RNG.
            lin = nn.Linear(a, b, device="meta", dtype=dtype).to_empty(device=device or "cpu")
            bound = 1.0 / math.sqrt(a)
            with torch.no_grad():
                for p in (lin.weight, lin.bias):
                    p.copy_((torch.rand(p.shape, generator=gen, dtype=dtype) * 2 - 1) * bound)
            self.layers.append(lin)

    def forward(self, x: Tensor) -> Tensor:
        """``(..., widths[0]) -> (..., widths[-1])``."""
        check_input(x, self.widths[0], dtype=self.layers[0].weight.dtype)
        act = ACTIVATIONS[self.activation]
        for i, lin in enumerate(self.layers):
            x = lin(x)
            if i < len(self.layers) - 1:
                x = act(x)
        return x


def count_params(model: nn.Module, *, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters. For a KAN layer: ``in*out*(G+k)`` coefficients plus
    ``2*in*out`` scales; for a linear layer ``in*out + out``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


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


def count_flops(model: nn.Module, batch: int = 1, *, mode: str = "sparse") -> int:
    """Floating-point operations of one forward pass on ``batch`` samples.

    KAN layer (in -> out, grid G, order k), per sample:

    - ``mode="sparse"`` (what kanlab computes):
      ``in * (4 + sum_{p=1..k} 6(p+1) + f_b) + in * out * (2(k+1) + 2)``: the k+1 non-zero bases of
      each input by the cardinal recursion, the base function b (f_b FLOPs, SiLU = 4), then per edge
      k+1 multiply-adds for the spline and one multiply-add for the base branch.
    - ``mode="dense"`` (what dense formulations such as efficient-kan compute, and the count papers
      use): ``in * (2(G+2k) + sum_{p=1..k} 9(G+2k-p) + f_b) + in * out * (2(G+k) + 2)``: the full
      Cox-de Boor basis and a dense product with all G+k coefficients per edge.

    Linear layer: ``2 * in * out + out``, plus the activation's FLOPs per hidden unit for an MLP.
    """
    check_choice("mode", mode, ["sparse", "dense"])
    check_int("batch", batch, minimum=0)
    total = 0
    for module in model.modules():
        if isinstance(module, KANLinear):
            n_in, n_out, k = module.in_features, module.out_features, module.spline_order
            f_b = ACTIVATION_FLOPS.get(module.base_activation, 4)
            if mode == "sparse":
                per_input = _basis_flops_sparse(k) + f_b
                per_edge = 2 * (k + 1) + 2
            else:
                per_input = _basis_flops_dense(module.grid_size + k, k) + f_b
                per_edge = 2 * (module.grid_size + k) + 2
            total += n_in * per_input + n_in * n_out * per_edge
        elif isinstance(module, nn.Linear):
            total += 2 * module.in_features * module.out_features
            total += module.out_features if module.bias is not None else 0
        if isinstance(module, MLP):
            hidden = sum(module.widths[1:-1])
            total += hidden * ACTIVATION_FLOPS.get(module.activation, 4)
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
    from kanlab._checks import check_finite

    layers = kan_layers(model)
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    n_in = layers[0].in_features
    if x.dim() != 2 or x.shape[1] != n_in or x.shape[0] < 1:
        raise ValueError(f"x must have shape (batch >= 1, {n_in}), got {tuple(x.shape)}")
    return layers, check_finite("x", x)
