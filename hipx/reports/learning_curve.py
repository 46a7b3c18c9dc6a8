"""The learning curve in a cross-validation report: its figure for ``cv_report.html`` and its tables for
``cv_report.md``. Nothing here computes a statistic: the points come from the cross-validation, the fit,
its band and the verdict from :func:`hipx.stats.learning_curve.extrapolate`.

    from hipx.reports import learning_curve as lc_report
    png = lc_report.figure(points, baseline_points, fit)             # PNG bytes
    text = lc_report.table_markdown(points, baseline_points, fit)    # Markdown for cv_report.md
    blocks = lc_report.report_blocks(points, baseline_points, fit)   # the same, as report blocks

A point is a mapping with ``n_patients``, ``auc`` and either ``low`` and ``high`` (its 95 % CI) or ``se``;
``fit`` is :func:`extrapolate`'s dict (or None: points only).
"""
from __future__ import annotations

import io
import math
from typing import Any, Mapping, Sequence

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

__all__ = ["figure", "report_blocks", "table_markdown"]

# The colours of the network and the clinical baseline in every report figure (hipx/reports/render.py's
# NET and BASE), kept here as values so that this module does not depend on render.py while it moves.
NET, BASE = "#1f5fa8", "#d9730d"
_Z95 = 1.959963984540054


def _interval(p: Mapping[str, Any]) -> tuple[float, float]:
    """(low, high) of a point: its own interval, else auc -/+ 1.96 se."""
    if p.get("low") is not None and p.get("high") is not None:
        return float(p["low"]), float(p["high"])
    se = float(p.get("se", math.nan))
    return float(p["auc"]) - _Z95 * se, float(p["auc"]) + _Z95 * se


def _n(p: Mapping[str, Any]) -> float:
    return float(p.get("n_patients", p.get("n")))


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _with_ci(p: Mapping[str, Any] | None) -> str:
    if p is None:
        return "n/a"
    low, high = _interval(p)
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"{_fmt(float(p['auc']))} (CI n/a)"
    return f"{_fmt(float(p['auc']))} ({_fmt(low)} to {_fmt(high)})"


def _draw(ax, points: Sequence[Mapping[str, Any]], fit: Mapping[str, Any] | None, colour: str, name: str,
          marker: str, dodge: float = 1.0) -> None:
    points = sorted(points, key=_n)
    xs = [_n(p) * dodge for p in points]
    ys = [float(p["auc"]) for p in points]
    lows, highs = zip(*(_interval(p) for p in points)) if points else ((), ())
    err = [[y - lo for y, lo in zip(ys, lows)], [hi - y for y, hi in zip(ys, highs)]]
    # without a fit the points are joined, so that the baseline's curve reads as one
    ax.errorbar(xs, ys, yerr=err, fmt=marker if fit else f"{marker}-", color=colour, ms=5, capsize=3, lw=1.2,
                label=f"{name}: pooled AUC (95 % CI)", zorder=3)
    if fit:
        band = fit["band"]
        ax.plot(band["n_patients"], band["auc"], color=colour, lw=1.6,
                label=f"{name}: fit a - b·n^-c (a = {fit['a']:.3f})")
        ax.fill_between(band["n_patients"], band["low"], band["high"], color=colour, alpha=0.15, lw=0,
                        label=f"{name}: {100 * fit['level']:g} % interval of the fit")


def figure(points: Sequence[Mapping[str, Any]], baseline_points: Sequence[Mapping[str, Any]] | None = None,
           fit: Mapping[str, Any] | None = None, baseline_fit: Mapping[str, Any] | None = None) -> bytes:
    """PNG of the learning curve: the network's points with their CIs, its fit and the fit's interval band
    out to the fit's horizon, the clinical baseline's points (joined, or with their own fit), the largest
    measured n and the target AUC (when the fit has one). Patients on a log axis."""
    fig = Figure(figsize=(7.2, 5.0))
    ax = fig.subplots()
    _draw(ax, points, fit, NET, "network", "o")
    if baseline_points:
        # a little to the right, so that the two CIs at the same n do not hide each other
        _draw(ax, baseline_points, baseline_fit, BASE, "clinical baseline", "s", dodge=1.04)
    if fit:
        ax.axvline(fit["n_max"], color="#555555", ls=":", lw=1)
        ax.annotate("measured | extrapolated", (fit["n_max"], 0.97), xycoords=("data", "axes fraction"),
                    ha="center", va="top", fontsize=8, color="#555555", backgroundcolor="white")
        if fit.get("target"):
            ax.axhline(fit["target"]["auc"], color="#c0392b", ls="--", lw=1,
                       label=f"target AUC {fit['target']['auc']:.2f}")
    ax.set_xscale("log")
    # patients as plain numbers at 1-2-5 steps: "200", not "2 x 10^2"
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("training patients")
    ax.set_ylabel("ROC AUC")
    ax.set_title("Learning curve", fontsize=11)
    ax.grid(True, alpha=0.3, which="both")
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=7.5, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _fit_text(name: str, fit: Mapping[str, Any]) -> str:
    goodness = (f"chi-square {fit['chi2']:.2f} on {fit['dof']} degrees of freedom, p {_fmt(fit['p_fit'])}"
                if fit["dof"] > 0 else "as many parameters as patient counts, so no check of the fit's shape")
    shape = f"b = {fit['b']:.3g}, c = {fit['c']:.3g}" if fit["b"] > 0 else "b = 0 (flat: c plays no part)"
    return (f"{name}: AUC(n) = a - b·n^-c with a = {_fmt(fit['a'])} ({_fmt(fit['params_ci']['a']['low'])} to "
            f"{_fmt(fit['params_ci']['a']['high'])}), {shape}; weighted least "
            f"squares ({fit['weights']}; Figueroa et al., BMC Med Inform Decis Mak 2012) over {fit['n_points']} "
            f"points, {goodness}. Intervals: {fit['interval']}.")


