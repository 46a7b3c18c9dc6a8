"""The summary of a cross-validation over its tested fold runs: ``cv_summary.json`` (the numbers),
``cv_report.md`` (drawn with :mod:`render`'s blocks, as the run report is) and the group's model card
``model_card.md`` (:mod:`model_card`, from the summary's numbers).

Per fold, each fold's test metrics at its own validation threshold with mean, SD and how many
folds entered them; for the ``oof`` design the out-of-fold probabilities pooled over every patient
(and per subgroup of the data folder's manifest); for ``heldout`` the fold ensemble on the shared
test set. Which images each fold saw is :mod:`folds`; running the folds is :mod:`crossval`.
"""
from __future__ import annotations

import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from hipx.stats import confidence
from hipx.data import loader
from hipx.reports import baseline
from hipx.reports import cohort
from hipx.reports import learning_curve as lc_report
from hipx.reports import measurement as measure_report
from hipx.reports import model_card
from hipx.stats import metrics
from hipx.runs import runfiles
from hipx.core.runconfig import RunConfig
from hipx.stats import decision
from hipx.reports.render import (decision_blocks, dropped_text, figure_calibration, figure_decision_curve,
                                 figure_roc_pr, render_html, render_markdown)
from hipx.reports.style import PALETTE, ci as _ci, fmt as _fmt

logger = logging.getLogger(__name__)

DESIGN_TEXT = {
    "oof": "out-of-fold (--cv oof): all images pooled into K patient-level folds; fold k is the test set of "
           "model k, which picked its epoch and threshold on a validation part carved from the other folds; "
           "every patient is tested exactly once",
    "heldout": "rotating validation with a held-out test set (--cv heldout): fold k of train+val validates "
               "model k, and every model is scored on the same test set",
}
FOLD_METRICS = ("roc_auc", "pr_auc", "brier", "accuracy", "sensitivity", "specificity", "precision", "npv",
                "f1", "f2", "balanced_accuracy", "mcc")
THRESHOLD_FREE = ("roc_auc", "pr_auc", "brier")
CALIBRATION = ("calibration_intercept", "calibration_slope")  # of the probabilities, for the model card
AT_THRESHOLD = ("sensitivity", "specificity", "balanced_accuracy", "accuracy", "precision", "npv", "f1", "mcc")
ALPHA = 0.05


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _with_ci(y: np.ndarray, p: np.ndarray, decisions: np.ndarray, groups: np.ndarray, n_boot: int,
             seed: int) -> dict:
    """Threshold-free metrics and calibration of ``p`` and threshold metrics of the 0/1 ``decisions``,
    each with its patient-bootstrap 95 % CI (the same resamples, as both calls share ``seed``). Each call
    computes every metric; only the kept ones are warned about (not, e.g., the probabilities' precision
    at 0.5 or the decisions' calibration, which no report shows)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
        free = confidence.bootstrap_metrics(y, p, 0.5, groups=groups, n_boot=n_boot, seed=seed, alpha=ALPHA)
        at = confidence.bootstrap_metrics(y, decisions.astype(float), 0.5, groups=groups, n_boot=n_boot, seed=seed,
                                          alpha=ALPHA)
    out = {**{k: free[k] for k in (*THRESHOLD_FREE, *CALIBRATION)}, **{k: at[k] for k in AT_THRESHOLD}}
    undefined = [k for k, v in out.items() if v["point"] is None or not math.isfinite(v["point"])]
    if undefined:
        warnings.warn(f"{', '.join(undefined)} undefined for these {len(y)} images ({int(y.sum())} with "
                      f"osteoporosis, {int(decisions.sum())} decided so: one class, 0/0 or a calibration fit that "
                      "does not converge); shown as nan",
                      metrics.UndefinedMetricWarning, stacklevel=3)
    confidence.warn_dropped({k: n_boot - v["n_boot_valid"] for k, v in out.items()
                             if k not in undefined and v["n_boot_valid"] < n_boot}, n_boot)
    return out


# manifest columns broken down by default where the data folder's manifest has them with two or more
# values: preprocess_filenames.py --roi writes 'field' (radiograph or bone_only segmentation)
AUTO_SUBGROUPS = ("field",)


def manifest_values(data_dir: str | os.PathLike, column: str) -> dict[str, str]:
    """Image file name -> its value in ``column`` of the data folder's ``manifest.csv``."""
    path = Path(data_dir) / "manifest.csv"
    if not path.is_file():
        raise ValueError(f"--by {column}: {path} not found; subgroups are columns of the manifest "
                         "preprocess_filenames.py writes")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "file" not in table.columns:
        raise ValueError(f"--by {column}: {path} has no 'file' column; is it the manifest of preprocess_filenames.py?")
    if column not in table.columns or column == "file":
        raise ValueError(f"--by {column}: no such column in {path}; it has "
                         f"{', '.join(c for c in table.columns if c != 'file')}")
    return dict(zip(table["file"].map(lambda f: Path(f).name), table[column]))


