"""Reports from a results store: KAN vs MLP at matched size, Pareto fronts, scaling exponents.

    paths = write_report("kanlab-runs/quick")   # -> report.md, report.html, plots/*.png

Per task: every model configuration aggregated over seeds (test error mean, median, std and n over
the seeds that finished, how many seeds diverged or failed, parameters, FLOPs, time per training
step); the best KAN against the best MLP that was size-matched to it; the Pareto
front of test error vs parameters for each family (log-log PNG); and the scaling exponent alpha of
``error ~ N^-alpha``, a least-squares line in log-log space through the front's points (reported
only with at least three distinct sizes); for KANs trained with grid extension, also alpha along
the grid-extension curve (the error after each grid stage, as in the KAN paper's scaling plots).
The test error is the RMSE for regression and 1 - accuracy
for classification. The HTML page embeds its plots (base64), so it is one self-contained file.

Statistics (the rules the summary states in its intro):

- *Seeds that did not finish.* Means, medians and stds are over the seeds whose trial finished
  ("ok"); every configuration also shows how many of its seeds diverged or failed, so nothing is
  dropped silently. The best configuration of a family is chosen among the configurations whose
  seeds *all* finished ok (lowest mean test error); only when a family has none is a partial one
  used, and the summary marks it ("n=2 of 3; 1 diverged").
- *The winner.* The error ratio is the ratio of the two configurations' geometric-mean test errors
  (``10**(mean log10 error)`` over seeds), shown with its 95% confidence interval from Welch's
  t-interval on the difference of the mean log10 errors (seeds of each family are independent
  samples with their own variance; seeds are not paired, since a KAN and an MLP with the same seed
  share no randomness but the data, which is the same for every seed). The winner is named only
  when that interval excludes a ratio of 1; otherwise the row reads "tie", and with fewer than 2
  finished seeds on either side "undecided". Welch rather than a bootstrap: with the 2-5 seeds a
  sweep affords, a percentile bootstrap's interval is far too narrow (it uses the plug-in variance
  and normal quantiles); in simulation under no true difference it names a winner 34% of the time
  with 2 seeds per side and 21% with 3, against 3% and 4% for Welch's interval. Errors are floored
  at :data:`ERROR_FLOOR` before the logarithm (a classifier can reach zero error).
- *Failures.* :func:`failure_reasons` reduces each failed or diverged trial's error text to one line
  (the exception's type and message) and counts each distinct line; the report lists them.

The pure parts (:func:`aggregate`, :func:`pareto_front`, :func:`scaling_exponent`,
:func:`comparisons`, :func:`seed_verdict`, :func:`failure_reasons`) take and return plain data;
matplotlib is imported only to draw, scipy only for the t quantile.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import statistics
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
    "Verdict",
    "aggregate",
    "comparisons",
    "failure_reasons",
    "failure_summary",
    "pareto_front",
    "scaling_exponent",
    "seed_verdict",
    "summary_table",
    "write_report",
]

MIN_SCALING_POINTS = 3
CONFIDENCE = 0.95  # of the error ratio's interval that decides the winner
ERROR_FLOOR = 1e-12  # errors are floored here before log10 (a classifier can reach 0)


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
    err_std: float  # sample standard deviation over the ok seeds (NaN for fewer than two)
    time_per_step: float  # seconds, mean over ok seeds
    # KAN with a grid schedule: (parameters at grid G, mean test error) after each grid stage
    stages: tuple[tuple[int, float], ...] = ()
    err_median: float = math.nan  # median test error over the ok seeds
    errors: tuple[float, ...] = ()  # the ok seeds' test errors (what the winner's test uses)
    nrmse_mean: float = math.nan  # regression: RMSE / std of the training targets, if recorded

    @property
    def complete(self) -> bool:
        """Every seed of the configuration finished ok."""
        return self.n_ok > 0 and self.n_ok == self.n_trials


@dataclass(frozen=True)
class Verdict:
    """KAN vs MLP from their seeds' test errors (see :func:`seed_verdict`)."""

    winner: str  # "KAN" | "MLP" | "tie" | "undecided" (too few seeds) | "n/a" (a side missing)
    better: str  # the family with the lower geometric-mean error ("" when not computed)
    ratio: float  # the other family's geometric-mean error / ``better``'s (>= 1)
    low: float  # CONFIDENCE interval of ``ratio``
    high: float
    n: int  # the fewer finished seeds of the two sides

    def text(self) -> str:
        """The summary's winner cell: "KAN 12.7x [8.1x-19x]", "tie (KAN 1.03x [0.2x-5x])",
        "undecided (n=1)" or "n/a"."""
        if self.winner in ("n/a", "undecided"):
            return self.winner if self.winner == "n/a" else f"undecided (n={self.n})"
        ratio = f"{self.better} {_fmt_x(self.ratio, 3)} [{_fmt_x(self.low)}-{_fmt_x(self.high)}]"
        return ratio if self.winner != "tie" else f"tie ({ratio})"


