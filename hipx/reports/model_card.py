"""The model card: ``model_card.md`` beside every run report and cross-validation summary, filled from
the numbers those reports computed, never by hand.

    from hipx.reports import model_card
    text = model_card.run_card(numbers)            # numbers: report_metrics.json (run_report.write_report)
    text = model_card.cv_card(summary, "outs/cv")  # summary: cv_summary.json (cv.write_cv_summary)

Its headings follow Model Cards for Model Reporting (Mitchell et al., FAT* 2019: model details,
intended use, data, quantitative analyses, caveats), TRIPOD+AI (Collins et al., BMJ 2024;385:e078378)
and CLAIM (Tejani et al., Radiol Artif Intell 2024;6:e240300): what the model is and how it was
trained, what it is for and not for, the data per split, the primary result with its 95% CI beside
the clinical-only baseline and their paired difference, subgroups, calibration, the threshold and
how it was chosen, and the weaknesses the numbers show. Every figure is read from the dict it is
given; this module computes no statistic, and only compares intervals with the rules below to
choose its words (a weakness is named where its interval shows it).

:func:`suite_commit` and :func:`data_source` are the two facts a report records for the card beside
its numbers: which code wrote it, and what made the data folder (a CV card takes the date and the
commit when it is written, :func:`made_now`, so that cv_summary.json stays byte-identical when remade).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping

from hipx.prepare import datafolder, synthetic
from hipx.reports import measurement as measure_report
from hipx.reports.render import Section, assemble, dropped_text, fusion_text, render_markdown
from hipx.reports.style import ci, fmt, interval_text, mean_sd_text, p_relation
from hipx.runs import runfiles

MODEL_CARD = runfiles.MODEL_CARD  # beside report.md in a run folder, beside cv_report.md in a run group
# the settings of a run's config.json the card (and report_metrics.json's run_config) names
CONFIG_KEYS = ("model", "fusion", "depth", "image_size", "epoch", "augment", "select_metric", "seed", "cv_folds",
               "cv_fold", "growthRate", "norm", "act", "stem", "drop_rate", "pretrained", "in_chans", "batch_size",
               "lrG", "beta", "sched", "loss", "focal_gamma", "ema", "tta", "augment_p", "sampler", "target", "cut",
               "target_spec", "cv_design", "deterministic", "torch")
# A subgroup's AUC interval wider than this is named a weakness: it cannot tell a useful network (AUC
# 0.8) from a weak one (0.6).
WIDE_CI = 0.2
# Fewer test patients with (or without) osteoporosis than this is named a weakness: at least 100
# events and 100 non-events to validate a prediction model (Collins, Ogundimu & Altman, Stat Med
# 2016;35:214-226).
FEW_EVENTS = 100
# bootstrap resamples below which interval ends are imprecise (the run report says the same)
FEW_RESAMPLES = 1000


# --------------------------------------------------------------------------- facts a report records

def suite_commit(root: str | os.PathLike | None = None) -> str | None:
    """The git commit of the suite's code (``--dirty`` where it has uncommitted changes), or None where
    the code is not a git checkout or git is not installed. ``root``: default the suite's folder."""
    root = Path(root) if root is not None else Path(__file__).resolve().parents[2]
    try:
        done = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
                              capture_output=True, text=True, timeout=10,
                              env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})  # never wait on another git
    except (OSError, subprocess.SubprocessError):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def made_now() -> dict:
    """When and by which code a card is made: ``created`` (the time, to the minute, as the reports
    write it) and ``suite_commit``. A run report records both in report_metrics.json; a CV card,
    whose cv_summary.json stays byte-identical when remade, takes them from here."""
    return {"created": time.strftime("%Y-%m-%d %H:%M"), "suite_commit": suite_commit()}


