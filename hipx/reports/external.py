"""External validation: a trained run scored on another hospital's labelled data, as it would be used there.

    python report.py --run outs/demo/fold_Dense_LF --external data_B --name B
    python report.py --run outs/demo/fold_Dense_LF --external data_B --name B_recal \\
        --recalibrate intercept --calibrate_on val      # or --calibrate_on 0.3 (a share of the patients)
    python report.py --run outs/cv5 --external data_B  # a cross-validation group: the fold ensemble

Every image of the external folder (its ``train/``, ``val/`` and ``test/``, or the images directly in
it) is scored by the run's best checkpoint, or by the mean of a cross-validation group's fold models,
through :func:`hipx.inference.predict.predict`: the run's own preprocessing, clinical normalisation
and test-time augmentation, and the threshold chosen on the run's validation split. Nothing is
refitted unless recalibration is asked for.

Written into ``<run>/external/<name>/`` (refused when it exists; written to a temporary folder and
renamed, so it appears complete or not at all; nothing else in the run changes):
``external_report.md`` (figures in ``external_figures/``), ``external_report.html`` (self-contained),
``external_metrics.json`` and ``external_predictions.csv`` (every image: split, patient, label,
probability, decision, and with recalibration its part and recalibrated probability).

The report: case mix of development and external data (age, sex, BMI, prevalence per patient, with
standardised differences; Austin, Stat Med 2009;28:3083-3107); discrimination with patient-bootstrap
and DeLong CIs (:func:`evaluation.evaluate`); calibration in the large and slope with CIs and a
calibration plot; the threshold metrics at the run's threshold; a decision curve (:mod:`decision`).

Recalibration (Steyerberg, Clinical Prediction Models 2019, ch. 20; Van Calster et al., BMC Med
2019;17:230): ``intercept`` refits calibration in the large, ``logistic`` intercept and slope, on
the part named by ``--calibrate_on`` (an external split, or a share of the external patients drawn
with ``--seed``), and every number is then reported on the other images only, as trained and
recalibrated side by side. The run's threshold is carried through the same map, so the decisions
(sensitivity, specificity) stay those of the run; the probabilities, calibration and net benefit
change.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from hipx.stats import confidence
from hipx.data import filenames
from hipx.data import loader
from hipx.stats import metrics
from hipx.stats.evaluation import ALPHA, evaluate
from hipx.reports import render as report_render
from hipx.runs import runfiles
from hipx.reports.style import PALETTE, ci, fmt, interval_text, mean_sd_text

logger = logging.getLogger(__name__)

OUT_DIR = "external"
FIGURE_DIR = "external_figures"
RECALIBRATION = ("intercept", "logistic")
CASE_MIX = (("Age, years", "age", False), ("Female", "sex", True), ("BMI, kg/m²", "bmi", False),
            ("Osteoporosis (prevalence)", "label", True))


class ExternalError(ValueError):
    """A user's mistake in an external validation; the message names the flag or folder."""


# --------------------------------------------------------------------------- the data

def external_images(data_dir: str | os.PathLike) -> pd.DataFrame:
    """Every image of ``data_dir``: its ``train/``, ``val/`` and ``test/`` where present, else the
    images directly inside. One row per image: path, split ("" when flat), file, patient, label,
    sex, age, bmi (from the file name, :mod:`filenames`)."""
    root = Path(data_dir)
    if not root.is_dir():
        raise ExternalError(f"--external {root}: no such folder")
    splits = [s for s in loader.SPLITS if (root / s).is_dir()]
    parts = [(s, filenames.list_split(root, s)) for s in splits]
    if not parts:
        flat = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in filenames.EXTENSIONS)
        if not flat:
            raise ExternalError(f"--external {root}: no train/ val/ test/ folders and no images inside; expected "
                                f"files named {filenames.PATTERN}")
        for p in flat:
            filenames.scored(p)  # fail early, naming the file (a test image needs its label)
        parts = [("", flat)]
    frames = []
    for split, files in parts:
        table = loader.clinical_table(files)
        table.insert(0, "split", split)
        table.insert(0, "path", [str(f) for f in files])
        frames.append(table)
    table = pd.concat(frames, ignore_index=True)
    if table["file"].duplicated().any():
        raise ExternalError(f"--external {root}: file {table.loc[table['file'].duplicated(), 'file'].iloc[0]} "
                            "appears in two splits")
    return table


