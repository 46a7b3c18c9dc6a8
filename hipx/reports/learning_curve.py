"""The learning curve of a cross-validation (main.py --learning_curve): its points measured from the fold runs
of every subset size, the fits, and the figure for ``cv_report.html`` and tables for ``cv_report.md``. The fit,
its band and the verdict are :func:`hipx.stats.learning_curve.extrapolate`'s; which patients each subset holds
is :mod:`hipx.data.subsets`; reading the fold runs is :mod:`hipx.reports.cv`'s.

    from hipx.reports import learning_curve as lc_report
    block = lc_report.measure(sizes, design, data_dir, n_boot, seed, target)   # cv_summary.json's "learning_curve"
    png = lc_report.figure(points, baseline_points, fit)             # PNG bytes
    text = lc_report.table_markdown(points, baseline_points, fit)    # Markdown for cv_report.md
    blocks = lc_report.report_blocks(points, baseline_points, fit)   # the same, as report blocks

A point is a mapping with ``n_patients``, ``auc`` and either ``low`` and ``high`` (its 95 % CI) or ``se``;
``fit`` is :func:`extrapolate`'s dict (or None: points only).
"""
from __future__ import annotations

import io
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from hipx.core.runconfig import RunConfig
from hipx.data import filenames
from hipx.reports import baseline
from hipx.runs import runfiles
from hipx.stats import confidence, metrics
from hipx.stats import learning_curve as lc

__all__ = ["figure", "measure", "report_blocks", "summary_blocks", "summary_figure", "table_markdown"]

logger = logging.getLogger(__name__)

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


def _size_text(size: Any) -> str:
    """A subset size as the user gave it: a fraction of the training patients, or a number of them."""
    if isinstance(size, float):
        return "1.0 (the cross-validation)" if size == 1.0 else f"{size:g}"
    return f"{size} patients"


