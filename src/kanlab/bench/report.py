"""Reports from a results store: KAN vs MLP at matched size, Pareto fronts, scaling exponents.

    paths = write_report("kanlab-runs/quick")   # -> report.md, report.html, plots/*.png

Per task: every model configuration aggregated over seeds (test error mean +- std, parameters, FLOPs,
time per training step); the best KAN against the best MLP that was size-matched to it; the Pareto
front of test error vs parameters for each family (log-log PNG); and the scaling exponent alpha of
``error ~ N^-alpha``, a least-squares line in log-log space through the front's points (reported
only with at least three distinct sizes); for KANs trained with grid extension, also alpha along
the grid-extension curve (the error after each grid stage, as in the KAN paper's scaling plots).
The test error is the RMSE for regression and 1 - accuracy
for classification. The HTML page embeds its plots (base64), so it is one self-contained file.

The pure parts (:func:`aggregate`, :func:`pareto_front`, :func:`scaling_exponent`,
:func:`comparisons`) take and return plain data; matplotlib is imported only to draw.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kanlab.bench.identity import distinct_labels
from kanlab.bench.store import ResultStore
from kanlab.config import KANConfig
from kanlab.models import count_params

__all__ = [
    "ConfigStats",
    "ReportFiles",
    "TaskComparison",
    "aggregate",
    "comparisons",
    "pareto_front",
    "scaling_exponent",
    "summary_table",
    "write_report",
]

MIN_SCALING_POINTS = 3


@dataclass(frozen=True)
class ConfigStats:
    """One model configuration of one task, aggregated over its seeds."""

    task: str
    family: str  # "kan" | "mlp"
    label: str
    group: str  # the KAN configuration it is compared within
    metric: str  # "rmse" | "accuracy"
    params: int | None
    flops_dense: int | None
    n_trials: int
    n_ok: int
    n_diverged: int
    n_failed: int
    err_mean: float  # test error over the "ok" seeds (NaN if none)
    err_std: float  # sample standard deviation (0 for one seed)
    time_per_step: float  # seconds, mean over ok seeds
    # KAN with a grid schedule: (parameters at grid G, mean test error) after each grid stage
    stages: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class TaskComparison:
    """The best KAN of a task and the best MLP size-matched to it (either may be missing)."""

    task: str
    metric: str
    kan: ConfigStats | None
    mlp: ConfigStats | None

    @property
    def winner(self) -> str:
        if self.kan is None or self.mlp is None:
            return "n/a"
        if self.kan.err_mean == self.mlp.err_mean:
            return "tie"
        return "KAN" if self.kan.err_mean < self.mlp.err_mean else "MLP"


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    html: Path
    plots: tuple[Path, ...]


# ------------------------------------------------------------------------------------- statistics
def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)


def aggregate(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[ConfigStats]]:
    """Group trial rows (as :meth:`ResultStore.rows` returns them) by task and configuration (the
    configuration minus its seed), and average over seeds. Returns ``{task: [ConfigStats]}``."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        config = dict(row.get("config") or {})
        config.pop("seed", None)
        ident = json.dumps(config, sort_keys=True)
        groups.setdefault((row["task"], ident), []).append(row)
    # sections by the task's data identity, labels that tell apart configs differing in settings
    names = distinct_labels({key: trials[0] for key, trials in groups.items()})
    out: dict[str, list[ConfigStats]] = {}
    for key, trials in sorted(groups.items(), key=lambda kv: kv[0]):
        task, label, group = names[key]
        ok = [t for t in trials if t["status"] == "ok" and _finite(t.get("test_error"))]
        first = ok[0] if ok else trials[0]
        mean, std = _mean_std([float(t["test_error"]) for t in ok])
        tps = [float(t["time_per_step"]) for t in ok if _finite(t.get("time_per_step"))]
        out.setdefault(task, []).append(
            ConfigStats(
                task=task,
                family=first["family"],
                label=label,
                group=group,
                metric=first.get("metric") or "",
                params=first.get("params"),
                flops_dense=first.get("flops_dense"),
                n_trials=len(trials),
                n_ok=len(ok),
                n_diverged=sum(t["status"] == "diverged" for t in trials),
                n_failed=sum(t["status"] == "failed" for t in trials),
                err_mean=mean,
                err_std=std,
                time_per_step=_mean_std(tps)[0],
                stages=_stage_curve(ok),
            )
        )
    for stats in out.values():
        stats.sort(key=lambda s: (s.family, s.params or 0, s.label))
    return out