def calibration_part(table: pd.DataFrame, calibrate_on: str, seed: int) -> np.ndarray:
    """Boolean mask of the images that recalibration is fitted on: an external split's images, or all
    images of a share of the patients (a number in (0, 1)) drawn with ``seed``. Patients never straddle."""
    if calibrate_on in loader.SPLITS:
        mask = (table["split"] == calibrate_on).to_numpy()
        if not mask.any():
            raise ExternalError(f"--calibrate_on {calibrate_on}: the external folder has no {calibrate_on}/ images")
    else:
        try:
            share = float(calibrate_on)
        except ValueError:
            share = math.nan
        if not 0 < share < 1:
            raise ExternalError(f"--calibrate_on {calibrate_on!r}: give a split ({', '.join(loader.SPLITS)}) of the "
                                "external folder, or a share of its patients between 0 and 1, e.g. 0.3")
        patients = np.array(sorted(table["patient"].unique()))
        n = int(round(share * patients.size))
        if not 0 < n < patients.size:
            raise ExternalError(f"--calibrate_on {calibrate_on}: {share:g} of {patients.size} patients leaves no "
                                "patient on one side")
        chosen = set(np.random.default_rng(seed).permutation(patients)[:n])
        mask = table["patient"].isin(chosen).to_numpy()
    if mask.all():
        raise ExternalError(f"--calibrate_on {calibrate_on}: that is every external image; nothing would be left to "
                            "report on")
    shared = set(table.loc[mask, "patient"]) & set(table.loc[~mask, "patient"])
    if shared:
        raise ExternalError(f"--calibrate_on {calibrate_on}: patient(s) {', '.join(sorted(shared)[:3])} have images "
                            "on both sides; the recalibration would see the patients it is reported on")
    return mask


def check_classes(table: pd.DataFrame, what: str, why: str) -> None:
    """Refuse, before anything is scored, images of one class only: the ROC AUC, calibration and a
    recalibration are undefined without both (the line counts them)."""
    labels = table["label"].dropna().astype(int)
    ill = int(labels.sum())
    if 0 < ill < len(labels):
        return
    one = "osteoporosis (label 1)" if ill else "normal (label 0)"
    raise ExternalError(f"{what}: all {len(labels)} images (of {table['patient'].nunique()} patients) are {one}, "
                        f"none {'normal' if ill else 'with osteoporosis'}: {why}, so nothing was scored or written; give "
                        "images of both classes")


def standardised_difference(dev: Sequence[float], ext: Sequence[float], binary: bool) -> float:
    """(mean external - mean development) / pooled SD, the SD of a proportion p being sqrt(p (1 - p))
    (Austin, Stat Med 2009;28:3083-3107); |d| > 0.1 is the usual mark of a meaningful imbalance."""
    a = np.asarray([v for v in dev if v is not None and math.isfinite(v)], dtype=np.float64)
    b = np.asarray([v for v in ext if v is not None and math.isfinite(v)], dtype=np.float64)
    if a.size < 2 or b.size < 2:
        return math.nan
    if binary:
        pa, pb = a.mean(), b.mean()
        pooled = math.sqrt((pa * (1 - pa) + pb * (1 - pb)) / 2)
    else:
        pooled = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    return float((b.mean() - a.mean()) / pooled) if pooled > 0 else (0.0 if a.mean() == b.mean() else math.nan)


def per_patient(table: pd.DataFrame) -> pd.DataFrame:
    """One row per patient: label (any image positive), sex, age, BMI (mean over the patient's images)."""
    return table.groupby("patient").agg(label=("label", "max"), sex=("sex", "mean"), age=("age", "mean"),
                                        bmi=("bmi", "mean"))


def case_mix(dev: pd.DataFrame | None, ext: pd.DataFrame) -> list[dict]:
    """Rows (variable, development and external summaries, standardised difference), per patient."""
    pe = per_patient(ext)
    pd_ = per_patient(dev) if dev is not None else None
    rows = []
    for label, column, binary in CASE_MIX:
        row: dict[str, Any] = {"variable": label, "binary": binary}
        for side, frame in (("development", pd_), ("external", pe)):
            if frame is None:
                row[side] = None
                continue
            values = frame[column].dropna()
            row[side] = ({"percent": float(100 * values.mean()) if len(values) else math.nan, "n": int(len(values))}
                         if binary else metrics.mean_sd(values))
        row["standardised_difference"] = (standardised_difference(pd_[column], pe[column], binary)
                                          if pd_ is not None else math.nan)
        rows.append(row)
    return rows