# the records a data folder's maker leaves in it: preprocess_filenames.py's settings, synthetic.py's metadata
PREPROCESS_RECORD, SYNTHETIC_RECORD = datafolder.CONFIG, synthetic.METADATA
PREPROCESS_SETTINGS = ("roi", "split_hips", "size", "fit", "tscore_col", "tscore_cutoff", "grade_col", "bmd_col")


def data_source(data_dir: str | os.PathLike | None) -> dict:
    """What made the data folder, from the record its maker left there: ``made_by`` (the command, or
    None where the folder holds no record), and for preprocess_filenames.py the raw images' folder and
    the settings that shape an image (femur region, hip split, size, label source); for synthetic.py
    its version and site. An unreadable record is named, not fatal: the card only describes."""
    if data_dir is None:
        return {"made_by": None}
    folder = Path(data_dir)
    for name, made_by in ((PREPROCESS_RECORD, "preprocess_filenames.py"), (SYNTHETIC_RECORD, "synthetic.py")):
        path = folder / name
        if not path.is_file():
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return {"made_by": made_by, "record": str(path), "unreadable": str(exc)}
        if made_by == "synthetic.py":
            return {"made_by": made_by, "record": str(path),
                    **{k: record.get(k) for k in ("version", "site", "n", "size") if k in record}}
        settings = record.get("settings") or {}
        return {"made_by": made_by, "record": str(path), "images": record.get("images"), "csv": record.get("csv"),
                **{k: settings.get(k) for k in PREPROCESS_SETTINGS if settings.get(k) not in (None, False)}}
    return {"made_by": None}


# --------------------------------------------------------------------------- words

def _num(value: Any) -> str:
    """A setting as given (learning rate 0.001, not 0.00100)."""
    return "none" if value in (None, "") else f"{value:g}" if isinstance(value, float) else str(value)


def _range(d: Mapping | None, digits: int = 1) -> str:
    """'61.2 ± 8.4 (50.0 to 74.0)' from a summary with mean, sd, n, min, max; 'n/a' with no value."""
    if not d or d.get("n", 0) == 0:
        return "n/a"
    span = (f" ({fmt(d['min'], digits)} to {fmt(d['max'], digits)})"
            if d.get("min") is not None and d.get("max") is not None else "")
    return mean_sd_text(d, digits) + span


def _finite(*values: Any) -> bool:
    """Whether every value is a finite number (NumPy's included; None and NaN are not)."""
    try:
        return all(v is not None and not isinstance(v, (str, bool)) and math.isfinite(float(v)) for v in values)
    except (TypeError, ValueError):
        return False


def _width_wide(d: Mapping | None) -> bool | None:
    """Whether the interval of ``d`` is wider than :data:`WIDE_CI` (None where it is undefined)."""
    if not d or not _finite(d.get("low"), d.get("high")):
        return None
    return d["high"] - d["low"] > WIDE_CI


def difference_text(d: Mapping | None) -> str:
    """The paired AUC difference network - baseline worded by its interval."""
    if not d or not _finite(d.get("low"), d.get("high")):
        return "The difference could not be estimated."
    if d["low"] > 0:
        return "The network is shown better than the clinical values alone: the interval lies above 0."
    if d["high"] < 0:
        return "The clinical values alone are shown better than the network: the interval lies below 0."
    return ("No difference shown: the interval holds 0, so these data do not show that the image adds to age, sex "
            "and BMI (a small test set can also hide a real difference).")


