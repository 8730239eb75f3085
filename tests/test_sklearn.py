"""Tests for kanlab.sklearn: scikit-learn's estimator checks, pipelines, cross-validation."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from kanlab.sklearn import KANClassifier, KANRegressor

# Small and fast: Adam, 10 steps. (The defaults, 50 LBFGS steps, pass the same checks, slower.)
FAST = {"steps": 10, "optimizer": "adam", "lr": 0.05, "grid_update_every": 5}


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@parametrize_with_checks([KANRegressor(**FAST), KANClassifier(**FAST)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def smooth_regression(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(n, 2))
    return x, np.sin(np.pi * x[:, 0]) + x[:, 1] ** 2


def test_regressor_in_pipeline_with_cross_val_score():
    x, y = smooth_regression()
    pipe = make_pipeline(MinMaxScaler(), KANRegressor(hidden=(3,), steps=8))
    scores = cross_val_score(pipe, x, y, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.9  # R^2 on held-out folds


def test_classifier_fit_predict_proba_score():
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, size=(200, 2))
    labels = np.array(["in", "out"])[(np.hypot(x[:, 0], x[:, 1]) > 0.6).astype(int)]
    clf = KANClassifier(hidden=(4,), steps=5).fit(x[:150], labels[:150])
    assert list(clf.classes_) == ["in", "out"]
    proba = clf.predict_proba(x[150:])
    assert proba.shape == (50, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    assert (clf.classes_[proba.argmax(axis=1)] == clf.predict(x[150:])).all()
    assert clf.score(x[150:], labels[150:]) > 0.85
    assert len(clf.history_) == 5


def test_params_are_stored_unmodified_and_settable():
    reg = KANRegressor(hidden=[4, 2], grid_size=7, random_state=5)
    params = reg.get_params()
    assert params["hidden"] == [4, 2] and params["grid_size"] == 7 and params["random_state"] == 5
    reg.set_params(grid_size=3, steps=2)
    assert clone(reg).get_params()["grid_size"] == 3
    x, y = smooth_regression(40)
    reg.fit(x, y)
    assert reg.model_.widths == [2, 4, 2, 1] and reg.model_.grid_size == 3


def test_standardisation_makes_feature_scale_irrelevant():
    x, y = smooth_regression(80)
    a = KANRegressor(steps=5, **{k: v for k, v in FAST.items() if k != "steps"}).fit(x, y)
    b = clone(a).fit(x * 1000.0 + 7.0, y)
    np.testing.assert_allclose(a.predict(x), b.predict(x * 1000.0 + 7.0), rtol=1e-6, atol=1e-6)
    raw = clone(a).set_params(standardize=False).fit(x * 1000.0 + 7.0, y)
    assert not np.allclose(raw.predict(x * 1000.0 + 7.0), b.predict(x * 1000.0 + 7.0))


def test_multi_output_regression_and_target_units():
    x, y = smooth_regression(100)
    y2 = np.stack([y, 100.0 * y + 50.0], axis=1)
    reg = KANRegressor(steps=8).fit(x, y2)
    pred = reg.predict(x)
    assert pred.shape == (100, 2)
    # targets are standardised internally; predictions come back in the original units
    assert abs(pred[:, 1].mean() - y2[:, 1].mean()) < 5.0
    assert reg.score(x, y2) > 0.9


def test_bad_options_raise_clear_errors():
    x, y = smooth_regression(20)
    with pytest.raises(ValueError, match="unknown dtype"):
        KANRegressor(dtype="int8", steps=1).fit(x, y)
    with pytest.raises(ValueError, match="unknown optimizer"):
        KANRegressor(optimizer="sgd", steps=1).fit(x, y)


@pytest.mark.slow  # a fresh interpreter imports torch: ~5 s
def test_import_kanlab_does_not_import_sklearn():
    code = "import sys, kanlab; print('kanlab.sklearn' in sys.modules, 'sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
