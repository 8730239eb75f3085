"""What every paper experiment shares: its table, its resumable units, its report.

An experiment's result is a :class:`PaperTable`: one row per item (a function, a peak, a model), with
kanlab's figure and the KAN paper's published one side by side (formatted cells), the settings it ran
with, its wall time and the machine. :func:`write_paper_report` writes it as ``report.md`` and
``report.html`` (the figure embedded) into the experiment's folder.

Resuming: an experiment that is a sweep of trials runs them with
:func:`kanlab.bench.runner.run_trials` (which skips the trials already in the store); one that is not
(continual, pde) stores each finished *unit* (one model trained through one setting) with
:func:`cached_unit`, in the same SQLite store (its ``trials`` table, ``task = "paper/<experiment>"``),
under a key that hashes the unit's exact settings and the kanlab version: a re-run finds it and
trains nothing.
"""

from __future__ import annotations

import base64
import contextlib
import html
import math
import os
import platform
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kanlab import __version__
from kanlab.bench.store import ResultStore, config_key

__all__ = [
    "KAN_HEADERS",
    "LIKE_FOR_LIKE",
    "PaperTable",
    "PaperTally",
    "UnitCounter",
    "cached_unit",
    "fmt",
    "kernel_backend",
    "machine",
    "md_table",
    "new_figure",
    "open_store",
    "write_paper_report",
]


@dataclass(frozen=True)
class PaperTable:
    """One experiment's result: kanlab's figures beside the published ones.

    ``headers``/``rows``: the table (formatted cells; every row as long as ``headers``);
    ``settings``: what was run (sizes, steps, seeds); ``notes``: findings and caveats, one line each
    (goals met or not, where the comparison is not like for like); ``units_run``/``units_reused``:
    units trained in this call / found finished in the store (a resumed run: ``units_run == 0``)."""

    experiment: str  # "continual", "pde", "scaling", "special", "feynman"
    title: str
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    settings: Mapping[str, Any]
    wall_time: float  # seconds, this call
    machine: str
    notes: tuple[str, ...] = ()
    units_run: int = 0
    units_reused: int = 0
    report: Path | None = None  # report.md, once written
    figures: tuple[Path, ...] = field(default=())

    def markdown(self) -> str:
        """The table as Markdown (what the CLI prints)."""
        return md_table(self.headers, self.rows)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(headers), line(["---"] * len(headers)), *(line(r) for r in rows)])


def fmt(v: float | None, digits: int = 3) -> str:
    """A number cell: ``1.23e-04``-style significant digits, ``-`` for None/NaN."""
    if v is None or not isinstance(v, int | float) or not math.isfinite(v):
        return "-"
    return f"{v:.{digits}g}"


def machine() -> str:
    """The machine in one line: CPU, cores, OS, Python and torch versions."""
    import torch

    cpu = platform.processor() or platform.machine()
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, torch {torch.__version__}, kanlab {__version__}"
    )


def open_store(store: ResultStore | str | Path | None, out: Path) -> tuple[ResultStore, bool]:
    """``(store, owned)``: the given store, or ``out/results.sqlite`` (``owned``: close it after)."""
    if isinstance(store, ResultStore):
        return store, False
    path = Path(store) if store is not None else Path(out) / "results.sqlite"
    return ResultStore(path), True


def check_sizes(seeds: int, steps: int | None, default: int) -> int:
    """Refuse ``seeds < 1`` and ``steps < 1``; -> ``steps``, ``default`` when None."""
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    steps = steps if steps is not None else default
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return steps


def run_paper_trials(
    trials: Sequence[Any],
    store: ResultStore | str | Path | None,
    out: Path,
    *,
    executor: str,
    progress: bool,
    read: Sequence[Any] | None = None,
) -> tuple[Any, list[dict[str, Any]]]:
    """Run ``trials`` (skipping those the store holds) on ``executor``; -> ``(summary, rows)``,
    the store's rows of exactly these trials, or of ``read`` (a superset: a run of part of a
    protocol reads back what earlier parts left in the store)."""
    from kanlab.bench.runner import make_executor, run_trials

    db, owned = open_store(store, out)
    try:
        with make_executor(executor) as ex:
            summary = run_trials(trials, db, ex, progress=progress)
        keys = {t.key for t in (trials if read is None else read)}
        rows = [r for r in db.rows() if r["key"] in keys]
    finally:
        if owned:
            db.close()
    return summary, rows


