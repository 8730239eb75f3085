"""KAN 2.0 attribution (kanlab.attribution): closed-form scores of a hand-built KAN, the definition
against a naive loop, the multiplication-node helper, invariants (constant offsets, scaling), and
the issue's test: a function of 6 inputs that ignores 3 of them, on 5 seeds, then prune_input."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch

import kanlab as kl
from kanlab.attribution import attribute, prune_input, subnode_scores
from kanlab.prune import scores

# x0, x1 on the corners of a square: std 1 each, uncorrelated, so every spread is closed form.
SQUARE = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)


def hand_kan(a: float, k: float, d: float = 0.0) -> kl.KAN:
    """[2, 2, 1]: h0 = a*x0 + d, h1 = x1 (the cross edges masked), y = h0 + 2k*h1."""
    m = kl.KAN([2, 2, 1], seed=0, dtype="float64")
    l0, l1 = m.layers
    l0.set_mask(torch.eye(2, dtype=torch.float64))  # (in, out): only 0->0 and 1->1
    l0.set_symbolic(0, 0, "x", (1.0, 0.0, a, d))
    l0.set_symbolic(1, 1, "x", (1.0, 0.0, 1.0, 0.0))
    l1.set_symbolic(0, 0, "x", (1.0, 0.0, 1.0, 0.0))
    l1.set_symbolic(1, 0, "x", (1.0, 0.0, 2.0 * k, 0.0))
    return m


@pytest.mark.parametrize(("a", "k"), [(1.0, 1.0), (3.0, 1.0), (-0.5, 2.0), (2.0, 0.25)])
def test_hand_built_kan_closed_form(a: float, k: float) -> None:
    # y = a*x0 + 2k*x1: std(y) = sqrt(a^2 + 4k^2) on the square. Output edges score |a|/N and
    # 2|k|/N; each hidden node passes its score to its one input edge (E/N = 1 there).
    sc = attribute(hand_kan(a, k), SQUARE)
    n = math.sqrt(a * a + 4 * k * k)
    expect_in = torch.tensor([abs(a) / n, 2 * abs(k) / n], dtype=torch.float64)
    torch.testing.assert_close(sc.node[2], torch.ones(1, dtype=torch.float64))
    torch.testing.assert_close(sc.edge[1], expect_in.unsqueeze(0))
    torch.testing.assert_close(sc.node[1], expect_in)
    torch.testing.assert_close(sc.edge[0], torch.diag(expect_in))
    torch.testing.assert_close(sc.input, expect_in)
    assert sc.input is sc.node[0]


def test_constant_offset_changes_nothing_unlike_mean_magnitude() -> None:
    # An edge's constant offset d carries no information: the std-based scores ignore it, the KAN
    # paper's mean-|phi| scores (kanlab.prune.scores) do not.
    x = SQUARE
    plain, offset = hand_kan(1.0, 1.0), hand_kan(1.0, 1.0, d=5.0)
    for a, b in zip(attribute(plain, x).edge, attribute(offset, x).edge, strict=True):
        torch.testing.assert_close(a, b)
    assert float(scores(offset, x).node[0][0]) > float(scores(plain, x).node[0][0]) + 0.1


def naive_attribution(model: kl.KAN, x: torch.Tensor) -> tuple[list, list]:
    """The definition, written out with loops and numpy (population std)."""
    acts = [a.detach().numpy() for a in model.activations(x)]
    node = [np.ones(acts[-1].shape[1])]
    edge = [None] * len(acts)
    for layer in range(len(acts) - 1, -1, -1):
        phi = acts[layer]  # (batch, out, in)
        out_n, in_n = phi.shape[1], phi.shape[2]
        e = np.zeros((out_n, in_n))
        for o in range(out_n):
            n_o = np.std(phi[:, o, :].sum(-1))
            for i in range(in_n):
                e[o, i] = node[0][o] * np.std(phi[:, o, i]) / n_o
        edge[layer] = e
        node.insert(0, e.sum(0))
    return node, edge


def test_random_kan_matches_naive_definition() -> None:
    m = kl.KAN([3, 4, 2, 2], seed=1, dtype="float64")
    x = torch.rand(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    sc = attribute(m, x)
    node, edge = naive_attribution(m, x)
    for got, want in zip(sc.node, node, strict=True):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    for got, want in zip(sc.edge, edge, strict=True):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    # a node's score is the sum of its outgoing edges' scores; outputs score 1
    for layer, e in enumerate(sc.edge):
        torch.testing.assert_close(sc.node[layer], e.sum(0))
    torch.testing.assert_close(sc.node[-1], torch.ones(2, dtype=torch.float64))


def test_subnode_scores_plain_and_multiplication_nodes() -> None:
    s = torch.tensor([0.5, 2.0, 3.0])
    assert subnode_scores(kl.KAN([2, 3, 1]), 1, s) is s  # plain KAN: subnodes are nodes
    # 1 sum node, then mult nodes of arity 2 and 3: each factor gets the node's whole score
    fake = types.SimpleNamespace(has_mult=True, n_sum=[0, 1], mult_arity=[[], [2, 3]])
    got = subnode_scores(fake, 1, s)
    torch.testing.assert_close(got, torch.tensor([0.5, 2.0, 2.0, 3.0, 3.0, 3.0]))


def test_bad_input_is_refused_with_a_message() -> None:
    m = kl.KAN([2, 1], dtype="float64")
    with pytest.raises(ValueError, match="at least 2 rows"):
        attribute(m, SQUARE[:1])
    with pytest.raises(ValueError, match="shape"):
        attribute(m, torch.zeros(4, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="kanlab KAN"):
        attribute(torch.nn.Linear(2, 1), SQUARE)
    with pytest.raises(ValueError, match="threshold must be <= 1"):
        prune_input(m, SQUARE, threshold=2.0)
    with pytest.raises(ValueError, match="threshold"):
        prune_input(m, SQUARE, threshold=-1.0)


def test_prune_input_hand_built_keeps_original_and_offsets() -> None:
    # x1's edge is scaled to 1e-4: below the threshold. Its mean goes into x0's edge, so the
    # prediction on the data changes only by x1's variation; the original keeps both inputs.
    m = hand_kan(1.0, 5e-5, d=0.0)
    l0 = m.layers[0]
    l0.symbolic.affine.data[1, 1, 3] = 7.0  # h1 = x1 + 7: a large constant offset
    l0.set_mask(torch.tensor([[1.0, 1.0], [0.0, 1.0]], dtype=torch.float64))  # edge 0 -> 1 on,
    l0.set_symbolic(0, 1, "x", (1.0, 0.0, 0.0, 0.0))  # as the zero function 0*x: it takes the 7
    x = SQUARE
    pruned, kept = prune_input(m, x, threshold=1e-2)
    assert kept == [0]
    assert m.layers[0].in_features == 2 and pruned.layers[0].in_features == 1
    assert pruned.widths == [1, 2, 1]
    with torch.no_grad():
        diff = (pruned(x[:, kept]) - m(x)).abs().max()
    assert float(diff) == pytest.approx(2 * 5e-5, rel=1e-9)  # |2k * x1| = 1e-4, no offset
    with pytest.raises(ValueError, match="every input scores 0"):
        prune_input(hand_kan(0.0, 0.0), x)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_six_inputs_three_unused(seed: int) -> None:
    # y = x0^3 + x2^2 - x4 ignores x1, x3, x5. A [6, 1] KAN (grid 5) trained 20 LBFGS steps on
    # 200 points, no sparsity (lamb = 0): cubic splines hold x^2 and x^3, so the fit is close and
    # the unused inputs' edges are flat on the data. (The reference kernels: the Numba thread team
    # is slow on a loaded two-core machine; the maths is the same.)
    def f(x: torch.Tensor) -> torch.Tensor:
        return x[:, 0] ** 3 + x[:, 2] ** 2 - x[:, 4]

    ds = kl.datasets.from_function(f, 6, n_train=200, n_test=50, seed=seed, dtype=torch.float64)
    model = kl.KAN([6, 1], grid_size=5, seed=seed, dtype="float64")
    kl.kernels.set_backend("reference")
    try:
        kl.fit(model, ds, steps=20, progress=False, grid_update_every=0)
        score = attribute(model, ds.train_x).input
        assert float(score[[1, 3, 5]].max()) <= 1e-3 * float(score[[0, 2, 4]].min())
        pruned, kept = prune_input(model, ds.train_x, threshold=1e-2)
        assert kept == [0, 2, 4]
        with torch.no_grad():
            before, after = model(ds.test_x), pruned(ds.test_x[:, kept])
        diff, spread = before - after, float(before.std())  # diff: the dropped edges' variation
        assert float(diff.pow(2).mean().sqrt()) <= 1e-3 * spread
        assert float(diff.abs().max()) <= 5e-3 * spread
    finally:
        kl.kernels.set_backend(None)


def test_attribution_through_multiplication_nodes():
    """On a real KAN with a multiplication node (compiled x*y with an unused z), each factor gets
    the product's whole score: x and y score alike, z scores 0 and prune_input drops it without
    changing the prediction."""
    x = torch.rand(300, 3, dtype=torch.float64) + 0.5  # (0.5, 1.5)^3
    model = kl.compile_formula("x*y", ["x", "y", "z"], (0.5, 1.5))
    assert model.has_mult
    att = kl.attribute(model, x)
    assert att.input[2] == 0
    assert att.input[0] > 0.1 and att.input[1] > 0.1
    # the product node's score (1, the output's) reaches both factor subnodes in full
    assert torch.allclose(att.node[1], torch.ones_like(att.node[1]))
    pruned, kept = kl.prune_input(model, x)
    assert kept == [0, 1]
    torch.testing.assert_close(pruned(x[:, kept]), model(x), rtol=1e-12, atol=1e-12)