def calibration_text(metrics: Mapping) -> tuple[str, bool]:
    """A sentence on the calibration intercept and slope by their intervals, and whether it shows
    miscalibration (the intercept's interval without 0, or the slope's without 1)."""
    icpt, slope = metrics.get("calibration_intercept"), metrics.get("calibration_slope")
    found = []
    if icpt and _finite(icpt.get("low"), icpt.get("high")):
        if icpt["low"] > 0:
            found.append(f"the intercept, {ci(icpt)}, lies above 0: risks are underestimated on average")
        elif icpt["high"] < 0:
            found.append(f"the intercept, {ci(icpt)}, lies below 0: risks are overestimated on average")
    if slope and _finite(slope.get("low"), slope.get("high")):
        if slope["high"] < 1:
            found.append(f"the slope, {ci(slope)}, lies below 1: the probabilities are too extreme (over-confident)")
        elif slope["low"] > 1:
            found.append(f"the slope, {ci(slope)}, lies above 1: the probabilities are too moderate")
    if found:
        return "miscalibration shown, as " + " and ".join(found) + ".", True
    if not any(d and _finite(d.get("low"), d.get("high")) for d in (icpt, slope)):
        return "the calibration intercept and slope could not be estimated.", False
    return ("no miscalibration shown: the intercept's interval holds 0 and the slope's holds 1 (where they could be "
            "estimated); a wide interval says little either way.", False)


# --------------------------------------------------------------------------- the two kinds of card

def run_view(r: Mapping) -> dict:
    """What a run's card shows, picked from the run report's numbers ``r`` (report_metrics.json)."""
    cfg = r.get("run_config") or {}
    base = r.get("baseline")
    models = [("Network", r["network"])] + ([("Clinical baseline", base)] if base else [])
    test = r["data"]["test"]
    fold = (f"; fold {cfg['cv_fold']} of a {cfg['cv_folds']}-fold cross-validation (the group's model_card.md "
            "pools every fold)" if cfg.get("cv_folds") else "")
    return {
        "title": f"Model card: {r['run']}", "source": "report_metrics.json", "command": f"report.py --run {r['run_dir']}",
        "config": cfg, "created": r.get("created"), "suite_commit": r.get("suite_commit"),
        "data_dir": r.get("data_dir"), "data_source": r.get("data_source") or {},
        "trained_on": r["data"]["train"], "kind": "run",
        "selected": f"epoch {r['epoch']} of {_num(cfg.get('epoch'))}, by validation {r['select_metric']}{fold}",
        "splits": [(split, r["data"][split]) for split in ("train", "val", "test", "all") if split in r["data"]],
        "data_note": "Splits by patient: a patient's images sit in one split.",
        "primary": {"what": "test", "n_patients": test.get("patients"), "n_events": test.get("osteoporosis_patients"),
                    "models": models, "comparison": r.get("comparison"), "baseline_absent": r.get("baseline_absent"),
                    "interval": r["network"]["metrics"]["roc_auc"].get("interval", r.get("interval"))},
        "subgroups": [{"name": f"{s['variable']}: {s['group']}", "images": s["images"], "patients": s["patients"],
                       "positives": s["positives"], "roc_auc": s["roc_auc"]} for s in r.get("subgroups") or []],
        "threshold": _run_threshold(r),
        "measurement": r.get("measurement"), "n_boot": r.get("n_boot"), "checks": r.get("checks") or [],
        "warnings": r.get("warnings") or [],
        "runs_text": (f"One training run (seed {_num(cfg.get('seed'))}): the intervals describe the sampling of test "
                      "patients only, not how much another training (other seed, other split) would differ; a "
                      "cross-validation (main.py --folds K) measures that."),
    }


def _run_threshold(r: Mapping) -> list[str]:
    net, base = r["network"], r.get("baseline")
    m = net["metrics"]
    text = [f"Threshold {fmt(net['threshold'])} on the predicted probability: osteoporosis where the probability is "
            f"at or above it. Chosen on validation, never on test (source: {r.get('threshold_source')}): Youden's J = "
            "sensitivity + specificity - 1, maximised over the validation images as scored at the epoch that "
            f"validation {r['select_metric']} selected (epoch {r['epoch']}), and stored in best.pth with that epoch.",
            f"At it on test: sensitivity {ci(m['sensitivity'])}, specificity {ci(m['specificity'])}; these hold this "
            "trained model and this threshold fixed."]
    if base:
        text.append(f"The clinical baseline's threshold, {fmt(base['threshold'])}, was chosen the same way on "
                    "validation.")
    return text


