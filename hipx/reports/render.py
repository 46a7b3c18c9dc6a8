"""Rendering of the reports: their figures, a small block language with its Markdown and
self-contained HTML renderers, the sections a report is made of, and the run report's sections.

    from hipx.reports.render import report_blocks, render_markdown, render_html
    blocks = report_blocks(result)              # result: the numbers run_report.write_report computed
    render_html(blocks, figures, "Run report")  # one file, figures embedded as base64 PNG

Nothing here computes a statistic: every number comes from :mod:`run_report` (or :mod:`compare`,
:mod:`cv`, :mod:`external`), and this module only decides how it is shown. Colours and the text of
a number are :mod:`style`'s.

Blocks shared by the Markdown and HTML renderings:
    ("h1"|"h2"|"p"|"note"|"callout", text), ("table", header, rows), ("list", items),
    ("figures", [(name, caption), ...])  -- figures shown side by side in HTML

A report is a sequence of :class:`Section` (a title and a function of the report's numbers that
returns its blocks); :func:`assemble` numbers the titled ones. A new section of the run report is
one function added to :data:`RUN_REPORT`.
"""
from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import precision_recall_curve, roc_curve

from hipx.stats import confidence
from hipx.stats import decision
from hipx.core import fusion
from hipx.data import loader
from hipx.stats import metrics
from hipx.reports import cohort
from hipx.reports import measurement as measure_report
from hipx.runs import runfiles
from hipx.reports.style import (NET, PALETTE, ci, fmt, interval_text, mean_sd_text, p_relation, p_text, png,
                                style_axes)

FIGURE_DIR = runfiles.REPORT_FIGURES  # where report.md finds its figures
# (key of confidence.bootstrap_metrics, label), in the order of the metrics table
TABLE_METRICS = (("roc_auc", "ROC AUC"), ("pr_auc", "PR AUC (average precision)"), ("brier", "Brier score"),
                 ("sensitivity", "Sensitivity"), ("specificity", "Specificity"), ("precision", "PPV (precision)"),
                 ("npv", "NPV"), ("accuracy", "Accuracy"), ("balanced_accuracy", "Balanced accuracy"),
                 ("f1", "F1"), ("f2", "F2"), ("mcc", "MCC"))


# --------------------------------------------------------------------------- figures

def figure_training(history: pd.DataFrame, best_epoch: int, select_metric: str) -> bytes:
    """Train and val loss, and val ROC AUC, per epoch; the selected epoch marked."""
    fig = Figure(figsize=(10, 3.4))
    ax_loss, ax_auc = fig.subplots(1, 2)
    epoch = history["epoch"]
    for col, label, style in (("train_loss", "train loss", "-"), ("val_loss", "val loss", "--")):
        if col in history:
            ax_loss.plot(epoch, history[col], style, marker="o", ms=3, label=label, color=NET)
    if "val_roc_auc" in history:
        ax_auc.plot(epoch, history["val_roc_auc"], marker="o", ms=3, color=NET, label="val ROC AUC")
    for ax, title in ((ax_loss, "Loss"), (ax_auc, "Validation ROC AUC")):
        ax.axvline(best_epoch, color="#c0392b", ls=":", lw=1.5, label=f"best epoch {best_epoch} ({select_metric})")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title, fontsize=11)
        ax.legend(fontsize=8, frameon=False)
        style_axes(ax)
    fig.tight_layout()
    return png(fig)


def _two_classes(y: np.ndarray) -> bool:
    return 0 < int(np.sum(y)) < len(y)


def figure_roc_pr(y: np.ndarray, models: Sequence[tuple[str, np.ndarray, float | None, str]],
                  where: str = "test") -> bytes:
    """ROC and precision-recall curves of each (name, probabilities, threshold, colour), with the
    operating point at the validation threshold (none where it is None); ``where`` names the images
    in the titles."""
    fig = Figure(figsize=(10, 4.2))
    ax_roc, ax_pr = fig.subplots(1, 2)
    if _two_classes(y):
        for name, p, t, colour in models:
            fpr, tpr, _ = roc_curve(y, p, drop_intermediate=False)
            prec, rec, _ = precision_recall_curve(y, p)
            ax_roc.plot(fpr, tpr, color=colour, lw=2, label=f"{name} (AUC {metrics.roc_auc(y, p):.3f})")
            ax_pr.step(rec, prec, where="post", color=colour, lw=2,
                       label=f"{name} (AP {metrics.pr_auc(y, p):.3f})")
            if t is None:  # no single threshold, e.g. pooled folds that each chose their own
                continue
            pred = p >= t
            sens, spec = pred[y == 1].mean(), 1 - pred[y == 0].mean()
            ppv = y[pred].mean() if pred.any() else math.nan
            ax_roc.plot([1 - spec], [sens], "o", color=colour, ms=8, mec="black")
            ax_pr.plot([sens], [ppv], "o", color=colour, ms=8, mec="black")
        ax_pr.axhline(y.mean(), color="grey", ls="--", lw=1, label=f"prevalence {y.mean():.2f}")
    else:
        for ax in (ax_roc, ax_pr):
            ax.text(0.5, 0.5, "undefined: the test set holds one class", ha="center", va="center")
    ax_roc.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="chance")
    ax_roc.set(xlabel="1 - specificity (false-positive rate)", ylabel="sensitivity", xlim=(-0.01, 1.01),
               ylim=(-0.01, 1.01))
    ax_pr.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
    dots = "; dot = validation threshold" if any(t is not None for _, _, t, _ in models) else ""
    ax_roc.set_title(f"ROC curve ({where}{dots})", fontsize=11)
    ax_pr.set_title(f"Precision-recall curve ({where})", fontsize=11)
    for ax in (ax_roc, ax_pr):
        ax.legend(fontsize=8, loc="lower right" if ax is ax_roc else "lower left", frameon=False)
        ax.set_aspect("equal")
        style_axes(ax)
    fig.tight_layout()
    return png(fig)


