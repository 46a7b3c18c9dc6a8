"""Dealing patients to cross-validation folds, in two designs: which images train, validate and test
the model of fold k. Running the folds is :mod:`crossval`; their summary is :mod:`cv_report`.

    from hipx.data.folds import fold_files
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
(train, val, test) within a fold.
"""
from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from hipx.data import filenames
from hipx.core import runconfig, runtime
from hipx.core.choices import CV_DESIGNS, CV_VAL_FRACTION
from hipx.data.splits import SPLITS, assign_folds, patient_labels

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
    files = sorted(f for split in POOLED for f in filenames.list_split(data_dir, split))
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
    runtime.log_once(logger, logging.INFO,
                     "%d-fold cross-validation over %d train+val images of %s (%s); validation images per fold: %s",
                     k, len(files), data_dir, source, sizes)
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
    present = [s for s in SPLITS if _has_images(data_dir / s)]  # e.g. everything in train/
    if not present:
        filenames.list_split(data_dir, "train")  # raises, naming what is missing
    files = sorted(f for split in present for f in filenames.list_split(data_dir, split))
    infos = {f: filenames.decode(f) for f in files}
    labels = patient_labels((info.patient, info.label) for info in infos.values())
    patient_fold = assign_folds(labels, k, seed)
    splits = []
    for fold in range(k):
        rest = {p: y for p, y in labels.items() if patient_fold[p] != fold}
        val = carve_validation(rest, val_fraction, seed=[seed, 2, fold])
        role = {p: ("test" if patient_fold[p] == fold else "val" if p in val else "train") for p in labels}
        split = {"fold": fold, **{r: [f for f in files if role[infos[f].patient] == r] for r in SPLITS}}
        if any(len({infos[f].label for f in split[r]}) < 2 for r in ("train", "val")):
            raise ValueError(f"{k} out-of-fold folds leave fold {fold} with one class in its training or "
                             f"validation part ({len(labels)} patients); {fold_advice(labels, k)}")
        splits.append(split)
    runtime.log_once(logger, logging.INFO,
                     "%d-fold out-of-fold cross-validation over all %d images of %d patients of %s (stratified, seed "
                     "%d); test images per fold: %s; %.0f%% of each fold's training patients validate it", k,
                     len(files), len(labels), data_dir, seed, ", ".join(str(len(s["test"])) for s in splits), 100 * val_fraction)
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
        return {r: list(split[r]) for r in SPLITS}
    if design != "heldout":
        raise ValueError(f"unknown cross-validation design {design!r}; choose {' or '.join(CV_DESIGNS)}")
    split = crossval_splits(data_dir, k, seed)[fold]
    return {"train": list(split["train"]), "val": list(split["val"]), "test": filenames.list_split(data_dir, "test")}


def config_files(config: Mapping, data_dir: str | os.PathLike) -> dict[str, list[Path]] | None:
    """A cross-validation fold run's images from its saved config (``cv_folds``, ``cv_fold``,
    ``cv_seed``, ``cv_design``, ``cv_val``; an older run's brought up to date by
    :func:`runconfig.upgrade`); None for a run that was not a cross-validation fold. A fold of a
    learning curve (``cv_subset``) trains on that nested subset of the fold's training patients
    (:func:`subsets.subset_files`, seeded by the folds' seed and the fold); its validation and test
    images are the fold's."""
    config = runconfig.upgrade(config)
    if not config.get("cv_folds"):
        return None
    seed, fold = int(config["cv_seed"]), int(config["cv_fold"])
    files = fold_files(data_dir, config["cv_design"], int(config["cv_folds"]), fold, seed,
                       float(config.get("cv_val", CV_VAL_FRACTION)))
    if config.get("cv_subset") is not None:
        from hipx.data import subsets

        files["train"] = subsets.subset_files(files["train"], config["cv_subset"], seed=[seed, fold])
    return files