def _stage_curve(ok: Sequence[Mapping[str, Any]]) -> tuple[tuple[int, float], ...]:
    """Mean test error after each grid stage, over the seeds, with the parameters at that grid."""
    if not ok:
        return ()
    model = (ok[0].get("config") or {}).get("model") or {}
    stages = [(t.get("extra") or {}).get("stages") or [] for t in ok]
    if model.get("family") != "kan" or not stages[0] or len({len(s) for s in stages}) != 1:
        return ()
    classification = ok[0].get("metric") == "accuracy"
    curve = []
    for i, rec in enumerate(stages[0]):
        errs = [s[i]["test_metric"] for s in stages]
        errs = [1.0 - e if classification else e for e in errs if _finite(e)]
        if len(errs) == len(stages) and rec.get("grid"):
            cfg = KANConfig(widths=model["widths"], grid_size=rec["grid"],
                            spline_order=model.get("spline_order", 3))  # fmt: skip
            n = count_params(cfg)
            curve.append((n, _mean_std(errs)[0]))
    return tuple(curve)


def _finite(v: object) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def pareto_front(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (size, error) points no other point beats on both (smaller-or-equal size and lower
    error), sorted by size. Non-finite errors are ignored."""
    pts = sorted((p for p in points if _finite(p[0]) and _finite(p[1])), key=lambda p: (p[0], p[1]))
    front: list[tuple[float, float]] = []
    for size, err in pts:
        # sorted by size, then error: a point is on the front iff it beats every smaller one
        if not front or err < front[-1][1]:
            front.append((size, err))
    return front


def scaling_exponent(points: Sequence[tuple[float, float]]) -> float | None:
    """alpha in ``error ~ size^-alpha``: the least-squares slope of log(error) on log(size), negated.

    ``None`` with fewer than :data:`MIN_SCALING_POINTS` distinct positive sizes (two points always
    fit a line exactly: no evidence of a power law)."""
    pts = [(math.log(s), math.log(e)) for s, e in points if s > 0 and e > 0]
    if len({s for s, _ in pts}) < MIN_SCALING_POINTS:
        return None
    n = len(pts)
    mx = sum(s for s, _ in pts) / n
    my = sum(e for _, e in pts) / n
    sxx = sum((s - mx) ** 2 for s, _ in pts)
    sxy = sum((s - mx) * (e - my) for s, e in pts)
    return -sxy / sxx


def comparisons(
    stats: Mapping[str, Sequence[ConfigStats]], *, tolerance: float = 0.05
) -> list[TaskComparison]:
    """Per task: the KAN configuration with the lowest mean test error, and the best of the MLPs
    matched to it: those of its comparison group, or with a parameter count within ``tolerance``
    of the KAN's (an MLP shared by two KANs of equal final size is stored once, in one group)."""
    out = []
    for task, configs in stats.items():
        kans = [c for c in configs if c.family == "kan" and c.n_ok]
        best_kan = min(kans, key=lambda c: c.err_mean, default=None)
        mlps = [c for c in configs if c.family == "mlp" and c.n_ok]
        if best_kan is not None:
            p = best_kan.params or 0
            mlps = [c for c in mlps if c.group == best_kan.label
                    or (c.params is not None and abs(c.params - p) <= tolerance * p)]  # fmt: skip
        best_mlp = min(mlps, key=lambda c: c.err_mean, default=None)
        metric = configs[0].metric if configs else ""
        out.append(TaskComparison(task=task, metric=metric, kan=best_kan, mlp=best_mlp))
    return out


# ------------------------------------------------------------------------------------- formatting
def _fmt_err(c: ConfigStats | None) -> str:
    if c is None or not c.n_ok:
        return "-"
    return f"{c.err_mean:.3g} ± {c.err_std:.2g}"


def _fmt_int(v: int | None) -> str:
    return "-" if v is None else f"{v:,}"


def _error_name(metric: str) -> str:
    return "1 - accuracy" if metric == "accuracy" else "RMSE"


def _summary_rows(comps: Sequence[TaskComparison]) -> tuple[list[str], list[list[str]]]:
    headers = ["task", "error", "best KAN", "params", "KAN error", "best matched MLP", "params",
               "MLP error", "winner (error ratio)"]  # fmt: skip
    rows = []
    for c in comps:
        ratio = ""
        if c.kan is not None and c.mlp is not None and c.kan.err_mean > 0:
            ratio = (
                f" ({c.mlp.err_mean / c.kan.err_mean:.3g}x)"
                if c.winner == "KAN"
                else (f" ({c.kan.err_mean / c.mlp.err_mean:.3g}x)" if c.mlp.err_mean > 0 else "")
            )
        rows.append([
            c.task, _error_name(c.metric),
            c.kan.label if c.kan else "-", _fmt_int(c.kan.params if c.kan else None), _fmt_err(c.kan),
            c.mlp.label if c.mlp else "-", _fmt_int(c.mlp.params if c.mlp else None), _fmt_err(c.mlp),
            c.winner + ratio,
        ])  # fmt: skip
    return headers, rows


def _config_rows(configs: Sequence[ConfigStats]) -> tuple[list[str], list[list[str]]]:
    headers = ["model", "matched to", "params", "FLOPs (dense)", "test error (mean ± std)",
               "time/step (ms)", "seeds ok", "diverged", "failed"]  # fmt: skip
    rows = [
        [c.label, "" if c.family == "kan" else c.group, _fmt_int(c.params),
         _fmt_int(c.flops_dense), _fmt_err(c),
         "-" if not _finite(c.time_per_step) else f"{c.time_per_step * 1e3:.1f}",
         f"{c.n_ok}/{c.n_trials}", str(c.n_diverged), str(c.n_failed)]
        for c in configs
    ]  # fmt: skip
    return headers, rows


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(headers), line(["---"] * len(headers)), *(line(r) for r in rows)])