def development_images(config: Mapping, data_dir: str | os.PathLike | None = None
                       ) -> tuple[pd.DataFrame | None, str | None]:
    """The run's own images (train, val and test; ``data_dir`` default: the run's configuration's) for the
    case-mix table, or (None, why not)."""
    try:
        paths = runfiles.split_files(config, data_dir)
    except (FileNotFoundError, ValueError) as exc:
        return None, str(exc)
    files = [f for s in loader.SPLITS for f in paths[s]]
    return loader.clinical_table(files), None


# --------------------------------------------------------------------------- scoring and numbers

def out_folder(run: str | os.PathLike, name: str) -> Path:
    """``<run>/external/<name>``; for a checkpoint file, beside it."""
    base = Path(run)
    return (base.parent if base.is_file() else base) / OUT_DIR / name


def _refuse_existing(out: Path) -> None:
    if out.exists():
        raise ExternalError(f"{out} exists: an external validation named {out.name} was made before and is kept; "
                            "choose another --name")


def check_name(name: str) -> str:
    if not name or name in (".", "..") or Path(name).name != name or name.startswith("."):
        raise ExternalError(f"--name {name!r}: give a plain folder name (letters, digits, - or _), e.g. --name B")
    return name


def validate(run: str | os.PathLike, data_dir: str | os.PathLike, name: str | None = None,
             recalibrate: str | None = None, calibrate_on: str | None = None, n_boot: int = 2000, seed: int = 0,
             interval: str = "bca", device: str = "auto", batch_size: int = 16,
             development_dir: str | os.PathLike | None = None) -> dict:
    """Score ``data_dir`` with ``run`` and write ``<run>/external/<name>/`` (see the module docstring).
    ``development_dir``: the run's own data folder for the case-mix table (default: from its configuration).
    Returns the numbers of ``external_metrics.json``."""
    # torch: only once an external validation is asked for
    from hipx.inference.predict import predict

    name = check_name(name or Path(data_dir).resolve().name)
    out = out_folder(run, name)
    _refuse_existing(out)  # before anything is scored
    if (recalibrate is None) != (calibrate_on is None):
        raise ExternalError("--recalibrate and --calibrate_on go together: what to refit, and on which part of the "
                            "external data (e.g. --recalibrate intercept --calibrate_on val)")
    if recalibrate is not None and recalibrate not in RECALIBRATION:
        raise ExternalError(f"--recalibrate {recalibrate!r}: use one of {', '.join(RECALIBRATION)}")
    confidence._check_bootstrap_args(n_boot, ALPHA, interval)
    table = external_images(data_dir)
    part = (calibration_part(table, calibrate_on, seed) if recalibrate else np.zeros(len(table), dtype=bool))
    check_classes(table[~part], f"--external {data_dir}" + (f" (without --calibrate_on {calibrate_on})"
                                                             if recalibrate else ""),
                  "the ROC AUC is undefined for one class, and calibration needs both")
    if recalibrate:
        check_classes(table[part], f"--calibrate_on {calibrate_on}", "a recalibration needs both classes")
    members = [runfiles.load_run(r) for r in runfiles.model_runs(run)]
    threshold = float(np.mean([m.threshold for m in members]))
    rows = predict(run, table["path"].tolist(), device=device, batch_size=batch_size)
    table["probability"] = [r["probability"] for r in rows]
    table["prediction"] = [r["prediction"] for r in rows]
    dev, dev_absent = development_images(members[0].config, development_dir)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = numbers(table, part, threshold, recalibrate, n_boot, seed, interval)
    result.update(
        name=name, run=str(Path(run)), data_dir=str(data_dir), created=time.strftime("%Y-%m-%d %H:%M"),
        model=({"kind": "best checkpoint", "epoch": members[0].epoch} if len(members) == 1 else
               {"kind": "fold ensemble", "folds": [str(m.dir.name) for m in members]}),
        run_config={k: members[0].config.to_dict().get(k) for k in ("model", "fusion", "image_size", "tta", "seed")},
        calibrate_on=calibrate_on, case_mix=case_mix(dev, table), development_absent=dev_absent,
        development_test=_development_test(members),
        warnings=list(dict.fromkeys(str(w.message) for w in caught)))
    if recalibrate:
        result["parts"] = {"calibration": _count(table[part]), "evaluation": _count(table[~part])}
    return _write(out, result, table, part)