def _fmt_x(v: float, digits: int = 2) -> str:
    """A ratio as "12.7x", "110x" (no exponent below 10^4) or "1.4e-10x"."""
    if not 1e-3 <= v < 1e4:
        return f"{v:.1e}x"
    text = f"{v:.{digits}g}"
    return (f"{v:.0f}" if "e" in text else text) + "x"


@dataclass(frozen=True)
class TaskComparison:
    """The best KAN of a task and the best MLP size-matched to it (either may be missing)."""

    task: str
    metric: str
    kan: ConfigStats | None
    mlp: ConfigStats | None

    @property
    def verdict(self) -> Verdict:
        if self.kan is None or self.mlp is None:
            return seed_verdict((), ())
        return seed_verdict(self.kan.errors, self.mlp.errors)

    @property
    def winner(self) -> str:
        """The verdict's winner: "KAN", "MLP", "tie" (within seed noise), "undecided" or "n/a"."""
        return self.verdict.winner


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    html: Path
    plots: tuple[Path, ...]


# ------------------------------------------------------------------------------------- statistics
def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN where undefined: no values, or one for the std)."""
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
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
        errors = tuple(float(t["test_error"]) for t in ok)
        mean, std = _mean_std(errors)
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
                # an "ok" row without a finite error (a store written by hand) counts as failed
                n_failed=len(trials) - len(ok) - sum(t["status"] == "diverged" for t in trials),
                err_mean=mean,
                err_std=std,
                time_per_step=_mean_std(tps)[0],
                stages=_stage_curve(ok),
                err_median=statistics.median(errors) if errors else math.nan,
                errors=errors,
                nrmse_mean=_nrmse_mean(ok),
            )
        )
    for stats in out.values():
        stats.sort(key=lambda s: (s.family, s.params or 0, s.label))
    return out


def _nrmse_mean(ok: Sequence[Mapping[str, Any]]) -> float:
    """Mean of ``extra["test_nrmse"]`` over the ok seeds; NaN unless every one records it (stores
    written before kanlab recorded it have none)."""
    values = [(t.get("extra") or {}).get("test_nrmse") for t in ok]
    if not values or not all(_finite(v) for v in values):
        return math.nan
    return sum(values) / len(values)


def _stage_curve(ok: Sequence[Mapping[str, Any]]) -> tuple[tuple[int, float], ...]:
    """Mean test error after each grid stage, over the seeds, with the parameters at that grid
    (none for pruned KANs: their seeds prune to different widths)."""
    if not ok:
        return ()
    config = ok[0].get("config") or {}
    model = config.get("model") or {}
    stages = [(t.get("extra") or {}).get("stages") or [] for t in ok]
    if (
        model.get("family") != "kan"
        or config.get("prune") is not None
        or not stages[0]
        or len({len(s) for s in stages}) != 1
    ):
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


def seed_verdict(
    kan_errors: Sequence[float], mlp_errors: Sequence[float], *, confidence: float = CONFIDENCE
) -> Verdict:
    """Which family has the lower test error, beyond seed noise.

    d = mean(log10 KAN errors) - mean(log10 MLP errors) over each side's seeds (errors floored at
    :data:`ERROR_FLOOR`), with Welch's t-interval d +- t_(df, (1+confidence)/2) * se, where
    se^2 = s_kan^2/n_kan + s_mlp^2/n_mlp and df is the Welch-Satterthwaite estimate. "KAN" if the
    interval lies below 0, "MLP" if above, else "tie"; "undecided" with fewer than 2 errors on
    either side, "n/a" with none. ``ratio`` is 10^|d| with the interval mapped the same way."""
    if not kan_errors or not mlp_errors:
        n = min(len(kan_errors), len(mlp_errors))
        return Verdict("n/a", "", math.nan, math.nan, math.nan, n)
    k = [math.log10(max(e, ERROR_FLOOR)) for e in kan_errors]
    m = [math.log10(max(e, ERROR_FLOOR)) for e in mlp_errors]
    n = min(len(k), len(m))
    if n < 2:
        return Verdict("undecided", "", math.nan, math.nan, math.nan, n)
    d = statistics.fmean(k) - statistics.fmean(m)
    vk, vm = statistics.variance(k) / len(k), statistics.variance(m) / len(m)
    se = math.sqrt(vk + vm)
    if se > 0:
        from scipy.stats import t as student_t

        df = (vk + vm) ** 2 / (vk**2 / (len(k) - 1) + vm**2 / (len(m) - 1))
        half = float(student_t.ppf(0.5 + confidence / 2, df)) * se
    else:  # every seed of both sides gave the same error: no noise to weigh
        half = 0.0
    lo, hi = d - half, d + half
    winner = "KAN" if hi < 0 else "MLP" if lo > 0 else "tie"
    # the better family's advantage: the other's geometric-mean error over its own
    sign = -1.0 if d <= 0 else 1.0
    lo_r, hi_r = sorted((10 ** (sign * lo), 10 ** (sign * hi)))
    return Verdict(winner, "KAN" if d <= 0 else "MLP", 10 ** abs(d), lo_r, hi_r, n)


def _best(configs: Iterable[ConfigStats]) -> ConfigStats | None:
    """The lowest mean error among the configurations whose seeds all finished ok; among those
    with some finished seed only if there is none (the table then marks it as partial)."""
    finished = [c for c in configs if c.n_ok]
    complete = [c for c in finished if c.complete]
    return min(complete or finished, key=lambda c: c.err_mean, default=None)


def comparisons(
    stats: Mapping[str, Sequence[ConfigStats]], *, tolerance: float = 0.05
) -> list[TaskComparison]:
    """Per task: the best KAN configuration (:func:`_best`: lowest mean test error, preferring
    configurations whose seeds all finished), and the best (the same way) of the MLPs matched to
    it: those of its comparison group, or with a parameter count within ``tolerance`` of the
    KAN's (an MLP shared by two KANs of equal final size is stored once, in one group)."""
    out = []
    for task, configs in stats.items():
        best_kan = _best(c for c in configs if c.family == "kan")
        mlps = [c for c in configs if c.family == "mlp" and c.n_ok]
        if best_kan is not None:
            p = best_kan.params or 0
            mlps = [c for c in mlps if c.group == best_kan.label
                    or (c.params is not None and abs(c.params - p) <= tolerance * p)]  # fmt: skip
        best_mlp = _best(mlps)
        metric = configs[0].metric if configs else ""
        out.append(TaskComparison(task=task, metric=metric, kan=best_kan, mlp=best_mlp))
    return out


