"""Plots: one inset per live edge, symbolic labels, files only when asked, lazy matplotlib."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import kanlab as kl
from kanlab.plot import plot_history
from kanlab.train import History

pytest.importorskip("matplotlib")
F64 = torch.float64


def edge_axes(fig):
    return [ax for ax in fig.axes if ax.get_label().startswith("edge:")]


def test_network_plot_has_one_inset_per_live_edge(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = kl.KAN([2, 3, 1], dtype=F64, seed=0)
    with torch.no_grad():
        model.layers[0].mask[1, 2] = 0.0  # one dead edge
    model.layers[1].set_symbolic(0, 0, "sin", (1.0, 0.0, 1.0, 0.0))
    x = torch.rand(64, 2, dtype=F64) * 2 - 1
    fig = kl.plot(model, x, in_vars=["a", "b"], out_vars=["f"], title="demo")
    insets = edge_axes(fig)
    assert len(insets) == 2 * 3 - 1 + 3
    labels = {ax.get_label() for ax in insets}
    assert "edge:0:1:2" not in labels and "edge:1:0:0" in labels
    sym = next(ax for ax in insets if ax.get_label() == "edge:1:0:0")
    assert sym.get_title() == "sin"
    # each inset draws the edge's curve over the data
    assert all(len(ax.lines) == 1 and len(ax.lines[0].get_xdata()) == 64 for ax in insets)
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"a", "b", "f", "demo"} <= texts
    assert list(tmp_path.iterdir()) == []  # nothing written unless asked
    out = tmp_path / "net.png"
    kl.plot(model, x, path=out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = tmp_path / "net.svg"
    kl.plot(model, x, path=svg)
    assert b"<svg" in svg.read_bytes()[:500]


def test_plot_bad_input():
    model = kl.KAN([2, 1], dtype=F64)
    x = torch.rand(10, 2, dtype=F64)
    with pytest.raises(ValueError, match="in_vars must have 2 names"):
        kl.plot(model, x, in_vars=["a"])
    with pytest.raises(ValueError, match="shape"):
        kl.plot(model, torch.rand(10, 3, dtype=F64))
    with pytest.raises(TypeError, match="KAN"):
        kl.plot(kl.MLP([2, 1]), x)


def test_history_plot(tmp_path):
    hist = History(step=[0, 1, 2], train_loss=[1.0, 0.5, 0.1], test_loss=[1.1, 0.6, 0.2])
    fig = plot_history(hist, title="loss", path=tmp_path / "h.png")
    (ax,) = fig.axes
    assert len(ax.lines) == 2 and ax.get_yscale() == "log"
    assert (tmp_path / "h.png").exists()
    with pytest.raises(ValueError, match="no train_loss"):
        plot_history(History())


def test_import_kanlab_does_not_import_matplotlib_or_sympy():
    code = "import sys, kanlab; print('matplotlib' in sys.modules, 'sympy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