def cv_view(s: Mapping, group: str | os.PathLike, made: Mapping) -> dict:
    """What the card of the cross-validation group folder ``group`` shows, picked from its summary ``s``
    (cv_summary.json); ``made``: when and by which code (:func:`made_now`)."""
    cfg = s.get("run_config") or {}
    key = "pooled" if "pooled" in s else "ensemble" if "ensemble" in s else None
    block = s.get(key) or {}
    data = s.get("data") or {}
    splits = [("all images", data["all"])] if data.get("all") else []
    for fold, parts in (data.get("folds") or {}).items():
        splits += [(f"{fold} {split}", d) for split, d in parts.items()]
    if not splits and data.get("tested"):
        splits.append(("tested images", data["tested"]))
    tested = data.get("tested") or {}
    primary = None
    if key:
        base = block.get("baseline")
        models = [("Network", block)] + ([("Clinical baseline", base)] if base else [])
        absent = block.get("baseline_absent") or s.get("baseline_note") or (
            "cv_summary.json holds no clinical baseline for the fold ensemble" if key == "ensemble" else None)
        primary = {"what": "pooled out-of-fold" if key == "pooled" else "fold-ensemble test",
                   "n_patients": block.get("n_patients"), "n_events": tested.get("osteoporosis_patients"),
                   "models": models, "comparison": block.get("comparison"), "baseline_absent": absent,
                   "interval": block["metrics"]["roc_auc"].get("interval", "bca")}
    subgroups = [{"name": f"{g['variable']}: {g['group']}", "images": g["images"], "patients": g["patients"],
                  "positives": g["positives"], "roc_auc": g["roc_auc"]} for g in block.get("clinical_subgroups") or []]
    subgroups += [{"name": f"{g['column']}: {g['value']}", "images": g["n_images"], "patients": g["n_patients"],
                   "positives": g["n_osteoporosis_images"], "roc_auc": g["roc_auc"]} for g in s.get("subgroups") or []]
    per = s["per_metric"]
    epochs = ", ".join(f"{f['run']} epoch {f['epoch']}" for f in s["folds"])
    return {
        "title": f"Model card: cross-validation {Path(group).name}", "source": "cv_summary.json",
        "command": f"report.py --cv {group}",
        "config": cfg, "created": made.get("created"), "suite_commit": made.get("suite_commit"),
        "data_dir": s.get("data_dir"), "data_source": s.get("data_source") or {}, "kind": "cv",
        "trained_on": data.get("all") or tested,
        "selected": f"each fold's own best epoch by validation {cfg.get('select_metric')} ({epochs})",
        "design": s.get("design_text"), "n_folds": s["n_folds"],
        "splits": splits, "data_note": data.get("note", "Folds by patient: a patient's images sit in one fold."),
        "primary": primary, "per_fold_auc": per.get("roc_auc"),
        "subgroups": subgroups, "threshold": _cv_threshold(s, cfg, key),
        "measurement": s.get("measurement"), "n_boot": s.get("n_boot"), "checks": [], "warnings": [],
        "runs_text": (f"{s['n_folds']} models, one per fold, not one model: the cross-validation's result describes "
                      "this training procedure. A deployed model (one fold's, the fold ensemble "
                      "or a retraining on all images) is not itself tested by these numbers. Between folds, ROC AUC "
                      f"{fmt(per['roc_auc']['mean'])} ± {fmt(per['roc_auc']['sd'])} (mean ± SD of "
                      f"{per['roc_auc']['n_folds']} of {per['roc_auc']['of']} folds)."),
    }


