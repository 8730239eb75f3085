"""Separability trees (kanlab.separability): known additive / multiplicative / generalized
structures, a non-separable function, a KAN with exact symbolic edges, the autograd Hessian
against central differences, the plot, and bad input."""

from __future__ import annotations

import matplotlib
import pytest
import torch

import kanlab as kl
from kanlab.separability import SeparabilityTree, derivatives, plot_separability, separability

matplotlib.use("Agg")


def data(n_var: int, low: float = -1.0, high: float = 1.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(200, n_var, dtype=torch.float64, generator=g) * (high - low) + low


def shape(t: SeparabilityTree) -> tuple:
    """(kind, variables, children) without the unused field, for exact comparison."""
    return (t.kind, t.variables, tuple(shape(c) for c in t.children))


def var(i: int) -> tuple:
    return ("var", (i,), ())


@pytest.mark.parametrize(
    ("f", "n_var", "expect", "text"),
    [
        (lambda z: z[:, 0] + z[:, 1] ** 2, 2, ("add", (0, 1), (var(0), var(1))), "x1 + x2"),
        (lambda z: z[:, 0] * z[:, 1], 2, ("mul", (0, 1), (var(0), var(1))), "x1 * x2"),
        (
            lambda z: torch.sin(z[:, 0]) * torch.exp(z[:, 1]) + z[:, 2],
            3,
            ("add", (0, 1, 2), (("mul", (0, 1), (var(0), var(1))), var(2))),
            "x1 * x2 + x3",
        ),
        (
            lambda z: torch.exp(torch.sin(z[:, 0]) + z[:, 1] ** 2) * z[:, 2],
            3,
            ("mul", (0, 1, 2), (("gen", (0, 1), (var(0), var(1))), var(2))),
            "F(x1 + x2) * x3",
        ),
        (  # generalized additive with a sign-changing outer function: neither + nor *
            lambda z: torch.sin(2 * z[:, 0] + z[:, 1] ** 2),
            2,
            ("gen", (0, 1), (var(0), var(1))),
            "F(x1 + x2)",
        ),
        (  # a product inside a sum, with a constant: multiplicative up to the constant
            lambda z: z[:, 0] * z[:, 1] + 1.0 + torch.cos(z[:, 2]),
            3,
            ("add", (0, 1, 2), (("mul", (0, 1), (var(0), var(1))), var(2))),
            "x1 * x2 + x3",
        ),
    ],
)
def test_known_structures(f, n_var: int, expect: tuple, text: str) -> None:
    tree = separability(f, data(n_var))
    assert shape(tree) == expect
    assert str(tree) == text
    assert tree.unused == ()


def test_non_separable() -> None:
    f = lambda z: z[:, 0] * z[:, 1] + z[:, 1] * z[:, 2] + z[:, 0] * z[:, 2]  # noqa: E731
    tree = separability(f, data(3))
    assert shape(tree) == ("none", (0, 1, 2), ())
    assert str(tree) == "g(x1, x2, x3)"


def test_positive_product_stays_a_product_and_unused_inputs() -> None:
    # on [1, 2]^2 both factors are positive: the product is kept, not turned into F(x1 + x2)
    x = data(3, 1.0, 2.0)
    tree = separability(lambda z: z[:, 0] * z[:, 2], x)
    assert shape(tree) == ("mul", (0, 2), (var(0), var(2)))
    assert tree.unused == (1,)
    assert str(tree) == "x1 * x3"


def test_kan_with_symbolic_edges() -> None:
    # [3, 2, 1]: h0 = sin(x1) + x2^2, h1 = x3, y = exp(h0) + h1 = exp(sin x1) exp(x2^2) + x3
    m = kl.KAN([3, 2, 1], seed=0, dtype="float64")
    l0, l1 = m.layers
    l0.set_mask(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64))
    l0.set_symbolic(0, 0, "sin")
    l0.set_symbolic(1, 0, "x^2")
    l0.set_symbolic(2, 1, "x")
    l1.set_symbolic(0, 0, "exp")
    l1.set_symbolic(1, 0, "x")
    x = data(3)
    ref = torch.exp(torch.sin(x[:, 0]) + x[:, 1] ** 2) + x[:, 2]
    torch.testing.assert_close(m(x)[:, 0].detach(), ref)  # the KAN is the formula
    tree = separability(m, x)
    assert shape(tree) == ("add", (0, 1, 2), (("mul", (0, 1), (var(0), var(1))), var(2)))


def test_kan_spline_edges_additive() -> None:
    # a [2, 1] KAN is additive whatever its spline edges are: its Hessian is diagonal
    tree = separability(kl.KAN([2, 1], seed=3, dtype="float64"), data(2))
    assert shape(tree) == ("add", (0, 1), (var(0), var(1)))


def test_hessian_and_third_derivatives_match_finite_differences() -> None:
    def f(z: torch.Tensor) -> torch.Tensor:
        return torch.sin(z[:, 0] * z[:, 1]) + torch.exp(z[:, 2]) * z[:, 0] ** 2

    x = data(3)[:5]
    _, g, h, t = derivatives(f, x, third=True)
    eps = 1e-4
    for a in range(3):
        step = torch.zeros(3, dtype=torch.float64)
        step[a] = eps
        _, g_plus, h_plus = derivatives(f, x + step)
        _, g_minus, h_minus = derivatives(f, x - step)
        fd_h = (g_plus - g_minus) / (2 * eps)  # column a of the Hessian
        torch.testing.assert_close(h[:, :, a], fd_h, atol=1e-7, rtol=1e-7)
        fd_t = (h_plus - h_minus) / (2 * eps)
        torch.testing.assert_close(t[:, :, :, a], fd_t, atol=1e-6, rtol=1e-6)
    fd_g = (f(x + torch.tensor([0, 0, eps])) - f(x - torch.tensor([0, 0, eps]))) / (2 * eps)
    torch.testing.assert_close(g[:, 2], fd_g, atol=1e-7, rtol=1e-7)


def test_plot_separability_draws_every_node() -> None:
    tree = separability(lambda z: torch.exp(torch.sin(z[:, 0]) + z[:, 1] ** 2) * z[:, 2], data(3))
    fig = plot_separability(tree)
    texts = sorted(t.get_text() for t in fig.axes[0].texts)
    assert texts == sorted(["×", "F(+)", "x1", "x2", "x3"])
    with pytest.raises(TypeError, match="SeparabilityTree"):
        plot_separability("x1 + x2")
    matplotlib.pyplot.close(fig)


def test_bad_input() -> None:
    x = data(2)
    with pytest.raises(ValueError, match="shape"):
        separability(lambda z: z[:, 0], x[:1])
    with pytest.raises(TypeError, match="floating-point"):
        separability(lambda z: z[:, 0], [[1.0, 2.0]])
    with pytest.raises(ValueError, match="tol"):
        separability(lambda z: z[:, 0], x, tol=-1.0)
    with pytest.raises(ValueError, match=r"\(batch,\) or \(batch, 1\)"):
        separability(lambda z: z, x)
    with pytest.raises(TypeError, match="callable"):
        separability(3, x)
    with pytest.raises(ValueError, match="non-finite"):
        separability(lambda z: z[:, 0], torch.full((3, 2), float("nan"), dtype=torch.float64))
