"""Run report: the test-set numbers of one run with what a clinical reader needs to trust them.

    python3 report.py --run outs/<save_dir>/fold<fold> [--data_dir data] [--bootstrap 2000]
    python3 report.py --cv outs/<save_dir>          # mean and SD over cross-validation folds

Writes ``report.md`` (figures in ``report_figures/``), ``report.html`` (self-contained, figures
embedded) and ``report_metrics.json`` into the run folder, each atomically. Contents follow what
TRIPOD+AI and CLAIM ask of diagnostic-accuracy studies: the data per split; training curves; ROC
and precision-recall curves; the confusion matrix at the threshold chosen on validation; a
reliability curve with Brier score, calibration slope and intercept; every test metric with a 95%
confidence interval (bootstrap over patients, DeLong for the AUC); and a clinical-only baseline
(age, sex, BMI; :mod:`baseline`) on the same splits with a paired comparison, which says whether
the image adds anything.

Only the best epoch's test predictions (``test_predictions.csv``, scored from ``best.pth``) are
used. Both thresholds -- the network's, stored in ``best.pth`` when the epoch was selected, and
the baseline's -- are chosen on validation; no test value influences any choice.
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import logging
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import precision_recall_curve, roc_curve

import baseline
import confidence
import filenames
import loader
import metrics
import runfiles
import runtime
from cli import positive_int

logger = logging.getLogger(__name__)

ALPHA = 0.05
FIGURE_DIR = "report_figures"
# (key of confidence.bootstrap_metrics, label), in the order of the metrics table
TABLE_METRICS = (("roc_auc", "ROC AUC"), ("pr_auc", "PR AUC (average precision)"), ("brier", "Brier score"),
                 ("sensitivity", "Sensitivity"), ("specificity", "Specificity"), ("precision", "PPV (precision)"),
                 ("npv", "NPV"), ("accuracy", "Accuracy"), ("balanced_accuracy", "Balanced accuracy"),
                 ("f1", "F1"), ("f2", "F2"), ("mcc", "MCC"))
CV_METRICS = ("roc_auc", "pr_auc", "brier", "accuracy", "sensitivity", "specificity", "precision", "npv",
              "f1", "f2", "balanced_accuracy", "mcc")
NET, BASE = "#1f5fa8", "#d9730d"  # network / clinical baseline colours in every figure


# --------------------------------------------------------------------------- reading a run

def run_facts(run_dir: str | os.PathLike) -> dict:
    """What a report reads from a finished run (through :func:`runfiles.load_run`): the checkpoint's
    facts, history, test/val predictions and test_metrics.json."""
    run = runfiles.load_run(run_dir)
    has_val = (run.dir / runfiles.PREDICTIONS["val"]).is_file()
    return {"dir": run.dir, "config": run.config, "threshold": run.threshold, "epoch": run.epoch,
            "clinical_stats": run.clinical_stats, "select_metric": run.select_metric, "test": run.predictions("test"),
            "val": run.predictions("val") if has_val else None, "history": run.history(),
            "test_metrics": run.test_metrics()}


def check_same_images(split: str, files: Sequence[Path], predictions: pd.DataFrame | None, source: str) -> None:
    """The images described and used for the baseline must be the ones the run scored."""
    if predictions is None:
        return
    described, scored = {Path(f).name for f in files}, set(predictions["file"])
    if described != scored:
        only_d, only_s = sorted(described - scored), sorted(scored - described)
        raise ValueError(f"the {split} images found ({len(described)}) differ from those in {source} "
                         f"({len(scored)}): {len(only_d)} only in the data folder (e.g. {only_d[:2]}), "
                         f"{len(only_s)} only in the run (e.g. {only_s[:2]}); pass the data folder the run used")


# --------------------------------------------------------------------------- numbers

def _mean_sd(values: pd.Series) -> dict:
    v = values.dropna().to_numpy(dtype=float)
    return {"mean": float(v.mean()) if v.size else math.nan,
            "sd": float(v.std(ddof=1)) if v.size > 1 else math.nan, "n": int(v.size)}


def describe_split(files: Sequence[str | os.PathLike]) -> dict:
    """Images, patients, prevalence and clinical summaries of one split. Clinical values are
    summarised per patient (mean over the patient's images), missing = missing on all images."""
    table = baseline.clinical_table(files)
    if table.empty:
        return {"images": 0, "patients": 0}
    per_patient = table.groupby("patient").agg(label=("label", "max"), sex=("sex", "mean"), age=("age", "mean"),
                                               bmi=("bmi", "mean"))
    n_pat = len(per_patient)
    sex = per_patient["sex"].dropna()
    return {"images": len(table), "osteoporosis_images": int(table["label"].sum()),
            "prevalence": float(table["label"].mean()), "patients": n_pat,
            "osteoporosis_patients": int(per_patient["label"].sum()),
            "age": _mean_sd(per_patient["age"]), "bmi": _mean_sd(per_patient["bmi"]),
            "female_percent": float(100 * sex.mean()) if len(sex) else math.nan,
            "missing_percent": {c: float(100 * per_patient[c].isna().mean()) for c in loader.CLINICAL_NAMES}}


def evaluate(y: np.ndarray, p: np.ndarray, threshold: float, groups: np.ndarray, n_boot: int, seed: int) -> dict:
    """Every test metric with its patient-bootstrap 95% CI, DeLong AUC CI, calibration, confusion counts."""
    point = metrics.compute_metrics(y, p, threshold)
    return {"threshold": float(threshold),
            "metrics": confidence.bootstrap_metrics(y, p, threshold, groups=groups, n_boot=n_boot, seed=seed,
                                                    alpha=ALPHA),
            "delong_auc": confidence.delong_auc(y, p, alpha=ALPHA),
            "calibration": confidence.calibration(y, p),
            "confusion": {k: int(point[k]) for k in ("tp", "fp", "tn", "fn")}}


def _labelled(caught: list, label: str, func, *args, **kwargs):
    """Call ``func``; warnings it records into ``caught`` get ``label`` in front (which model they concern)."""
    start = len(caught)
    out = func(*args, **kwargs)
    for w in caught[start:]:
        w.label = f"{label}: "
    return out


# --------------------------------------------------------------------------- figures

def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _style(ax) -> None:
    ax.grid(True, alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)


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
        _style(ax)
    fig.tight_layout()
    return _png(fig)


def _two_classes(y: np.ndarray) -> bool:
    return 0 < int(np.sum(y)) < len(y)


def figure_roc_pr(y: np.ndarray, models: Sequence[tuple[str, np.ndarray, float, str]]) -> bytes:
    """ROC and precision-recall curves of each (name, probabilities, threshold, colour), with the
    operating point at the validation threshold."""
    fig = Figure(figsize=(10, 4.2))
    ax_roc, ax_pr = fig.subplots(1, 2)
    if _two_classes(y):
        for name, p, t, colour in models:
            fpr, tpr, _ = roc_curve(y, p, drop_intermediate=False)
            prec, rec, _ = precision_recall_curve(y, p)
            pred = p >= t
            sens, spec = pred[y == 1].mean(), 1 - pred[y == 0].mean()
            ppv = y[pred].mean() if pred.any() else math.nan
            ax_roc.plot(fpr, tpr, color=colour, lw=2, label=f"{name} (AUC {metrics.roc_auc(y, p):.3f})")
            ax_roc.plot([1 - spec], [sens], "o", color=colour, ms=8, mec="black")
            ax_pr.step(rec, prec, where="post", color=colour, lw=2,
                       label=f"{name} (AP {metrics.pr_auc(y, p):.3f})")
            ax_pr.plot([sens], [ppv], "o", color=colour, ms=8, mec="black")
        ax_pr.axhline(y.mean(), color="grey", ls="--", lw=1, label=f"prevalence {y.mean():.2f}")
    else:
        for ax in (ax_roc, ax_pr):
            ax.text(0.5, 0.5, "undefined: the test set holds one class", ha="center", va="center")
    ax_roc.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="chance")
    ax_roc.set(xlabel="1 - specificity (false-positive rate)", ylabel="sensitivity", xlim=(-0.01, 1.01),
               ylim=(-0.01, 1.01))
    ax_pr.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
    ax_roc.set_title("ROC curve (test; dot = validation threshold)", fontsize=11)
    ax_pr.set_title("Precision-recall curve (test)", fontsize=11)
    for ax in (ax_roc, ax_pr):
        ax.legend(fontsize=8, loc="lower right" if ax is ax_roc else "lower left", frameon=False)
        ax.set_aspect("equal")
        _style(ax)
    fig.tight_layout()
    return _png(fig)


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
    return _png(fig)


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