def _cv_threshold(s: Mapping, cfg: Mapping, key: str | None) -> list[str]:
    per = s["per_metric"]["threshold"]
    text = [f"Each fold's model has its own threshold on the predicted probability, chosen on that fold's validation "
            f"images, never on its test images: Youden's J (sensitivity + specificity - 1) maximised at the epoch "
            f"validation {cfg.get('select_metric')} selected: "
            + ", ".join(f"{f['run']} {fmt(f['threshold'])}" for f in s["folds"])
            + f" (mean ± SD {fmt(per['mean'])} ± {fmt(per['sd'])})."]
    if key == "pooled":
        m = s["pooled"]["metrics"]
        text.append(f"Pooled out of fold, each image judged at its own fold's threshold: sensitivity "
                    f"{ci(m['sensitivity'])}, specificity {ci(m['specificity'])}.")
    elif key == "ensemble":
        m = s["ensemble"]["metrics"]
        text.append(f"The fold ensemble decides at the mean of the folds' thresholds, {fmt(s['ensemble']['threshold'])}: "
                    f"sensitivity {ci(m['sensitivity'])}, specificity {ci(m['specificity'])} on the shared test set.")
    return text


# --------------------------------------------------------------------------- sections

def _opening(v: Mapping) -> list[tuple]:
    return [("h1", v["title"]),
            ("p", f"Written from {v['source']} (the numbers of the report beside it) on {v['created'] or 'n/a'}; it is "
                  f"rewritten with every report ({v['command']}), so do not edit it by hand. Headings after Model "
                  "Cards (Mitchell et al., FAT* 2019), TRIPOD+AI (Collins et al., BMJ 2024) and CLAIM (Tejani et al., "
                  "Radiol Artif Intell 2024). 95% confidence intervals in parentheses.")]


def _details(v: Mapping) -> list[tuple]:
    c = v["config"]
    if c.get("model") == "dense_net":
        arch = (f"dense_net: DenseNet-BC built by this suite, depth {_num(c.get('depth'))}, growth rate "
                f"{_num(c.get('growthRate'))}, {_num(c.get('norm'))} normalisation, {_num(c.get('act'))} activation, "
                f"{_num(c.get('stem'))} stem, dropout {_num(c.get('drop_rate'))}")
    else:
        arch = f"{_num(c.get('model'))} (torchvision DenseNet)"
    spec = c.get("target_spec") or {}
    target = ("osteoporosis (label 1) against normal (label 0), the label of each image's file name"
              if c.get("target", "binary") == "binary" else
              f"{c.get('target')} target on the measured {spec.get('name') or 'value'}, osteoporosis at or below "
              f"{_num(c.get('cut') if c.get('cut') is not None else spec.get('cut'))}; one osteoporosis probability")
    scale = (v.get("measurement") or {}).get("scale")
    if scale:  # a continuous target: say how its probability's scale was set
        target += f": the {measure_report.scale_text(scale, spec.get('name'), v['measurement'].get('unit', ''))}"
    size = c.get("image_size") or ["?", "?"]
    aug = c.get("augment") or "none"
    rows = [["Architecture", arch],
            ["Clinical values", fusion_text(c) if c.get("fusion") else "n/a"],
            ["Target", target],
            ["Input", f"{size[0]} x {size[1]} pixels, {_num(c.get('in_chans'))} input channels"],
            ["Pretrained encoder", _num(c.get("pretrained"))],
            ["Training", f"epochs {_num(c.get('epoch'))}, batch size {_num(c.get('batch_size'))}, learning rate "
                         f"{_num(c.get('lrG'))} ({_num(c.get('sched'))} schedule, beta {_num(c.get('beta'))}), loss "
                         f"{_num(c.get('loss'))}, augmentation {aug}"
                         + (f" (p {_num(c.get('augment_p'))})" if aug != "none" else "")
                         + f", sampler {_num(c.get('sampler'))}, EMA {_num(c.get('ema'))}, test-time augmentation "
                           f"{_num(c.get('tta'))}, seed {_num(c.get('seed'))}"],
            ["Checkpoint", v["selected"]]]
    if v["kind"] == "cv":
        rows.append(["Cross-validation", f"{v['n_folds']} folds; {v['design']}"])
    rows += [["Software", f"torch {_num(c.get('torch'))}; suite commit {v['suite_commit'] or 'not known'} (of the "
                          "code that wrote this card)"],
             ["Card written", v["created"] or "n/a"]]
    return [("table", ["Item", "Value"], rows)]