def summary_table(rows: Iterable[Mapping[str, Any]]) -> str:
    """The KAN-vs-MLP summary (one line per task) as a Markdown table, from store rows."""
    return _md_table(*_summary_rows(comparisons(aggregate(rows))))


def _html_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _slug(task: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", task).strip("_")


# ------------------------------------------------------------------------------------- plotting
def _best_stage_curve(configs: Sequence[ConfigStats]) -> ConfigStats | None:
    """The KAN with the longest grid-extension curve (lowest final error among equals)."""
    kans = [c for c in configs if c.family == "kan" and len(c.stages) >= 2
            and all(e > 0 for _, e in c.stages)]  # fmt: skip
    if not kans:
        return None
    return min(kans, key=lambda c: (-len(c.stages), c.stages[-1][1]))


def _plot_pareto(task: str, configs: Sequence[ConfigStats], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 3.6), dpi=110)
    FigureCanvasAgg(fig)  # draw off-screen: no pyplot, no global backend change
    ax = fig.add_subplot()
    for family, color in (("kan", "tab:blue"), ("mlp", "tab:orange")):
        pts = [(c.params, c.err_mean) for c in configs
               if c.family == family and c.n_ok and c.params and c.err_mean > 0]  # fmt: skip
        if not pts:
            continue
        ax.scatter(*zip(*pts, strict=True), color=color, alpha=0.35, s=18)
        front = pareto_front(pts)
        alpha = scaling_exponent(front)
        name = family.upper() + (f" (α={alpha:.2f})" if alpha is not None else "")
        ax.plot(*zip(*front, strict=True), "o-", color=color, label=name)
    best = _best_stage_curve(configs)
    if best is not None:
        alpha = scaling_exponent(best.stages)
        name = "KAN grid extension" + (f" (α={alpha:.2f})" if alpha is not None else "")
        ax.plot(*zip(*best.stages, strict=True), "s--", color="tab:green", label=name, ms=4)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters")
    metric = configs[0].metric if configs else ""
    ax.set_ylabel(f"test {_error_name(metric)}")
    ax.set_title(task, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")


# ------------------------------------------------------------------------------------- the report
_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}"
    "th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f3f3f3}"
    "img{max-width:100%}"
)