FAMILIES = ("kan", "mlp")
MLP_WIDTHS = (5, 100)  # the MLP widths of the paper's Tables 1 and 2
# The KANs' grid margin (FitConfig.grid_margin), fixed a priori from the scaling experiment
# (kanlab.bench.paper.scaling): grids placed exactly on the training range leave test points just
# outside it (of an input or of a hidden node's value) on a fine grid's end pieces.
GRID_MARGIN = 0.01
FULL_DEPTHS = (2, 3, 4, 5, 6)  # their model depths (layers), KAN and MLP
PRUNE_LAMBDAS = (1e-2, 1e-3)  # their pruned KANs' sparsity weights


@dataclass(frozen=True)
class TableProtocol:
    """The sweep of the paper's Tables 1 and 2 as kanlab runs them.

    Full size: KANs of width 5 and depth 2-6 (1-5 hidden layers) trained with LBFGS over the grid
    schedule G = 3, 5, 10, 20, 50, 100, 200 (``steps`` per grid), MLPs of widths 5 and 100 and
    depth 2-6 trained for as many steps in total, every model on every seed, in float64 (the
    paper's best KANs reach ~2e-7 RMSE, at float32's rounding). Every KAN shape is also trained
    *pruned*, once per sparsity weight in ``prune_lambdas`` (the paper's 1e-2 and 1e-3): ``steps``
    steps at G = 3 with the regulariser, :func:`kanlab.prune`, then the same grid schedule
    (:class:`~kanlab.config.PruneConfig`, :func:`kanlab.bench.runner.run_trial`). Quick: KAN
    [n,5,1] over G = 3, 5, 10, pruned with 1e-2 too, and the MLPs [n,5,5,1], [n,100,100,1], in
    torch's default dtype.

    The KANs' grid updates and extensions place the grid 1% of the data's range beyond it
    (``FitConfig.grid_margin``, :data:`GRID_MARGIN`), as the scaling experiment does and for its
    reason: with the grid exactly on the training range, the few test points just outside it (of an
    input or of a hidden node's value) meet the fine grid's end pieces, where a B-spline falls
    steeply past the grid's end, and the test RMSE rose from G = 20-50 to G = 200 while the other
    test points kept improving (measured: README, "Special functions")."""

    steps: int  # LBFGS steps per grid stage (the MLPs: steps * number of stages)
    grids: tuple[int, ...]
    hidden: tuple[tuple[int, ...], ...]  # KAN hidden widths
    mlp_widths: tuple[tuple[int, ...], ...]  # MLP hidden widths
    dtype: str | None = None  # both families' dtype (None: torch's default)
    prune_lambdas: tuple[float, ...] = ()  # sparsity weights of the pruned KANs (one arm each)

    @classmethod
    def of(
        cls,
        *,
        quick: bool,
        steps: int,
        depths: Sequence[int] | None = None,
        mlp_widths: Sequence[int] | None = None,
        prune_lambdas: Sequence[float] | None = None,
    ) -> TableProtocol:
        """The quick or full protocol, narrowed to the model ``depths`` (layers, 2-6; full size only)
        both families keep, the MLP widths ``mlp_widths`` (5, 100) and the pruned KANs' sparsity
        weights ``prune_lambdas`` (some of the size's own; ``()``: no pruned KANs) it keeps (None:
        all). A narrowed protocol's trials are the full one's (same keys): its store resumes into
        it."""
        if mlp_widths is not None:
            mlp_widths = tuple(mlp_widths)
            if not mlp_widths or any(
                isinstance(w, bool) or w not in MLP_WIDTHS for w in mlp_widths
            ):
                raise ValueError(f"mlp_widths must be some of {MLP_WIDTHS}, got {mlp_widths!r}")
        if quick:
            if depths is not None:
                raise ValueError(
                    f"depths is for the full size (quick has fixed depths), got {depths!r}"
                )
            proto = cls(steps=steps, grids=(3, 5, 10), hidden=((5,),),
                        mlp_widths=((5, 5), (100, 100)), prune_lambdas=(1e-2,))  # fmt: skip
        else:
            depths = tuple(FULL_DEPTHS if depths is None else depths)
            if not depths or any(isinstance(d, bool) or d not in FULL_DEPTHS for d in depths):
                raise ValueError(f"depths must be some of {FULL_DEPTHS}, got {depths!r}")
            layers = sorted(set(depths))
            proto = cls(
                steps=steps,
                grids=(3, 5, 10, 20, 50, 100, 200),
                hidden=tuple((5,) * (d - 1) for d in layers),
                mlp_widths=tuple((w,) * (d - 1) for w in MLP_WIDTHS for d in layers),
                dtype="float64",
                prune_lambdas=PRUNE_LAMBDAS,
            )
        if prune_lambdas is not None:
            lambdas = tuple(prune_lambdas)
            if any(isinstance(v, bool) or v not in proto.prune_lambdas for v in lambdas):
                raise ValueError(
                    f"prune_lambdas must be some of {proto.prune_lambdas} at this size, "
                    f"got {lambdas!r}"
                )
            proto = replace(proto, prune_lambdas=tuple(v for v in proto.prune_lambdas
                                                       if v in lambdas))  # fmt: skip
        if mlp_widths is None:
            return proto
        kept = tuple(w for w in proto.mlp_widths if w[0] in mlp_widths)
        return replace(proto, mlp_widths=kept)

    def narrowed(self, *, quick: bool) -> str:
        """How this protocol is narrower than its size's whole one ("" when it is not)."""
        whole = TableProtocol.of(quick=quick, steps=self.steps)
        parts = []
        if self.prune_lambdas != whole.prune_lambdas:
            parts.append(f"pruned KANs with lamb {', '.join(map(str, self.prune_lambdas)) or 'none'}"
                         f" (whole protocol: {', '.join(map(str, whole.prune_lambdas))})")  # fmt: skip
        if self.hidden != whole.hidden:
            parts.append(f"KAN/MLP depths {', '.join(str(len(h) + 1) for h in self.hidden)} "
                         f"(whole protocol: {', '.join(str(len(h) + 1) for h in whole.hidden)})")  # fmt: skip
        if {w[0] for w in self.mlp_widths} != {w[0] for w in whole.mlp_widths}:
            widths = sorted({w[0] for w in self.mlp_widths})
            parts.append(f"MLP widths {', '.join(map(str, widths))} only (whole protocol: "
                         f"{', '.join(map(str, MLP_WIDTHS))})")  # fmt: skip
        return "; ".join(parts)

    def trials(self, task: Any, n_in: int, seeds: int, data: Any) -> list[Any]:
        """Every KAN (unpruned, then pruned per ``prune_lambdas``) and MLP of the protocol on
        ``task`` (``n_in`` inputs), seeds 0..seeds-1."""
        from kanlab.bench.sweep import Trial
        from kanlab.config import FitConfig, KANConfig, MLPConfig, PruneConfig

        grids, steps = self.grids, self.steps
        kan_fit = FitConfig(steps=steps, grid_schedule=grids, log_every=steps, progress=False,
                            grid_margin=GRID_MARGIN)  # fmt: skip
        total = steps * len(grids)
        mlp_fit = FitConfig(steps=total, log_every=total, progress=False)
        trials = []
        for seed in range(seeds):
            for h in self.hidden:
                kan = KANConfig(widths=(n_in, *h, 1), grid_size=grids[0], dtype=self.dtype)
                trials.append(Trial(task=task, model=kan, fit=kan_fit, seed=seed, data=data))
                for lamb in self.prune_lambdas:
                    trials.append(Trial(task=task, model=kan, fit=kan_fit, seed=seed, data=data,
                                        prune=PruneConfig(lamb=lamb, steps=steps)))  # fmt: skip
            for w in self.mlp_widths:
                mlp = MLPConfig(widths=(n_in, *w, 1), dtype=self.dtype)
                trials.append(Trial(task=task, model=mlp, fit=mlp_fit, seed=seed, data=data))
        return trials