def subgroup_results(pooled: pd.DataFrame, data_dir: str | os.PathLike, columns: Sequence[str] | None,
                     n_boot: int, seed: int) -> list[dict]:
    """Pooled out-of-fold ROC AUC (patient-bootstrap 95 % CI) within each value of each manifest
    column. ``columns=None``: those of :data:`AUTO_SUBGROUPS` the manifest has with two or more values."""
    auto = columns is None
    rows = []
    for column in (AUTO_SUBGROUPS if auto else columns):
        try:
            values = manifest_values(data_dir, column)
        except ValueError:
            if auto:
                continue
            raise
        value = pooled["file"].map(lambda f: values.get(Path(f).name))
        if value.isna().any() and auto:  # a default breakdown never stops a finished cross-validation
            logger.warning("no subgroups by %s: %d tested image(s) are not in %s", column, int(value.isna().sum()),
                           Path(data_dir) / "manifest.csv")
            continue
        if value.isna().any():
            raise ValueError(f"--by {column}: {int(value.isna().sum())} tested image(s) are not in "
                             f"{Path(data_dir) / 'manifest.csv'} (e.g. {pooled['file'][value.isna()].iloc[0]})")
        if auto and value.nunique() < 2:
            continue
        for v, part in pooled.groupby(value.to_numpy(), sort=True):
            y = part["label"].to_numpy(dtype=np.int64)
            row = {"column": column, "value": v, "n_images": len(part), "n_patients": int(part["patient"].nunique()),
                   "n_osteoporosis_images": int(y.sum()), "roc_auc": None}
            if 0 < y.sum() < len(y):
                with warnings.catch_warnings():  # resamples left out: one warning for all subgroups, below
                    warnings.simplefilter("ignore", confidence.ResamplesDropped)
                    row["roc_auc"] = confidence.bootstrap_ci(
                        y, part["probability"].to_numpy(dtype=float), metrics.roc_auc,
                        groups=part["patient"].to_numpy(), n_boot=n_boot, seed=seed, alpha=ALPHA)
            rows.append(row)
    cohort.warn_dropped([(f"{g['column']} {g['value']}", g["roc_auc"]) for g in rows], n_boot)
    return rows


def pooled_baseline(pooled: pd.DataFrame, configs: Sequence[RunConfig], data_dir: str | os.PathLike,
                    n_boot: int, seed: int) -> tuple[dict, np.ndarray | None]:
    """The clinical-only baseline out of fold beside the pooled network: each fold's logistic regression
    fitted on that fold's training patients scores its test patients; pooled AUC etc. with CIs, and the
    pooled paired difference network minus baseline (patient bootstrap, clustered DeLong). Returns the
    numbers and the baseline's pooled probabilities (None where there is no baseline)."""
    try:
        base = baseline.out_of_fold([runfiles.split_files(c, data_dir) for c in configs])
    except baseline.BaselineUnavailable as exc:
        return {"baseline_absent": str(exc)}, None
    base = pooled[["file"]].assign(file=pooled["file"].map(lambda f: Path(f).name)).merge(
        base.assign(file=base["file"].map(lambda f: Path(f).name)), on="file", how="left", validate="one_to_one")
    if base["probability"].isna().any():
        return {"baseline_absent": f"{int(base['probability'].isna().sum())} tested image(s) are not in the folds' "
                                   f"test splits of {data_dir}"}, None
    y = pooled["label"].to_numpy(dtype=np.int64)
    groups = pooled["patient"].to_numpy()
    p_net, p_base = pooled["probability"].to_numpy(dtype=float), base["probability"].to_numpy(dtype=float)
    return {"baseline": {"what": "clinical-only logistic regression (sex, age, BMI), fitted on each fold's training "
                                 "patients and scored on its test patients; decisions at each fold's own validation "
                                 "threshold",
                         "metrics": _with_ci(y, p_base, base["prediction"].to_numpy(), groups, n_boot, seed)},
            "comparison": {"auc_difference": confidence.paired_bootstrap_diff(
                               y, p_net, p_base, metrics.roc_auc, groups=groups, n_boot=n_boot, seed=seed, alpha=ALPHA),
                           "delong_test": confidence.delong_test(y, p_net, p_base, groups=groups)}}, p_base