def write_report(
    source: str | Path | ResultStore, out_dir: str | Path | None = None, *, title: str | None = None
) -> ReportFiles:
    """Build the report from a store (a :class:`ResultStore`, a ``.sqlite`` file or a run
    directory holding ``results.sqlite``) into ``out_dir`` (default: the run directory).

    Writes ``report.md``, ``report.html`` (plots embedded) and ``plots/<task>.png``."""
    if isinstance(source, ResultStore):
        rows = source.rows()
        default_dir = source.path.parent
    else:
        path = Path(source)
        db = path / "results.sqlite" if path.is_dir() else path
        with ResultStore(db, create=False) as store:
            rows = store.rows()
        default_dir = db.parent
    out = Path(out_dir) if out_dir is not None else default_dir
    plots_dir = out / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    stats = aggregate(rows)
    comps = comparisons(stats)
    title = title or f"kanlab: KAN vs MLP ({out.name})"
    n_status = {s: sum(r["status"] == s for r in rows) for s in ("ok", "diverged", "failed")}

    md: list[str] = [f"# {title}", ""]
    hp: list[str] = [f"<h1>{html.escape(title)}</h1>"]
    intro = (
        f"{len(rows)} trials ({n_status['ok']} ok, {n_status['diverged']} diverged, "
        f"{n_status['failed']} failed) on {len(stats)} task(s). Test error: RMSE for regression, "
        "1 - accuracy for classification; mean ± std over seeds. Each MLP was size-matched to a KAN "
        "('matched to') and trained with the same optimiser, step budget, data and seeds."
    )
    md += [intro, "", "## Summary: best KAN vs best MLP at matched parameters", ""]
    md += [_md_table(*_summary_rows(comps)), ""]
    hp += [f"<p>{html.escape(intro)}</p>", "<h2>Summary: best KAN vs best MLP at matched "
           "parameters</h2>", _html_table(*_summary_rows(comps))]  # fmt: skip
    plots: list[Path] = []
    for task, configs in stats.items():
        md += [f"## {task}", ""]
        hp += [f"<h2>{html.escape(task)}</h2>"]
        md += [_md_table(*_config_rows(configs)), ""]
        hp += [_html_table(*_config_rows(configs))]
        lines = []
        for family in ("kan", "mlp"):
            pts = [(c.params, c.err_mean) for c in configs
                   if c.family == family and c.n_ok and c.params and c.err_mean > 0]  # fmt: skip
            front = pareto_front(pts)
            alpha = scaling_exponent(front)
            if not pts:
                continue
            text = (f"alpha = {alpha:.2f} (error ~ N^-alpha over {len(front)} Pareto points)"
                    if alpha is not None else
                    f"alpha: too few points ({len(front)} on the Pareto front, need "
                    f"{MIN_SCALING_POINTS})")  # fmt: skip
            lines.append(f"{family.upper()}: {text}")
        best = _best_stage_curve(configs)
        if best is not None:
            alpha = scaling_exponent(best.stages)
            shape, grids = best.label.split(" G=")
            lines.append(
                f"KAN grid extension ({shape}, grids {grids}; the error after each stage, mean "
                "over seeds): "
                + (f"alpha = {alpha:.2f}" if alpha is not None else
                   f"alpha: too few points ({len(best.stages)} grids, need {MIN_SCALING_POINTS})")
            )  # fmt: skip
        for line in lines:
            md.append(f"- {line}")
        md.append("")
        hp.append("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in lines) + "</ul>")
        if any(c.n_ok and c.params and c.err_mean > 0 for c in configs):
            png = plots_dir / f"{_slug(task)}.png"
            _plot_pareto(task, configs, png)
            plots.append(png)
            md += [f"![Pareto front: {task}](plots/{png.name})", ""]
            data = base64.b64encode(png.read_bytes()).decode("ascii")
            hp.append(f'<img alt="Pareto front: {html.escape(task)}" '
                      f'src="data:image/png;base64,{data}">')  # fmt: skip
    md_path = out / "report.md"
    md_path.write_text("\n".join(md), encoding="utf-8")
    html_path = out / "report.html"
    html_path.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        + "\n".join(hp) + "</body></html>",
        encoding="utf-8",
    )  # fmt: skip
    return ReportFiles(markdown=md_path, html=html_path, plots=tuple(plots))