def figure_confusion(matrices: Sequence[tuple[str, Mapping[str, int], float]]) -> bytes:
    """2 x 2 confusion matrix (rows: truth, columns: prediction) for each (name, counts, threshold)."""
    fig = Figure(figsize=(3.6 * len(matrices), 3.0))
    axes = np.atleast_1d(fig.subplots(1, len(matrices)))
    for ax, (name, c, t) in zip(axes, matrices):
        m = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
        ax.imshow(m, cmap="Blues", vmin=0, vmax=max(m.max(), 1))
        for (i, j), v in np.ndenumerate(m):
            row_total = m[i].sum()
            share = f"\n{100 * v / row_total:.0f}% of row" if row_total else ""
            ax.text(j, i, f"{v}{share}", ha="center", va="center", fontsize=10,
                    color="white" if v > 0.6 * m.max() else "black")
        ax.set_xticks([0, 1], ["normal", "osteoporosis"])
        ax.set_yticks([0, 1], ["normal", "osteoporosis"])
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{name} (threshold {t:.3f})", fontsize=10)
    fig.tight_layout()
    return png(fig)


def calibration_bins(n: int) -> int:
    """Bins of the reliability curve: about equal counts, at least ~10 images per bin, 3 to 10 bins."""
    return int(min(10, max(3, n // 10)))


def _wilson(k: np.ndarray, n: np.ndarray, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of k successes out of n (Wilson, JASA 1927;22:209-212)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        phat = k / n
        centre = (phat + z * z / (2 * n)) / (1 + z * z / n)
        half = z * np.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def figure_calibration(y: np.ndarray, models: Sequence[tuple[str, np.ndarray, str]], where: str = "test") -> bytes:
    """Reliability curve (quantile bins, Wilson 95% intervals) and the distribution of predicted
    probabilities, for each (name, probabilities, colour)."""
    fig = Figure(figsize=(5.6, 5.6))
    grid = fig.add_gridspec(2, 1, height_ratios=(3, 1), hspace=0.08)
    ax = fig.add_subplot(grid[0])
    ax_hist = fig.add_subplot(grid[1], sharex=ax)
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfect calibration")
    n_bins = calibration_bins(len(y))
    for shift, (name, p, colour) in zip((-0.004, 0.004), models):
        curve = confidence.reliability_curve(y, p, n_bins=n_bins, strategy="quantile")
        keep = curve["counts"] > 0
        x, obs, counts = curve["mean_predicted"][keep], curve["observed"][keep], curve["counts"][keep]
        low, high = _wilson(obs * counts, counts)
        ax.errorbar(x + shift, obs, yerr=np.clip([obs - low, high - obs], 0, None), fmt="-o", color=colour, ms=5,
                    lw=1.5, capsize=2, elinewidth=0.8, label=name)
        ax_hist.hist(p, bins=np.linspace(0, 1, 21), color=colour, alpha=0.5, label=name)
    ax.set(ylabel="observed fraction with osteoporosis", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
    ax.set_title(f"Calibration on {where} ({n_bins} bins of equal size)", fontsize=11)
    ax.legend(fontsize=8, loc="upper left", frameon=False)
    ax.tick_params(labelbottom=False)
    ax_hist.set(xlabel="predicted probability of osteoporosis", ylabel="images")
    for a in (ax, ax_hist):
        style_axes(a)
    return png(fig)


def figure_decision_curve(curves: Sequence[tuple[str, Mapping, float | None, str]]) -> bytes:
    """Net benefit against threshold probability of each (name, decision.decision_curve dict, run threshold,
    colour), with treat-all (of the first curve's data) and treat-none; each run threshold marked."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    first = max((c for _, c, _, _ in curves), key=lambda c: len(c["thresholds"]))  # the widest grid
    t_all = np.asarray(first["thresholds"])
    ax.plot(t_all, first["treat_all"], color="#555555", lw=1.5, ls="--", label="treat all")
    ax.plot(t_all, first["treat_none"], color="black", lw=1.2, label="treat none")
    dots = []
    for name, curve, threshold, colour in curves:
        ax.plot(curve["thresholds"], curve["net_benefit"], color=colour, lw=2, label=name)
        at = curve.get("at_run_threshold")
        if threshold is not None and at is not None and t_all[0] <= threshold <= t_all[-1]:
            ax.plot([threshold], [at["net_benefit"]], "o", color=colour, ms=8, mec="black")
            ax.axvline(threshold, color=colour, ls=":", lw=1)
            dots.append(at["net_benefit"])
    top = max(first["prevalence"], 0.05)
    low = max(min([-0.05 * top, *(d - 0.03 * top for d in dots)]), -top)  # dots in view, not a plunge to -1
    # two lines: on one, the label is as tall as the axes and is cut where the plot is short
    ax.set(xlabel="threshold probability", ylabel="net benefit\n(true positives per image)",
           xlim=(t_all[0], t_all[-1]), ylim=(low, top * 1.1))
    ax.xaxis.set_major_formatter(lambda v, _: f"{100 * v:.0f}%")
    ax.set_title("Decision curve" + (" (dot and dotted line: the run's threshold)" if dots else ""), fontsize=11)
    ax.legend(fontsize=8, frameon=False, loc="upper right")
    style_axes(ax)
    fig.tight_layout()
    return png(fig)


def discrimination_table(models: Sequence[tuple[str, Mapping]], how: str) -> tuple:
    """The table of each (name, evaluation.evaluate result): ROC AUC with its bootstrap and clustered
    DeLong CIs, PR AUC with its bootstrap CI."""
    return ("table", ["Model", f"ROC AUC, {how} 95% CI", "ROC AUC, DeLong clustered by patient 95% CI",
                      f"PR AUC, {how} 95% CI"],
            [[name, ci(e["metrics"]["roc_auc"]), ci(e["delong_auc"], "auc"), ci(e["metrics"]["pr_auc"])]
             for name, e in models])


def decision_rows(models: Sequence[tuple[str, Mapping]], table_thresholds: Sequence[float]) -> tuple[list, list]:
    """Header and rows of a net-benefit table: one row per threshold probability of ``table_thresholds``
    found on the curves, columns each (name, decision curve) -- with its 95% CI where the curve carries
    ``net_benefit_ci`` --, treat all, treat none."""
    first = models[0][1]
    with_ci = all("net_benefit_ci" in c for _, c in models)
    what = "Net benefit (95% CI)" if with_ci else "Net benefit"
    header = ["Threshold probability", *(f"{what}, {name}" for name, _ in models), "Treat all", "Treat none"]
    rows = []
    for t in table_thresholds:
        i = int(np.argmin(np.abs(np.asarray(first["thresholds"]) - t)))
        if abs(first["thresholds"][i] - t) > 1e-9:
            continue
        cells = [_net_benefit_cell(c, i, t) if with_ci else fmt(c["net_benefit"][i]) for _, c in models]
        rows.append([f"{100 * t:.0f}%", *cells, fmt(first["treat_all"][i]), fmt(0.0)])
    return header, rows


def _net_benefit_cell(curve: Mapping, i: int, t: float) -> str:
    """'0.123 (0.050 to 0.201)': the curve's net benefit at grid point ``i`` (threshold ``t``) with the
    interval of ``net_benefit_ci`` there; the point alone where no interval was computed at ``t``."""
    found = [d for d in curve["net_benefit_ci"] if abs(d["threshold"] - t) <= 1e-9]
    return ci(found[0]) if found else fmt(curve["net_benefit"][i])


def decision_text(name: str, curve: Mapping, threshold: float) -> str:
    """One sentence: where ``name`` beats treat-all and treat-none, and its net benefit at ``threshold``."""
    t = np.asarray(curve["thresholds"])
    nb, ta = np.asarray(curve["net_benefit"]), np.asarray(curve["treat_all"])
    better = (nb > ta) & (nb > 0)
    if better.any():
        where = (f"{name} has a higher net benefit than treat-all and treat-none at {int(better.sum())} of the "
                 f"{t.size} threshold probabilities from {100 * t[0]:.0f}% to {100 * t[-1]:.0f}% (between "
                 f"{100 * t[better].min():.0f}% and {100 * t[better].max():.0f}%)")
    else:
        where = (f"{name} has no higher net benefit than both treat-all and treat-none anywhere from "
                 f"{100 * t[0]:.0f}% to {100 * t[-1]:.0f}%")
    at = curve.get("at_run_threshold")
    if at is not None:
        nb = ci(at["net_benefit_ci"]) if "net_benefit_ci" in at else fmt(at["net_benefit"])
        where += (f"; at the run's threshold {100 * threshold:.1f}% its net benefit is {nb} "
                  f"against {fmt(at['treat_all'])} for treat-all")
    return where + "."


DECISION_NOTE = ("Net benefit = TP/n - FP/n × p_t/(1 - p_t): true positives per image, net of the false positives "
                 "weighted by the odds of the threshold probability p_t (Vickers & Elkin, Med Decis Making 2006). "
                 "p_t says how a reader weighs a missed osteoporosis against an unneeded work-up: at 20% one found "
                 "case is worth four unneeded DXA scans. A model is useful where its curve lies above treat-all and "
                 "treat-none. Net benefit uses this data's prevalence and is per image; its 95% CI is a percentile "
                 "bootstrap over patients (a patient's images are resampled together).")



def decision_blocks(models: Sequence[tuple[str, Mapping, float | None]], caption: str,
                    sentences: bool = True) -> list[tuple]:
    """The decision-curve part of a report, for each (name, decision.decision_curve dict, run threshold):
    the figure ``decision`` with ``caption``, the net benefit at :data:`decision.TABLE_THRESHOLDS`, with
    ``sentences`` one sentence per model on where it beats treat-all and treat-none, and the note on
    reading net benefit."""
    b: list[tuple] = [("figures", [("decision", caption)]),
                      ("table", *decision_rows([(name, curve) for name, curve, _ in models],
                                               decision.TABLE_THRESHOLDS))]
    if sentences:
        b.append(("p", " ".join(decision_text(name, curve, threshold) for name, curve, threshold in models)))
    return b + [("note", DECISION_NOTE)]


# --------------------------------------------------------------------------- text

def verdict(diff: Mapping) -> str:
    """Plain-language reading of the AUC difference network - baseline and its 95% CI."""
    low, high = diff.get("low"), diff.get("high")
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return "The difference in AUC between the network and the clinical-only baseline could not be estimated."
    if low > 0:
        return ("The network discriminates better than age, sex and BMI alone on this test set: the 95% CI of "
                "the AUC difference lies above 0, so the image adds information.")
    if high < 0:
        return ("The clinical-only baseline discriminates better than the network on this test set: the 95% CI "
                "of the AUC difference lies below 0.")
    return ("This test set does not show that the image adds to age, sex and BMI: the 95% CI of the AUC "
            "difference includes 0. (A small test set can also hide a real difference; see the interval's width.)")


def fusion_text(config: Mapping) -> str:
    """How the run used sex, age and BMI, in words."""
    mode = fusion.of_config(config)
    return "image only, no clinical values" if mode == "image" else f"{fusion.text(mode)} of sex, age and BMI"


def _model_rows(r: dict) -> list[tuple[str, dict]]:
    """(name, evaluation) of the network and, where it exists, the clinical baseline."""
    rows = [("Network", r["network"])]
    if r.get("baseline"):
        rows.append(("Clinical baseline", r["baseline"]))
    return rows


def primary_text(r: dict) -> str:
    """The one named primary result of a run report."""
    auc = r["network"]["metrics"]["roc_auc"]
    text = (f"Primary result: network test ROC AUC {ci(auc)} ({interval_text(auc.get('interval', r['interval']))} "
            f"95% CI over {r['data']['test'].get('patients', '?')} patients)")
    cmp_ = r.get("comparison")
    if cmp_:
        d = cmp_["auc_difference"]
        text += (f"; AUC difference network - clinical-only baseline {ci(d, 'diff')}, p {p_relation(d['p_value'])} "
                 "(paired bootstrap over patients)")
    return text + ". Every other number in this report is secondary."


# --------------------------------------------------------------------------- a report's sections

@dataclass(frozen=True)
class Section:
    """One section of a report: ``build(r)`` returns its blocks from the report's numbers ``r``, or
    None where this report has no such section. A section with a ``title`` opens with it as an h2,
    numbered in order when the report is assembled unless ``numbered`` is False; an untitled one
    (``title`` None) brings its own heading, if any."""
    title: str | None
    build: Callable[[Mapping], list[tuple] | None]
    numbered: bool = True


def assemble(sections: Sequence[Section], r: Mapping) -> list[tuple]:
    """The blocks of a report made of ``sections``: each present section's blocks in order, the
    numbered ones headed 1., 2., ... (numbers count the sections present)."""
    b: list[tuple] = []
    number = 0
    for section in sections:
        body = section.build(r)
        if body is None:
            continue
        if section.title is not None:
            number += section.numbered
            b.append(("h2", f"{number}. {section.title}" if section.numbered else section.title))
        b += body
    return b


# --------------------------------------------------------------------------- the run report's sections

def _opening(r: Mapping) -> list[tuple]:
    cfg = r["run_config"]
    return [("h1", f"Run report: {r['run']}"),
            ("p", f"Model {cfg.get('model')} ({fusion_text(cfg)}), input {cfg['image_size'][0]} x "
                  f"{cfg['image_size'][1]} pixels, trained {len(r['history']) if r['history'] else '?'} epochs; the "
                  f"best epoch by validation {r['select_metric']} is epoch {r['epoch']}, and only its checkpoint was "
                  f"scored on test. Data: {r['data_dir']}. Report made {r['created']}.")]


def _summary(r: Mapping) -> list[tuple]:
    net, base, cmp_ = r["network"], r.get("baseline"), r.get("comparison")
    m, test = net["metrics"], r["data"]["test"]
    summary = (f"Test set: {test['images']} images of {test['patients']} patients, {test['osteoporosis_images']} "
               f"with osteoporosis ({100 * test['prevalence']:.0f}%). At the threshold {net['threshold']:.3f} fixed "
               f"on validation: sensitivity {ci(m['sensitivity'])}, specificity {ci(m['specificity'])}; these hold "
               "this trained model and this threshold fixed.")
    if base:
        summary += (f" Clinical-only baseline (age, sex, BMI) ROC AUC {ci(base['metrics']['roc_auc'])}; DeLong test "
                    f"clustered by patient p {p_relation(cmp_['delong_test']['p_value'])}.")
    return [("callout", primary_text(r)),
            ("p", summary + " 95% confidence intervals in parentheses."),
            ("p", verdict(cmp_["auc_difference"]) if cmp_ else f"No clinical-only baseline: {r['baseline_absent']}."),
            *(("callout", f"Check: {c}") for c in r["checks"] if c.startswith(("LEAK", "MISMATCH")) or "do NOT" in c)]


def _data(r: Mapping) -> list[tuple]:
    rows = []
    for split in (*loader.SPLITS, "all"):
        d = r["data"][split]
        if not d.get("images"):
            rows.append([split, "0", "0", "", "", "", "", "", ""])
            continue
        miss = d["missing_percent"]
        rows.append([split, str(d["images"]), str(d["patients"]),
                     f"{d['osteoporosis_images']} ({100 * d['prevalence']:.1f}%)", str(d["osteoporosis_patients"]),
                     mean_sd_text(d["age"]), fmt(d["female_percent"], 1), mean_sd_text(d["bmi"]),
                     " / ".join(f"{miss[c]:.0f}" for c in ("age", "sex", "bmi"))])
    return [("table", ["Split", "Images", "Patients", "Osteoporosis images (%)", "Patients with osteoporosis",
                       "Age, years (mean ± SD)", "Female (%)", "BMI, kg/m² (mean ± SD)",
                       "Missing age / sex / BMI (%)"], rows),
            ("note", "Clinical values per patient (mean over the patient's images); percentages of patients with "
                     "a known value. Missing values are imputed with the training "
                     "mean for both the network and the baseline.")]


def _training(r: Mapping) -> list[tuple]:
    if not r["history"]:
        return [("p", "history.csv not found; no training curves.")]
    val_auc = next((h.get("val_roc_auc") for h in r["history"] if int(h["epoch"]) == r["epoch"]), None)
    return [("figures", [("training", "Loss per epoch (left) and validation ROC AUC (right); the dotted line "
                                      "marks the epoch whose checkpoint was tested.")]),
            ("p", f"Best epoch {r['epoch']} (validation ROC AUC {fmt(val_auc)}), selected by validation "
                  f"{r['select_metric']}. Its threshold was stored in best.pth at that moment, before any "
                  "test image was scored.")]


def _discrimination(r: Mapping) -> list[tuple]:
    return [("figures", [("roc_pr", "ROC (left) and precision-recall (right) curves on the test set; dots: each "
                                    "model's operating point at its validation threshold.")]),
            discrimination_table(_model_rows(r), interval_text(r["interval"]))]


def _metrics(r: Mapping) -> list[tuple]:
    models = _model_rows(r)
    return [("table", ["Metric", *(name for name, _ in models)],
             [["Threshold (from validation)", *(fmt(e["threshold"]) for _, e in models)]]
             + [[label, *(ci(e["metrics"][k]) for _, e in models)] for k, label in TABLE_METRICS]),
            ("note", f"Point estimate (95% CI) over {r['data']['test']['patients']} test patients (all images of a "
                     f"drawn patient together), {r['n_boot']} resamples, seed {r['seed']}: "
                     f"{interval_text(r['interval'])} for ROC AUC, PR AUC and Brier "
                     "score, percentile for the rest. Threshold metrics (sensitivity to MCC) are conditional on "
                     "this trained model and on the threshold chosen on validation (Youden's J): the intervals "
                     "describe the sampling of test patients only, not a retraining or a re-chosen threshold.")]


def _confusion(r: Mapping) -> list[tuple]:
    return [("figures", [("confusion", "Rows: truth; columns: prediction (osteoporosis when probability >= "
                                       "threshold).")]),
            ("table", ["Model", "TP", "FN", "TN", "FP"],
             [[name, *(str(e["confusion"][k]) for k in ("tp", "fn", "tn", "fp"))] for name, e in _model_rows(r)])]


def _calibration(r: Mapping) -> list[tuple]:
    bins = calibration_bins(r["data"]["test"]["images"])
    block = r.get("measurement") or {}
    fitted = []
    if block.get("scale"):  # a continuous target: how its probability's scale was set
        scale = measure_report.scale_text(block["scale"], block.get("name"), block.get("unit", ""))
        fitted = [("p", f"A continuous target: the network's {scale}. A recalibration on the run's validation "
                        f"images: report.py --run {r['run_dir']} --recalibrate intercept (or logistic).")]
    return fitted + [("figures", [("calibration", f"Observed fraction with osteoporosis (Wilson 95% interval) against the "
                                         f"mean predicted probability, in {bins} bins holding about equal numbers of "
                                         "test images; below: the predicted probabilities.")]),
            ("table", ["Model", "Brier score (95% CI)", "Calibration slope (95% CI)",
                       "Calibration intercept (95% CI)", "Probabilities clipped"],
             [[name, ci(e["metrics"]["brier"]), ci(e["metrics"]["calibration_slope"]),
               ci(e["metrics"]["calibration_intercept"]), str(e["calibration"]["n_clipped"])]
              for name, e in _model_rows(r)]),
            ("note", "Slope 1 and intercept 0 are ideal; a slope below 1 means too extreme (over-confident) "
                     "probabilities, an intercept below 0 risks overestimated on average (Van Calster et al., "
                     f"BMC Med 2019;17:230). Intervals: {interval_text(r['interval'])} over patients, on the same "
                     "resamples as the metrics. Probabilities below 1e-6 or above 1 - 1e-6 are clipped to logit ±13.8 "
                     "for the fit; many clipped values can drive the slope. Brier score: mean squared error of the "
                     "probability, lower is better.")]


def _decision(r: Mapping) -> list[tuple]:
    return decision_blocks([(name, e["decision_curve"], e["threshold"]) for name, e in _model_rows(r)],
                           "Net benefit of acting on the model's probability at each threshold probability, against "
                           "treating every image and treating none; the dot and dotted line mark the threshold chosen "
                           "on validation.")


def _image_adds(r: Mapping) -> list[tuple]:
    base, cmp_ = r.get("baseline"), r.get("comparison")
    if not cmp_:
        return [("p", f"No clinical-only baseline is fitted: {r['baseline_absent']}. Without it this report cannot "
                      "say whether the image adds to the clinical values.")]
    d, dl = cmp_["auc_difference"], cmp_["delong_test"]
    return [("table", ["Comparison on the same test images", "Value"],
             [["ROC AUC, network", fmt(r["network"]["metrics"]["roc_auc"]["point"])],
              ["ROC AUC, clinical baseline", fmt(base["metrics"]["roc_auc"]["point"])],
              ["Difference (paired bootstrap over patients, 95% CI) - primary", ci(d, "diff")],
              ["p-value, paired bootstrap over patients", p_text(d["p_value"])],
              ["p-value, DeLong test clustered by patient", p_text(dl["p_value"])]]),
            ("p", verdict(d)),
            ("p", "Clinical baseline: logistic regression on standardised sex, age and BMI, fitted on the "
                  f"{base['n_train']} training images (L2 penalty C = {base['C']:g}); log-odds per training SD: "
                  + ", ".join(f"{k} {v:+.3f}" for k, v in base["coef"].items())
                  + f"; intercept {base['intercept']:+.3f}. Validation ROC AUC {fmt(base['val_roc_auc'])}.")]


def _subgroups(r: Mapping) -> list[tuple]:
    if not r["subgroups"]:
        return [("p", "No subgroup holds both classes with a known clinical value; no subgroup AUC is shown.")]
    return [("table", ["Variable", "Subgroup", "Images", "Patients", "Osteoporosis images",
                       f"Network ROC AUC ({interval_text(r['interval'])} 95% CI)"],
             [[s["variable"], s["group"], str(s["images"]), str(s["patients"]), str(s["positives"]),
               ci(s["roc_auc"])] for s in r["subgroups"]]),
            ("note", "Test images by the patient's sex, age band and BMI band (WHO: < 25, 25 to < 30, >= 30 "
                     "kg/m²); images with the value missing and subgroups holding one class only are left out. "
                     "Intervals resample the subgroup's patients. Subgroup results are descriptive: small "
                     "subgroups have wide intervals, and no test between subgroups is made."
                     + dropped_text([(f"{s['variable']} {s['group']}", s["roc_auc"]) for s in r["subgroups"]],
                                    r["n_boot"]))]


def dropped_text(named: Sequence[tuple[str, Mapping | None]], n_boot: int) -> str:
    """The sentence ending a subgroup table's text that says which intervals rest on fewer resamples
    (:func:`cohort.dropped_sentence`: the console's warning, explained where the reader meets the
    numbers), with its leading space; '' where every interval used all resamples."""
    sentence = cohort.dropped_sentence(named, n_boot)
    return f" {sentence}" if sentence else ""


def _measurement(r: Mapping) -> list[tuple] | None:
    """A graded target's section (:mod:`measurement`), under its own heading; binary runs have none."""
    return measure_report.report_blocks(r["measurement"]) if r.get("measurement") else None


def _methods(r: Mapping) -> list[tuple]:
    how = interval_text(r["interval"])
    notes = [f"Network predictions: {r['run']}/test_predictions.csv, written from best.pth (epoch {r['epoch']}); "
             f"threshold {r['network']['threshold']:.4f} from best.pth; source: {r['threshold_source']}.",
             "No test label or prediction influences the threshold, the selected epoch or the baseline's fit "
             "(its threshold: Youden's J on validation).",
             f"Confidence intervals: {how} over patients ({r['n_boot']} resamples, seed {r['seed']}); BCa uses a "
             "leave-one-patient-out jackknife for its acceleration (Efron, JASA 1987). For the ROC AUC also "
             "DeLong's interval with placement values summed per patient (Obuchowski, Biometrics 1997), on the "
             "logit scale.",
             "Comparison: paired bootstrap of the AUC difference on the same resampled patients (primary); DeLong's "
             "test for two correlated ROC curves, clustered by patient (secondary)."]
    if r["n_boot"] < 1000:
        notes.append(f"Only {r['n_boot']} bootstrap resamples: interval ends are imprecise; use 2000 or more "
                     "for published numbers.")
    notes += [f"Check: {w}" for w in r["checks"]]
    notes += [f"Warning: {w}" for w in r["warnings"]]
    return [("list", notes)]


GALLERY_CAPTIONS = {"tp": "true positives", "tn": "true negatives", "fp": "false positives", "fn": "false negatives"}


def gallery_blocks(r: Mapping) -> list[tuple]:
    """The case gallery (figures ``gallery_<kind>``) and its table, or a sentence why there is none."""
    cases = r.get("gallery") or []
    if not cases:
        why = ("--gallery 0" if not r.get("gallery_size") else "no test image could be shown")
        return [("p", f"No case gallery ({why}).")]
    kinds = list(dict.fromkeys(c["kind"] for c in cases))
    b: list[tuple] = [("p", f"The {r['gallery_size']} test image(s) the network was most sure of in each outcome at the "
                            f"threshold {r['network']['threshold']:.3f}: highest probability first where it "
                            "predicted osteoporosis, lowest first where it predicted normal. Colour: expected "
                            "gradients of the osteoporosis score against the run's training radiographs (where the "
                            "image raises the score above typical patients'). The misses are where to look for "
                            "label noise, artefacts the network relies on, or patients unlike its training data.")]
    b.append(("figures", [(f"gallery_{k}", f"Most confident {GALLERY_CAPTIONS[k]}.") for k in kinds]))
    sex = {1.0: "female", 0.0: "male"}
    b.append(("table", ["Outcome", "File", "True label", "Probability", "Sex", "Age", "BMI"],
              [[c["kind"].upper(), c["file"], "osteoporosis" if c["label"] else "normal", fmt(c["probability"]),
                sex.get(c["sex"], "NA"), fmt(c["age"], 0), fmt(c["bmi"], 1)] for c in cases]))
    missing = [GALLERY_CAPTIONS[k] for k in GALLERY_CAPTIONS if k not in kinds]
    if missing:
        b.append(("note", f"No {', '.join(missing)} on this test set at this threshold."))
    return b


# The run report, in order; a new section is one more function here (``title`` None: it brings its own heading).
RUN_REPORT = (Section(None, _opening), Section("Summary", _summary, numbered=False), Section("Data", _data),
              Section("Training", _training), Section("Discrimination on test", _discrimination),
              Section("Test metrics with 95% confidence intervals", _metrics),
              Section("Confusion matrix at the validation threshold", _confusion),
              Section("Calibration", _calibration), Section("Clinical usefulness: decision curve", _decision),
              Section("Does the image add to age, sex and BMI?", _image_adds), Section("Subgroups", _subgroups),
              Section("Case gallery", gallery_blocks), Section(None, _measurement),
              Section("Methods and notes", _methods))


def report_blocks(r: Mapping) -> list[tuple]:
    """The blocks of a run report from the numbers :func:`run_report.write_report` computed."""
    return assemble(RUN_REPORT, r)


def report_figures(r: dict, y: np.ndarray, probs: Sequence[np.ndarray],
                   history: pd.DataFrame | None) -> dict[str, bytes]:
    """The PNG figures of a run report; ``probs``: the network's and (if any) the baseline's test probabilities,
    in the order of the report's models."""
    rows = _model_rows(r)
    colours = PALETTE[:len(rows)]
    figures = {"roc_pr": figure_roc_pr(y, [(name, p, e["threshold"], c) for (name, e), p, c in
                                           zip(rows, probs, colours)]),
               "confusion": figure_confusion([(name, e["confusion"], e["threshold"]) for name, e in rows]),
               "calibration": figure_calibration(y, [(name, p, c) for (name, _), p, c in zip(rows, probs, colours)]),
               "decision": figure_decision_curve([(name, e["decision_curve"], e["threshold"], c)
                                                  for (name, e), c in zip(rows, colours)])}
    if history is not None:
        figures["training"] = figure_training(history, r["epoch"], r["select_metric"])
    return figures


def render_markdown(blocks: Sequence[tuple], figure_dir: str = FIGURE_DIR) -> str:
    out: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind == "h1":
            out.append(f"# {block[1]}")
        elif kind == "h2":
            out.append(f"## {block[1]}")
        elif kind in ("p", "note"):
            out.append(block[1] if kind == "p" else f"*{block[1]}*")
        elif kind == "callout":
            out.append(f"> {block[1]}")
        elif kind == "list":
            out.append("\n".join(f"- {item}" for item in block[1]))
        elif kind == "table":
            header, rows = block[1], block[2]
            lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
            lines += ["| " + " | ".join(row) + " |" for row in rows]
            out.append("\n".join(lines))
        elif kind == "figures":
            out.append("\n\n".join(f"![{cap}]({figure_dir}/{name}.png)" for name, cap in block[1]))
    return "\n\n".join(out) + "\n"


BOLD = re.compile(r"\*\*(.+?)\*\*")  # Markdown's bold, as in the CV summary's mean row
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;max-width:1100px;
 margin:2em auto;padding:0 1.5em;color:#1d1d1f;line-height:1.5;font-size:15px}
h1{font-size:1.55em;border-bottom:2px solid #d0d7de;padding-bottom:.3em;margin-bottom:.4em}
h2{font-size:1.2em;margin-top:1.9em;border-bottom:1px solid #e5e7eb;padding-bottom:.2em;color:#1f3b63}
.table-scroll{max-width:100%;overflow-x:auto;margin:.7em 0}
table{border-collapse:collapse;font-size:.9em}
th,td{border:1px solid #d0d7de;padding:.35em .75em;text-align:right;vertical-align:top}
td.num{white-space:nowrap}
th:first-child,td:first-child{text-align:left}
thead th{background:#f1f4f8;font-weight:600}
tbody tr:nth-child(even){background:#fafbfc}
.figs{display:flex;flex-wrap:wrap;gap:1.2em;align-items:flex-start}
figure{margin:.4em 0;flex:1 1 440px;max-width:100%}
figure img{max-width:100%;height:auto;display:block;border:1px solid #eef0f3}
figcaption{font-size:.85em;color:#555;margin-top:.3em}
.callout{background:#eef5ff;border-left:4px solid #3b7dd8;padding:.7em 1em;margin:.8em 0}
.note{color:#555;font-size:.88em}
ul{padding-left:1.3em} li{margin:.25em 0}
"""


def _inline(text: str) -> str:
    """HTML of a text as render_markdown's readers see it: escaped, Markdown's ``**bold**`` as bold."""
    return BOLD.sub(r"<strong>\1</strong>", html.escape(text))


NUMBER_CELL = re.compile(r"^[-+−]?[\d.]+(?: ± [\d.]+| \([-−]?[\d.]+ to [-−]?[\d.]+\)| of \d+)?$")


def _cell(text: str) -> str:
    """One cell; a figure (``0.894 ± 0.032``, ``0.921 (0.880 to 0.954)``, ``5 of 5``) is never broken across
    lines (the table's box scrolls instead), prose wraps."""
    return f"<td class=\"num\">{_inline(text)}</td>" if NUMBER_CELL.match(text.strip("* ")) else f"<td>{_inline(text)}</td>"


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table in its own box, which scrolls sideways where the table is wider than the page."""
    head = "".join(f"<th>{_inline(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(str(c)) for c in row) + "</tr>" for row in rows)
    return f"<div class=\"table-scroll\"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def render_html(blocks: Sequence[tuple], figures: Mapping[str, bytes], title: str) -> str:
    """One self-contained HTML page of ``blocks``, the PNG ``figures`` (name -> bytes) embedded."""
    e = html.escape
    out = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{e(title)}</title>"
           f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{CSS}</style></head><body>"]
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2"):
            out.append(f"<{kind}>{_inline(block[1])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{_inline(block[1])}</p>")
        elif kind == "note":
            out.append(f"<p class=\"note\">{_inline(block[1])}</p>")
        elif kind == "callout":
            out.append(f"<div class=\"callout\">{_inline(block[1])}</div>")
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in block[1]) + "</ul>")
        elif kind == "table":
            out.append(_html_table(block[1], block[2]))
        elif kind == "figures":
            figs = "".join(f"<figure><img alt=\"{e(cap)}\" src=\"data:image/png;base64,"
                           f"{base64.b64encode(figures[name]).decode('ascii')}\"><figcaption>{e(cap)}</figcaption>"
                           "</figure>" for name, cap in block[1])
            out.append(f"<div class=\"figs\">{figs}</div>")
    out.append("</body></html>\n")
    return "\n".join(out)