def cv_figures(block: dict, y: np.ndarray, p: np.ndarray, p_base: np.ndarray | None, groups: np.ndarray,
               n_boot: int, seed: int, threshold: float | None = None) -> dict[str, bytes]:
    """The figures of ``cv_report.html``: ROC and PR curves, calibration and the decision curve of the
    pooled (or ensemble) probabilities, the clinical baseline's beside them where it exists. The
    decision curves' numbers join ``block`` (``decision_curve``, ``baseline_decision_curve``), net
    benefit at the table's thresholds with CIs from ``n_boot`` resamples of the patients ``groups``."""
    models = [("network", p, PALETTE[0])] + ([("clinical baseline", p_base, PALETTE[1])] if p_base is not None else [])
    where = "pooled out of fold" if threshold is None else "fold ensemble, shared test set"
    curves = []
    for (name, probs, colour), key in zip(models, ("decision_curve", "baseline_decision_curve")):
        block[key] = decision.decision_curve(y, probs, run_threshold=threshold, groups=groups, n_boot=n_boot,
                                             seed=seed, alpha=ALPHA)
        curves.append((name, block[key], threshold, colour))
    return {"roc_pr": figure_roc_pr(y, [(n, q, threshold, c) for n, q, c in models], where=where),
            "calibration": figure_calibration(y, models, where=where),
            "decision": figure_decision_curve(curves)}


def write_cv_summary(save_dir_path: str | os.PathLike, fold_run_dirs: Sequence[str | os.PathLike],
                     n_boot: int = 2000, seed: int = 0, by: Sequence[str] | None = None,
                     data_dir: str | os.PathLike | None = None, target_auc: float | None = None) -> dict:
    """``cv_summary.json`` and ``cv_report.md`` in ``save_dir_path`` over the tested fold runs (each
    read through :func:`runfiles.load_run`: a fold whose test metrics are stale is refused).

    Always: each fold's test metrics at its own validation threshold, and per metric the mean, SD
    (ddof 1) and how many folds entered them (a fold whose metric is undefined, e.g. a test fold
    with one class, is counted out visibly, not dropped silently).
    ``oof`` design: the out-of-fold probabilities of all folds pooled into one result over every
    patient, with patient-bootstrap 95 % CIs (sensitivity etc. from each fold's decisions at its
    own threshold). ``heldout`` design: the fold ensemble (mean probability of the K models) on
    the shared test set, with CIs, at the mean of the folds' thresholds.
    The clinical-only baseline of each fold's report enters only where the clinical values vary.
    ``by``: manifest columns whose values split the pooled result into subgroups (``oof`` design;
    None = :data:`AUTO_SUBGROUPS` where present); ``data_dir`` defaults to the folds' config.
    Folds trained with ``--learning_curve``: the curve over the cross-validations of its subset sizes in
    ``save_dir_path``/lc_<size>/ (:func:`learning_curve`), ``target_auc`` (default: the folds' own) the AUC
    whose patients it estimates.
    """
    out_dir = Path(save_dir_path)
    if not fold_run_dirs:
        raise ValueError("write_cv_summary needs at least one fold run folder")
    folds, predictions, configs = zip(*(read_fold(Path(folder)) for folder in fold_run_dirs))
    designs = {c.cv_design if c.is_fold else "heldout" for c in configs}
    if len(designs) > 1:
        raise ValueError(f"the fold runs mix cross-validation designs {sorted(designs)}; summarise one run group")
    design = designs.pop()
    spec = measure_report.group_target_spec(fold_run_dirs)  # None for binary folds
    baseline_note = _without_baseline(folds, predictions)
    summary: dict[str, Any] = {"design": design, "design_text": DESIGN_TEXT[design], "n_folds": len(folds),
                               "n_boot": int(n_boot), "per_metric": per_metric(folds), "folds": list(folds)}
    if baseline_note:
        summary["baseline_note"] = baseline_note
    data_dirs = {c.data_dir for c in configs}
    data_dir = data_dir or (data_dirs.pop() if len(data_dirs) == 1 else None)
    if design == "oof":
        figures = _pooled_out_of_fold(summary, predictions, configs, spec, data_dir, by, n_boot, seed)
    elif by:
        raise ValueError(f"--by {by[0]}: subgroups split the pooled out-of-fold result; these runs are "
                         f"design {design} (main.py --cv oof)")
    else:
        figures = _fold_ensemble(summary, predictions, n_boot, seed)
    if configs[0].learning_curve:
        target = configs[0].target_auc if target_auc is None else target_auc
        figures.update(learning_curve(summary, out_dir, configs, predictions, design, data_dir, n_boot, seed, target))
    if spec and design != "oof":
        summary["measurement_note"] = ("the measurement statistics pool out-of-fold predictions (main.py --cv oof); "
                                       "this heldout design has none")
    summary["note"] = ("per-fold figures: " + ("each fold is scored on its own test patients" if design == "oof" else
                       "every fold is scored on the same held-out test set, so the SD reflects variation between "
                       "trainings (data of the fold, initialisation), not sampling of test patients"))
    summary.update(card_facts(configs, predictions, data_dir))
    written = runfiles.RunGroup(out_dir).write_cv_summary(
        summary, render_cv_report(out_dir.name, summary),
        render_html(report_blocks(out_dir.name, summary, figures), figures,
                    f"Cross-validation summary: {out_dir.name}"),
        card=model_card.cv_card(summary, out_dir))
    logger.info("cross-validation summary of %d folds written to %s", len(folds), written)
    return summary


def learning_curve(summary: dict, group_dir: Path, configs: Sequence[RunConfig], predictions: Sequence[pd.DataFrame],
                   design: str, data_dir: str | os.PathLike | None, n_boot: int, seed: int,
                   target: float | None) -> dict[str, bytes]:
    """The learning curve (main.py --learning_curve) into ``summary["learning_curve"]``: the cross-validation
    itself (``configs``, ``predictions``) and, for each subset size its folds were configured with, the same
    folds in ``group_dir``/lc_<size>/ (:func:`runfiles.learning_curve_folder`); a size whose folds are not all
    tested is left out and named. Returns its figure."""
    entries: list[lc_report.Entry] = [(1.0, predictions, configs)]
    missing = []
    for size in configs[0].learning_curve:
        if isinstance(size, float) and size == 1.0:
            continue
        sub = group_dir / runfiles.learning_curve_folder(size)
        try:
            _, preds, cfgs = zip(*(read_fold(sub / f"fold{c.fold}") for c in configs))
        except FileNotFoundError as exc:
            missing.append(f"{sub.name} ({exc})")
            continue
        entries.append((size, preds, cfgs))
    summary["learning_curve"] = lc_report.measure(entries, design, data_dir, n_boot, seed, target,
                                                  with_baseline=not summary.get("baseline_note"), missing=missing)
    return {lc_report.FIGURE: lc_report.summary_figure(summary["learning_curve"])}


def card_facts(configs: Sequence[RunConfig], predictions: Sequence[pd.DataFrame],
               data_dir: str | os.PathLike | None) -> dict:
    """What the group's model card (:mod:`model_card`) reads beside the results: the folds' shared
    settings, the data folder and what made it, and the data (:func:`describe_folds`). No date and
    no commit: the same folds summarised again give a byte-identical cv_summary.json (the card,
    which is rewritten with it, carries them)."""
    config = configs[0].to_dict()
    return {"data_dir": None if data_dir is None else str(data_dir),
            "data_source": model_card.data_source(data_dir),
            "run_config": {k: config.get(k) for k in model_card.CONFIG_KEYS if k != "cv_fold"},
            "data": describe_folds(configs, predictions, data_dir)}


def describe_folds(configs: Sequence[RunConfig], predictions: Sequence[pd.DataFrame],
                   data_dir: str | os.PathLike | None) -> dict:
    """Who the cross-validation's images are (:func:`cohort.describe_split`): ``tested``, the images the
    folds scored (each once); and, where the data folder can be read, ``all`` its images and per fold
    run its train, val and test images; else a ``note`` saying why not."""
    tested = list(dict.fromkeys(f for pred in predictions for f in pred["file"]))  # heldout: the shared test set
    out: dict[str, Any] = {"tested": cohort.describe_split(tested)}
    try:
        # a fold's own folder read as the fold's (its errors then name the run's configuration, not --data_dir)
        paths = [runfiles.split_files(c, None if data_dir is None or str(data_dir) == str(c.data_dir) else data_dir)
                 for c in configs]
    except (FileNotFoundError, ValueError) as exc:
        out["note"] = f"The data folder could not be read ({exc}); only the tested images are described."
        return out
    every = list(dict.fromkeys(f for p in paths for split in loader.SPLITS for f in p[split]))
    out["all"] = cohort.describe_split(every)
    out["folds"] = {f"fold{c.fold}": {split: cohort.describe_split(p[split]) for split in loader.SPLITS}
                    for c, p in zip(configs, paths)}
    return out


def read_fold(folder: Path) -> tuple[dict, pd.DataFrame, RunConfig]:
    """One tested fold run: its row of the per-fold table (test metrics at its own threshold, and its
    report's baseline AUC and difference where it made one), its test predictions (with a ``fold``
    column) and its configuration. FileNotFoundError naming the file a fold lacks."""
    for name in (runfiles.BEST, runfiles.TEST_METRICS, runfiles.PREDICTIONS["test"], runfiles.CONFIG):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} not found: test every fold before summarising")
    run = runfiles.load_run(folder)
    tm = run.test_metrics()  # refused when stale: scored at another threshold than best.pth holds
    config = RunConfig.from_dict(run.read_config())
    pred = run.predictions("test")
    pred["fold"] = folder.name
    row = {"run": folder.name, "epoch": tm["epoch"], "threshold": tm["threshold"], "n_images": tm["n_images"],
           **{k: _number(tm["at_threshold"].get(k)) for k in FOLD_METRICS}}
    rep = run.report_metrics()
    if rep is not None:
        base = rep.get("baseline") or {}
        if base.get("metrics") and rep.get("comparison"):
            row["baseline_roc_auc"] = _number(base["metrics"]["roc_auc"]["point"])
            row["roc_auc_difference"] = _number(rep["comparison"]["auc_difference"]["diff"])
    return row, pred, config


def _without_baseline(folds: Sequence[dict], predictions: Sequence[pd.DataFrame]) -> str | None:
    """Why no clinical-only baseline can be learnt from these images (their baseline columns are then
    dropped from ``folds``), or None where sex, age or BMI varies."""
    all_files = [f for pred in predictions for f in pred["file"]]
    if "varies" in loader.clinical_states(loader.clinical_table(all_files)).values():
        return None
    for row in folds:
        row.pop("baseline_roc_auc", None)
        row.pop("roc_auc_difference", None)
    return ("no clinical-only baseline: sex, age and BMI are missing or constant in these images, so there is "
            "nothing for it to learn from")


def per_metric(folds: Sequence[Mapping]) -> dict[str, dict]:
    """Per metric of the per-fold table: mean, SD (ddof 1), how many folds entered them, of how many."""
    keys = [k for k in ("threshold", *FOLD_METRICS, "baseline_roc_auc", "roc_auc_difference")
            if any(k in f for f in folds)]
    out = {}
    for k in keys:
        stats = metrics.mean_sd(_number(f.get(k)) for f in folds)
        out[k] = {"mean": stats["mean"], "sd": stats["sd"], "n_folds": stats["n"], "of": len(folds)}
    return out


def _pooled_out_of_fold(summary: dict, predictions: Sequence[pd.DataFrame], configs: Sequence[RunConfig],
                        spec: Mapping | None, data_dir: str | os.PathLike | None, by: Sequence[str] | None,
                        n_boot: int, seed: int) -> dict[str, bytes]:
    """``oof`` design: the pooled result (with the pooled baseline, the measurement and the subgroups
    where there are) into ``summary``; returns the figures."""
    pooled = pd.concat(predictions, ignore_index=True)
    tested = pooled.groupby("patient")["fold"].nunique()
    if (tested > 1).any() or pooled["file"].duplicated().any():
        raise ValueError(f"{int((tested > 1).sum())} patient(s) were tested in more than one fold (e.g. "
                         f"{list(tested[tested > 1].index[:3])}); these are not out-of-fold runs of one design")
    y = pooled["label"].to_numpy(dtype=np.int64)
    summary["pooled"] = {
        "what": "out-of-fold probabilities of all folds pooled: every patient once, each scored by the model "
                "that never saw it; sensitivity etc. from each fold's decision at its own validation threshold",
        "n_images": len(pooled), "n_patients": int(pooled["patient"].nunique()),
        "n_osteoporosis_images": int(y.sum()),
        "metrics": _with_ci(y, pooled["probability"].to_numpy(dtype=float), pooled["prediction"].to_numpy(),
                            pooled["patient"].to_numpy(), n_boot, seed)}
    summary["pooled"]["clinical_subgroups"] = cohort.subgroups(cohort.with_clinical_values(pooled), n_boot, seed)
    p_base = None
    if data_dir is not None and not summary.get("baseline_note"):
        numbers, p_base = pooled_baseline(pooled, configs, data_dir, n_boot, seed)
        summary["pooled"].update(numbers)
    figures = cv_figures(summary["pooled"], y, pooled["probability"].to_numpy(dtype=float), p_base,
                         pooled["patient"].to_numpy(), n_boot, seed)
    if spec:  # a graded target (main.py --target): predicted against measured, pooled out of fold
        summary["measurement"] = measure_report.measurement(pooled, spec, n_boot, seed, data_dir=data_dir,
                                                            source="the folds' test_predictions.csv",
                                                            what="out-of-fold")
        figures.update(measure_report.measurement_figures(summary["measurement"], pooled, spec))
    if data_dir is not None:
        summary["subgroups"] = subgroup_results(pooled, data_dir, by, n_boot, seed)
    elif by:
        raise ValueError(f"--by {by[0]}: the folds name different data folders; give --data_dir")
    return figures


def _fold_ensemble(summary: dict, predictions: Sequence[pd.DataFrame], n_boot: int, seed: int) -> dict[str, bytes]:
    """``heldout`` design: where every fold scored the same test images, the fold ensemble (mean
    probability, decisions at the mean threshold) into ``summary``; returns the figures (none without)."""
    if len({frozenset(pred["file"]) for pred in predictions}) != 1 or len(predictions) < 2:
        return {}
    table = pd.concat([pred.set_index("file")["probability"].rename(pred["fold"].iloc[0])
                       for pred in predictions], axis=1)
    first = predictions[0].set_index("file").loc[table.index]
    p = table.mean(axis=1).to_numpy(dtype=float)
    threshold = float(np.mean([f["threshold"] for f in summary["folds"]]))
    y = first["label"].to_numpy(dtype=np.int64)
    summary["ensemble"] = {
        "what": f"mean probability of the {len(predictions)} fold models on the shared test set; decisions at "
                "the mean of the folds' validation thresholds",
        "threshold": threshold, "n_images": len(p), "n_patients": int(first["patient"].nunique()),
        "metrics": _with_ci(y, p, (p >= threshold).astype(int), first["patient"].to_numpy(), n_boot, seed)}
    scored = cohort.with_clinical_values(first.reset_index()[["file", "label", "patient"]].assign(probability=p))
    summary["ensemble"]["clinical_subgroups"] = cohort.subgroups(scored, n_boot, seed)
    return cv_figures(summary["ensemble"], y, p, None, first["patient"].to_numpy(), n_boot, seed, threshold)


def headline(summary: Mapping) -> str:
    """One line for the console: the pooled (oof) or ensemble (heldout) AUC with CI, else the fold mean."""
    for key, what in (("pooled", "pooled out-of-fold"), ("ensemble", "fold-ensemble test")):
        if key in summary:
            block = summary[key]
            base = (f"; clinical baseline {_ci(block['baseline']['metrics']['roc_auc'])}, difference "
                    f"{_fmt(block['comparison']['auc_difference']['diff'])}" if block.get("baseline") else "")
            return (f"{what} ROC AUC {_ci(block['metrics']['roc_auc'])} over {block['n_images']} images of "
                    f"{block['n_patients']} patients ({summary['n_folds']} folds, {summary['design']}){base}"
                    f"{measure_report.headline(summary.get('measurement')) if key == 'pooled' else ''}")
    m = summary["per_metric"]["roc_auc"]
    return (f"{summary['n_folds']} folds ({summary['design']}): ROC AUC {_fmt(m['mean'])} ± {_fmt(m['sd'])} "
            f"(mean ± SD of {m['n_folds']} of {m['of']} folds)")


def subgroup_lines(summary: Mapping) -> list[str]:
    """The console's lines under :func:`headline`: the pooled out-of-fold ROC AUC within each value of
    each manifest column (``report.py --cv --by``), one line per value; none without subgroups."""
    return [f"  {g['column']} {g['value']}: ROC AUC {_ci(g['roc_auc']) if g['roc_auc'] else 'n/a (one class)'} "
            f"over {g['n_images']} images of {g['n_patients']} patients ({g['n_osteoporosis_images']} osteoporosis)"
            for g in summary.get("subgroups") or []]


def report_blocks(name: str, summary: Mapping, figures: Mapping[str, bytes] | None = None) -> list[tuple]:
    """The blocks of ``cv_report.md`` (:func:`render.render_markdown` draws them) and, with
    ``figures`` (:func:`cv_figures`), of ``cv_report.html``."""
    b: list[tuple] = [("h1", f"Cross-validation summary: {name}"), ("p", f"Design: {summary['design_text']}.")]
    for key, title in (("pooled", "Pooled out-of-fold result"), ("ensemble", "Fold-ensemble test result")):
        if key in summary:
            block = summary[key]
            b += [("h2", title),
                  ("p", f"{block['what'][0].upper()}{block['what'][1:]}. {block['n_images']} images of "
                        f"{block['n_patients']} patients; 95 % CIs from {summary['n_boot']} bootstrap resamples of "
                        "patients."),
                  *pooled_tables(block), *clinical_subgroup_blocks(block, summary["n_boot"]),
                  *(figure_blocks(block) if figures else [])]
    if summary.get("measurement"):
        b += measure_report.report_blocks(summary["measurement"], figures=bool(figures))
    if summary.get("learning_curve"):
        b += lc_report.summary_blocks(summary["learning_curve"], figures=bool(figures))
    elif summary.get("measurement_note"):
        b.append(("p", f"Measurement: {summary['measurement_note']}."))
    if summary.get("subgroups"):
        b += [("h2", "Subgroups"),
              ("p", "The pooled out-of-fold probabilities within each value of a column of the data folder's "
                    "manifest.csv; 95 % CIs from a bootstrap over the subgroup's patients. A subgroup's AUC compares "
                    "its own osteoporosis and normal images only."
                    + dropped_text([(f"{g['column']} {g['value']}", g["roc_auc"]) for g in summary["subgroups"]],
                               summary["n_boot"])),
              ("table", ["Column", "Value", "Images", "Patients", "Osteoporosis images", "ROC AUC (95 % CI)"],
               [[str(g["column"]), str(g["value"]), str(g["n_images"]), str(g["n_patients"]),
                 str(g["n_osteoporosis_images"]), _ci(g["roc_auc"]) if g["roc_auc"] else "n/a (one class)"]
                for g in summary["subgroups"]])]
    per = summary["per_metric"]
    shown = [k for k in ("roc_auc", "pr_auc", "sensitivity", "specificity", "balanced_accuracy", "brier",
                         "baseline_roc_auc", "roc_auc_difference") if k in per]
    rows = [[f["run"], str(f["n_images"]), str(f["epoch"]), _fmt(f["threshold"]), *(_fmt(f.get(k)) for k in shown)]
            for f in summary["folds"]]
    rows.append(["**mean ± SD**", "", "", *(f"{_fmt(per[k]['mean'])} ± {_fmt(per[k]['sd'])}"
                                            for k in ("threshold", *shown))])
    rows.append(["folds entered", "", "", *(f"{per[k]['n_folds']} of {per[k]['of']}" for k in ("threshold", *shown))])
    b += [("h2", "Per fold"),
          ("p", f"Test metrics of each fold's best checkpoint at its own validation threshold; {summary['note']}."),
          ("table", ["Fold", "Images", "Best epoch", "Threshold", *shown], rows)]
    if summary.get("baseline_note"):
        b.append(("p", f"Note: {summary['baseline_note']}."))
    return b