def report_blocks(points: Sequence[Mapping[str, Any]], baseline_points: Sequence[Mapping[str, Any]] | None = None,
                  fit: Mapping[str, Any] | None = None, baseline_fit: Mapping[str, Any] | None = None,
                  figure_name: str | None = None, what: str = "pooled out-of-fold AUC") -> list[tuple]:
    """The learning-curve section in the block language of ``hipx/reports/render.py`` (("h2", text),
    ("p", text), ("callout", text), ("table", header, rows), ("figures", [(name, caption)])): the verdict,
    the measured points (``what`` they are), the extrapolation and how it was fitted; the figure when
    ``figure_name`` is given."""
    blocks: list[tuple] = [("h2", "Learning curve: would more patients help?")]
    if fit:
        blocks.append(("callout", fit["verdict"]))
    base = {_n(p): p for p in baseline_points or ()}
    sized = bool(points) and all("size" in p for p in points)  # the points of a cross-validation: their subsets
    header = (["Subset"] if sized else []) + ["Training patients", "Network AUC (95 % CI)"] + \
        (["Clinical baseline AUC (95 % CI)"] if base else [])
    rows = [([_size_text(p["size"])] if sized else []) + [f"{_n(p):g}", _with_ci(p)] +
            ([_with_ci(base.get(_n(p)))] if base else []) for p in sorted(points, key=_n)]
    blocks += [("p", f"{what[0].upper()}{what[1:]} of models trained on nested subsets of each fold's training "
                     "patients (stratified, seeded, the same patients for every mode); validation and test parts "
                     "unchanged."),
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


# --------------------------------------------------------------------------- measured from the fold runs

FIGURE = "learning_curve"  # its name among cv_report.html's figures
# A size's folds: (size, each fold's test predictions, each fold's configuration), as cv.read_fold reads them.
Entry = tuple[float | int, Sequence[pd.DataFrame], Sequence[RunConfig]]


def _patients(files: Sequence[str | os.PathLike]) -> set[str]:
    return {filenames.decode(f).patient for f in files}


def _scored(predictions: Sequence[pd.DataFrame], design: str) -> pd.DataFrame:
    """file (name), patient, label, probability of the cross-validation's result: ``oof``, every fold's test
    images pooled (each patient once); ``heldout``, the fold ensemble on the shared test set (the mean
    probability of the K models), as the CV summary scores them."""
    table = pd.concat([p[["file", "patient", "label", "probability"]].assign(fold=k) for k, p in enumerate(predictions)],
                      ignore_index=True)
    table["file"] = table["file"].map(lambda f: Path(f).name)
    if design == "oof":
        return table  # with each image's fold, for the mean within folds
    return table.groupby(["file", "patient", "label"], as_index=False, sort=True)["probability"].mean()


def _baseline_scored(files: Sequence[Mapping[str, Sequence]], design: str, on: pd.DataFrame) -> np.ndarray:
    """The clinical baseline's probabilities of the images of ``on`` (:func:`_scored`'s table): each fold's
    logistic regression fitted on that fold's training images (the subset's) and scored on its test images,
    pooled or averaged as the network's. ``BaselineUnavailable`` saying why there is none."""
    base = baseline.out_of_fold(files)
    base["file"] = base["file"].map(lambda f: Path(f).name)
    if design != "oof":
        base = base.groupby("file", as_index=False)["probability"].mean()
    merged = on[["file"]].merge(base[["file", "probability"]], on="file", how="left", validate="one_to_one")
    if merged["probability"].isna().any():
        raise baseline.BaselineUnavailable(f"{int(merged['probability'].isna().sum())} tested image(s) are not in the "
                                           "folds' test parts")
    return merged["probability"].to_numpy(dtype=float)


def _point(size: float | int, n_per_fold: Sequence[int], table: pd.DataFrame, p: np.ndarray, n_boot: int,
           seed: int) -> dict:
    """One point: the AUC of ``p`` on ``table``'s images with its patient-bootstrap 95 % CI (the resamples and
    the interval of the CV summary's pooled AUC, so the full size's point is that AUC); out of fold
    (``table`` with a ``fold`` column) also ``within_folds``: the mean of the folds' own AUCs, its CI over the
    same resamples (:func:`confidence.fold_mean_auc_ci`)."""
    y, groups = table["label"].to_numpy(dtype=np.int64), table["patient"].to_numpy()
    ci = confidence.bootstrap_ci(y, p, metrics.roc_auc, groups=groups, n_boot=n_boot, seed=seed)
    point = {"size": size, "n_patients": round(float(np.mean(n_per_fold)), 1), "n_patients_per_fold": list(n_per_fold),
             "n_images_tested": len(table), "auc": ci["point"], "low": ci["low"], "high": ci["high"],
             "interval": ci["interval"]}
    if "fold" in table and table["fold"].nunique() > 1:
        within = confidence.fold_mean_auc_ci(y, p, table["fold"].to_numpy(), groups=groups, n_boot=n_boot, seed=seed)
        point["within_folds"] = {k: within[k] for k in ("point", "low", "high", "interval")}
    return point


def _within(points: Sequence[Mapping]) -> list[dict]:
    """The points' mean within folds as points of their own (n_patients, auc, low, high), for the fit."""
    return [{"size": p["size"], "n_patients": p["n_patients"], "auc": p["within_folds"]["point"],
             "low": p["within_folds"]["low"], "high": p["within_folds"]["high"]}
            for p in points if p.get("within_folds")]


def _fit(points: Sequence[Mapping], target: float | None, seed: int, what: str) -> tuple[dict | None, str | None]:
    """:func:`lc.extrapolate` of ``points``, or None and why not."""
    if len(points) < 3:
        return None, (f"No fit of the {what}'s curve: the power law has 3 parameters, so it needs points at 3 or more "
                      f"training-set sizes; there are {len(points)} (give more --learning_curve sizes).")
    try:
        return lc.extrapolate(points, target=target, seed=seed), None
    except ValueError as exc:
        return None, f"No fit of the {what}'s curve: {exc}."


def measure(entries: Sequence[Entry], design: str, data_dir: str | os.PathLike | None, n_boot: int, seed: int,
            target: float | None = None, with_baseline: bool = True, missing: Sequence[str] = ()) -> dict:
    """The learning curve of a cross-validation (``cv_summary.json``'s ``learning_curve``) from each size's
    folds (``entries``; the full size 1.0 is the cross-validation itself): per size the network's and the
    clinical baseline's pooled out-of-fold (``oof``) or fold-ensemble (``heldout``) AUC with its patient CI
    and the training patients per fold; both curves fitted and extrapolated (:func:`lc.extrapolate`, the
    patients ``target`` needs); ``missing``: sizes whose folds are not all tested (left out, said so)."""
    points, base_points, base_absent = [], [], None if with_baseline else "no clinical values vary in these images"
    n_all = None
    for size, predictions, configs in entries:
        files = [runfiles.split_files(c, data_dir) for c in configs]
        n_per_fold = [len(_patients(fl["train"])) for fl in files]
        table = _scored(predictions, design)
        points.append(_point(size, n_per_fold, table, table["probability"].to_numpy(dtype=float), n_boot, seed))
        if size == 1.0:
            n_all = len(_patients([f for split in files[0].values() for f in split]))
        if base_absent is None:
            try:
                p_base = _baseline_scored(files, design, table)
                base_points.append(_point(size, n_per_fold, table, p_base, n_boot, seed))
            except baseline.BaselineUnavailable as exc:
                base_absent = f"subset {size:g}: {exc}"
    points.sort(key=lambda p: p["n_patients"])
    base_points = sorted(base_points, key=lambda p: p["n_patients"]) if base_absent is None else []
    fit, fit_note = _fit(points, target, seed, "network")
    base_fit, base_fit_note = _fit(base_points, None, seed, "clinical baseline") if base_points else (None, None)
    n_max = points[-1]["n_patients"]
    block: dict[str, Any] = {
        "what": "pooled out-of-fold AUC" if design == "oof" else "fold-ensemble AUC on the shared test set",
        "sizes": [p["size"] for p in points], "points": points, "baseline_points": base_points,
        "fit": fit, "baseline_fit": base_fit, "target_auc": target, "n_patients_all": n_all,
        "train_share": None if not n_all else n_max / n_all, "missing": list(missing)}
    for key, value in (("fit_note", fit_note), ("baseline_fit_note", base_fit_note), ("baseline_absent", base_absent)):
        if value:
            block[key] = value
    if points and all(p.get("within_folds") for p in points):
        net, base = _within(points), _within(base_points)
        fit_w, note_w = _fit(net, target, seed, "network (within folds)")
        base_w = _fit(base, None, seed, "clinical baseline (within folds)")[0] if base else None
        block["within_folds"] = {"points": net, "baseline_points": base, "fit": fit_w, "baseline_fit": base_w,
                                 **({"fit_note": note_w} if note_w else {})}
    return block


def _patients_note(block: Mapping[str, Any]) -> str | None:
    """What the patient counts of a cross-validation's curve are, and what they mean for a whole data set."""
    share, n_all = block.get("train_share"), block.get("n_patients_all")
    if not share:
        return None
    full = block["points"][-1]
    text = (f"Patient counts are the training patients of each fold's model (mean over the "
            f"{len(full['n_patients_per_fold'])} folds). The cross-validation itself trains each model on "
            f"{full['n_patients']:g} of its {n_all} patients ({100 * share:.0f} %; the others validate and test it), "
            f"so N training patients per model means about N / {share:.2f} patients in all with this design.")
    target = (block.get("fit") or {}).get("target")
    if target and target.get("n") is not None:
        text += (f" AUC {target['auc']:.3f} at about {target['n']} training patients: about "
                 f"{math.ceil(target['n'] / share)} patients in all.")
    return text


def summary_blocks(block: Mapping[str, Any], figures: bool = False) -> list[tuple]:
    """The learning-curve section of a cross-validation report from :func:`measure`'s ``block``: the verdict,
    the points, the extrapolation, what the counts mean, what is missing; with ``figures`` (cv_report.html)
    the figure :func:`summary_figure` draws, named :data:`FIGURE`."""
    out = report_blocks(block["points"], block["baseline_points"], block["fit"], block["baseline_fit"],
                        FIGURE if figures else None, block["what"])
    extra = [("p", text) for text in (block.get("fit_note"), _patients_note(block), block.get("baseline_fit_note"))
             if text]
    if block.get("baseline_absent"):
        extra.append(("p", f"No clinical baseline curve: {block['baseline_absent']}."))
    if block.get("missing"):
        extra.append(("p", "Left out of the curve, its folds not all tested (main.py --resume trains them): "
                           f"{'; '.join(block['missing'])}."))
    at = len(out) - 1 if figures else len(out)  # before the figure
    return out[:at] + extra + out[at:] + _within_blocks(block)


def _within_blocks(block: Mapping[str, Any]) -> list[tuple]:
    """The curve of the mean within folds (out of fold only): why it is shown, its points, fit and verdict."""
    within = block.get("within_folds")
    if not within:
        return []
    gaps = [(w["auc"] - p["auc"], p) for w, p in zip(within["points"], block["points"])]
    gap, at = max(gaps, key=lambda g: g[0])
    sub = report_blocks(within["points"], within["baseline_points"], within["fit"], within["baseline_fit"],
                        what="mean within-fold AUC (each fold's test patients scored by its own model, the folds' "
                             "AUCs averaged, 95 % CI over the same patient resamples)")
    why = ("The same models, scored within their own test folds. The pooled AUC above also ranks one fold's "
           "patients against another's, so fold models whose probabilities lie on different scales (small subsets, "
           "early best epochs) lower it though each ranks its own patients as well; the mean within folds does not "
           f"mix them. Here the pooled AUC lies {gap:.3f} below the mean within folds at {at['n_patients']:g} "
           "training patients (the largest gap): where the two curves part, read the extrapolation from this one.")
    head = [("p", "Within folds. " + why)]
    return head + [("p", f"Within folds: {b[1]}") if b[0] == "callout" else b for b in sub if b[0] != "h2"] + \
        ([("p", within["fit_note"])] if within.get("fit_note") else [])


def summary_figure(block: Mapping[str, Any]) -> bytes:
    """The figure of :func:`measure`'s ``block``: both curves, their points, fits and bands."""
    return figure(block["points"], block["baseline_points"], block["fit"], block["baseline_fit"])