def figure_calibration(y: np.ndarray, models: Sequence[tuple[str, np.ndarray, str]]) -> bytes:
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
    ax.set_title(f"Calibration on test ({n_bins} bins of equal size)", fontsize=11)
    ax.legend(fontsize=8, loc="upper left", frameon=False)
    ax.tick_params(labelbottom=False)
    ax_hist.set(xlabel="predicted probability of osteoporosis", ylabel="images")
    for a in (ax, ax_hist):
        _style(a)
    return _png(fig)


# --------------------------------------------------------------------------- text

def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _ci(d: Mapping, key: str = "point", digits: int = 3) -> str:
    """'0.812 (0.731-0.884)' from dict(point|auc|diff, low, high)."""
    if not math.isfinite(d.get(key, math.nan) if d.get(key) is not None else math.nan):
        return "n/a"
    low, high = d.get("low"), d.get("high")
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return f"{_fmt(d[key], digits)} (CI n/a)"
    return f"{_fmt(d[key], digits)} ({_fmt(low, digits)} to {_fmt(high, digits)})"


def _p(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def _p_relation(value: float | None) -> str:
    """'< 0.001' or '= 0.123', to follow a 'p' in a sentence."""
    text = _p(value)
    return text if text.startswith("<") else f"= {text}"


def _mean_sd_text(d: Mapping, digits: int = 1) -> str:
    if not d or d.get("n", 0) == 0:
        return "n/a"
    sd = f" ± {d['sd']:.{digits}f}" if math.isfinite(d["sd"]) else ""
    return f"{d['mean']:.{digits}f}{sd}"


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


# Blocks shared by the Markdown and HTML renderings:
#   ("h1"|"h2"|"p"|"note"|"callout", text), ("table", header, rows), ("list", items),
#   ("figures", [(name, caption), ...])  -- figures shown side by side in HTML

def _blocks(r: dict) -> list[tuple]:
    net, base, cmp_ = r["network"], r["baseline"], r["comparison"]
    m, bm = net["metrics"], base["metrics"]
    test = r["data"]["test"]
    cfg = r["run_config"]
    b: list[tuple] = [("h1", f"Run report: {r['run']}")]
    b.append(("p", f"Model {cfg.get('model')} ({runfiles.FUSION_TEXT[cfg['fusion']]} of sex, age "
                   f"and BMI), input {cfg['image_size'][0]} x {cfg['image_size'][1]} pixels, trained "
                   f"{len(r['history']) if r['history'] else '?'} epochs; the best epoch by validation "
                   f"{r['select_metric']} is epoch {r['epoch']}, and only its checkpoint was scored on test. "
                   f"Data: {r['data_dir']}. Report made {r['created']}."))

    b.append(("h2", "Summary"))
    b.append(("callout",
              f"Test set: {test['images']} images of {test['patients']} patients, {test['osteoporosis_images']} "
              f"with osteoporosis ({100 * test['prevalence']:.0f}%). Network ROC AUC {_ci(m['roc_auc'])}; at the "
              f"threshold {net['threshold']:.3f} fixed on validation: sensitivity {_ci(m['sensitivity'])}, "
              f"specificity {_ci(m['specificity'])}. Clinical-only baseline (age, sex, BMI) ROC AUC "
              f"{_ci(bm['roc_auc'])}. AUC difference network - baseline {_ci(cmp_['auc_difference'], 'diff')}, "
              f"p {_p_relation(cmp_['auc_difference']['p_value'])} (paired bootstrap over patients); DeLong p "
              f"{_p_relation(cmp_['delong_test']['p_value'])}. 95% confidence intervals in parentheses."))
    b.append(("p", verdict(cmp_["auc_difference"])))

    b.append(("h2", "1. Data"))
    rows = []
    for split in (*loader.SPLITS, "all"):
        d = r["data"][split]
        if not d.get("images"):
            rows.append([split, "0", "0", "", "", "", "", "", ""])
            continue
        miss = d["missing_percent"]
        rows.append([split, str(d["images"]), str(d["patients"]),
                     f"{d['osteoporosis_images']} ({100 * d['prevalence']:.1f}%)", str(d["osteoporosis_patients"]),
                     _mean_sd_text(d["age"]), _fmt(d["female_percent"], 1), _mean_sd_text(d["bmi"]),
                     " / ".join(f"{miss[c]:.0f}" for c in ("age", "sex", "bmi"))])
    b.append(("table", ["Split", "Images", "Patients", "Osteoporosis images (%)", "Patients with osteoporosis",
                        "Age, years (mean ± SD)", "Female (%)", "BMI, kg/m² (mean ± SD)",
                        "Missing age / sex / BMI (%)"], rows))
    b.append(("note", "Clinical values per patient (mean over the patient's images); percentages of patients with "
                      "a known value. Missing values are imputed with the training "
                      "mean for both the network and the baseline."))

    b += [("callout", f"Check: {c}") for c in r["checks"] if c.startswith("LEAK") or "do NOT" in c]

    b.append(("h2", "2. Training"))
    if r["history"]:
        val_auc = next((h.get("val_roc_auc") for h in r["history"] if int(h["epoch"]) == r["epoch"]), None)
        b.append(("figures", [("training", "Loss per epoch (left) and validation ROC AUC (right); the dotted line "
                                           "marks the epoch whose checkpoint was tested.")]))
        b.append(("p", f"Best epoch {r['epoch']} (validation ROC AUC {_fmt(val_auc)}), selected by validation "
                       f"{r['select_metric']}. Its threshold was stored in best.pth at that moment, before any "
                       "test image was scored."))
    else:
        b.append(("p", "history.csv not found; no training curves."))

    b.append(("h2", "3. Discrimination on test"))
    b.append(("figures", [("roc_pr", "ROC (left) and precision-recall (right) curves on the test set; dots: each "
                                     "model's operating point at its validation threshold.")]))
    b.append(("table", ["Model", "ROC AUC, bootstrap 95% CI", "ROC AUC, DeLong 95% CI", "PR AUC, bootstrap 95% CI"],
              [["Network", _ci(m["roc_auc"]), _ci(net["delong_auc"], "auc"), _ci(m["pr_auc"])],
               ["Clinical baseline", _ci(bm["roc_auc"]), _ci(base["delong_auc"], "auc"), _ci(bm["pr_auc"])]]))

    b.append(("h2", "4. Test metrics with 95% confidence intervals"))
    b.append(("table", ["Metric", "Network", "Clinical baseline"],
              [["Threshold (from validation)", _fmt(net["threshold"]), _fmt(base["threshold"])]]
              + [[label, _ci(m[k]), _ci(bm[k])] for k, label in TABLE_METRICS]))
    b.append(("note", f"Point estimate (95% CI). Threshold-dependent metrics at each model's threshold, chosen on "
                      f"validation (Youden's J). Percentile bootstrap with {r['n_boot']} resamples of the "
                      f"{test['patients']} test patients (all images of a drawn patient together), seed {r['seed']}."))

    b.append(("h2", "5. Confusion matrix at the validation threshold"))
    c = net["confusion"]
    b.append(("figures", [("confusion", "Rows: truth; columns: prediction (osteoporosis when probability >= "
                                        "threshold).")]))
    b.append(("table", ["Model", "TP", "FN", "TN", "FP"],
              [["Network", str(c["tp"]), str(c["fn"]), str(c["tn"]), str(c["fp"])],
               ["Clinical baseline", *(str(base["confusion"][k]) for k in ("tp", "fn", "tn", "fp"))]]))

    b.append(("h2", "6. Calibration"))
    b.append(("figures", [("calibration", f"Observed fraction with osteoporosis (Wilson 95% interval) against the "
                                          f"mean predicted probability, in {calibration_bins(test['images'])} bins "
                                          "holding about equal numbers of test images; below: the predicted "
                                          "probabilities.")]))
    nc, bc = net["calibration"], base["calibration"]
    b.append(("table", ["Model", "Brier score (95% CI)", "Calibration slope", "Calibration intercept"],
              [["Network", _ci(m["brier"]), _fmt(nc["slope"]), _fmt(nc["intercept"])],
               ["Clinical baseline", _ci(bm["brier"]), _fmt(bc["slope"]), _fmt(bc["intercept"])]]))
    b.append(("note", "Slope 1 and intercept 0 are ideal; a slope below 1 means too extreme (over-confident) "
                      "probabilities, an intercept below 0 risks overestimated on average (Van Calster et al., "
                      "BMC Med 2019;17:230). Brier score: mean squared error of the probability, lower is better."))

    b.append(("h2", "7. Does the image add to age, sex and BMI?"))
    d, dl = cmp_["auc_difference"], cmp_["delong_test"]
    b.append(("table", ["Comparison on the same test images", "Value"],
              [["ROC AUC, network", _fmt(m["roc_auc"]["point"])],
               ["ROC AUC, clinical baseline", _fmt(bm["roc_auc"]["point"])],
               ["Difference (paired bootstrap over patients, 95% CI)", _ci(d, "diff")],
               ["p-value, paired bootstrap", _p(d["p_value"])],
               ["p-value, DeLong test", _p(dl["p_value"])]]))
    b.append(("p", verdict(d)))
    coef = base["coef"]
    b.append(("p", "Clinical baseline: logistic regression on standardised sex, age and BMI, fitted on the "
                   f"{base['n_train']} training images (L2 penalty C = {base['C']:g}); log-odds per training SD: "
                   + ", ".join(f"{k} {v:+.3f}" for k, v in coef.items())
                   + f"; intercept {base['intercept']:+.3f}. Validation ROC AUC {_fmt(base['val_roc_auc'])}."))

    b.append(("h2", "8. Methods and notes"))
    notes = [f"Network predictions: {r['run']}/test_predictions.csv, written from best.pth (epoch {r['epoch']}); "
             f"threshold {net['threshold']:.4f} from best.pth; source: {r['threshold_source']}.",
             "Baseline threshold: Youden's J on the validation split. No test label or prediction influences "
             "either threshold, the selected epoch or the baseline's fit.",
             f"Confidence intervals: percentile bootstrap over patients ({r['n_boot']} resamples, seed {r['seed']}); "
             "for the ROC AUC also DeLong's interval (DeLong et al., Biometrics 1988), which treats images as "
             "independent and is too narrow when patients contribute several images.",
             "Comparison: paired bootstrap of the AUC difference on the same resampled patients; DeLong's test "
             "for two correlated ROC curves."]
    if r["n_boot"] < 1000:
        notes.append(f"Only {r['n_boot']} bootstrap resamples: interval ends are imprecise; use 2000 or more "
                     "for published numbers.")
    notes += [f"Check: {w}" for w in r["checks"]]
    notes += [f"Warning: {w}" for w in r["warnings"]]
    b.append(("list", notes))
    return b


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


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;max-width:1100px;
 margin:2em auto;padding:0 1.5em;color:#1d1d1f;line-height:1.5;font-size:15px}
h1{font-size:1.55em;border-bottom:2px solid #d0d7de;padding-bottom:.3em;margin-bottom:.4em}
h2{font-size:1.2em;margin-top:1.9em;border-bottom:1px solid #e5e7eb;padding-bottom:.2em;color:#1f3b63}
table{border-collapse:collapse;margin:.7em 0;font-size:.9em}
th,td{border:1px solid #d0d7de;padding:.35em .75em;text-align:right;vertical-align:top}
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


def render_html(blocks: Sequence[tuple], figures: Mapping[str, bytes], title: str) -> str:
    e = html.escape
    out = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{e(title)}</title>"
           f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{CSS}</style></head><body>"]
    i = 0
    while i < len(blocks):
        block = blocks[i]
        kind = block[0]
        if kind in ("h1", "h2"):
            out.append(f"<{kind}>{e(block[1])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{e(block[1])}</p>")
        elif kind == "note":
            out.append(f"<p class=\"note\">{e(block[1])}</p>")
        elif kind == "callout":
            out.append(f"<div class=\"callout\">{e(block[1])}</div>")
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{e(item)}</li>" for item in block[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{e(h)}</th>" for h in block[1])
            body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in block[2])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "figures":
            items = list(block[1])
            figs = "".join(f"<figure><img alt=\"{e(cap)}\" src=\"data:image/png;base64,"
                           f"{base64.b64encode(figures[name]).decode('ascii')}\"><figcaption>{e(cap)}</figcaption>"
                           "</figure>" for name, cap in items)
            out.append(f"<div class=\"figs\">{figs}</div>")
        i += 1
    out.append("</body></html>\n")
    return "\n".join(out)


# --------------------------------------------------------------------------- the report

def write_report(run_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None, n_boot: int = 2000,
                 seed: int = 0, files: Mapping[str, Sequence[str | os.PathLike]] | None = None) -> dict:
    """Write ``report.md`` (+ ``report_figures/*.png``), ``report.html`` and ``report_metrics.json``
    into ``run_dir`` and return the numbers of ``report_metrics.json``.

    ``data_dir`` defaults to the run's ``config["data_dir"]``; ``files`` (split -> image paths)
    overrides both, e.g. for a cross-validation fold whose config lacks ``cv_folds``/``cv_fold``.
    The val and test images must be exactly those in the run's prediction files.
    """
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    run = run_facts(run_dir)
    run_path = run["dir"]
    config = run["config"]
    paths = runfiles.split_files(config, data_dir, files)
    check_same_images("test", paths["test"], run["test"], "test_predictions.csv")
    check_same_images("val", paths["val"], run["val"], "val_predictions.csv")
    checks: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fitted = loader.ClinicalStats.fit([filenames.decode(f) for f in paths["train"]]).to_dict()
        same_train = np.allclose(fitted["mean"], run["clinical_stats"]["mean"], rtol=1e-6, atol=1e-9) and \
            np.allclose(fitted["std"], run["clinical_stats"]["std"], rtol=1e-6, atol=1e-9)
        checks.append("the training images found reproduce the run's clinical normalisation statistics"
                      if same_train else
                      "the training images found do NOT reproduce the run's clinical normalisation statistics: "
                      "the data folder differs from the one the network was trained on")
        split_patients = {s: {filenames.decode(f).patient for f in paths[s]} for s in loader.SPLITS}
        for i, a in enumerate(loader.SPLITS):
            for b in loader.SPLITS[i + 1:]:
                shared = sorted(split_patients[a] & split_patients[b])
                if shared:
                    checks.append(f"LEAK: {len(shared)} patient(s) have images in both {a} and {b} "
                                  f"(e.g. {', '.join(shared[:3])}); the {b} numbers are optimistic")
        if not any(c.startswith("LEAK") for c in checks):
            checks.append("no patient has images in two splits")
        data = {split: describe_split(paths[split]) for split in loader.SPLITS}
        data["all"] = describe_split([f for s in loader.SPLITS for f in paths[s]])

        base = baseline.clinical_baseline(files=paths)
        test = run["test"].merge(base["test"][["file", "probability"]].rename(columns={"probability": "baseline"}),
                                 on="file", how="left", validate="one_to_one")
        y = test["label"].to_numpy(dtype=np.int64)
        p_net = test["probability"].to_numpy(dtype=np.float64)
        p_base = test["baseline"].to_numpy(dtype=np.float64)
        groups = test["patient"].to_numpy()
        network = _labelled(caught, "network", evaluate, y, p_net, run["threshold"], groups, n_boot, seed)
        base_eval = _labelled(caught, "clinical baseline", evaluate, y, p_base, base["threshold"], groups, n_boot,
                              seed)
        val = base["val"]
        base_eval.update(coef=base["coef"], intercept=base["intercept"], n_train=base["n_train"], C=base["C"],
                         val_roc_auc=metrics.roc_auc(val["label"].to_numpy(), val["probability"].to_numpy()))
        comparison = {"auc_difference": _labelled(caught, "AUC difference", confidence.paired_bootstrap_diff, y,
                                                  p_net, p_base, metrics.roc_auc, groups=groups, n_boot=n_boot,
                                                  seed=seed, alpha=ALPHA),
                      "delong_test": _labelled(caught, "DeLong test", confidence.delong_test, y, p_net, p_base)}
        if run["test_metrics"] is not None:
            stored = run["test_metrics"]["at_threshold"].get("roc_auc")
            now = network["metrics"]["roc_auc"]["point"]
            if stored is not None and math.isfinite(now) and abs(stored - now) > 1e-4:
                checks.append(f"test_metrics.json ROC AUC {stored:.4f} differs from test_predictions.csv "
                              f"({now:.4f}); the run folder was changed after testing")
        history = run["history"]
        figures = {"roc_pr": figure_roc_pr(y, [("Network", p_net, run["threshold"], NET),
                                               ("Clinical baseline", p_base, base["threshold"], BASE)]),
                   "confusion": figure_confusion([("Network", network["confusion"], run["threshold"]),
                                                  ("Clinical baseline", base_eval["confusion"], base["threshold"])]),
                   "calibration": figure_calibration(y, [("Network", p_net, NET),
                                                         ("Clinical baseline", p_base, BASE)])}
        if history is not None:
            figures["training"] = figure_training(history, run["epoch"], run["select_metric"])
    messages = list(dict.fromkeys(getattr(w, "label", "") + str(w.message) for w in caught))
    for message in messages:
        logger.warning("report: %s", message)

    result = {
        "run": f"{run_path.parent.name}/{run_path.name}", "run_dir": str(run_path),
        "created": time.strftime("%Y-%m-%d %H:%M"),
        "data_dir": str(data_dir if data_dir is not None else config.get("data_dir")),
        "n_boot": int(n_boot), "seed": int(seed), "alpha": ALPHA, "epoch": run["epoch"],
        "select_metric": run["select_metric"],
        "threshold_source": (run["test_metrics"] or {}).get("threshold_source", "validation at the best epoch"),
        "run_config": {k: config.get(k) for k in ("model", "fusion", "depth", "image_size", "epoch", "augment",
                                                  "select_metric", "seed", "cv_folds", "cv_fold")},
        "history": history.to_dict("records") if history is not None else None,
        "data": data, "network": network, "baseline": base_eval, "comparison": comparison,
        "checks": checks, "warnings": messages,
    }
    blocks = _blocks(result)
    fig_dir = run_path / FIGURE_DIR
    for name, png in figures.items():
        runfiles.write_bytes(fig_dir / f"{name}.png", png)
    runfiles.write_text(run_path / "report.md", render_markdown(blocks))
    runfiles.write_text(run_path / "report.html", render_html(blocks, figures, f"Run report: {result['run']}"))
    saved = {k: v for k, v in result.items() if k != "history"}
    runfiles.write_json(run_path / "report_metrics.json", saved)
    logger.info("report written: %s", run_path / "report.html")
    return saved


# --------------------------------------------------------------------------- cross-validation

def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def write_cv_summary(save_dir_path: str | os.PathLike, fold_run_dirs: Sequence[str | os.PathLike]) -> dict:
    """``cv_summary.json`` and ``cv_report.md`` in ``save_dir_path``: each fold's test metrics (at its
    own validation threshold), their mean and SD (ddof 1) over folds, and, where a fold has a
    ``report_metrics.json``, the clinical baseline's AUC and the difference."""
    out_dir = Path(save_dir_path)
    if not fold_run_dirs:
        raise ValueError("write_cv_summary needs at least one fold run folder")
    folds = []
    for run in map(Path, fold_run_dirs):
        path = run / "test_metrics.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: test every fold before summarising")
        tm = runfiles.read_json(path)
        row = {"run": run.name, "epoch": tm["epoch"], "threshold": tm["threshold"], "n_images": tm["n_images"],
               **{k: _number(tm["at_threshold"].get(k)) for k in CV_METRICS}}
        if (run / "report_metrics.json").is_file():
            rep = runfiles.read_json(run / "report_metrics.json")
            row["baseline_roc_auc"] = _number(rep["baseline"]["metrics"]["roc_auc"]["point"])
            row["roc_auc_difference"] = _number(rep["comparison"]["auc_difference"]["diff"])
        folds.append(row)
    keys = [k for k in ("threshold", *CV_METRICS, "baseline_roc_auc", "roc_auc_difference") if k in folds[0]]
    mean, sd = {}, {}
    for k in keys:
        v = np.array([f.get(k, math.nan) for f in folds], dtype=float)
        v = v[np.isfinite(v)]
        mean[k] = float(v.mean()) if v.size else math.nan
        sd[k] = float(v.std(ddof=1)) if v.size > 1 else math.nan
    summary = {"n_folds": len(folds), "mean": mean, "sd": sd, "folds": folds,
               "note": "every fold is scored on the same held-out test set, so the SD reflects variation between "
                       "trainings (data of the fold, initialisation), not sampling of test patients"}
    runfiles.write_json(out_dir / "cv_summary.json", summary)

    shown = [k for k in ("roc_auc", "pr_auc", "sensitivity", "specificity", "balanced_accuracy", "brier",
                         "baseline_roc_auc", "roc_auc_difference") if k in keys]
    header = ["Fold", "Best epoch", "Threshold", *shown]
    lines = [f"# Cross-validation summary: {out_dir.name}", "",
             f"{len(folds)} folds; test metrics of each fold's best checkpoint at its own validation threshold. "
             f"Note: {summary['note']}.", "",
             "| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for f in folds:
        lines.append("| " + " | ".join([f["run"], str(f["epoch"]), _fmt(f["threshold"])]
                                       + [_fmt(f.get(k)) for k in shown]) + " |")
    lines.append("| **mean ± SD** | | " + " | ".join(f"{_fmt(mean[k])} ± {_fmt(sd[k])}"
                                                     for k in ("threshold", *shown)) + " |")
    runfiles.write_text(out_dir / "cv_report.md", "\n".join(lines) + "\n")
    logger.info("cross-validation summary of %d folds written to %s", len(folds), out_dir / "cv_summary.json")
    return summary


# --------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--run", help="run folder outs/<save_dir>/fold<fold>")
    what.add_argument("--cv", metavar="SAVE_DIR", help="summarise every tested fold*/ run in outs/<save_dir>")
    p.add_argument("--data_dir", default=None, help="data folder the run used (default: from the run's config)")
    p.add_argument("--bootstrap", type=positive_int, default=2000, metavar="N",
                   help="bootstrap resamples of the test patients (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    runtime.setup_logging()
    if args.cv:
        save_dir = Path(args.cv)
        runs = sorted(d for d in save_dir.glob("fold*") if (d / "test_metrics.json").is_file())
        if not runs:
            raise SystemExit(f"--cv {save_dir}: no tested fold*/ run folders (with test_metrics.json) inside")
        result = write_cv_summary(save_dir, runs)
        print(f"{result['n_folds']} folds: ROC AUC {_fmt(result['mean']['roc_auc'])} ± {_fmt(result['sd']['roc_auc'])}"
              f"; {save_dir / 'cv_report.md'}")
        return result
    try:
        result = write_report(args.run, args.data_dir, args.bootstrap, args.seed)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"report.py: {exc}") from None
    auc = result["network"]["metrics"]["roc_auc"]
    print(f"test ROC AUC {_ci(auc)}; clinical baseline {_ci(result['baseline']['metrics']['roc_auc'])}; "
          f"report in {Path(args.run) / 'report.html'}")
    return result


if __name__ == "__main__":
    main()