def _count(table: pd.DataFrame) -> dict:
    return {"images": int(len(table)), "patients": int(table["patient"].nunique()),
            "osteoporosis_images": int(table["label"].sum()),
            "splits": sorted(s or "(folder)" for s in table["split"].unique())}


def _development_test(members: Sequence[runfiles.Run]) -> dict | None:
    """The run's own test ROC AUC (test_metrics.json), for a single run; None for an ensemble or untested run."""
    if len(members) != 1:
        return None
    try:
        stored = members[0].test_metrics()
    except ValueError:
        return None
    return None if stored is None else {"roc_auc": stored["at_threshold"].get("roc_auc"),
                                        "n": stored["at_threshold"].get("n")}


def numbers(table: pd.DataFrame, part: np.ndarray, threshold: float, recalibrate: str | None, n_boot: int,
            seed: int, interval: str) -> dict:
    """The evaluations of an external validation from the scored ``table`` (label, probability, patient);
    with ``recalibrate``, fitted on the rows of ``part`` and reported on the others only."""
    rest = table[~part]
    y, p, groups = (rest["label"].to_numpy(dtype=np.int64), rest["probability"].to_numpy(dtype=np.float64),
                    rest["patient"].to_numpy())
    out: dict[str, Any] = {"threshold": threshold, "n_boot": int(n_boot), "seed": int(seed), "interval": interval,
                           "images": int(len(rest)), "patients": int(rest["patient"].nunique()),
                           "osteoporosis_images": int(y.sum()), "recalibrate": recalibrate,
                           "at_threshold": metrics.compute_metrics(y, p, threshold),
                           "as_trained": {**evaluate(y, p, threshold, groups, n_boot, seed, interval),
                                          "mean_predicted": float(p.mean())}}
    if recalibrate:
        fitted = table[part]
        fit = confidence.recalibration(fitted["label"].to_numpy(dtype=np.int64),
                                       fitted["probability"].to_numpy(dtype=np.float64),
                                       slope=recalibrate == "logistic")
        if fit["b"] <= 0:
            raise ExternalError(f"recalibration on --calibrate_on: slope {fit['b']:.3f} <= 0, the run ranks these "
                                "patients the wrong way round; recalibration cannot mend that")
        t_new = float(confidence.recalibrate([threshold], fit["a"], fit["b"])[0])
        p_new = confidence.recalibrate(p, fit["a"], fit["b"])
        out["recalibration"] = {**fit, "method": recalibrate, "threshold": t_new}
        out["recalibrated"] = {**evaluate(y, p_new, t_new, groups, n_boot, seed, interval),
                               "mean_predicted": float(p_new.mean())}
    return out


# --------------------------------------------------------------------------- the report

def _models(r: Mapping) -> list[tuple[str, dict]]:
    rows = [("As trained", r["as_trained"])]
    if r.get("recalibrated"):
        rows.append((f"Recalibrated ({r['recalibration']['method']})", r["recalibrated"]))
    return rows


def _case_mix_cell(d: Mapping | None, binary: bool) -> str:
    if d is None:
        return "n/a"
    return f"{d['percent']:.1f}%" if binary else mean_sd_text(d)


def _opening(r: Mapping) -> list[tuple]:
    m = r["as_trained"]["metrics"]
    model = (f"its best checkpoint (epoch {r['model']['epoch']})" if r["model"]["kind"] == "best checkpoint" else
             f"the mean of its {len(r['model']['folds'])} fold models ({', '.join(r['model']['folds'])})")
    cfg = r["run_config"]
    b: list[tuple] = [("h1", f"External validation: {r['run']} on {r['name']}")]
    b.append(("p", f"The run {r['run']} ({cfg.get('model')}, {report_render.fusion_text(cfg)}) scored every image of "
                   f"{r['data_dir']} with {model}: the run's own preprocessing ({cfg['image_size'][0]} x "
                   f"{cfg['image_size'][1]} pixels, test-time augmentation {cfg.get('tta') or 'none'}), its clinical "
                   f"normalisation and its threshold {r['threshold']:.4f}, chosen on the run's own validation split. "
                   f"Made {r['created']}."))
    if r.get("recalibrate"):
        c, e = r["parts"]["calibration"], r["parts"]["evaluation"]
        b.append(("callout", f"Recalibration ({r['recalibrate']}) was fitted on {c['images']} images of "
                             f"{c['patients']} patients (--calibrate_on {r['calibrate_on']}; from the external "
                             f"split(s) {', '.join(c['splits'])}); every number below is on the other {e['images']} "
                             f"images of {e['patients']} patients (split(s) {', '.join(e['splits'])}), which the "
                             "recalibration never saw. external_predictions.csv names each image's part."))
    primary = (f"External ROC AUC {ci(m['roc_auc'])} ({interval_text(r['interval'])} 95% CI over {r['patients']} "
               f"patients); calibration in the large {ci(m['calibration_intercept'])}, calibration slope "
               f"{ci(m['calibration_slope'])}")
    dev = r.get("development_test")
    if dev and dev.get("roc_auc") is not None:
        primary += f"; on the run's own test set the ROC AUC was {fmt(dev['roc_auc'])}"
    return b + [("callout", primary + ".")]


def _case_mix(r: Mapping) -> list[tuple]:
    rows = [[row["variable"], _case_mix_cell(row["development"], row["binary"]),
             _case_mix_cell(row["external"], row["binary"]), fmt(row["standardised_difference"], 2)]
            for row in r["case_mix"]]
    note = ("Mean ± SD or percentage over patients (a patient's images averaged); all external images, including "
            "any used for recalibration. Standardised difference = (external - development) / pooled SD; beyond ±0.1 "
            "the populations differ noticeably (Austin, Stat Med 2009).")
    if r.get("development_absent"):
        note += f" Development data not found: {r['development_absent']}"
    return [("table", ["Per patient", "Development (train, val, test)", f"External ({r['name']})",
                       "Standardised difference"], rows),
            ("note", note)]


def _discrimination(r: Mapping) -> list[tuple]:
    models = _models(r)
    return [("figures", [("roc_pr", "ROC (left) and precision-recall (right) curves on the external images; dot: the "
                                    "run's threshold.")]),
            report_render.discrimination_table(models[:1], interval_text(r["interval"])),
            ("note", "Recalibration is monotone and leaves the ranking, and so the AUCs, unchanged."
             if len(models) > 1 else "Intervals resample the external patients (all images of a patient together).")]


def _calibration(r: Mapping) -> list[tuple]:
    b: list[tuple] = [
        ("figures", [("calibration", "Observed fraction with osteoporosis (Wilson 95% interval) against the mean "
                                     "predicted probability, in bins of about equal size; below: the predicted "
                                     "probabilities.")]),
        ("table", ["Model", "Calibration in the large (intercept, 95% CI)", "Calibration slope (95% CI)",
                   "Brier score (95% CI)", "Mean predicted", "Observed"],
         [[name, ci(e["metrics"]["calibration_intercept"]), ci(e["metrics"]["calibration_slope"]),
           ci(e["metrics"]["brier"]), fmt(e["mean_predicted"]), fmt(r["osteoporosis_images"] / r["images"])]
          for name, e in _models(r)]),
        ("note", "Intercept 0 and slope 1 are ideal. An intercept below 0: the run overestimates the risk here on "
                 "average; above 0: underestimates it. A slope below 1: its probabilities are too extreme for "
                 "these patients (Van Calster et al., BMC Med 2019;17:230).")]
    if r.get("recalibration"):
        rc = r["recalibration"]
        b.append(("p", f"Recalibration: logit p' = {rc['a']:+.3f} + {rc['b']:.3f} × logit p; the run's threshold "
                       f"{r['threshold']:.4f} becomes {rc['threshold']:.4f}, so each image keeps its decision."))
    return b


def _at_threshold(r: Mapping) -> list[tuple]:
    m = r["as_trained"]["metrics"]
    return [("figures", [("confusion", "Rows: truth; columns: the run's decision at its own threshold.")]),
            ("table", ["Metric", "External"],
             [["Threshold (from the run's validation)", fmt(r["threshold"], 4)]]
             + [[label, ci(m[k])] for k, label in report_render.TABLE_METRICS if k not in ("roc_auc", "pr_auc",
                                                                                            "brier")]),
            ("note", f"Point estimate (95% CI, {interval_text(r['interval'])} for the AUCs and Brier score, "
                     f"percentile for the rest) over {r['patients']} external patients, {r['n_boot']} resamples, "
                     f"seed {r['seed']}; conditional on the trained run and its threshold.")]


def _decision(r: Mapping) -> list[tuple]:
    return report_render.decision_blocks([(name, e["decision_curve"], e["threshold"]) for name, e in _models(r)],
                                         "Net benefit against threshold probability on the external images; dot: "
                                         "the run's threshold.")


