"""A run recalibrated on its own validation images: ``report.py --run RUN --recalibrate intercept|logistic``.

    python report.py --run outs/demo/fold_cont --recalibrate intercept   # or logistic: intercept and slope

The run's validation images as scored at its best epoch (``val_predictions.csv``: the images that
chose the epoch and the threshold, and for a continuous target fitted its probability's scale) refit
calibration in the large (``intercept``: logit p' = a + logit p) or intercept and slope (``logistic``:
logit p' = a + b logit p; Steyerberg, Clinical Prediction Models 2019, ch. 20), by
:func:`external.numbers`, the fit an external validation uses. Every number is then on the run's test
images (``test_predictions.csv``), which the fit never saw, as trained and recalibrated side by side.
The run's threshold goes through the same map, so every image keeps its decision: sensitivity,
specificity and the AUCs stay the run's; the probabilities, calibration, Brier score and net benefit
change.

Nothing of the run changes: the files go to ``RUN/recalibrated/<method>/`` --
``recalibration_report.md`` and ``.html`` (figures embedded; ``recalibration_figures/``),
``recalibration_metrics.json`` and ``recalibrated_test_predictions.csv`` (each test image's
probability as trained and recalibrated) -- each written atomically and, like the run report,
written anew when the command is run again.
"""
from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from hipx.core import measures
from hipx.reports import external
from hipx.reports import measurement as measure_report
from hipx.reports import render as report_render
from hipx.reports.style import PALETTE, ci, fmt, interval_text
from hipx.runs import runfiles
from hipx.stats import confidence
from hipx.stats.evaluation import ALPHA

logger = logging.getLogger(__name__)

OUT_DIR = "recalibrated"
FIGURE_DIR = "recalibration_figures"
REPORT, REPORT_HTML, METRICS, PREDICTIONS = ("recalibration_report.md", "recalibration_report.html",
                                             "recalibration_metrics.json", "recalibrated_test_predictions.csv")


def out_folder(run_dir: str | os.PathLike, method: str) -> Path:
    return Path(run_dir) / OUT_DIR / method


def recalibrate_run(run_dir: str | os.PathLike, method: str, n_boot: int = 2000, seed: int = 0,
                    interval: str = "bca") -> dict:
    """Fit ``method`` on the run's validation predictions, evaluate on its test predictions and write
    ``RUN/recalibrated/<method>/`` (module docstring). Returns the numbers of recalibration_metrics.json.
    ValueError (one line) for a cross-validation group, a run without its predictions, or images of
    one class."""
    if method not in external.RECALIBRATION:
        raise ValueError(f"--recalibrate {method!r}: use one of {', '.join(external.RECALIBRATION)}")
    confidence._check_bootstrap_args(n_boot, ALPHA, interval)
    path = Path(run_dir)
    if len(runfiles.model_runs(path)) > 1:
        raise ValueError(f"--run {path} --recalibrate: a cross-validation group; recalibration on validation images "
                         "is fitted per run: give one fold's run folder (or --external DATA_DIR for the fold ensemble)")
    run = runfiles.load_run(path)
    val, test = runfiles.read_predictions(path, "val"), runfiles.read_predictions(path, "test")
    run_files = runfiles.Run(path)
    external.check_classes(val, f"--recalibrate {method}: {run_files.predictions_file('val')}",
                           "a recalibration needs both classes")
    external.check_classes(test, f"--recalibrate {method}: {run_files.predictions_file('test')}",
                           "the ROC AUC is undefined for one class, and calibration needs both")
    table = pd.concat([val.assign(split="val"), test.assign(split="test")], ignore_index=True)
    part = (table["split"] == "val").to_numpy()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = external.numbers(table, part, run.threshold, method, n_boot, seed, interval)
    spec = measure_report.run_target_spec(run)
    result.update(run=str(path), method=method, epoch=run.epoch, created=time.strftime("%Y-%m-%d %H:%M"),
                  parts={"calibration": _count(val), "evaluation": _count(test)},
                  scale=measure_report.probability_scale(run.state, val, spec),
                  measure_name=(spec or {}).get("name"),
                  measure_unit=getattr(measures.NAMES.get((spec or {}).get("name")), "unit", ""),
                  warnings=list(dict.fromkeys(str(w.message) for w in caught)))
    return _write(out_folder(path, method), result, test)


def _count(table: pd.DataFrame) -> dict:
    return {"images": int(len(table)), "patients": int(table["patient"].nunique()),
            "osteoporosis_images": int(table["label"].sum())}


# --------------------------------------------------------------------------- the report

def _models(r: Mapping) -> list[tuple[str, dict]]:
    return [("As trained", r["as_trained"]), (f"Recalibrated ({r['method']})", r["recalibrated"])]


def _opening(r: Mapping) -> list[tuple]:
    c, e = r["parts"]["calibration"], r["parts"]["evaluation"]
    what = ("calibration in the large (the intercept a)" if r["method"] == "intercept" else
            "calibration in the large and slope (a and b)")
    b: list[tuple] = [("h1", f"Recalibration of {r['run']} on its validation images"),
                      ("p", f"The run's {what} was refitted on its own {c['images']} validation images of "
                            f"{c['patients']} patients ({c['osteoporosis_images']} with osteoporosis), as scored at "
                            f"its best epoch {r['epoch']} (val_predictions.csv: the images that chose the epoch and "
                            "the threshold). Every number below is on the run's "
                            f"{e['images']} test images of {e['patients']} patients (test_predictions.csv), which the "
                            f"recalibration never saw. The run's own files are unchanged. Made {r['created']}.")]
    if r.get("scale"):
        b.append(("p", f"A continuous target: the network's "
                       f"{measure_report.scale_text(r['scale'], r.get('measure_name'), r.get('measure_unit', ''))}; "
                       "the recalibration refits that probability on the same images' labels."))
    rc = r["recalibration"]
    m, n = r["as_trained"]["metrics"], r["recalibrated"]["metrics"]
    b.append(("callout", f"logit p' = {rc['a']:+.3f} + {rc['b']:.3f} × logit p. On test: calibration in the large "
                         f"{ci(m['calibration_intercept'])} as trained, {ci(n['calibration_intercept'])} recalibrated; "
                         f"slope {ci(m['calibration_slope'])} and {ci(n['calibration_slope'])}; Brier score "
                         f"{ci(m['brier'])} and {ci(n['brier'])} ({interval_text(r['interval'])} 95% CIs over "
                         f"{r['patients']} patients; no paired interval for the change)."))
    return b


