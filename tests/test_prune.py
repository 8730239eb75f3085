"""Attribution scores (hand-computed on a linear KAN), pruning invariance, bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import kanlab as kl
from kanlab.prune import scores

F64 = torch.float64


def rand(*shape, seed=0, lo=-1.0, hi=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g, dtype=F64) * (hi - lo) + lo


def linear_kan(w0, w1):
    """KAN [2, 2, 1] whose edges are exactly phi(x) = w * x (identity base, zero splines).
    w0 (in=2, out=2), w1 (in=2, out=1) as nested lists."""
    model = kl.KAN([2, 2, 1], dtype=F64, base_activation="identity", noise_scale=0.0)
    with torch.no_grad():
        model.layers[0].scale_base.copy_(torch.tensor(w0, dtype=F64))
        model.layers[1].scale_base.copy_(torch.tensor(w1, dtype=F64))
    return model


def test_scores_hand_computed():
    # positive inputs and weights: |phi| = w * x, so every mean is a product of means
    x = torch.tensor([[1.0, 2.0], [3.0, 2.0]], dtype=F64)  # mean x = (2, 2)
    model = linear_kan([[1.0, 0.5], [0.25, 0.0]], [[2.0], [4.0]])
    sc = scores(model, x)
    # layer 0: edge (o, i) = w0[i, o] * mean x_i
    e0 = torch.tensor([[2.0, 0.5], [1.0, 0.0]], dtype=F64)
    torch.testing.assert_close(sc.edge[0], e0)
    # hidden h0 = x1 + 0.25 x2 (mean 2.5), h1 = 0.5 x1 (mean 1); layer 1: (w1 * mean h)
    e1 = torch.tensor([[5.0, 4.0]], dtype=F64)
    torch.testing.assert_close(sc.edge[1], e1)
    # attribution: output 1 -> shares 5/9, 4/9 -> hidden importances (5/9, 4/9)
    torch.testing.assert_close(sc.node[2], torch.ones(1, dtype=F64))
    torch.testing.assert_close(sc.edge_attribution[1], torch.tensor([[5 / 9, 4 / 9]], dtype=F64))
    torch.testing.assert_close(sc.node[1], torch.tensor([5 / 9, 4 / 9], dtype=F64))
    # hidden 0 gets 2/2.5 from x1 and 0.5/2.5 from x2; hidden 1 all from x1
    attr0 = torch.tensor([[5 / 9 * 0.8, 5 / 9 * 0.2], [4 / 9, 0.0]], dtype=F64)
    torch.testing.assert_close(sc.edge_attribution[0], attr0)
    torch.testing.assert_close(sc.node[0], attr0.sum(0))
    torch.testing.assert_close(sc.incoming[0], torch.tensor([2.0, 1.0], dtype=F64))
    torch.testing.assert_close(sc.outgoing[0], torch.tensor([2.0, 0.5], dtype=F64))
    # every node layer's importances sum to the number of outputs
    for imp in sc.node:
        assert float(imp.sum()) == pytest.approx(1.0)


def test_zero_thresholds_change_nothing_bit_for_bit():
    model = kl.KAN([3, 4, 2], dtype=F64, seed=1)
    x = rand(100, 3)
    state = copy.deepcopy(model.state_dict())
    pruned = kl.prune(model, x, node_threshold=0.0, edge_threshold=0.0)
    assert pruned is not model and pruned.widths == [3, 4, 2]
    assert torch.equal(pruned(x), model(x))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_pruning_dead_parts_keeps_outputs():
    model = kl.KAN([3, 4, 2], dtype=F64, seed=2)
    with torch.no_grad():
        model.layers[1].mask[2, :] = 0.0  # hidden node 2 feeds nothing
        model.layers[0].mask[:, 0] = 0.0  # hidden node 0 receives nothing ...
        model.layers[1].mask[0, :] = 0.0  # ... and feeds nothing
    x = rand(200, 3)
    pruned = kl.prune(model, x, node_threshold=1e-2, edge_threshold=0.0)
    assert pruned.widths == [3, 2, 2]
    torch.testing.assert_close(pruned(x), model(x), rtol=1e-13, atol=1e-13)
    # the kept nodes' tensors are slices of the original
    torch.testing.assert_close(pruned.layers[0].coef, model.layers[0].coef[:, :, [1, 3]])
    torch.testing.assert_close(pruned.layers[1].knots, model.layers[1].knots[[1, 3]])
    assert pruned.layers[1].in_features == 2 and pruned.layers[0].out_features == 2


def test_small_edges_are_masked_and_inputs_pruned():
    x = rand(300, 3, seed=4)
    model = kl.KAN([3, 2, 1], dtype=F64, base_activation="identity", noise_scale=0.0)
    with torch.no_grad():
        model.layers[0].scale_base.copy_(
            torch.tensor([[1.0, 0.8], [0.01, 1.0], [0.0, 0.0]], dtype=F64)
        )
        model.layers[1].scale_base.copy_(torch.tensor([[1.0], [1.0]], dtype=F64))
    pruned, kept = kl.prune(model, x, node_threshold=1e-2, edge_threshold=3e-2, prune_inputs=True)
    assert kept == [0, 1]  # input 2 has no effect
    assert pruned.widths == [2, 2, 1]
    # edge x2 -> h0 (weight 0.01) is below the edge threshold: masked
    assert pruned.layers[0].mask.tolist() == [[1.0, 1.0], [0.0, 1.0]]
    want = x[:, 0] * 1.8 + x[:, 1]
    torch.testing.assert_close(pruned(x[:, kept])[:, 0], want)


def test_bad_input_leaves_model_untouched():
    model = kl.KAN([2, 3, 1], dtype=F64, seed=3)
    state = copy.deepcopy(model.state_dict())
    x = rand(50, 2)
    with pytest.raises(ValueError, match="node_threshold must be >= 0"):
        kl.prune(model, x, node_threshold=-1e-3)
    with pytest.raises(ValueError, match="edge_threshold must be finite"):
        kl.prune(model, x, edge_threshold=math.nan)
    # (keep_input_tolerance=None: otherwise the inputs, which matter, would keep their paths)
    with pytest.raises(ValueError, match="every node of hidden layer 1"):
        kl.prune(model, x, node_threshold=2.0, keep_input_tolerance=None)
    with pytest.raises(ValueError, match="every node of input"):
        kl.prune(
            kl.KAN([2, 1], dtype=F64), x, node_threshold=2.0, prune_inputs=True,
            keep_input_tolerance=None,
        )  # fmt: skip
    with pytest.raises(ValueError, match="keep_input_tolerance must be >= 0"):
        kl.prune(model, x, keep_input_tolerance=-1.0)
    bad = x.clone()
    bad[1, 1] = math.nan
    with pytest.raises(ValueError, match="non-finite"):
        kl.prune(model, bad)
    with pytest.raises(ValueError, match="shape"):
        kl.prune(model, rand(10, 3))
    with pytest.raises(TypeError, match="KAN"):
        kl.prune(kl.MLP([2, 3, 1]), x)
    with pytest.raises(TypeError, match="prune_inputs"):
        kl.prune(model, x, prune_inputs=1)  # type: ignore[call-overload]
    assert model.widths == [2, 3, 1]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def small_input_model():
    """KAN [3, 2, 1]: y = exp(sin(pi x_1) + 0.02 x_2) through hidden node 0 (symbolic edges);
    x_3 and hidden node 1 have no live edges. x_2's edge carries ~1.5% of node 0's attribution."""
    model = kl.KAN([3, 2, 1], dtype=F64, base_activation="zero", noise_scale=0.0)
    l0, l1 = model.layers
    l0.set_mask(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]], dtype=F64))
    l1.set_mask(torch.tensor([[1.0], [0.0]], dtype=F64))
    l0.set_symbolic(0, 0, "sin", (math.pi, 0.0, 1.0, 0.0))
    l0.set_symbolic(1, 0, "x", (1.0, 0.0, 0.02, 0.0))
    l1.set_symbolic(0, 0, "exp", (1.0, 0.0, 1.0, 0.0))
    return model


def test_prune_keeps_a_small_input_whose_removal_hurts():
    x = rand(500, 3, seed=5)
    model = small_input_model()
    share = scores(model, x).edge_attribution[0][0, 1]
    assert 1e-2 < float(share) < 3e-2  # the premise: below the default edge threshold
    # the old rule masks x_2's edge: the pruned model has lost x_2 (~2% of the output)
    old = kl.prune(model, x, keep_input_tolerance=None)
    assert old.layers[0].mask[1].tolist() == [0.0]
    assert float((old(x) - model(x)).detach().abs().max()) > 1e-2
    # now x_2 keeps its edge; x_3 (no effect) is still pruned; the function is unchanged
    pruned, kept = kl.prune(model, x, prune_inputs=True)
    assert kept == [0, 1] and pruned.widths == [2, 1, 1]
    assert pruned.layers[0].mask.tolist() == [[1.0], [1.0]]
    torch.testing.assert_close(pruned(x[:, kept]), model(x), rtol=1e-13, atol=1e-13)
    # a tolerance above the input's effect lets it go again
    loose, kept = kl.prune(model, x, prune_inputs=True, keep_input_tolerance=0.5)
    assert kept == [0] and loose.widths == [1, 1, 1]


def test_prune_revives_the_path_of_a_needed_input():
    # x_2 feeds only hidden node 1, whose importance share is below node_threshold: the old
    # rule removes the node and with it x_2; now the node (and its edge to the output) stays.
    x = rand(400, 2, seed=6)
    model = linear_kan([[1.0, 0.0], [0.0, 1.0]], [[1.0], [0.005]])
    old = kl.prune(model, x, keep_input_tolerance=None)
    assert old.widths == [2, 1, 1]
    pruned = kl.prune(model, x)
    assert pruned.widths == [2, 2, 1]
    torch.testing.assert_close(pruned(x), model(x), rtol=1e-13, atol=1e-13)


def test_pruned_model_trains_and_keeps_dtype():
    model = kl.KAN([2, 4, 1], dtype=F64, seed=0)
    x = rand(64, 2)
    pruned = kl.prune(model, x, node_threshold=0.2, edge_threshold=0.0)
    assert 1 <= pruned.widths[1] <= 4
    out = pruned(x)
    out.sum().backward()
    assert all(p.grad is not None for p in pruned.parameters() if p.requires_grad)
    assert out.dtype == F64


def test_model_checks_shared_by_prune_plot_and_symbolic():
    """kanlab.models.kan_layers / check_kan_input: one check of "a KAN and its input" for prune,
    plot and symbolic (the same errors from each)."""
    from kanlab.models import check_kan_input, kan_layers

    model = kl.KAN([2, 3, 1], dtype=F64, seed=3)
    x = rand(20, 2)
    layers, checked = check_kan_input(model, x)
    assert layers == list(model.layers) and checked is x
    with pytest.raises(TypeError, match="model must be a kanlab KAN .* got MLP"):
        kan_layers(kl.MLP([2, 3, 1]))
    with pytest.raises(ValueError, match=r"shape \(batch >= 1, 2\), got \(0, 2\)"):
        check_kan_input(model, x[:0])
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
        check_kan_input(model, [[0.0, 0.0]])
    broken = kl.KAN([2, 3, 1], dtype=F64, seed=3)
    broken.layers[1] = kl.KANLinear(4, 1, dtype=F64)
    with pytest.raises(ValueError, match="layer 0 has 3 outputs but layer 1 has 4 inputs"):
        kan_layers(broken)
    for call in (
        lambda m: kl.prune(m, rand(20, 2)),
        lambda m: kl.plot(m, rand(20, 2)),
        lambda m: kl.auto_symbolic(m, rand(20, 2)),
        lambda m: kl.symbolic_formula(m),
    ):
        with pytest.raises(ValueError, match="layer 0 has 3 outputs but layer 1 has 4 inputs"):
            call(broken)
