"""Patient-level K-fold cross-validation over train + val; the test split stays held out.

    from crossval import crossval_splits
    for split in crossval_splits("data", k=5, seed=0):   # [{"fold": 0, "train": [...], "val": [...]}, ...]
        ...  # train on split["train"], pick the epoch and threshold on split["val"], test on data/test

Folds come from the ``fold`` column of ``DATA_DIR/manifest.csv`` when ``preprocess_filenames.py
--folds K`` wrote one; otherwise patients are dealt to folds here, stratified by label, with the
rule of ``splits.assign_folds`` that preprocessing uses: every image of a patient is in the same fold,
so no patient is ever in both the training and the validation part of a fold.
"""
from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import filenames
import loader
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