def _calibration(r: Mapping) -> list[tuple]:
    return [("figures", [("calibration", "Observed fraction with osteoporosis (Wilson 95% interval) against the mean "
                                         "predicted probability on the test images, in bins of about equal size; "
                                         "below: the predicted probabilities.")]),
            ("table", ["Model", "Calibration in the large (intercept, 95% CI)", "Calibration slope (95% CI)",
                       "Brier score (95% CI)", "Mean predicted", "Observed"],
             [[name, ci(e["metrics"]["calibration_intercept"]), ci(e["metrics"]["calibration_slope"]),
               ci(e["metrics"]["brier"]), fmt(e["mean_predicted"]), fmt(r["osteoporosis_images"] / r["images"])]
              for name, e in _models(r)]),
            ("note", "Intercept 0 and slope 1 are ideal. An intercept below 0: the probabilities overestimate the risk "
                     "on average; a slope below 1: they are too extreme (Van Calster et al., BMC Med 2019;17:230). "
                     "The fit and the test images are different patients; a validation set as small as the test "
                     "set gives a fit as uncertain as these intervals.")]


def _decisions(r: Mapping) -> list[tuple]:
    m = r["as_trained"]["metrics"]
    return [("p", f"The run's threshold {r['threshold']:.4f} becomes {r['recalibration']['threshold']:.4f} under the "
                  "same map, so each test image keeps its decision and the ranking is unchanged: ROC AUC "
                  f"{ci(m['roc_auc'])}, sensitivity {ci(m['sensitivity'])}, specificity {ci(m['specificity'])}, as "
                  "trained and recalibrated.")]


def _decision_curve(r: Mapping) -> list[tuple]:
    return report_render.decision_blocks([(name, e["decision_curve"], e["threshold"]) for name, e in _models(r)],
                                         "Net benefit against threshold probability on the test images; dot: the "
                                         "run's threshold (as trained) and its image under the map (recalibrated).")


def _notes(r: Mapping) -> list[tuple]:
    return [("list", [f"Predictions: {OUT_DIR}/{r['method']}/{PREDICTIONS} (every test image, its probability as "
                      "trained and recalibrated).",
                      "Nothing was refitted on the test images; the validation images fitted the recalibration only."]
             + [f"Warning: {w}" for w in r["warnings"]])]


SECTIONS = (report_render.Section(None, _opening),
            report_render.Section("Calibration on test", _calibration),
            report_render.Section("Decisions and ranking", _decisions),
            report_render.Section("Clinical usefulness: decision curve", _decision_curve),
            report_render.Section("Notes", _notes))


def _write(out: Path, result: dict, test: pd.DataFrame) -> dict:
    y, p = test["label"].to_numpy(dtype=np.int64), test["probability"].to_numpy(dtype=np.float64)
    rc = result["recalibration"]
    p_new = confidence.recalibrate(p, rc["a"], rc["b"])
    models = _models(result)
    figures = {"calibration": report_render.figure_calibration(y, [(name, q, c) for (name, _), q, c in
                                                                   zip(models, (p, p_new), PALETTE)], "test"),
               "decision": report_render.figure_decision_curve([(name, e["decision_curve"], e["threshold"], c)
                                                                for (name, e), c in zip(models, PALETTE)])}
    blocks = report_render.assemble(SECTIONS, result)
    for name, png in figures.items():
        runfiles.write_bytes(out / FIGURE_DIR / f"{name}.png", png)
    runfiles.write_text(out / REPORT, report_render.render_markdown(blocks, figure_dir=FIGURE_DIR))
    runfiles.write_text(out / REPORT_HTML, report_render.render_html(blocks, figures,
                                                                    f"Recalibration: {result['run']}"))
    runfiles.write_json(out / METRICS, result)
    rows = [{"file": f, "patient": patient, "label": int(label), "probability": runfiles.probability_text(a),
             "recalibrated_probability": runfiles.probability_text(b), "prediction": int(a >= result["threshold"])}
            for f, patient, label, a, b in zip(test["file"], test["patient"], y, p, p_new)]
    runfiles.write_csv(out / PREDICTIONS, rows, list(rows[0]))
    logger.info("recalibration written: %s", out / REPORT_HTML)
    return result


def headline(r: Mapping) -> str:
    """One line for the terminal."""
    m, n = r["as_trained"]["metrics"], r["recalibrated"]["metrics"]
    return (f"recalibrated ({r['method']} on {r['parts']['calibration']['images']} validation images): on "
            f"{r['images']} test images, calibration in the large {ci(m['calibration_intercept'], digits=2)} -> "
            f"{ci(n['calibration_intercept'], digits=2)}, slope {ci(m['calibration_slope'], digits=2)} -> "
            f"{ci(n['calibration_slope'], digits=2)}, Brier {ci(m['brier'])} -> {ci(n['brier'])}")