def report_blocks(points: Sequence[Mapping[str, Any]], baseline_points: Sequence[Mapping[str, Any]] | None = None,
                  fit: Mapping[str, Any] | None = None, baseline_fit: Mapping[str, Any] | None = None,
                  figure_name: str | None = None) -> list[tuple]:
    """The learning-curve section in the block language of ``hipx/reports/render.py`` (("h2", text),
    ("p", text), ("callout", text), ("table", header, rows), ("figures", [(name, caption)])): the verdict,
    the measured points, the extrapolation and how it was fitted; the figure when ``figure_name`` is given."""
    blocks: list[tuple] = [("h2", "Learning curve: would more patients help?")]
    if fit:
        blocks.append(("callout", fit["verdict"]))
    base = {_n(p): p for p in baseline_points or ()}
    header = ["Training patients", "Network AUC (95 % CI)"] + (["Clinical baseline AUC (95 % CI)"] if base else [])
    rows = [[f"{_n(p):g}", _with_ci(p)] + ([_with_ci(base.get(_n(p)))] if base else [])
            for p in sorted(points, key=_n)]
    blocks += [("p", "Pooled out-of-fold AUC of models trained on nested subsets of each fold's training patients "
                     "(stratified, seeded, the same patients for every mode); validation and test parts unchanged."),
               ("table", header, rows)]
    if fit:
        extra = {round(e["n_patients"], 6): e for e in (baseline_fit or {}).get("extrapolation", ())}
        header = ["Patients", "x largest measured", f"Network fitted AUC ({100 * fit['level']:g} % interval)"]
        if baseline_fit:
            header.append(f"Clinical baseline fitted AUC ({100 * baseline_fit['level']:g} % interval)")
        rows = []
        for e in fit["extrapolation"]:
            row = [f"{e['n_patients']:g}", f"{e['multiple']:.3g}", f"{_fmt(e['auc'])} ({_fmt(e['low'])} to "
                                                                   f"{_fmt(e['high'])})"]
            if baseline_fit:
                b = extra.get(round(e["n_patients"], 6))
                row.append(f"{_fmt(b['auc'])} ({_fmt(b['low'])} to {_fmt(b['high'])})" if b else "n/a")
            rows.append(row)
        if rows:
            blocks.append(("table", header, rows))
        blocks.append(("p", _fit_text("Network", fit)))
        if baseline_fit:
            blocks += [("p", f"Clinical baseline: {baseline_fit['verdict']}"), ("p", _fit_text("Clinical baseline",
                                                                                                 baseline_fit))]
    if figure_name:
        blocks.append(("figures", [(figure_name, "Pooled AUC against training patients (log scale), with 95 % CIs; "
                                                 "the fitted inverse power law and its interval band, extrapolated "
                                                 "past the largest measured subset (dotted line).")]))
    return blocks


def table_markdown(points: Sequence[Mapping[str, Any]], baseline_points: Sequence[Mapping[str, Any]] | None = None,
                   fit: Mapping[str, Any] | None = None, baseline_fit: Mapping[str, Any] | None = None) -> str:
    """The learning-curve section of ``cv_report.md``: :func:`report_blocks` written as Markdown (tables as
    ``render.render_markdown`` writes them: first column left, numbers right)."""
    out = []
    for block in report_blocks(points, baseline_points, fit, baseline_fit):
        kind = block[0]
        if kind == "h2":
            out.append(f"## {block[1]}")
        elif kind == "callout":
            out.append(f"> {block[1]}")
        elif kind == "p":
            out.append(block[1])
        elif kind == "table":
            header, rows = block[1], block[2]
            lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
            out.append("\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]))
    return "\n\n".join(out) + "\n"