def check_families(families: Sequence[str] | str) -> tuple[str, ...]:
    """Refuse an unknown family (naming it); -> the families as a tuple."""
    families = (families,) if isinstance(families, str) else tuple(families)
    if not families or any(f not in FAMILIES for f in families):
        raise ValueError(f"families must be some of {FAMILIES}, got {families!r}")
    return families


@dataclass(frozen=True)
class FamilyResult:
    """One family on one item of a table, read from the store.

    ``expected``/``finished``: the protocol's trials of this family on this item / those finished
    in the store. Only a complete family (``finished == expected``) has figures: a part of a sweep
    could name a wrong best model. ``best_min`` is the paper's figure (the lowest test error of any
    model over every configuration and seed: a minimum, selected on the test set as the paper
    does), ``best_mean`` the configuration of lowest mean error over seeds (what the verdict
    weighs). ``best_stage`` is the lowest test error after *any* grid stage of any trial: each
    stage's model is a point of the paper's Pareto plots (its Figure 8: test RMSE against
    parameters, one point per shape and grid), and its tables' best KAN is the lowest of them;
    ``best_min`` counts each trial's final grid only."""

    family: str
    expected: int
    finished: int
    best_min: float | None = None
    best_min_label: str = ""
    best_mean: Any = None  # ConfigStats of the lowest mean error
    best_stage: float | None = None
    best_stage_label: str = ""  # the trial's label, its grid and seed (a pruned one's widths)

    @property
    def complete(self) -> bool:
        return self.expected > 0 and self.finished == self.expected

    def status(self) -> str:
        """ "" when complete, else "not measured" or "partial (k of n trials)"."""
        if self.complete:
            return ""
        if self.finished == 0:
            return "not measured"
        return f"partial ({self.finished} of {self.expected} trials)"

    def min_cells(self) -> tuple[str, str]:
        """(label, error) of the like-for-like figure, or the status twice."""
        if not self.complete or self.best_min is None:
            return (self.status() or "no finished model", "-")
        return (self.best_min_label, fmt(self.best_min))

    def stage_cells(self) -> tuple[str, str]:
        """(label, error) of :attr:`best_stage`, or the status and "-"."""
        if not self.complete or self.best_stage is None:
            return (self.status() or "no finished model", "-")
        return (self.best_stage_label, fmt(self.best_stage))

    def mean_cells(self) -> tuple[str, str]:
        """(label, "mean ± std") of the lowest-mean configuration, or the status and "-"."""
        c = self.best_mean
        if not self.complete or c is None:
            return (self.status() or "no finished model", "-")
        std = f" ± {c.err_std:.2g}" if c.n_ok >= 2 else ""
        return (c.label, fmt(c.err_mean) + std)


