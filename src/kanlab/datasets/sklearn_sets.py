"""Real data sets bundled with scikit-learn (no download): the ``sklearn/...`` registry.

scikit-learn is imported inside the builders only. Each set has a fixed seeded 80/20 split, features
standardised with the training statistics (and the regression target too). The public face is
:mod:`kanlab.datasets` (``get("sklearn/wine")``).
"""

from __future__ import annotations

from typing import Any

import torch

from kanlab._checks import check_int
from kanlab.datasets.dataset import Dataset
from kanlab.datasets.record import DEFAULT_KAN_HIDDEN, DatasetEntry
from kanlab.datasets.tabular import from_arrays, standardize_columns

__all__ = ["SKLEARN", "entries"]

#: short name -> (sklearn.datasets loader, kind, size, one-line description)
SKLEARN: dict[str, tuple[str, str, str, str]] = {
    "diabetes": ("load_diabetes", "regression", "442 samples, 10 features; y standardised",
                 "diabetes progression a year after baseline, from 10 baseline measurements"),
    "breast_cancer": ("load_breast_cancer", "classification", "569 samples, 30 features, 2 classes",
                      "breast tumour diagnosis (malignant or benign) from 30 cell-nucleus features"),
    "wine": ("load_wine", "classification", "178 samples, 13 features, 3 classes",
             "wine cultivar (3 classes) from 13 chemical measurements"),
    "digits": ("load_digits", "classification", "1797 samples, 64 features (8x8), 10 classes",
               "handwritten digits 0-9 from 8x8 grey-level images"),
}  # fmt: skip


def _entry(short: str) -> DatasetEntry:
    loader, kind, what, description = SKLEARN[short]

    def build(n_tr: int | None, n_te: int | None, seed: int, dtype: torch.dtype) -> Dataset:
        import sklearn.datasets

        bunch = getattr(sklearn.datasets, loader)()
        feats = [str(f) for f in getattr(bunch, "feature_names", range(bunch.data.shape[1]))]
        meta: dict[str, Any] = {"source": f"sklearn.datasets.{loader} (bundled, no download)",
                                "feature_names": feats}  # fmt: skip
        if kind == "classification":
            meta["target_names"] = [str(t) for t in bunch.target_names]
        ds = from_arrays(
            bunch.data, bunch.target, test_size=0.2, seed=seed, kind=kind, name=f"sklearn/{short}",
            standardize=True, dtype=torch.float64, meta=meta,
        )  # fmt: skip
        trx, trY, tex, teY = ds.train_x, ds.train_y, ds.test_x, ds.test_y
        meta = dict(ds.meta)
        if kind == "regression":
            trY, teY, meta["y_standardization"] = standardize_columns(trY, teY)
        for label, want, have in (("n_train", n_tr, trx.shape[0]), ("n_test", n_te, tex.shape[0])):
            if want is not None:
                check_int(label, want, minimum=1)
                if want > have:
                    raise ValueError(f"{label}={want} exceeds the {have} samples of that split")
        if n_tr is not None:
            trx, trY = trx[:n_tr], trY[:n_tr]
        if n_te is not None:
            tex, teY = tex[:n_te], teY[:n_te]
        return Dataset(trx, trY, tex, teY, name=ds.name, meta=meta).to(dtype)

    lines = (f"{what}", "fixed seeded split: 20% test; features standardised with train statistics",
             "n_train/n_test (optional) take the first rows of each split",
             f"source: sklearn.datasets.{loader} (bundled with scikit-learn)")  # fmt: skip
    return DatasetEntry(
        name=f"sklearn/{short}", kind=kind, description=description, summary=kind,
        kan_hidden=DEFAULT_KAN_HIDDEN[kind], build=build, details=lines,
    )  # fmt: skip


def entries() -> list[DatasetEntry]:
    """The four bundled sets."""
    return [_entry(short) for short in SKLEARN]