def clinical_subgroup_blocks(block: Mapping, n_boot: int) -> list[tuple]:
    """The network's ROC AUC by sex, age band and BMI band (:data:`cohort.SUBGROUPS`) of the pooled (or
    ensemble) probabilities; nothing where no band holds both classes with a known value."""
    if not block.get("clinical_subgroups"):
        return []
    return [("p", "By sex, age band and BMI band (WHO): the network's ROC AUC within each band, 95 % CIs from a "
                  "bootstrap over the band's patients; descriptive, no test between bands."
                  + dropped_text([(f"{g['variable']} {g['group']}", g["roc_auc"])
                                  for g in block["clinical_subgroups"]], n_boot)),
            ("table", ["Variable", "Subgroup", "Images", "Patients", "Osteoporosis images", "ROC AUC (95 % CI)"],
             [[g["variable"], g["group"], str(g["images"]), str(g["patients"]), str(g["positives"]), _ci(g["roc_auc"])]
              for g in block["clinical_subgroups"]])]


def figure_blocks(block: Mapping) -> list[tuple]:
    """The figures of the pooled (or ensemble) result and the net-benefit table, for cv_report.html."""
    curves = [("network", block["decision_curve"], None)]
    if block.get("baseline_decision_curve"):
        curves.append(("clinical baseline", block["baseline_decision_curve"], None))
    return [("figures", [("roc_pr", "ROC (left) and precision-recall (right) curves of the probabilities above; "
                                    "the clinical baseline's beside the network's where it exists."),
                         ("calibration", "Observed fraction with osteoporosis (Wilson 95% interval) against the mean "
                                         "predicted probability in bins of about equal size; below: the probabilities.")]),
            *decision_blocks(curves, "Net benefit of acting on each probability at each threshold probability, "
                                     "against treating every image and treating none.", sentences=False)]


def pooled_tables(block: Mapping) -> list[tuple]:
    """The pooled metrics table, with the clinical baseline's column and the paired difference where it exists."""
    names = (*THRESHOLD_FREE, *AT_THRESHOLD)
    if not block.get("baseline"):
        out = [("table", ["Metric", "Value (95 % CI)"], [[k, _ci(block["metrics"][k])] for k in names])]
        if block.get("baseline_absent"):
            out.append(("p", f"No pooled clinical baseline: {block['baseline_absent']}."))
        return out
    diff, delong = block["comparison"]["auc_difference"], block["comparison"]["delong_test"]
    return [("table", ["Metric", "Network (95 % CI)", "Clinical baseline (95 % CI)"],
             [[k, _ci(block["metrics"][k]), _ci(block["baseline"]["metrics"][k])] for k in names]),
            ("p", f"Clinical baseline: {block['baseline']['what']}. Network minus baseline, pooled ROC AUC difference: "
                  f"{_fmt(diff['diff'])} (95 % CI {_fmt(diff['low'])} to {_fmt(diff['high'])}, paired patient "
                  f"bootstrap, p {_fmt(diff['p_value'])}; clustered DeLong p {_fmt(delong['p_value'])}).")]


def render_cv_report(name: str, summary: Mapping) -> str:
    return render_markdown(report_blocks(name, summary))