def family_results(
    trials: Sequence[Any], rows: Sequence[Mapping[str, Any]], configs: Sequence[Any]
) -> dict[str, FamilyResult]:
    """Family -> :class:`FamilyResult` of one item: ``trials`` its protocol's trials, ``rows`` the
    store's rows (any), ``configs`` :func:`kanlab.bench.report.aggregate`'s configurations of it."""
    done = {r["key"] for r in rows}
    out = {}
    for fam in FAMILIES:
        mine = [t for t in trials if t.family == fam]
        finished = sum(t.key in done for t in mine)
        ok = [c for c in configs if c.family == fam and c.n_ok]
        res = FamilyResult(fam, len(mine), finished)
        if res.complete and ok:
            best = min(ok, key=lambda c: min(c.errors))
            res = replace(res, best_min=min(best.errors), best_min_label=best.label,
                          best_mean=min(ok, key=lambda c: c.err_mean))  # fmt: skip
            keys = {t.key for t in mine}
            stage = _best_stage([r for r in rows if r["key"] in keys and r["status"] == "ok"])
            if stage is not None:
                res = replace(res, best_stage=stage[0], best_stage_label=stage[1])
        out[fam] = res
    return out


def _best_stage(rows: Sequence[Mapping[str, Any]]) -> tuple[float, str] | None:
    """(error, label) of the lowest test error after any grid stage of ``rows`` (store rows of a
    regression task; a row without stages counts its final error)."""
    best: tuple[float, str] | None = None
    for r in rows:
        extra = r.get("extra") or {}
        stages = extra.get("stages") or [{"grid": None, "test_metric": r.get("test_error")}]
        pruned = (extra.get("prune") or {}).get("widths")
        for st in stages:
            err = st.get("test_metric")
            if not isinstance(err, int | float) or not math.isfinite(err):
                continue
            if best is None or err < best[0]:
                where = f" at G={st['grid']}" if st.get("grid") else ""
                to = f", pruned to [{','.join(map(str, pruned))}]" if pruned else ""
                best = (float(err), f"{r['label']}{where}{to}, seed {r['seed']}")
    return best