_MAX_REASON = 300  # characters of one failure reason
_STEP_NUMBER = re.compile(r"\b(steps?) \d+\b")


def _reason(row: Mapping[str, Any]) -> str:
    """One line for a failed or diverged trial: the exception's type and message (the first
    unindented line after the traceback's last frame), step numbers replaced by N (so seeds that
    diverged at different steps share a line); a diverged trial's line starts "diverged: "."""
    lines = str(row.get("error") or "").splitlines()
    last_frame = max((i for i, x in enumerate(lines) if x.startswith("  File ")), default=-1)
    line = next((x.strip() for x in lines[last_frame + 1 :] if x.strip() and not x[0].isspace()),
                "")  # fmt: skip
    line = _STEP_NUMBER.sub(r"\1 N", line) or "no error message recorded"
    if row.get("status") == "diverged":
        line = f"diverged: {line}"
    return line if len(line) <= _MAX_REASON else line[: _MAX_REASON - 3] + "..."


def failure_reasons(rows: Iterable[Mapping[str, Any]]) -> list[tuple[str, int]]:
    """Each distinct reason (see :func:`_reason`) why trials failed or diverged, with its count,
    most frequent first: e.g. ``[("ValueError: need at least 2 rows", 12)]``."""
    counts: dict[str, int] = {}
    for row in rows:
        if row.get("status") != "ok":
            reason = _reason(row)
            counts[reason] = counts.get(reason, 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def failure_summary(rows: Iterable[Mapping[str, Any]]) -> str:
    """The lines printed after the summary table: how many trials failed or diverged and each
    distinct reason with its count ("" when every trial finished)::

        12 of 24 trials did not finish (12 failed, 0 diverged); reasons:
          ValueError: need at least 2 rows (12)
    """
    rows = list(rows)
    n_failed = sum(r.get("status") == "failed" for r in rows)
    n_diverged = sum(r.get("status") == "diverged" for r in rows)
    reasons = failure_reasons(rows)
    if not reasons:
        return ""
    n_bad = sum(n for _, n in reasons)
    head = (f"{n_bad} of {len(rows)} trials did not finish ({n_failed} failed, "
            f"{n_diverged} diverged); reasons:")  # fmt: skip
    return "\n".join([head, *(f"  {reason} ({n})" for reason, n in reasons)])


# ------------------------------------------------------------------------------------- formatting
def _fmt_mean_std(c: ConfigStats) -> str:
    """Mean ± std over the ok seeds; the mean alone for one seed (its spread is unknown)."""
    if not c.n_ok:
        return "-"
    return f"{c.err_mean:.3g}" + (f" ± {c.err_std:.2g}" if c.n_ok >= 2 else "")


def _fmt_err(c: ConfigStats | None) -> str:
    """The summary's error cell: "0.012 ± 0.003 (n=3)", "0.172 (n=1 of 2; 1 diverged)"."""
    if c is None:
        return "-"
    lost = [f"{k} {what}" for k, what in ((c.n_diverged, "diverged"), (c.n_failed, "failed")) if k]
    n = f"n={c.n_ok}" if c.complete else f"n={c.n_ok} of {c.n_trials}; " + ", ".join(lost)
    return f"{_fmt_mean_std(c)} ({n})"


def _fmt_float(v: float) -> str:
    return f"{v:.3g}" if _finite(v) else "-"


def _fmt_int(v: int | None) -> str:
    return "-" if v is None else f"{v:,}"


def _error_name(metric: str) -> str:
    return "1 - accuracy" if metric == "accuracy" else "RMSE"


def _has_nrmse(configs: Iterable[ConfigStats | None]) -> bool:
    return any(c is not None and _finite(c.nrmse_mean) for c in configs)


def _summary_rows(comps: Sequence[TaskComparison]) -> tuple[list[str], list[list[str]]]:
    nrmse = _has_nrmse(x for c in comps for x in (c.kan, c.mlp))
    headers = ["task", "error", "best KAN", "params", "KAN error: mean ± std (n)", "median",
               "best matched MLP", "params", "MLP error: mean ± std (n)", "median",
               *(["nRMSE (KAN / MLP)"] if nrmse else []),
               f"winner: error ratio [{CONFIDENCE:.0%} CI]"]  # fmt: skip
    rows = []
    for c in comps:
        k, m = c.kan, c.mlp
        row = [
            c.task, _error_name(c.metric),
            k.label if k else "-", _fmt_int(k.params if k else None), _fmt_err(k),
            _fmt_float(k.err_median) if k else "-",
            m.label if m else "-", _fmt_int(m.params if m else None), _fmt_err(m),
            _fmt_float(m.err_median) if m else "-",
        ]  # fmt: skip
        if nrmse:
            row.append(" / ".join(_fmt_float(x.nrmse_mean) if x else "-" for x in (k, m)))
        rows.append([*row, c.verdict.text()])
    return headers, rows


def _config_rows(configs: Sequence[ConfigStats]) -> tuple[list[str], list[list[str]]]:
    nrmse = _has_nrmse(configs)
    headers = ["model", "matched to", "params", "FLOPs (dense)", "test error: mean ± std",
               "median", *(["nRMSE"] if nrmse else []), "time/step (ms)", "seeds ok", "diverged",
               "failed"]  # fmt: skip
    rows = [
        [c.label, "" if c.family == "kan" else c.group, _fmt_int(c.params),
         _fmt_int(c.flops_dense), _fmt_mean_std(c), _fmt_float(c.err_median),
         *([_fmt_float(c.nrmse_mean)] if nrmse else []),
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
        f"{n_status['failed']} failed) on {len(stats)} task(s). Test error: RMSE for regression "
        "(in the data's own units; nRMSE, where recorded, is the RMSE over the std of the training "
        "targets), 1 - accuracy for classification; mean ± std, median and n over the seeds that "
        "finished (diverged and failed seeds are counted, never averaged in). Each MLP was "
        "size-matched to a KAN ('matched to') and trained with the same optimiser, step budget, "
        "data and seeds. The best configuration of a family has the lowest mean error among those "
        "whose seeds all finished; 'n=k of m' marks one chosen although some of its seeds did not "
        "finish (no configuration of its family finished all of them). The error ratio is that of "
        f"the geometric-mean errors, with its {CONFIDENCE:.0%} confidence interval (Welch's "
        "t-interval on the difference of the mean log10 errors over seeds); the winner is named only "
        "when the interval excludes 1, otherwise 'tie'; 'undecided' with fewer than 2 finished "
        "seeds on a side."
    )
    md += [intro, "", "## Summary: best KAN vs best MLP at matched parameters", ""]
    md += [_md_table(*_summary_rows(comps)), ""]
    hp += [f"<p>{html.escape(intro)}</p>", "<h2>Summary: best KAN vs best MLP at matched "
           "parameters</h2>", _html_table(*_summary_rows(comps))]  # fmt: skip
    reasons = failure_reasons(rows)
    if reasons:
        head = f"Trials that failed or diverged ({sum(n for _, n in reasons)} of {len(rows)})"
        md += [f"## {head}", ""]
        md += [f"- `{reason.replace('`', chr(39))}` ({n})" for reason, n in reasons] + [""]
        items = "".join(f"<li><code>{html.escape(r)}</code> ({n})</li>" for r, n in reasons)
        hp += [f"<h2>{html.escape(head)}</h2>", f"<ul>{items}</ul>"]
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
