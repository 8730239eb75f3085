"""The registry's record of one named data set (:class:`DatasetEntry`) and the registries behind the names.

A registered name is ``"<registry>/<short name>"``: its prefix says which table the data set comes from
(:data:`REGISTRIES`), e.g. ``"paper/xy"``, ``"special/ellipj"``, ``"feynman/I.6.2"``,
``"sklearn/wine"``. An entry says what the data is (one human line, a summary, details) and how to
build it, and carries the default hidden widths of a KAN for it (the paper's shapes for its toy
functions). The public face is :mod:`kanlab.datasets` (``entry``, ``describe``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from kanlab._checks import check_int
from kanlab.datasets.dataset import KINDS, Dataset

__all__ = ["DEFAULT_KAN_HIDDEN", "REGISTRIES", "Builder", "DatasetEntry"]

#: The registries, by name prefix, with one line on what each holds.
REGISTRIES: dict[str, str] = {
    "paper": "toy functions of the KAN paper (Liu et al. 2024, Fig. 3.1)",
    "special": "special functions of the KAN paper (section 3.2 / Table 2), via scipy.special",
    "feynman": "equations of the AI Feynman table (Udrescu & Tegmark 2020), shipped as a CSV",
    "sklearn": "real data sets bundled with scikit-learn (no download)",
}

#: The KAN hidden widths of a data set unless its table names others (the paper's toy functions do):
#: one hidden layer of 5 (regression) or 8 (classification).
DEFAULT_KAN_HIDDEN: dict[str, tuple[int, ...]] = {"regression": (5,), "classification": (8,)}

#: How an entry builds its data: (n_train or None, n_test or None, seed, dtype) -> Dataset.
Builder = Callable[[int | None, int | None, int, torch.dtype], Dataset]


@dataclass(frozen=True)
class DatasetEntry:
    """A registered data set: what it is, how to build it, the KAN shape to fit it with."""

    name: str  # "<registry>/<short name>", e.g. "paper/xy"; the prefix is a key of REGISTRIES
    kind: str  # "regression" or "classification" (the Dataset.kind it builds)
    description: str  # one human line: what the data is (what a listing prints)
    summary: str  # kind and size in a few words, e.g. "regression, 2 input(s)"
    kan_hidden: tuple[int, ...]  # default hidden widths of a KAN for it; (): a KAN [in, out]
    build: Builder = field(repr=False, compare=False)  # (n_train, n_test, seed, dtype) -> Dataset
    details: tuple[str, ...] = ()  # further lines for describe(): formula, ranges, sizes, source

    def __post_init__(self) -> None:
        registry, sep, short = self.name.partition("/")
        if not (sep and short) or registry not in REGISTRIES:
            raise ValueError(
                f"a registered data set name must be '<registry>/<name>' with a registry in "
                f"{sorted(REGISTRIES)}, got {self.name!r}"
            )
        if self.kind not in KINDS:
            raise ValueError(
                f"data set {self.name!r} has unknown kind {self.kind!r}; valid: {', '.join(KINDS)}"
            )
        if not self.description.strip() or "\n" in self.description:
            raise ValueError(
                f"data set {self.name!r} needs a one-line description, got {self.description!r}"
            )
        hidden = tuple(self.kan_hidden)
        for i, w in enumerate(hidden):
            check_int(f"kan_hidden[{i}] of data set {self.name!r}", w, minimum=1)
        object.__setattr__(self, "kan_hidden", hidden)

    @property
    def registry(self) -> str:
        """The registry the entry comes from: the name's prefix, e.g. "paper"."""
        return self.name.partition("/")[0]

    def describe(self) -> str:
        """A few lines: the summary, the description, the registry, details, the KAN shape."""
        hidden = list(self.kan_hidden)
        lines = (
            self.description,
            f"registry {self.registry}/: {REGISTRIES[self.registry]}",
            *self.details,
            f"default KAN hidden widths: {hidden}" + ("  (no hidden layer)" if not hidden else ""),
        )
        return "\n".join([f"{self.name}: {self.summary}", *(f"  {line}" for line in lines)])
