"""Tests for kanlab.datasets: oracles for every generator, reproducibility, and validation errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import kanlab as kl
from kanlab import datasets
from kanlab.datasets import Dataset
from kanlab.datasets.feynman import (
    EXCLUDED,
    FormulaError,
    check_formula,
    evaluate_formula,
    load_table,
)
from kanlab.datasets.special import SPECIAL

# --------------------------------------------------------------------------------- toy functions
PI = np.pi


def _np_toy(name: str, x: np.ndarray) -> np.ndarray:
    """Independent numpy versions of the paper's toy functions, (n, d) -> (n,)."""
    import scipy.special

    if name == "bessel_j0":
        return scipy.special.j0(20 * x[:, 0])
    if name == "exp_sin_sq":
        return np.exp(np.sin(PI * x[:, 0]) + x[:, 1] ** 2)
    if name == "xy":
        return x[:, 0] * x[:, 1]
    if name == "exp_sin_100d":
        return np.exp(sum(np.sin(PI * x[:, i] / 2) ** 2 for i in range(100)) / 100)
    if name == "exp_sin_4d":
        a = np.sin(PI * (x[:, 0] ** 2 + x[:, 1] ** 2))
        b = np.sin(PI * (x[:, 2] ** 2 + x[:, 3] ** 2))
        return np.exp(0.5 * (a + b))
    if name == "exp_sin_4d_nopi":
        a = np.sin(x[:, 0] ** 2 + x[:, 1] ** 2)
        b = np.sin(x[:, 2] ** 2 + x[:, 3] ** 2)
        return np.exp(a + b)
    raise AssertionError(name)


TOY_DIMS = {
    "bessel_j0": 1,
    "exp_sin_sq": 2,
    "xy": 2,
    "exp_sin_100d": 100,
    "exp_sin_4d": 4,
    "exp_sin_4d_nopi": 4,
}


def test_paper_names_registered() -> None:
    assert datasets.names("paper/") == sorted(f"paper/{n}" for n in TOY_DIMS)


@pytest.mark.parametrize("short", sorted(TOY_DIMS))
def test_paper_toy_matches_numpy_oracle(short: str) -> None:
    ds = datasets.get(f"paper/{short}", n_train=200, n_test=100, dtype=torch.float64)
    d = TOY_DIMS[short]
    assert ds.train_x.shape == (200, d) and ds.test_x.shape == (100, d)
    assert ds.train_y.shape == (200, 1) and ds.test_y.shape == (100, 1)
    assert ds.train_x.dtype == torch.float64 and ds.kind == "regression"
    assert ds.n_features == d and ds.n_outputs == 1
    for x, y in ((ds.train_x, ds.train_y), (ds.test_x, ds.test_y)):
        xn = x.numpy()
        assert xn.min() >= -1 and xn.max() <= 1
        np.testing.assert_allclose(y[:, 0].numpy(), _np_toy(short, xn), rtol=1e-12, atol=1e-12)
    # The samples spread over the box (not a constant or a sliver of it).
    assert ds.train_x.min() < -0.9 and ds.train_x.max() > 0.9


def test_default_sizes_and_dtype() -> None:
    ds = datasets.get("paper/exp_sin_sq")
    assert ds.train_x.shape == (1000, 2) and ds.test_x.shape == (1000, 2)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.float32
    assert ds.meta["formula"] and ds.meta["ranges"] == [[-1.0, 1.0], [-1.0, 1.0]]


def test_seed_reproducible_and_distinct() -> None:
    a = datasets.get("paper/exp_sin_4d", n_train=50, n_test=20, seed=3)
    b = datasets.get("paper/exp_sin_4d", n_train=50, n_test=20, seed=3)
    c = datasets.get("paper/exp_sin_4d", n_train=50, n_test=20, seed=4)
    for f in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, f), getattr(b, f))
        assert not torch.equal(getattr(a, f), getattr(c, f))
    # Train and test points are different draws.
    assert not torch.equal(a.train_x[:20], a.test_x)


def test_sampling_does_not_touch_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    datasets.get("paper/xy", n_train=10, n_test=10)
    assert torch.equal(torch.rand(3), expected)


def test_kl_datasets_reexported() -> None:
    assert kl.datasets is datasets
    assert "datasets" in kl.__all__