def _population(d: Mapping) -> str:
    if not d.get("images"):
        return "no images"
    return (f"{d['patients']} patients ({d['images']} images), age {_range(d.get('age'))} years, BMI "
            f"{_range(d.get('bmi'))} kg/m² (mean ± SD, range), {fmt(d.get('female_percent'), 1)}% women, osteoporosis "
            f"in {fmt(100 * d['prevalence'], 1)}% of the images")


def source_text(v: Mapping) -> str:
    """What made the images, from the data folder's record (:func:`data_source`)."""
    src = v["data_source"]
    where = f"Data folder {v['data_dir']}"
    if src.get("made_by") == "synthetic.py":
        return (f"{where}: generated by synthetic.py (version {_num(src.get('version'))}"
                + (f", site {src['site']}" if src.get("site") else "") + "): drawn pictures, not radiographs of "
                "patients; its numbers show that the suite works, not that a network finds osteoporosis.")
    if src.get("made_by") == "preprocess_filenames.py":
        how = [f"femur region cut ({src['roi']})" if src.get("roi") else "whole image as exported",
               "each hip a separate image" if src.get("split_hips") else None,
               f"size {src['size'][0]} x {src['size'][1]} ({src.get('fit', 'pad')})" if src.get("size") else None,
               f"label from {src['tscore_col']} <= {_num(src.get('tscore_cutoff'))}" if src.get("tscore_col") else None]
        return (f"{where}: made by preprocess_filenames.py from the radiographs in {src.get('images')} (patient list "
                f"{src.get('csv')}); " + ", ".join(h for h in how if h) + ".")
    return f"{where}; no record of how its images were made (preprocess_config.json or synthetic.json) is in it."


def _intended_use(v: Mapping) -> list[tuple]:
    c = v["config"]
    clinical = " and the patient's sex, age and BMI" if c.get("fusion") not in (None, "image") else ""
    return [("list", [
        f"Intended use: research. The model estimates the probability of osteoporosis from a hip radiograph{clinical}, "
        "for studies of opportunistic screening on radiographs taken for other reasons.",
        "Not a medical device: it is not cleared or approved for diagnosis, screening or treatment decisions, and it "
        "does not replace DXA, the reference measurement of bone density. Its output is not to be given to a patient "
        "or used for one patient's care.",
        f"Population it was trained on: {_population(v['trained_on'])}.",
        f"Image type: {source_text(v)} The network sees {(c.get('image_size') or ['?', '?'])[0]} x "
        f"{(c.get('image_size') or ['?', '?'])[1]} pixels.",
        "Out of scope: patients outside the age and BMI ranges above or unlike them (children, other populations), "
        "other body parts or projections, images not prepared as this data folder's (another crop, no femur region, "
        "other scanners or hospitals) until validated there (report.py --external), and any decision without a "
        "clinician and DXA."])]


def _data(v: Mapping) -> list[tuple]:
    rows = []
    for label, d in v["splits"]:
        if not d.get("images"):
            rows.append([label, "0", "0", "", "", "", "", "", ""])
            continue
        miss = d.get("missing_percent") or {}
        rows.append([label, str(d["images"]), str(d["patients"]),
                     f"{d['osteoporosis_images']} ({fmt(100 * d['prevalence'], 1)}%)", str(d["osteoporosis_patients"]),
                     _range(d.get("age")), _range(d.get("bmi")), fmt(d.get("female_percent"), 1),
                     " / ".join(fmt(miss.get(k), 1) for k in ("age", "sex", "bmi"))])
    if not rows:
        return [("p", f"{v['source']} describes no split. {source_text(v)}")]
    return [("table", ["Split", "Images", "Patients", "Osteoporosis images (%)", "Patients with osteoporosis",
                       "Age, years: mean ± SD (range)", "BMI, kg/m²: mean ± SD (range)", "Female (%)",
                       "Missing age / sex / BMI (% of patients)"], rows),
            ("p", f"{source_text(v)} {v['data_note']} Clinical values per patient (mean over the patient's images); "
                  "a missing value is imputed with the training mean.")]