# The notes' line of the Tables 1 and 2 on which figures are compared with the paper's.
LIKE_FOR_LIKE = (
    "like for like: 'best KAN' and 'best MLP' are, as in the paper, the lowest test RMSE of any "
    "model over every configuration (pruned or not) and seed (a minimum selected on the test "
    "set); 'mean over seeds' is the configuration of lowest mean (final grid), which the "
    "verdict weighs"
)

# The KAN columns of the Tables 1 and 2 (:meth:`PaperTally.cells`).
KAN_HEADERS = (
    "kanlab best KAN (min over seeds, depths, pruning and grid stages)", "test RMSE",
    "kanlab best KAN (final grid only)", "test RMSE", "paper best KAN",
    "KAN <= paper (any stage / final grid)",
)  # fmt: skip


@dataclass
class PaperTally:
    """How many rows of a Table 1/2 have kanlab's best KAN at or below the paper's best KAN: taking
    every grid stage's model as a candidate (``stage``: the paper's Pareto-plot selection, what
    the issue's goal is judged on), and each trial's final grid only (``final``)."""

    stage: int = 0
    final: int = 0
    judged: int = 0

    def cells(self, kan: FamilyResult, paper_best: float) -> tuple[str, ...]:
        """The row's :data:`KAN_HEADERS` cells for ``kan`` against ``paper_best``; counts the row
        when the family is complete."""
        head = (*kan.stage_cells(), *kan.min_cells(), fmt(paper_best))
        if kan.best_stage is None or kan.best_min is None:
            return (*head, kan.status() or "no finished model")
        at_stage, at_final = kan.best_stage <= paper_best, kan.best_min <= paper_best
        self.stage, self.final = self.stage + at_stage, self.final + at_final
        self.judged += 1
        return (*head, f"{'yes' if at_stage else 'no'} / {'yes' if at_final else 'no'}")

    def note(self, noun: str, total: int, goal: str = "", *, final_grid: int) -> str:
        """The notes' line on the count (``goal``: appended in parentheses; ``final_grid``: the
        schedule's last grid)."""
        return (
            f"kanlab's best KAN at or below the paper's best KAN on {self.stage} of {self.judged} "
            f"{noun}(s) measured, of {total}{f' ({goal})' if goal else ''}, taking the model after "
            f"every grid stage as a candidate (the paper's selection: each shape and grid is a "
            f"point of its Pareto plots, Figure 8, and the table gives the lowest); "
            f"on {self.final} with each trial's final grid (G = {final_grid}) only"
        )


def verdict_cell(results: Mapping[str, FamilyResult]) -> str:
    """:func:`kanlab.bench.report.seed_verdict` of the two lowest-mean configurations, or which
    family is not (fully) measured."""
    from kanlab.bench.report import seed_verdict

    missing = [f"{f.upper()} {r.status()}" for f, r in results.items() if not r.complete]
    if missing:
        return "; ".join(missing)
    k, m = results["kan"].best_mean, results["mlp"].best_mean
    return seed_verdict(k.errors if k else (), m.errors if m else ()).text()


