"""Patient-level K-fold cross-validation, in two designs, and its summary over the fold runs.

    from crossval import fold_files
    for k in range(5):   # {"train": [...], "val": [...], "test": [...]} for the model of fold k
        files = fold_files("data", "oof", 5, k, seed=0)

``oof`` (out-of-fold; every patient tested once): all images of ``train/ val/ test/`` are pooled
and their patients dealt to K folds, stratified by label. Fold k is the test set of model k; that
model picks its epoch and threshold on a validation part carved (patient-level, stratified,
``val_fraction`` of the patients) from the other K - 1 folds and trains on the rest. The K test
sets together hold every patient exactly once, so their predictions pool into one out-of-fold
AUC over the whole data set. This is the design for a small set, where a fixed 15 % test split is
a few dozen patients.

``heldout`` (rotating validation, fixed test): fold k of train + val is the validation set of
model k, the rest its training set, and every model is scored on the same held-out ``test/``.
Folds come from the ``fold`` column of ``DATA_DIR/manifest.csv`` when ``preprocess_filenames.py
--folds K`` wrote one, otherwise they are dealt here with the rule of
``splits.assign_folds`` that preprocessing uses.

In both designs every image of a patient is in the same fold, so no patient is ever in two roles
(train, val, test) within a fold. :func:`write_cv_summary` writes ``cv_summary.json`` and
``cv_report.md`` over the fold runs.
"""
from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

import confidence
import filenames
import loader
import metrics
import runfiles
from choices import CV_DESIGNS, CV_VAL_FRACTION
from report_render import ci as _ci, fmt as _fmt
from splits import assign_folds, patient_labels

logger = logging.getLogger(__name__)

MANIFEST = "manifest.csv"
POOLED = ("train", "val")


def _manifest_folds(data_dir: Path, files: list[Path]) -> dict[Path, int] | None:
    """File -> fold from ``manifest.csv``'s ``fold`` column; None without a manifest or that column."""
    path = data_dir / MANIFEST
    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if "fold" not in (reader.fieldnames or []) or "file" not in (reader.fieldnames or []):
            return None
        by_file = {row["file"].replace(os.sep, "/"): (line, row["fold"].strip())
                   for line, row in enumerate(reader, start=2)}
    out: dict[Path, int] = {}
    for f in files:
        key = f.relative_to(data_dir).as_posix()
        if key not in by_file:
            raise ValueError(f"{path}: no row for {key}; the manifest does not describe this folder "
                             "(re-run preprocess_filenames.py --folds K, or remove the manifest's fold column)")
        line, text = by_file[key]
        try:
            fold = int(text)
        except ValueError:
            raise ValueError(f"{path} line {line}: fold {text!r} for {key} is not a fold number; train and val "
                             "images need folds 0..K-1 (only test images have fold NA)") from None
        out[f] = fold
    return out


def crossval_splits(data_dir: str | os.PathLike, k: int, seed: int = 0) -> list[dict]:
    """K patient-level folds over the pooled ``train/`` and ``val/`` images of ``data_dir``.

    Returns one dict per fold, in fold order: ``fold`` (0..k-1), ``train`` and ``val`` (sorted
    lists of image paths). Each patient is in exactly one ``val``. With a ``fold`` column in
    ``manifest.csv`` that column decides (it must hold exactly the folds 0..k-1); otherwise
    :func:`assign_folds` with ``seed``. Raises ``ValueError`` naming the file when a patient's
    images were given different folds.
    """
    data_dir = Path(data_dir)
    files = sorted(f for split in POOLED for f in loader.list_split(data_dir, split))
    infos = {f: filenames.decode(f) for f in files}
    given = _manifest_folds(data_dir, files)
    if given is not None:
        found = sorted(set(given.values()))
        if found != list(range(k)):
            raise ValueError(f"{data_dir / MANIFEST} has folds {found}, but {k} folds (0..{k - 1}) were asked "
                             "for; use the manifest's number of folds")
        source = f"the fold column of {data_dir / MANIFEST}"
        patient_fold: dict[str, int] = {}
        for f, fold in given.items():
            patient = infos[f].patient
            if patient_fold.setdefault(patient, fold) != fold:
                raise ValueError(f"{data_dir / MANIFEST}: patient {patient} has images in folds "
                                 f"{patient_fold[patient]} and {fold} (e.g. {f.name}); a patient must be in one fold")
    else:
        labels = patient_labels((info.patient, info.label) for info in infos.values())
        patient_fold = assign_folds(labels, k, seed)
        source = f"patients stratified by label, seed {seed}"
    splits = []
    for fold in range(k):
        val = [f for f in files if patient_fold[infos[f].patient] == fold]
        train = [f for f in files if patient_fold[infos[f].patient] != fold]
        splits.append({"fold": fold, "train": train, "val": val})
    sizes = ", ".join(str(len(s["val"])) for s in splits)
    logger.info("%d-fold cross-validation over %d train+val images (%s); validation images per fold: %s",
                k, len(files), source, sizes)
    if any(not s["val"] or not s["train"] for s in splits):
        raise ValueError(f"{k} folds leave a fold with no validation or no training images; use fewer folds")
    return splits


def _has_images(folder: Path) -> bool:
    return folder.is_dir() and any(p.suffix.lower() in filenames.EXTENSIONS for p in folder.iterdir())


def resolve_design(data_dir: str | os.PathLike, design: str) -> str:
    """``auto`` -> ``oof`` when ``data_dir`` has no test images (nothing is held out: every patient
    must be tested once), else ``heldout``; ``oof``/``heldout`` are returned unchanged."""
    if design in CV_DESIGNS:
        return design
    if design != "auto":
        raise ValueError(f"unknown cross-validation design {design!r}; choose auto, {' or '.join(CV_DESIGNS)}")
    return "heldout" if _has_images(Path(data_dir) / "test") else "oof"


def carve_validation(labels: Mapping[str, int], fraction: float, seed: int) -> set[str]:
    """The validation patients carved from ``labels`` (patient -> label): ``fraction`` of each
    class (at least one where the class has two or more patients), drawn with ``seed``."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be within (0, 1), got {fraction!r}")
    rng = np.random.default_rng(seed)
    chosen: set[str] = set()
    for label in sorted(set(labels.values())):
        patients = sorted(p for p, y in labels.items() if y == label)
        n = min(len(patients) - 1, max(1, round(fraction * len(patients))))
        chosen.update(patients[i] for i in rng.permutation(len(patients))[:n])
    return chosen


def oof_splits(data_dir: str | os.PathLike, k: int, seed: int = 0,
               val_fraction: float = CV_VAL_FRACTION) -> list[dict]:
    """Out-of-fold design over every image of ``train/ val/ test/``: one dict per fold with
    ``fold``, ``train``, ``val`` and ``test`` (sorted image paths). Each patient is in exactly one
    ``test``; within a fold no patient is in two of train, val and test."""
    data_dir = Path(data_dir)
    present = [s for s in loader.SPLITS if _has_images(data_dir / s)]  # e.g. everything in train/
    if not present:
        loader.list_split(data_dir, "train")  # raises, naming what is missing
    files = sorted(f for split in present for f in loader.list_split(data_dir, split))
    infos = {f: filenames.decode(f) for f in files}
    labels = patient_labels((info.patient, info.label) for info in infos.values())
    patient_fold = assign_folds(labels, k, seed)
    splits = []
    for fold in range(k):
        rest = {p: y for p, y in labels.items() if patient_fold[p] != fold}
        val = carve_validation(rest, val_fraction, seed=[seed, 2, fold])
        role = {p: ("test" if patient_fold[p] == fold else "val" if p in val else "train") for p in labels}
        split = {"fold": fold, **{r: [f for f in files if role[infos[f].patient] == r] for r in loader.SPLITS}}
        if any(len({infos[f].label for f in split[r]}) < 2 for r in ("train", "val")):
            raise ValueError(f"{k} out-of-fold folds leave fold {fold} with one class in its training or "
                             f"validation part ({len(labels)} patients); {fold_advice(labels, k)}")
        splits.append(split)
    logger.info("%d-fold out-of-fold cross-validation over all %d images of %d patients (stratified, seed %d); "
                "test images per fold: %s; %.0f%% of each fold's training patients validate it", k, len(files),
                len(labels), seed, ", ".join(str(len(s["test"])) for s in splits), 100 * val_fraction)
    return splits


def fold_advice(labels: Mapping[str, int], k: int) -> str:
    """What to do when ``k`` out-of-fold folds leave a fold's training or validation part with one class:
    each fold keeps the patients of a class outside its test fold, and needs two of them (one trains,
    one validates); the rarer class decides how many folds that allows."""
    counts = {y: sum(1 for v in labels.values() if v == y) for y in (0, 1)}
    rarer = min(counts, key=counts.get)
    name = "osteoporosis" if rarer == 1 else "normal"
    if counts[rarer] == 0:
        return (f"the data holds no {name} images at all: training and choosing an epoch need both classes; add "
                f"{name} images (fewer folds or --cv_val cannot help)")
    n = counts[rarer]
    fits = [j for j in range(2, max(k, len(labels)) + 1) if n - -(-n // j) >= 2]  # outside the largest test fold
    if not fits:
        return (f"only {n} {name} patient(s): every fold needs one to test, one to train and one to validate, so 3 "
                "or more; add data, or train on the fixed split without --folds")
    return (f"only {n} {name} patients, dealt over the folds: use --folds {min(fits, key=lambda j: abs(j - k))} "
            "(--cv_val cannot help)")


def fold_files(data_dir: str | os.PathLike, design: str, k: int, fold: int, seed: int = 0,
               val_fraction: float = CV_VAL_FRACTION) -> dict[str, list[Path]]:
    """The train, val and test images of model ``fold`` of a ``design`` cross-validation."""
    if design == "oof":
        split = oof_splits(data_dir, k, seed, val_fraction)[fold]
        return {r: list(split[r]) for r in loader.SPLITS}
    if design != "heldout":
        raise ValueError(f"unknown cross-validation design {design!r}; choose {' or '.join(CV_DESIGNS)}")
    split = crossval_splits(data_dir, k, seed)[fold]
    return {"train": list(split["train"]), "val": list(split["val"]), "test": loader.list_split(data_dir, "test")}


def config_files(config: Mapping, data_dir: str | os.PathLike) -> dict[str, list[Path]] | None:
    """A cross-validation fold run's images from its config (``cv_folds``, ``cv_fold``, ``cv_seed``,
    ``cv_design`` -- ``heldout`` for runs made before there were designs -- and ``cv_val``);
    None for a run that was not a cross-validation fold."""
    if not config.get("cv_folds"):
        return None
    return fold_files(data_dir, config.get("cv_design", "heldout"), int(config["cv_folds"]), int(config["cv_fold"]),
                      int(config.get("cv_seed", config.get("seed", 0))),
                      float(config.get("cv_val") or CV_VAL_FRACTION))


# --------------------------------------------------------------------------- summary over the fold runs

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
AT_THRESHOLD = ("sensitivity", "specificity", "balanced_accuracy", "accuracy", "precision", "npv", "f1", "mcc")
ALPHA = 0.05


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _with_ci(y: np.ndarray, p: np.ndarray, decisions: np.ndarray, groups: np.ndarray, n_boot: int,
             seed: int) -> dict:
    """Threshold-free metrics of ``p`` and threshold metrics of the 0/1 ``decisions``, each with its
    patient-bootstrap 95 % CI (the same resamples, as both calls share ``seed``)."""
    free = confidence.bootstrap_metrics(y, p, 0.5, groups=groups, n_boot=n_boot, seed=seed, alpha=ALPHA)
    at = confidence.bootstrap_metrics(y, decisions.astype(float), 0.5, groups=groups, n_boot=n_boot, seed=seed,
                                      alpha=ALPHA)
    return {**{k: free[k] for k in THRESHOLD_FREE}, **{k: at[k] for k in AT_THRESHOLD}}


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
                row["roc_auc"] = confidence.bootstrap_metrics(
                    y, part["probability"].to_numpy(dtype=float), 0.5, groups=part["patient"].to_numpy(),
                    n_boot=n_boot, seed=seed, alpha=ALPHA)["roc_auc"]
            rows.append(row)
    return rows


def write_cv_summary(save_dir_path: str | os.PathLike, fold_run_dirs: Sequence[str | os.PathLike],
                     n_boot: int = 2000, seed: int = 0, by: Sequence[str] | None = None,
                     data_dir: str | os.PathLike | None = None) -> dict:
    """``cv_summary.json`` and ``cv_report.md`` in ``save_dir_path`` over the tested fold runs.

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
    """
    out_dir = Path(save_dir_path)
    if not fold_run_dirs:
        raise ValueError("write_cv_summary needs at least one fold run folder")
    folds, predictions, designs, data_dirs = [], [], set(), set()
    for run in map(Path, fold_run_dirs):
        for name in ("test_metrics.json", "test_predictions.csv", "config.json"):
            if not (run / name).is_file():
                raise FileNotFoundError(f"{run / name} not found: test every fold before summarising")
        tm = runfiles.read_json(run / "test_metrics.json")
        config = runfiles.read_json(run / "config.json")
        designs.add(config.get("cv_design", "heldout") if config.get("cv_folds") else "heldout")
        data_dirs.add(config.get("data_dir"))
        pred = runfiles.read_predictions(run, "test")
        pred["fold"] = run.name
        predictions.append(pred)
        row = {"run": run.name, "epoch": tm["epoch"], "threshold": tm["threshold"], "n_images": tm["n_images"],
               **{k: _number(tm["at_threshold"].get(k)) for k in FOLD_METRICS}}
        report_path = run / "report_metrics.json"
        if report_path.is_file():
            rep = runfiles.read_json(report_path)
            base = rep.get("baseline") or {}
            if base.get("metrics") and rep.get("comparison"):
                row["baseline_roc_auc"] = _number(base["metrics"]["roc_auc"]["point"])
                row["roc_auc_difference"] = _number(rep["comparison"]["auc_difference"]["diff"])
        folds.append(row)
    if len(designs) > 1:
        raise ValueError(f"the fold runs mix cross-validation designs {sorted(designs)}; summarise one run group")
    design = designs.pop()
    all_files = [f for pred in predictions for f in pred["file"]]
    baseline_note = None
    if "varies" not in loader.clinical_states(loader.clinical_table(all_files)).values():
        baseline_note = ("no clinical-only baseline: sex, age and BMI are missing or constant in these images, so "
                         "there is nothing for it to learn from")
        for row in folds:
            row.pop("baseline_roc_auc", None)
            row.pop("roc_auc_difference", None)
    keys = [k for k in ("threshold", *FOLD_METRICS, "baseline_roc_auc", "roc_auc_difference")
            if any(k in f for f in folds)]
    per_metric = {}
    for k in keys:
        stats = metrics.mean_sd(_number(f.get(k)) for f in folds)
        per_metric[k] = {"mean": stats["mean"], "sd": stats["sd"], "n_folds": stats["n"], "of": len(folds)}
    summary: dict[str, Any] = {"design": design, "design_text": DESIGN_TEXT[design], "n_folds": len(folds),
                               "n_boot": int(n_boot), "per_metric": per_metric, "folds": folds}
    if baseline_note:
        summary["baseline_note"] = baseline_note
    pooled = pd.concat(predictions, ignore_index=True)
    if design == "oof":
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
        data_dir = data_dir or (data_dirs.pop() if len(data_dirs) == 1 else None)
        if data_dir is not None:
            summary["subgroups"] = subgroup_results(pooled, data_dir, by, n_boot, seed)
        elif by:
            raise ValueError(f"--by {by[0]}: the folds name different data folders; give --data_dir")
    elif by:
        raise ValueError(f"--by {by[0]}: subgroups split the pooled out-of-fold result; these runs are "
                         f"design {design} (main.py --cv oof)")
    else:
        sets = {frozenset(pred["file"]) for pred in predictions}
        if len(sets) == 1 and len(predictions) > 1:
            table = pd.concat([pred.set_index("file")["probability"].rename(pred["fold"].iloc[0])
                               for pred in predictions], axis=1)
            first = predictions[0].set_index("file").loc[table.index]
            p = table.mean(axis=1).to_numpy(dtype=float)
            threshold = float(np.mean([f["threshold"] for f in folds]))
            y = first["label"].to_numpy(dtype=np.int64)
            summary["ensemble"] = {
                "what": f"mean probability of the {len(folds)} fold models on the shared test set; decisions at "
                        "the mean of the folds' validation thresholds",
                "threshold": threshold, "n_images": len(p), "n_patients": int(first["patient"].nunique()),
                "metrics": _with_ci(y, p, (p >= threshold).astype(int), first["patient"].to_numpy(), n_boot, seed)}
    summary["note"] = ("per-fold figures: " + ("each fold is scored on its own test patients" if design == "oof" else
                       "every fold is scored on the same held-out test set, so the SD reflects variation between "
                       "trainings (data of the fold, initialisation), not sampling of test patients"))
    runfiles.write_json(out_dir / "cv_summary.json", summary)
    runfiles.write_text(out_dir / "cv_report.md", render_cv_report(out_dir.name, summary))
    logger.info("cross-validation summary of %d folds written to %s", len(folds), out_dir / "cv_summary.json")
    return summary


def headline(summary: Mapping) -> str:
    """One line for the console: the pooled (oof) or ensemble (heldout) AUC with CI, else the fold mean."""
    for key, what in (("pooled", "pooled out-of-fold"), ("ensemble", "fold-ensemble test")):
        if key in summary:
            block = summary[key]
            return (f"{what} ROC AUC {_ci(block['metrics']['roc_auc'])} over {block['n_images']} images of "
                    f"{block['n_patients']} patients ({summary['n_folds']} folds, {summary['design']})")
    m = summary["per_metric"]["roc_auc"]
    return (f"{summary['n_folds']} folds ({summary['design']}): ROC AUC {_fmt(m['mean'])} ± {_fmt(m['sd'])} "
            f"(mean ± SD of {m['n_folds']} of {m['of']} folds)")


def render_cv_report(name: str, summary: Mapping) -> str:
    lines = [f"# Cross-validation summary: {name}", "", f"Design: {summary['design_text']}.", ""]
    for key, title in (("pooled", "Pooled out-of-fold result"), ("ensemble", "Fold-ensemble test result")):
        if key in summary:
            block = summary[key]
            lines += [f"## {title}", "", f"{block['what'][0].upper()}{block['what'][1:]}. {block['n_images']} "
                      f"images of {block['n_patients']} patients; 95 % CIs from {summary['n_boot']} bootstrap "
                      "resamples of patients.", "", "| Metric | Value (95 % CI) |", "|---|---:|"]
            lines += [f"| {k} | {_ci(block['metrics'][k])} |" for k in (*THRESHOLD_FREE, *AT_THRESHOLD)]
            lines.append("")
    if summary.get("subgroups"):
        lines += ["## Subgroups", "", "The pooled out-of-fold probabilities within each value of a column of the data "
                  "folder's manifest.csv; 95 % CIs from a bootstrap over the subgroup's patients. A subgroup's AUC "
                  "compares its own osteoporosis and normal images only.", "",
                  "| Column | Value | Images | Patients | Osteoporosis images | ROC AUC (95 % CI) |",
                  "|---|---|---:|---:|---:|---:|"]
        lines += [f"| {g['column']} | {g['value']} | {g['n_images']} | {g['n_patients']} | "
                  f"{g['n_osteoporosis_images']} | {_ci(g['roc_auc']) if g['roc_auc'] else 'n/a (one class)'} |"
                  for g in summary["subgroups"]]
        lines.append("")
    per = summary["per_metric"]
    shown = [k for k in ("roc_auc", "pr_auc", "sensitivity", "specificity", "balanced_accuracy", "brier",
                         "baseline_roc_auc", "roc_auc_difference") if k in per]
    header = ["Fold", "Images", "Best epoch", "Threshold", *shown]
    lines += ["## Per fold", "", f"Test metrics of each fold's best checkpoint at its own validation threshold; "
              f"{summary['note']}.", "",
              "| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for f in summary["folds"]:
        lines.append("| " + " | ".join([f["run"], str(f["n_images"]), str(f["epoch"]), _fmt(f["threshold"])]
                                       + [_fmt(f.get(k)) for k in shown]) + " |")
    lines.append("| **mean ± SD** | | | " + " | ".join(f"{_fmt(per[k]['mean'])} ± {_fmt(per[k]['sd'])}"
                                                      for k in ("threshold", *shown)) + " |")
    lines.append("| folds entered | | | " + " | ".join(f"{per[k]['n_folds']} of {per[k]['of']}"
                                                      for k in ("threshold", *shown)) + " |")
    if summary.get("baseline_note"):
        lines += ["", f"Note: {summary['baseline_note']}."]
    return "\n".join(lines) + "\n"