def _primary(v: Mapping) -> list[tuple]:
    pr = v["primary"]
    if pr is None:
        auc = v["per_fold_auc"]
        return [("p", f"No pooled or ensemble result in {v['source']}: per fold, ROC AUC {fmt(auc['mean'])} ± "
                      f"{fmt(auc['sd'])} (mean ± SD of {auc['n_folds']} of {auc['of']} folds); a mean over folds has no "
                      "interval here.")]
    net = pr["models"][0][1]["metrics"]["roc_auc"]
    b: list[tuple] = [("callout", f"Primary result: network {pr['what']} ROC AUC {ci(net)} "
                                  f"({interval_text(pr['interval'])} 95% CI over {pr['n_patients']} patients).")]
    b.append(("table", ["Model", "ROC AUC (95% CI)", "PR AUC (95% CI)", "Brier score (95% CI)",
                        "Sensitivity (95% CI)", "Specificity (95% CI)"],
              [[name, *(ci(e["metrics"][k]) for k in ("roc_auc", "pr_auc", "brier", "sensitivity", "specificity"))]
               for name, e in pr["models"]]))
    cmp_ = pr["comparison"]
    if cmp_:
        d = cmp_["auc_difference"]
        b.append(("p", f"Network - clinical-only baseline (logistic regression on sex, age and BMI, fitted on the same "
                       f"training patients), ROC AUC difference {ci(d, 'diff')} (paired bootstrap over patients, p "
                       f"{p_relation(d.get('p_value'))}). {difference_text(d)}"))
    else:
        b.append(("p", f"No clinical-only baseline beside it: {pr['baseline_absent']}. Without it the card cannot say "
                       "whether the image adds to the clinical values."))
    if v.get("measurement"):
        b.append(("p", f"Graded target{measure_report.headline(v['measurement'])} (the report's measurement section)."))
    return b


def _subgroups(v: Mapping) -> list[tuple]:
    if not v["subgroups"]:
        return [("p", f"{v['source']} holds no subgroup result (no subgroup with both classes and a known value).")]
    rows = []
    for g in v["subgroups"]:
        wide = _width_wide(g["roc_auc"])
        note = "interval n/a" if g["roc_auc"] is None or wide is None else f"wide: more than {WIDE_CI:g}" if wide else ""
        rows.append([g["name"], str(g["images"]), str(g["patients"]), str(g["positives"]),
                     ci(g["roc_auc"]) if g["roc_auc"] else "n/a (one class)", note])
    return [("table", ["Subgroup", "Images", "Patients", "Osteoporosis images", "Network ROC AUC (95% CI)",
                       "Interval"], rows),
            ("p", f"An interval wider than {WIDE_CI:g} cannot tell a useful network from a weak one in that subgroup; "
                  "subgroup results are descriptive, and no test between subgroups is made."
                  + (dropped_text([(g["name"], g["roc_auc"]) for g in v["subgroups"]], v["n_boot"])
                     if v["n_boot"] else ""))]


def _calibration(v: Mapping) -> list[tuple]:
    pr = v["primary"]
    if pr is None:
        return [("p", f"{v['source']} holds no calibration (no pooled or ensemble result).")]
    rows = [[name, ci(e["metrics"].get("calibration_intercept")), ci(e["metrics"].get("calibration_slope")),
             ci(e["metrics"].get("brier"))] for name, e in pr["models"]]
    return [("table", ["Model", "Calibration intercept (95% CI)", "Calibration slope (95% CI)",
                       "Brier score (95% CI)"], rows),
            ("p", f"Network: {calibration_text(pr['models'][0][1]['metrics'])[0]} Intercept 0 and slope 1 are ideal "
                  "(Van Calster et al., BMC Med 2019;17:230).")]