@dataclass
class UnitCounter:
    """How many units a call trained and how many it found finished."""

    run: int = 0
    reused: int = 0


def cached_unit(
    store: ResultStore,
    experiment: str,
    settings: Mapping[str, Any],
    compute: Callable[[], Mapping[str, Any]],
    *,
    counter: UnitCounter | None = None,
    label: str = "",
    family: str = "kan",
    seed: int = 0,
) -> dict[str, Any]:
    """The result of one unit of ``experiment`` with these exact ``settings`` (JSON-able): read from
    ``store`` if a previous run finished it, else ``compute()`` (a JSON-able dict), committed at once.

    The key hashes ``experiment``, ``settings`` and the kanlab version, so a unit is never stored
    twice and a changed setting is a new unit."""
    config = {"paper": experiment, "settings": dict(settings), "kanlab_version": __version__}
    key = config_key(config)
    if key in store.finished_keys():
        found = [r for r in store.rows(task=f"paper/{experiment}") if r["config"] == config]
        if found:
            if counter is not None:
                counter.reused += 1
            return dict(found[0]["extra"] or {})
    start = time.perf_counter()
    result = dict(compute())
    wall = time.perf_counter() - start
    store.put(key, {
        "task": f"paper/{experiment}", "family": family, "label": label or experiment,
        "seed": seed, "status": "ok", "config": config, "extra": result, "wall_time": wall,
        "kanlab_version": __version__,
    })  # fmt: skip
    if counter is not None:
        counter.run += 1
    return result


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}"
    "th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f3f3f3}"
    "img{max-width:100%}"
)


def write_paper_report(
    table: PaperTable, out: Path, *, intro: str = "", details: Sequence[str] = ()
) -> PaperTable:
    """Write ``out/report.md`` and ``out/report.html`` (figures embedded); -> ``table`` with
    ``report`` set. ``table.figures`` must already lie in ``out``; ``details``: more Markdown
    blocks after the notes (shown as preformatted text in the HTML)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = ", ".join(f"{k}={v}" for k, v in table.settings.items())
    meta = (
        f"Wall time {table.wall_time:.1f} s on {table.machine}; units trained now "
        f"{table.units_run}, found finished in the store {table.units_reused}."
    )
    md = [f"# {table.title}", "", *([intro, ""] if intro else []), f"Settings: {settings}.", "",
          meta, "", table.markdown(), ""]  # fmt: skip
    md += [f"- {n}" for n in table.notes] + ([""] if table.notes else [])
    for block in details:
        md += [block, ""]
    md += [f"![{p.stem}]({p.name})" for p in table.figures]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in table.rows
    )
    imgs = "".join(
        f'<img alt="{html.escape(p.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode("ascii")}">'
        for p in table.figures
    )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in table.notes)
    notes += "".join(f"<pre>{html.escape(b)}</pre>" for b in details)
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(table.title)}"
        f"</title><style>{_CSS}</style></head><body><h1>{html.escape(table.title)}</h1>"
        f"<p>{html.escape(intro)}</p><p>Settings: {html.escape(settings)}.</p>"
        f"<p>{html.escape(meta)}</p><table><thead><tr>{head}</tr></thead><tbody>{body}"
        f"</tbody></table><ul>{notes}</ul>{imgs}</body></html>"
    )
    md_path = out / "report.md"
    md_path.write_text("\n".join(md) + "\n", encoding="utf-8")
    (out / "report.html").write_text(page, encoding="utf-8")
    return replace(table, report=md_path)


@contextlib.contextmanager
def kernel_backend(name: str) -> Iterator[None]:
    """Within: kanlab's spline kernels forced to backend ``name`` (the previous choice restored)."""
    from kanlab.kernels.backends import get_backend, set_backend

    before = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(before)


def new_figure(width: float = 5.5, height: float = 3.8) -> Any:
    """A matplotlib Figure drawn off-screen (no pyplot, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig
