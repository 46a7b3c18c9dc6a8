"""The run report: the test-set numbers of one run with what a clinical reader needs to trust them.

    from hipx.reports.run_report import write_report
    numbers = write_report("outs/demo/fold_Dense_LF", n_boot=2000)   # python report.py --run RUN

Writes ``report.md`` (figures in ``report_figures/``), ``report.html`` (self-contained, figures
embedded), the model card ``model_card.md`` (:mod:`model_card`) and ``report_metrics.json`` into the
run folder, each atomically. Contents follow what
TRIPOD+AI and CLAIM ask of diagnostic-accuracy studies: the data per split; training curves; ROC
and precision-recall curves; the confusion matrix at the threshold chosen on validation; a
reliability curve with Brier score, calibration slope and intercept with their intervals; every
test metric with a 95% confidence interval over patients (BCa for the AUCs, DeLong clustered by
patient beside it); a decision curve (net benefit against treat-all and treat-none, :mod:`decision`);
a clinical-only baseline (age, sex, BMI; :mod:`baseline`) on the same splits with a paired
comparison, which says whether the image adds anything; AUCs by sex, age band and BMI band; and a
case gallery of the most confident hits and misses with their heatmaps (:mod:`gallery`). One result
is named primary: the network's patient-bootstrap AUC and, where a baseline exists, the paired AUC
difference.

Only the best epoch's test predictions (``test_predictions.csv``, scored from ``best.pth``) are
used, and every metric recomputed from them is checked against ``test_metrics.json``. Both
thresholds -- the network's, stored in ``best.pth`` when the epoch was selected, and the
baseline's -- are chosen on validation; no test value influences any choice. This module
computes; :mod:`render` draws and writes the text (its sections: ``render.RUN_REPORT``).
:func:`run_command` is what ``python report.py`` does with its flags (also ``--cv``, :mod:`cv`,
``--external``, :mod:`external`, and ``--recalibrate`` on the run's validation images, :mod:`recalibration`).
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import time
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from hipx.core import runtime
from hipx.data import filenames, loader, splits
from hipx.reports import baseline
from hipx.reports import model_card
from hipx.reports import cv as cv_report
from hipx.reports import external
from hipx.reports import gallery as case_gallery
from hipx.reports import measurement as measure_report
from hipx.reports import recalibration
from hipx.reports.cohort import SUBGROUPS, describe_split, subgroups  # noqa: F401 - run_report.* for callers
from hipx.reports import render as report_render
from hipx.reports.defaults import GALLERY
from hipx.reports.render import FIGURE_DIR
from hipx.reports.style import ci
from hipx.runs import runfiles
from hipx.stats import confidence, metrics
from hipx.stats.evaluation import ALPHA, evaluate

logger = logging.getLogger(__name__)

# Counts must agree exactly with test_metrics.json, rates to this tolerance (full-precision predictions).
CROSSCHECK_TOL = 1e-6


# --------------------------------------------------------------------------- reading a run

def run_facts(run_dir: str | os.PathLike) -> dict:
    """What a report reads from a finished run (through :func:`runfiles.load_run`): the checkpoint's
    facts, history, test/val predictions and test_metrics.json."""
    run = runfiles.load_run(run_dir)
    has_val = run.has_predictions("val")
    val = run.predictions("val") if has_val else None
    spec = measure_report.run_target_spec(run)
    return {"dir": run.dir, "config": run.config.to_dict(), "threshold": run.threshold, "epoch": run.epoch,
            "clinical_stats": run.clinical_stats, "select_metric": run.select_metric, "test": run.predictions("test"),
            "val": val, "history": run.history(), "test_metrics": run.test_metrics(), "target_spec": spec,
            "scale": measure_report.probability_scale(run.state, val, spec)}


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

def crosscheck(stored: Mapping | None, y: np.ndarray, p: np.ndarray, threshold: float) -> list[str]:
    """Compare every metric recomputed from the predictions with ``test_metrics.json``'s ``at_threshold``;
    a check line saying they agree, or one ``MISMATCH`` line naming each metric that differs."""
    if stored is None:
        return ["test_metrics.json not found: the recomputed metrics could not be cross-checked"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)  # the point estimates warn once elsewhere
        now = metrics.compute_metrics(y, p, threshold)
    at = stored["at_threshold"]
    differ = []
    for key, value in now.items():
        old = at.get(key)
        if key not in at or (old is None and not math.isfinite(value)):
            continue
        exact = key in ("tp", "fp", "tn", "fn", "n", "n_pos")
        if old is None or not math.isfinite(value) or (value != old if exact else abs(value - old) > CROSSCHECK_TOL):
            differ.append(f"{key} {old} vs {value:.9g}")
    if differ:
        return [f"MISMATCH: metrics recomputed from test_predictions.csv differ from test_metrics.json: "
                f"{'; '.join(differ)}. The run folder changed after testing, or its predictions were written with "
                "fewer digits by an older version; re-score with main.py --test --overwrite"]
    return [f"all {sum(k in at for k in now)} metrics recomputed from test_predictions.csv equal test_metrics.json "
            f"(counts exactly, rates within {CROSSCHECK_TOL:g})"]


def data_checks(paths: Mapping[str, Sequence[Path]], clinical_stats: Mapping) -> list[str]:
    """Do the training images reproduce the run's normalisation, and does any patient sit in two splits?"""
    checks = []
    fitted = loader.ClinicalStats.fit([filenames.decode(f) for f in paths["train"]]).to_dict()
    same_train = np.allclose(fitted["mean"], clinical_stats["mean"], rtol=1e-6, atol=1e-9) and \
        np.allclose(fitted["std"], clinical_stats["std"], rtol=1e-6, atol=1e-9)
    checks.append("the training images found reproduce the run's clinical normalisation statistics"
                  if same_train else
                  "the training images found do NOT reproduce the run's clinical normalisation statistics: "
                  "the data folder differs from the one the network was trained on")
    in_two = splits.shared_patients({s: paths[s] for s in loader.SPLITS})
    for i, a in enumerate(loader.SPLITS):
        for b in loader.SPLITS[i + 1:]:
            shared = [p for p, where in in_two.items() if a in where and b in where]
            if shared:
                checks.append(f"LEAK: {len(shared)} patient(s) have images in both {a} and {b} "
                              f"(e.g. {', '.join(shared[:3])}); the {b} numbers are optimistic")
    if not any(c.startswith("LEAK") for c in checks):
        checks.append("no patient has images in two splits")
    return checks


def _labelled(caught: list, label: str, func, *args, **kwargs):
    """Call ``func``; warnings it records into ``caught`` get ``label`` in front (which model they concern)."""
    start = len(caught)
    out = func(*args, **kwargs)
    for w in caught[start:]:
        w.label = f"{label}: "
    return out


def compare_with_baseline(paths: Mapping[str, Sequence[Path]], test: pd.DataFrame, n_boot: int, seed: int,
                          interval: str, caught: list) -> tuple[dict | None, dict | None, np.ndarray | None, str | None]:
    """The clinical-only baseline's evaluation, the paired comparison with the network and the baseline's
    test probabilities; or (None, None, None, why) where no baseline can be fitted."""
    try:
        base = baseline.clinical_baseline(files=paths)
    except baseline.BaselineUnavailable as exc:
        return None, None, None, str(exc)
    p_base = test[["file"]].merge(base["test"][["file", "probability"]], on="file", how="left",
                                  validate="one_to_one")["probability"].to_numpy(dtype=np.float64)
    y, p_net = test["label"].to_numpy(dtype=np.int64), test["probability"].to_numpy(dtype=np.float64)
    groups = test["patient"].to_numpy()
    evaluation = _labelled(caught, "clinical baseline", evaluate, y, p_base, base["threshold"], groups, n_boot, seed,
                           interval)
    val = base["val"]
    evaluation.update(coef=base["coef"], intercept=base["intercept"], n_train=base["n_train"], C=base["C"],
                      val_roc_auc=metrics.roc_auc(val["label"].to_numpy(), val["probability"].to_numpy()))
    comparison = {"auc_difference": _labelled(caught, "AUC difference", confidence.paired_bootstrap_diff, y, p_net,
                                              p_base, metrics.roc_auc, groups=groups, n_boot=n_boot, seed=seed,
                                              alpha=ALPHA),
                  "delong_test": _labelled(caught, "DeLong test", confidence.delong_test, y, p_net, p_base,
                                           groups=groups)}
    return evaluation, comparison, p_base, None


def scored_test_set(run: Mapping, paths: Mapping[str, Sequence[Path]]) -> pd.DataFrame:
    """The run's test predictions with each image's sex, age and BMI."""
    clinical = loader.clinical_table(paths["test"])[["file", *loader.CLINICAL_NAMES]]
    return run["test"].merge(clinical, on="file", how="left", validate="one_to_one")


# --------------------------------------------------------------------------- the report

def write_report(run_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None, n_boot: int = 2000,
                 seed: int = 0, files: Mapping[str, Sequence[str | os.PathLike]] | None = None,
                 interval: str = "bca", gallery: int = GALLERY) -> dict:
    """Write ``report.md`` (+ ``report_figures/*.png``), ``report.html``, ``model_card.md`` and
    ``report_metrics.json`` into ``run_dir`` and return the numbers of ``report_metrics.json``.

    ``data_dir`` defaults to the run's ``config["data_dir"]``; ``files`` (split -> image paths)
    overrides both, e.g. for a cross-validation fold whose config lacks ``cv_folds``/``cv_fold``.
    The val and test images must be exactly those in the run's prediction files. ``interval``:
    "bca" (default) or "percentile" bootstrap intervals for the AUCs, Brier score and calibration.
    ``gallery``: test images per outcome (TP, TN, FP, FN) in the case gallery (:mod:`gallery`), 0 for none.
    """
    confidence._check_bootstrap_args(n_boot, ALPHA, interval)  # before any file is read
    run = run_facts(run_dir)
    paths = runfiles.split_files(run["config"], data_dir, files)
    check_same_images("test", paths["test"], run["test"], runfiles.PREDICTIONS["test"])
    check_same_images("val", paths["val"], run["val"], runfiles.PREDICTIONS["val"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        test = scored_test_set(run, paths)
        y, p_net = test["label"].to_numpy(dtype=np.int64), test["probability"].to_numpy(dtype=np.float64)
        network = _labelled(caught, "network", evaluate, y, p_net, run["threshold"], test["patient"].to_numpy(),
                            n_boot, seed, interval)
        base, comparison, p_base, absent = compare_with_baseline(paths, test, n_boot, seed, interval, caught)
        result = {
            "run": f"{run['dir'].parent.name}/{run['dir'].name}", "run_dir": str(run["dir"]),
            "created": time.strftime("%Y-%m-%d %H:%M"),
            "data_dir": str(data_dir if data_dir is not None else run["config"].get("data_dir")),
            "n_boot": int(n_boot), "seed": int(seed), "alpha": ALPHA, "interval": interval, "epoch": run["epoch"],
            "select_metric": run["select_metric"],
            "threshold_source": (run["test_metrics"] or {}).get("threshold_source", "validation at the best epoch"),
            "run_config": {k: run["config"].get(k) for k in model_card.CONFIG_KEYS},
            "suite_commit": model_card.suite_commit(),
            "data_source": model_card.data_source(data_dir if data_dir is not None else run["config"].get("data_dir")),
            "history": run["history"].to_dict("records") if run["history"] is not None else None,
            "data": {**{s: describe_split(paths[s]) for s in loader.SPLITS},
                     "all": describe_split([f for s in loader.SPLITS for f in paths[s]])},
            "network": network, "baseline": base, "comparison": comparison, "baseline_absent": absent,
            "subgroups": _labelled(caught, "subgroups", subgroups, test, n_boot, seed, interval),
            "checks": data_checks(paths, run["clinical_stats"])
            + crosscheck(run["test_metrics"], y, p_net, run["threshold"]),
        }
        figures = report_render.report_figures(result, y, [p for p in (p_net, p_base) if p is not None],
                                               run["history"])
        if run["target_spec"]:  # a graded target (main.py --target): its own section; binary runs get none
            result["measurement"] = _labelled(
                caught, "measurement", measure_report.measurement, run["test"], run["target_spec"], n_boot, seed,
                interval, data_dir if data_dir is not None else run["config"].get("data_dir"),
                source=str(runfiles.Run(run["dir"]).predictions_file("test")))
            if run["scale"]:  # a continuous target: how its probability's scale was set
                result["measurement"]["scale"] = run["scale"]
            figures.update(measure_report.measurement_figures(result["measurement"], run["test"], run["target_spec"]))
        result["gallery"], gallery_figures = case_gallery.case_gallery(run["dir"], paths, gallery)
        result["gallery_size"] = int(gallery)
        figures.update(gallery_figures)
    result["warnings"] = list(dict.fromkeys(getattr(w, "label", "") + str(w.message) for w in caught))
    for message in result["warnings"]:
        logger.warning("report: %s", message)
    return _write(run["dir"], result, figures)


def _write(run_path: Path, result: dict, figures: Mapping[str, bytes]) -> dict:
    """report_figures/*.png, report.md, report.html, model_card.md (:mod:`model_card`, from the numbers saved)
    and report_metrics.json, each atomically (runfiles.Run)."""
    blocks = report_render.report_blocks(result)
    stale_dir = runfiles.Run(run_path).file(runfiles.REPORT_FIGURES)
    for stale in stale_dir.glob("gallery_*.png"):  # an earlier report's cases, not this one's
        if stale.stem not in figures:
            stale.unlink()
    saved = {k: v for k, v in result.items() if k != "history"}
    written = runfiles.Run(run_path).write_report(report_render.render_markdown(blocks, figure_dir=FIGURE_DIR),
                                                  report_render.render_html(blocks, figures,
                                                                            f"Run report: {result['run']}"),
                                                  saved, figures, card=model_card.run_card(saved))
    logger.info("report written: %s", written)
    return saved


# --------------------------------------------------------------------------- the command (report.py)

def run_command(args: argparse.Namespace) -> dict:
    """What ``python report.py`` does with its parsed flags (report.py's parser): the run report
    (``--run``), the cross-validation summary (``--cv``) or an external validation (``--external``);
    prints one line with the result and where the report is, and returns the numbers. A missing file
    or a bad value ends as SystemExit with one line (cli.run_main prints it without a traceback)."""
    runtime.setup_logging()
    try:
        if args.external:
            return _external(args)
        if args.cv:
            return _cross_validation(args)
        with runfiles.hold_run(args.run, "report.py --run"):  # a training or another report: refused, nothing written
            if args.recalibrate:  # writes RUN/recalibrated/METHOD/
                return _recalibrate(args)
            result = write_report(args.run, args.data_dir, args.bootstrap or 2000, args.seed, interval=args.interval,
                                  gallery=args.gallery)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(str(exc)) from None
    print(f"{headline(result)}; report in {runfiles.Run(Path(args.run)).file(runfiles.REPORT_HTML)}")
    return result


def headline(result: Mapping) -> str:
    """The run report in one line: the test ROC AUC, the measurement's (if any) and the baseline's."""
    base = (f"clinical baseline {ci(result['baseline']['metrics']['roc_auc'])}" if result["baseline"]
            else f"no clinical baseline ({result['baseline_absent']})")
    measured = measure_report.headline(result.get("measurement"))  # '' for a binary run
    return f"test ROC AUC {ci(result['network']['metrics']['roc_auc'])}{measured}; {base}"


def _external(args: argparse.Namespace) -> dict:
    with runfiles.hold_run(args.run, "report.py --external"):  # it writes RUN/external/NAME/
        result = external.validate(args.run, args.external, args.name, args.recalibrate, args.calibrate_on,
                                   n_boot=args.bootstrap or 2000, seed=args.seed, interval=args.interval,
                                   development_dir=args.data_dir)
    print(f"{external.headline(result)}; report in "
          f"{external.out_folder(args.run, result['name']) / 'external_report.html'}")
    return result


def _recalibrate(args: argparse.Namespace) -> dict:
    result = recalibration.recalibrate_run(args.run, args.recalibrate, n_boot=args.bootstrap or 2000, seed=args.seed,
                                           interval=args.interval)
    print(f"{recalibration.headline(result)}; report in "
          f"{recalibration.out_folder(args.run, args.recalibrate) / recalibration.REPORT_HTML}")
    return result


def _cross_validation(args: argparse.Namespace) -> dict:
    group = runfiles.RunGroup(Path(args.cv))
    runs = [run.dir for run in group.runs(having=runfiles.TEST_METRICS)]
    if not runs:
        raise SystemExit(f"--cv {group.dir}: no tested fold*/ run folders (with {runfiles.TEST_METRICS}) inside")
    plain = [d for d in runs if not runfiles.Run(d).config_file.is_file()
             or not runfiles.Run(d).read_config().get("cv_folds")]
    if plain:
        raise SystemExit(f"--cv {group.dir}: {plain[0].name} is not a cross-validation fold (trained without "
                         f"main.py --folds K), so there is nothing to summarise over folds; nothing was written. "
                         f"For one run's report: python report.py --run {plain[0]}")
    n_boot = args.bootstrap or (runfiles.read_json(group.summary_file).get("n_boot", 2000)
                                if group.summary_file.is_file()
                                else runfiles.Run(runs[0]).read_config().get("bootstrap") or 2000)
    with runfiles.hold_run(group.dir, "report.py --cv"):  # main.py --folds writing the summary: refused
        result = cv_report.write_cv_summary(group.dir, runs, n_boot=n_boot, seed=args.seed, by=args.by,
                                            data_dir=args.data_dir, target_auc=args.target_auc)
    print("\n".join([f"{cv_report.headline(result)}; {group.report_file}", *cv_report.subgroup_lines(result)]))
    return result