def _threshold(v: Mapping) -> list[tuple]:
    return [("p", " ".join(v["threshold"]))]


def weaknesses(v: Mapping) -> list[str]:
    """The weaknesses the numbers show, each worded with its figure (from a :func:`run_view` or :func:`cv_view`)."""
    out = []
    pr = v["primary"]
    wide = [g for g in v["subgroups"] if _width_wide(g["roc_auc"])]
    if wide:
        out.append(f"Wide subgroup intervals (wider than {WIDE_CI:g}): "
                   + "; ".join(f"{g['name']} ROC AUC {ci(g['roc_auc'])}" for g in wide)
                   + ". The network's performance in these subgroups is not known to any useful precision.")
    if pr is not None:
        text, shown = calibration_text(pr["models"][0][1]["metrics"])
        if shown:
            out.append(f"Network calibration: {text} Recalibrate before reading the probabilities as risks "
                       "(report.py --run RUN --recalibrate intercept on the run's validation images; report.py "
                       "--external --recalibrate on another hospital's).")
        cmp_ = pr["comparison"]
        if cmp_ is None:
            out.append(f"Not compared with the clinical values: {pr['baseline_absent']}.")
        else:
            d = cmp_["auc_difference"]
            if not (_finite(d.get("low")) and d["low"] > 0):
                out.append(f"The network is not shown better than the clinical values alone (age, sex, BMI): ROC AUC "
                           f"difference {ci(d, 'diff')}. {difference_text(d)}")
        if pr["n_events"] is not None and pr["n_patients"] is not None and (
                pr["n_events"] < FEW_EVENTS or pr["n_patients"] - pr["n_events"] < FEW_EVENTS):
            out.append(f"Few patients: the {pr['what']} result rests on {pr['n_patients']} patients, "
                       f"{pr['n_events']} with osteoporosis; at least {FEW_EVENTS} with and {FEW_EVENTS} without are "
                       "recommended to validate a prediction model (Collins et al., Stat Med 2016), so the intervals "
                       "are wide.")
    out.append(v["runs_text"])
    out.append("Internal validation only: the test images come from the same data folder as the training images; "
               "performance at another hospital or on other scanners is not known (report.py --external).")
    if (v["data_source"] or {}).get("made_by") == "synthetic.py":
        out.append("Generated data: the images are synthetic.py's drawings, not radiographs.")
    if v["n_boot"] is not None and v["n_boot"] < FEW_RESAMPLES:
        out.append(f"Only {v['n_boot']} bootstrap resamples: the interval ends are imprecise.")
    out += [f"The report's check: {c}" for c in v["checks"] if c.startswith(("LEAK", "MISMATCH")) or "do NOT" in c]
    out += [f"The report warned: {w}" for w in v["warnings"]]
    return out


def _weaknesses(v: Mapping) -> list[tuple]:
    return [("list", weaknesses(v))]


CARD = (Section(None, _opening), Section("Model details", _details), Section("Intended use and out-of-scope uses",
                                                                              _intended_use),
        Section("Data", _data), Section("Primary result beside the clinical baseline", _primary),
        Section("Subgroups", _subgroups), Section("Calibration", _calibration),
        Section("Threshold and how it was chosen", _threshold), Section("Weaknesses and caveats", _weaknesses))


def run_card(numbers: Mapping) -> str:
    """``model_card.md`` of a run from its report's numbers (report_metrics.json)."""
    return render_markdown(assemble(CARD, run_view(numbers)))


def cv_card(summary: Mapping, group: str | os.PathLike, made: Mapping | None = None) -> str:
    """``model_card.md`` of the cross-validation group folder ``group`` from its summary (cv_summary.json);
    ``made`` (created, suite_commit): default now and this code (:func:`made_now`)."""
    return render_markdown(assemble(CARD, cv_view(summary, group, made if made is not None else made_now())))