def _notes(r: Mapping) -> list[tuple]:
    notes = [f"Predictions: {OUT_DIR}/{r['name']}/external_predictions.csv (every image, with its split"
             + (", part and recalibrated probability)." if r.get("recalibrate") else ")."),
             "Nothing was refitted on the external data" + (" except the recalibration named above." if
                                                             r.get("recalibrate") else ".")]
    notes += [f"Warning: {w}" for w in r["warnings"]]
    return [("list", notes)]


# The external validation report, in order (report_render.Section: titled sections are numbered).
SECTIONS = (report_render.Section(None, _opening),
            report_render.Section("Case mix: development against external", _case_mix),
            report_render.Section("Discrimination", _discrimination),
            report_render.Section("Calibration", _calibration),
            report_render.Section("At the run's threshold", _at_threshold),
            report_render.Section("Clinical usefulness: decision curve", _decision),
            report_render.Section("Notes", _notes))


def blocks(r: Mapping) -> list[tuple]:
    """The external validation report as report_render blocks."""
    return report_render.assemble(SECTIONS, r)


def figures(r: Mapping, table: pd.DataFrame, part: np.ndarray) -> dict[str, bytes]:
    rest = table[~part]
    y, p = rest["label"].to_numpy(dtype=np.int64), rest["probability"].to_numpy(dtype=np.float64)
    colours = PALETTE
    probs = [p]
    if r.get("recalibration"):
        probs.append(confidence.recalibrate(p, r["recalibration"]["a"], r["recalibration"]["b"]))
    models = _models(r)
    where = f"external {r['name']}"
    return {"roc_pr": report_render.figure_roc_pr(y, [("as trained", p, r["threshold"], colours[0])], where),
            "calibration": report_render.figure_calibration(y, [(name, q, c) for (name, _), q, c in
                                                                zip(models, probs, colours)], where),
            "confusion": report_render.figure_confusion([("external", r["as_trained"]["confusion"], r["threshold"])]),
            "decision": report_render.figure_decision_curve([(name, e["decision_curve"], e["threshold"], c)
                                                            for (name, e), c in zip(models, colours)])}


def _write(out: Path, result: dict, table: pd.DataFrame, part: np.ndarray) -> dict:
    """Everything into a temporary folder beside ``out``, then renamed to ``out`` (refused if it appeared)."""
    figs = figures(result, table, part)
    b = blocks(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        for fig, png in figs.items():
            runfiles.write_bytes(tmp / FIGURE_DIR / f"{fig}.png", png)
        runfiles.write_text(tmp / "external_report.md", report_render.render_markdown(b, figure_dir=FIGURE_DIR))
        runfiles.write_text(tmp / "external_report.html",
                            report_render.render_html(b, figs, f"External validation: {result['name']}"))
        runfiles.write_json(tmp / "external_metrics.json", result)
        rows = table.drop(columns=["path"]).assign(probability=[runfiles.probability_text(v)
                                                                for v in table["probability"]])
        columns = ["split", "file", "patient", "label", "sex", "age", "bmi", "probability", "prediction"]
        if result.get("recalibration"):
            rc = result["recalibration"]
            rows["part"] = np.where(part, "calibration", "evaluation")
            rows["recalibrated_probability"] = [runfiles.probability_text(v) for v in
                                                confidence.recalibrate(table["probability"], rc["a"], rc["b"])]
            columns += ["part", "recalibrated_probability"]
        runfiles.write_csv(tmp / "external_predictions.csv", rows[columns].to_dict("records"), columns)
        _refuse_existing(out)
        os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    logger.info("external validation written: %s", out / "external_report.html")
    return result


def headline(r: Mapping) -> str:
    """One line for the terminal."""
    m = r["as_trained"]["metrics"]
    line = (f"external {r['name']}: {r['images']} images of {r['patients']} patients; ROC AUC {ci(m['roc_auc'])}; "
            f"calibration in the large {ci(m['calibration_intercept'], digits=2)}, slope "
            f"{ci(m['calibration_slope'], digits=2)}")
    if r.get("recalibrated"):
        rm = r["recalibrated"]["metrics"]
        line += (f"; recalibrated ({r['recalibrate']} on {r['parts']['calibration']['images']} images): in the large "
                 f"{ci(rm['calibration_intercept'], digits=2)}, slope {ci(rm['calibration_slope'], digits=2)}")
    return line