# ----------------------------------------------------------------------------- special functions
def _direct_special(short: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Straight scipy calls, written independently of kanlab._special."""
    import scipy.special as sp

    if short.startswith("sph_harm"):
        m, n = int(short[10]), int(short[13])
        return np.real(sp.sph_harm_y(n, m, a, b))
    if short.startswith("lpmv"):
        return sp.lpmv(int(short[-1]), a, b)
    if short == "ellipj":
        return sp.ellipj(a, b)[0]
    return getattr(sp, short)(a, b)


def test_special_names_registered() -> None:
    expected = [
        "ellipj", "ellipkinc", "ellipeinc", "jv", "yv", "kv", "iv", "lpmv_m0", "lpmv_m1",
        "lpmv_m2", "sph_harm_m0_n1", "sph_harm_m1_n1", "sph_harm_m0_n2", "sph_harm_m1_n2",
        "sph_harm_m2_n2",
    ]  # fmt: skip
    assert datasets.names("special/") == sorted(f"special/{n}" for n in expected)


@pytest.mark.parametrize("name", datasets.names("special/"))
def test_special_task_finite_and_matches_scipy(name: str) -> None:
    ds = datasets.get(name, n_train=32, n_test=32, dtype=torch.float64)
    short = name.split("/")[1]
    lo = torch.tensor([r[0] for r in ds.meta["ranges"]], dtype=torch.float64)
    hi = torch.tensor([r[1] for r in ds.meta["ranges"]], dtype=torch.float64)
    for x, y in ((ds.train_x, ds.train_y), (ds.test_x, ds.test_y)):
        assert x.shape == (32, 2) and y.shape == (32, 1)
        assert bool(torch.isfinite(y).all())
        assert bool(((x >= lo) & (x <= hi)).all())
        want = _direct_special(short, x[:, 0].numpy(), x[:, 1].numpy())
        np.testing.assert_allclose(y[:, 0].numpy(), want, rtol=1e-12, atol=1e-14)
    # Every task varies on its box (a constant target would be a useless benchmark).
    assert float(ds.train_y.std()) > 1e-3
    text = datasets.describe(name)
    assert name in text and "ranges" in text


def test_special_functions_closed_forms() -> None:
    """Closed forms of the special functions at particular parameters (independent oracle)."""
    t = np.linspace(0.05, 3.1, 25)  # polar angle
    p = np.linspace(0.0, 6.2, 25)  # azimuth
    c, s = np.cos(t), np.sin(t)
    ylm = {
        "sph_harm_m0_n1": 0.5 * np.sqrt(3 / PI) * c,
        "sph_harm_m1_n1": -0.5 * np.sqrt(3 / (2 * PI)) * s * np.cos(p),
        "sph_harm_m0_n2": 0.25 * np.sqrt(5 / PI) * (3 * c**2 - 1),
        "sph_harm_m1_n2": -0.5 * np.sqrt(15 / (2 * PI)) * s * c * np.cos(p),
        "sph_harm_m2_n2": 0.25 * np.sqrt(15 / (2 * PI)) * s**2 * np.cos(2 * p),
    }
    for short, want in ylm.items():
        np.testing.assert_allclose(SPECIAL[short].fn(t, p), want, atol=1e-12, err_msg=short)
    x = np.linspace(-0.9, 0.9, 19)
    one, two = np.ones_like(x), 2 * np.ones_like(x)
    np.testing.assert_allclose(SPECIAL["lpmv_m0"].fn(one, x), x, atol=1e-12)
    np.testing.assert_allclose(SPECIAL["lpmv_m1"].fn(one, x), -np.sqrt(1 - x**2), atol=1e-12)
    np.testing.assert_allclose(SPECIAL["lpmv_m2"].fn(two, x), 3 * (1 - x**2), atol=1e-12)
    u = np.linspace(0, 1, 11)
    z = np.zeros_like(u)
    np.testing.assert_allclose(SPECIAL["ellipj"].fn(u, z), np.sin(u), atol=1e-12)
    np.testing.assert_allclose(SPECIAL["ellipkinc"].fn(u, z), u, atol=1e-12)
    np.testing.assert_allclose(SPECIAL["ellipeinc"].fn(u, z), u, atol=1e-12)
    xb = np.linspace(1, 2, 11)
    h = np.full_like(xb, 0.5)
    r = np.sqrt(2 / (PI * xb))
    np.testing.assert_allclose(SPECIAL["jv"].fn(h, xb), r * np.sin(xb), rtol=1e-10)
    np.testing.assert_allclose(SPECIAL["yv"].fn(h, xb), -r * np.cos(xb), rtol=1e-10)
    np.testing.assert_allclose(SPECIAL["iv"].fn(h, xb), r * np.sinh(xb), rtol=1e-10)
    np.testing.assert_allclose(
        SPECIAL["kv"].fn(h, xb), np.sqrt(PI / (2 * xb)) * np.exp(-xb), rtol=1e-10
    )


# ------------------------------------------------------------------------------------- Feynman
def test_feynman_rows_evaluate_finitely_or_are_listed_as_excluded() -> None:
    """Every row either evaluates finitely on its ranges or is in EXCLUDED (with a reason)."""
    rng = np.random.default_rng(0)
    failing = {}
    for row in load_table():
        try:
            vals = {
                v: rng.uniform(lo, hi, 4000)
                for v, (lo, hi) in zip(row.variables, row.ranges, strict=True)
            }
            y = evaluate_formula(row.formula, vals)
        except FormulaError as e:
            failing[row.filename] = f"formula error: {e}"
            continue
        n_bad = int((~np.isfinite(y)).sum())
        if n_bad:
            failing[row.filename] = f"{n_bad}/4000 non-finite values"
    assert set(failing) == set(EXCLUDED), (
        f"rows failing to evaluate: {failing}; rows listed as excluded: {EXCLUDED}"
    )
    assert all(EXCLUDED.values())
    assert len(load_table()) == 100
    assert len(datasets.names("feynman/")) == 100 - len(EXCLUDED) >= 20
    for f in EXCLUDED:
        assert f"feynman/{f}" not in datasets.names()


def test_every_feynman_task_generates_finite_data() -> None:
    rows = {r.filename: r for r in load_table()}
    for name in datasets.names("feynman/"):
        ds = datasets.get(name, n_train=32, n_test=32)
        row = rows[name.split("/", 1)[1]]
        assert ds.train_x.shape == (32, len(row.variables)), name
        assert ds.train_y.shape == (32, 1) and ds.test_y.shape == (32, 1), name
        assert bool(torch.isfinite(ds.train_y).all() and torch.isfinite(ds.test_y).all()), name
        assert ds.meta["feature_names"] == list(row.variables)
        assert ds.meta["ranges"] == [list(r) for r in row.ranges]
        assert row.formula in ds.meta["formula"]
        lo = torch.tensor([r[0] for r in row.ranges])
        hi = torch.tensor([r[1] for r in row.ranges])
        assert bool(((ds.train_x >= lo) & (ds.train_x <= hi)).all()), name


def _cols(ds: Dataset) -> dict[str, np.ndarray]:
    x = np.concatenate([ds.train_x.numpy(), ds.test_x.numpy()])
    return {n: x[:, i] for i, n in enumerate(ds.meta["feature_names"])}


FEYNMAN_BY_HAND = {
    "I.6.2a": lambda v: np.exp(-(v["theta"] ** 2) / 2) / np.sqrt(2 * PI),
    "I.9.18": lambda v: (
        v["G"]
        * v["m1"]
        * v["m2"]
        / ((v["x2"] - v["x1"]) ** 2 + (v["y2"] - v["y1"]) ** 2 + (v["z2"] - v["z1"]) ** 2)
    ),
    "I.12.11": lambda v: v["q"] * (v["Ef"] + v["B"] * v["v"] * np.sin(v["theta"])),
    "I.41.16": lambda v: (
        (v["h"] / (2 * PI))
        * v["omega"] ** 3
        / (PI**2 * v["c"] ** 2 * np.expm1(v["h"] * v["omega"] / (2 * PI * v["kb"] * v["T"])))
    ),
    "II.6.15a": lambda v: (
        3 * v["p_d"] * v["z"] * np.hypot(v["x"], v["y"]) / (4 * PI * v["epsilon"] * v["r"] ** 5)
    ),
    "II.35.21": lambda v: v["n_rho"] * v["mom"] * np.tanh(v["mom"] * v["B"] / (v["kb"] * v["T"])),
    "III.9.52": lambda v: (
        (v["p_d"] * v["Ef"] * v["t"] * 2 * PI / v["h"])
        * np.sinc((v["omega"] - v["omega_0"]) * v["t"] / (2 * PI)) ** 2
    ),
    "I.26.2": lambda v: np.arcsin(v["n"] * np.sin(v["theta2"])),
    "I.44.4": lambda v: v["n"] * v["kb"] * v["T"] * np.log(v["V2"] / v["V1"]),
}


@pytest.mark.parametrize("short", sorted(FEYNMAN_BY_HAND))
def test_feynman_matches_hand_written_numpy(short: str) -> None:
    ds = datasets.get(f"feynman/{short}", n_train=64, n_test=64, dtype=torch.float64)
    y = np.concatenate([ds.train_y.numpy(), ds.test_y.numpy()])[:, 0]
    np.testing.assert_allclose(y, FEYNMAN_BY_HAND[short](_cols(ds)), rtol=1e-10)


@pytest.mark.parametrize(
    "formula",
    [
        "__import__('os')",
        "__import__('os').system('true')",
        "x.real",
        "exp.__class__",
        "foo + x",
        "open(x)",
        "eval('1')",
        "(lambda: 1)()",
        "x if x else 1",
        "[x][0]",
        "x[0]",
        "'a'",
        "x // 2",
        "x % 2",
        "x == 1",
        "exp(x, x)",
        "exp(x=x)",
        "True + x",
        "1j * x",
        "x +",
        "-" * 1990 + "x",
        "(" * 300 + "x" + ")" * 300,
        "x" + "**x" * 600,
        "x+" * 1000 + "x",
    ],
)
def test_safe_evaluator_refuses(formula: str) -> None:
    with pytest.raises(FormulaError):
        evaluate_formula(formula, {"x": np.ones(3)})
    with pytest.raises(ValueError):  # FormulaError is a ValueError
        check_formula(formula, ["x"])


def test_safe_evaluator_computes() -> None:
    x = np.array([0.5, 1.0, 2.0])
    y = np.array([1.0, 2.0, 3.0])
    got = evaluate_formula("ln(x)*-y + sqrt(y)**3/2 - pi + arctan(x)", {"x": x, "y": y})
    np.testing.assert_allclose(got, np.log(x) * -y + np.sqrt(y) ** 3 / 2 - PI + np.arctan(x))
    assert evaluate_formula("2**-1 + 0*x", {"x": x}).tolist() == [0.5, 0.5, 0.5]
    assert not np.isfinite(evaluate_formula("2**99999 + x", {"x": x})).any()


# ----------------------------------------------------------------------------- registry / names
def test_names_get_describe_errors() -> None:
    assert len(datasets.names()) == len(set(datasets.names())) == 6 + 15 + 100 - len(EXCLUDED) + 4
    with pytest.raises(ValueError, match=r"paper/xy"):
        datasets.get("paper/xyy")
    with pytest.raises(ValueError, match=r"valid prefixes.*feynman/.*paper/"):
        datasets.get("nonsense")
    with pytest.raises(ValueError, match=r"valid prefixes"):
        datasets.names("bogus")
    with pytest.raises(ValueError, match=r"unknown data set"):
        datasets.describe("special/ellipx")
    with pytest.raises(ValueError, match="n_train"):
        datasets.get("paper/xy", n_train=0)
    for name in ("paper/xy", "sklearn/wine"):
        with pytest.raises(TypeError, match="floating torch.dtype"):
            datasets.get(name, dtype=torch.int64)


def test_describe_every_name_and_meta_is_json() -> None:
    for name in datasets.names():
        text = datasets.describe(name)
        assert text.startswith(name) and len(text.splitlines()) >= 3
    for name in ["paper/bessel_j0", "special/ellipj", "feynman/I.6.2a", "sklearn/wine"]:
        json.dumps(datasets.get(name, n_train=8, n_test=8).meta)
    assert "sn" in datasets.describe("special/ellipj")


# ------------------------------------------------------------------------------- from_function
def test_from_function_ranges_shapes_and_normalisation() -> None:
    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[:, 0] + x[:, 1], x[:, 0] * x[:, 1]], dim=1)

    ds = datasets.from_function(
        f, 2, n_train=300, n_test=50, ranges=[(0, 1), (2, 5)], seed=1, dtype=torch.float64
    )
    assert ds.train_y.shape == (300, 2) and ds.n_outputs == 2 and ds.name == "custom"
    assert 0 <= float(ds.train_x[:, 0].min()) and float(ds.train_x[:, 0].max()) <= 1
    assert 2 <= float(ds.train_x[:, 1].min()) and float(ds.train_x[:, 1].max()) <= 5
    torch.testing.assert_close(ds.test_y, f(ds.test_x))
    nd = datasets.from_function(f, 2, n_train=300, n_test=50, ranges=[(0, 1), (2, 5)], seed=1,
                                dtype=torch.float64, normalize_label=True)  # fmt: skip
    assert torch.equal(nd.train_x, ds.train_x)
    torch.testing.assert_close(nd.train_y.mean(0), torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(nd.train_y.std(0), torch.ones(2, dtype=torch.float64))
    mean, std = (torch.tensor(nd.meta[k], dtype=torch.float64) for k in ("y_mean", "y_std"))
    torch.testing.assert_close(nd.test_y * std + mean, ds.test_y)
    # Numpy-returning functions and float32 are fine too.
    d32 = datasets.from_function(lambda x: np.sin(x.numpy()).sum(1), 3, n_train=10, n_test=5)
    assert d32.train_x.dtype == torch.float32 and d32.train_y.shape == (10, 1)


def test_from_function_errors() -> None:
    with pytest.raises(ValueError, match=r"NaN/Inf for \d+ of 20"):
        datasets.from_function(lambda x: torch.log(x[:, 0]), 1, n_train=10, n_test=10)
    with pytest.raises(ValueError, match=r"shape \(20,\) or \(20, out\).*\(20, 2, 1\)"):
        datasets.from_function(lambda x: x[:, :, None], 2, n_train=10, n_test=10)
    with pytest.raises(ValueError, match=r"shape"):
        datasets.from_function(lambda x: x[:5, 0], 2, n_train=10, n_test=10)
    with pytest.raises(ValueError, match=r"3 pairs"):
        datasets.from_function(lambda x: x[:, 0], 2, ranges=[(0, 1)] * 3)
    with pytest.raises(ValueError, match=r"low < high"):
        datasets.from_function(lambda x: x[:, 0], 2, ranges=(1, 0))
    with pytest.raises(TypeError, match="callable"):
        datasets.from_function(3, 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_var"):
        datasets.from_function(lambda x: x[:, 0], 0)


# ---------------------------------------------------------------------------- Dataset validation
def _reg(**kw: object) -> Dataset:
    parts = dict(
        train_x=torch.zeros(4, 2), train_y=torch.zeros(4, 1), test_x=torch.zeros(2, 2),
        test_y=torch.zeros(2, 1),
    )  # fmt: skip
    parts.update(kw)
    return Dataset(**parts)  # type: ignore[arg-type]


def test_dataset_validation() -> None:
    bad = torch.zeros(4, 2)
    bad[1, 0], bad[2, 1] = float("nan"), float("inf")
    with pytest.raises(ValueError, match=r"train_x.*1 NaN and 1 Inf.*2 of 4 rows"):
        _reg(train_x=bad)
    with pytest.raises(ValueError, match=r"test_y.*1 NaN"):
        _reg(test_y=torch.tensor([[0.0], [float("nan")]]))
    with pytest.raises(ValueError, match=r"train_x.*shape \(n, d\).*\(4,\)"):
        _reg(train_x=torch.zeros(4))
    with pytest.raises(ValueError, match=r"train_x has 3 rows but train_y has 4"):
        _reg(train_x=torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"2 features but test_x has 3"):
        _reg(test_x=torch.zeros(2, 3))
    with pytest.raises(TypeError, match="test_y must be a torch.Tensor"):
        _reg(test_y=np.zeros((2, 1)))
    with pytest.raises(ValueError, match=r"int64 tensor of shape \(n,\)"):
        _reg(train_y=torch.zeros(4), test_y=torch.zeros(2), meta={"kind": "classification"})
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        _reg(train_y=torch.tensor([0, 1, 2, 0]), test_y=torch.tensor([0, 1]),
             meta={"n_classes": 2})  # fmt: skip
    with pytest.raises(ValueError, match="unknown Dataset.meta"):
        _reg(meta={"kind": "ranking"})


def test_dataset_to_and_properties() -> None:
    ds = _reg(train_y=torch.tensor([0, 2, 1, 0]), test_y=torch.tensor([1, 1]))
    assert ds.kind == "classification" and ds.n_outputs == 3 and ds.n_features == 2
    meta: dict = {}
    filled = _reg(train_y=torch.tensor([0, 1, 1, 0]), test_y=torch.tensor([1, 0]), meta=meta)
    assert filled.meta == {"kind": "classification", "n_classes": 2}
    assert meta == {}  # the caller's dict is not edited
    d64 = ds.to(torch.float64)
    assert d64.train_x.dtype == torch.float64 and d64.train_y.dtype == torch.int64
    assert d64.meta == ds.meta and d64.meta is not ds.meta
    r = _reg().to(dtype=torch.float64)
    assert r.train_y.dtype == torch.float64 and "regression" in repr(r)
    with pytest.raises(TypeError, match="floating"):
        r.to(torch.int32)


def test_dataset_pickles_and_replace_revalidates() -> None:
    import dataclasses
    import pickle

    ds = datasets.get("paper/xy", n_train=16, n_test=8)
    back = pickle.loads(pickle.dumps(ds))  # workers of the benchmark runner receive data this way
    assert back.name == ds.name and back.meta == ds.meta
    assert torch.equal(back.train_x, ds.train_x) and torch.equal(back.test_y, ds.test_y)
    with pytest.raises(ValueError, match="train_x has 3 rows but train_y has 16"):
        dataclasses.replace(ds, train_x=ds.train_x[:3])


# --------------------------------------------------------------------------------- from_arrays
def test_from_arrays_split_and_kind_inference() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3))
    y = np.where(x[:, 0] > 0, 7, 3)  # integer labels, not 0-based
    ds = datasets.from_arrays(x, y, test_size=0.2, seed=5)
    assert ds.kind == "classification" and ds.n_outputs == 2 and ds.meta["classes"] == [3, 7]
    assert ds.train_x.shape == (40, 3) and ds.test_x.shape == (10, 3)
    # The split is a partition of the rows, and labels follow their rows.
    rows = np.concatenate([ds.train_x.numpy(), ds.test_x.numpy()]).astype(np.float64)
    order = np.lexsort(rows.T)
    np.testing.assert_allclose(
        rows[order], x.astype(np.float32)[np.lexsort(x.astype(np.float32).T)]
    )
    labels = np.concatenate([ds.train_y.numpy(), ds.test_y.numpy()])
    np.testing.assert_array_equal(labels, (rows[:, 0] > 0).astype(np.int64))
    again = datasets.from_arrays(torch.from_numpy(x), torch.from_numpy(y), seed=5)
    assert torch.equal(again.train_x, ds.train_x) and torch.equal(again.test_y, ds.test_y)
    other = datasets.from_arrays(x, y, seed=6)
    assert not torch.equal(other.train_x, ds.train_x)
    reg = datasets.from_arrays(x, x[:, 0] * 2.0, standardize=True, dtype=torch.float64)
    assert reg.kind == "regression" and reg.train_y.shape == (40, 1)
    torch.testing.assert_close(reg.train_x.mean(0), torch.zeros(3, dtype=torch.float64))
    stats = reg.meta["x_standardization"]
    back = reg.train_x * torch.tensor(stats["std"], dtype=torch.float64) + torch.tensor(
        stats["mean"], dtype=torch.float64
    )
    torch.testing.assert_close(back[:, 0] * 2.0, reg.train_y[:, 0])
    forced = datasets.from_arrays(x, y.astype(float), kind="classification")
    assert forced.kind == "classification" and forced.train_y.dtype == torch.int64


def test_from_arrays_errors() -> None:
    x = np.ones((10, 2))
    x[:, 1] = np.arange(10)
    y = np.arange(10.0)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"x contains 1 non-finite.*column\(s\) \[1\]"):
        datasets.from_arrays(bad, y)
    with pytest.raises(ValueError, match=r"y contains 1 non-finite"):
        datasets.from_arrays(x, np.where(y > 8, np.inf, y))
    with pytest.raises(ValueError, match=r"x has 10 rows but y has 9"):
        datasets.from_arrays(x, y[:9])
    with pytest.raises(ValueError, match=r"x must have shape \(n, d\)"):
        datasets.from_arrays(x[:, 0], y)
    with pytest.raises(ValueError, match=r"y must have shape"):
        datasets.from_arrays(x, y.reshape(10, 1, 1))
    for ts in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="test_size"):
            datasets.from_arrays(x, y, test_size=ts)
    with pytest.raises(ValueError, match="at least 2 samples"):
        datasets.from_arrays(x[:1], y[:1])
    with pytest.raises(ValueError, match="at least one sample in each split"):
        datasets.from_arrays(x[:2], y[:2], test_size=0.9)
    with pytest.raises(ValueError, match="integer class labels"):
        datasets.from_arrays(x, y + 0.5, kind="classification")
    with pytest.raises(ValueError, match="unknown kind 'ranking'"):
        datasets.from_arrays(x, y, kind="ranking")
    tiny = datasets.from_arrays(x[:2], y[:2], test_size=0.5)
    assert tiny.train_x.shape[0] == 1 and tiny.test_x.shape[0] == 1


# ------------------------------------------------------------------------------------ from_csv
def _write(path: object, text: str) -> object:
    path.write_text(text)  # type: ignore[attr-defined]
    return path


def test_csv_round_trip(tmp_path: object) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 3))
    y = x @ np.array([1.0, -2.0, 0.5])
    lines = ["a,b,target,c"] + [
        ",".join(repr(float(v)) for v in (r[0], r[1], t, r[2])) for r, t in zip(x, y, strict=True)
    ]
    p = _write(tmp_path / "data.csv", "\n".join(lines) + "\n")  # type: ignore[operator]
    ds = datasets.from_csv(p, "target", standardize=False, seed=2)
    ref = datasets.from_arrays(x, y, seed=2)
    assert ds.kind == "regression" and ds.name == "data"
    assert ds.meta["feature_names"] == ["a", "b", "c"] and ds.meta["target_name"] == "target"
    for f in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(ds, f), getattr(ref, f)), f
    st = datasets.from_csv(p, "target", seed=2)
    torch.testing.assert_close(st.train_x.mean(0), torch.zeros(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(st.train_x.std(0), torch.ones(3), atol=1e-5, rtol=0)


def test_csv_string_and_integer_targets(tmp_path: object) -> None:
    rows = [f"{i},{(i * 7) % 5},{['cat', 'dog', 'emu'][i % 3]}" for i in range(12)]
    p = _write(tmp_path / "s.csv", "u,v,label\n" + "\n".join(rows))  # type: ignore[operator]
    ds = datasets.from_csv(p, "label")
    assert ds.kind == "classification" and ds.meta["classes"] == ["cat", "dog", "emu"]
    assert ds.n_outputs == 3 and ds.train_y.dtype == torch.int64
    q = _write(tmp_path / "i.csv", "u,v\n" + "\n".join(  # type: ignore[operator]
        f"{i / 3},{(i * 7) % 5}" for i in range(12)))  # fmt: skip
    ints = datasets.from_csv(q, "v")
    assert ints.kind == "classification" and ints.meta["classes"] == [0, 1, 2, 3, 4]
    assert datasets.from_csv(q, "v", kind="regression").kind == "regression"
    with pytest.raises(ValueError, match="non-numeric feature column.*'label'"):
        datasets.from_csv(p, "v", kind="regression")
    as_reg = datasets.from_csv(q, "u")  # non-integer numbers: regression
    assert as_reg.kind == "regression" and as_reg.train_y.dtype == torch.float32
    with pytest.raises(ValueError, match=r"target column 'label' is non-numeric \(e.g. 'y'\)"):
        _write(tmp_path / "t.csv", "u,v,label\n" + "\n".join(  # type: ignore[operator]
            f"{i},{i * i},{'x' if i else 'y'}" for i in range(5)))  # fmt: skip
        datasets.from_csv(tmp_path / "t.csv", "label", kind="regression")  # type: ignore[operator]


@pytest.mark.parametrize(
    ("text", "target", "pattern"),
    [
        ("a,b,y\n1,2,3\n4,5,6\n", "z", r"target column 'z' not found.*\['a', 'b', 'y'\]"),
        ("a,b,y\n1,,3\n4,5,NA\n2,2,1\n", "y", r"missing values in column\(s\) 'b' \(1 rows\), "
         r"'y' \(1 rows\); 2 row\(s\)"),
        ("a,b,y\n1,x,3\n4,5,6\n", "y", r"non-numeric feature column\(s\): 'b' \(e.g. 'x'\)"),
        ("a,b,y\n1,7,3\n4,7,6\n5,7,1\n", "y", r"constant feature column\(s\) \['b'\]"),
        ("a,b,y\n1,2,3\n", "y", r"at least 2 data rows, got 1"),
        ("a,b,y\n1,2,3\n4,5\n", "y", r"data row 2 has 2 fields but the header has 3"),
        ("", "y", r"empty"),
        ("a,a,y\n1,2,3\n4,5,6\n", "y", r"duplicate column names: \['a'\]"),
    ],
)  # fmt: skip
def test_csv_errors(tmp_path: object, text: str, target: str, pattern: str) -> None:
    p = _write(tmp_path / "bad.csv", text)  # type: ignore[operator]
    with pytest.raises(ValueError, match=pattern):
        datasets.from_csv(p, target)


def test_csv_missing_file(tmp_path: object) -> None:
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        datasets.from_csv(tmp_path / "nope.csv", "y")  # type: ignore[operator]


# ------------------------------------------------------------------------------------- sklearn
@pytest.mark.parametrize(
    ("name", "n", "d", "kind", "k"),
    [
        ("sklearn/diabetes", 442, 10, "regression", 1),
        ("sklearn/breast_cancer", 569, 30, "classification", 2),
        ("sklearn/wine", 178, 13, "classification", 3),
        ("sklearn/digits", 1797, 64, "classification", 10),
    ],
)
def test_sklearn_sets(name: str, n: int, d: int, kind: str, k: int) -> None:
    ds = datasets.get(name)
    n_test = math.ceil(0.2 * n)
    assert ds.train_x.shape == (n - n_test, d) and ds.test_x.shape == (n_test, d)
    assert ds.kind == kind and ds.n_outputs == k and ds.train_x.dtype == torch.float32
    stats = ds.meta["x_standardization"]
    assert len(stats["mean"]) == d
    torch.testing.assert_close(ds.train_x.mean(0), torch.zeros(d), atol=1e-5, rtol=0)
    if kind == "classification":
        assert set(ds.train_y.tolist()) == set(range(k))
        assert len(ds.meta["target_names"]) == k
    else:
        ys = ds.meta["y_standardization"]
        torch.testing.assert_close(ds.train_y.mean(), torch.tensor(0.0), atol=1e-5, rtol=0)
        torch.testing.assert_close(ds.train_y.std(), torch.tensor(1.0), atol=1e-5, rtol=0)
        assert 100 < ys["mean"][0] < 200  # the raw diabetes target is around 150
    again = datasets.get(name)
    assert torch.equal(again.train_x, ds.train_x) and torch.equal(again.test_y, ds.test_y)
    small = datasets.get(name, n_train=20, n_test=10)
    assert torch.equal(small.train_x, ds.train_x[:20]) and small.test_x.shape[0] == 10
    with pytest.raises(ValueError, match="exceeds"):
        datasets.get(name, n_train=10**6)


def test_sklearn_standardisation_inverts_to_raw_data() -> None:
    from sklearn.datasets import load_wine

    raw = load_wine().data
    ds = datasets.get("sklearn/wine", dtype=torch.float64)
    st = ds.meta["x_standardization"]
    mean, std = (torch.tensor(st[k], dtype=torch.float64) for k in ("mean", "std"))
    x = torch.cat([ds.train_x, ds.test_x]) * std + mean
    got = x.numpy()
    np.testing.assert_allclose(got[np.lexsort(got.T)], raw[np.lexsort(raw.T)], rtol=1e-10)
