"""Clinical-only baseline: what age, sex and BMI alone predict, on the network's own splits.

    from hipx.reports.baseline import clinical_baseline
    base = clinical_baseline("data")       # base["test"]: file, patient, label, probability

A logistic regression (scikit-learn) on sex, age and BMI decoded from the file names, fitted on
the training split only (the clinical model of :mod:`hipx.inference.clinical`, which residual fusion
starts from too). The inputs are exactly the clinical vector the networks receive:
standardised with the training split's mean and SD, a missing value imputed with the training
mean (:class:`loader.ClinicalStats`). The operating threshold is chosen on validation (Youden's
J, as for the network); the test split is only scored, never looked at for any choice. A
network that does not beat this baseline on test has not shown that the image adds anything.

Where no clinical value varies in training (an export without age, sex and BMI, or with one
value for everyone) there is nothing to fit: :func:`clinical_baseline` raises
:class:`BaselineUnavailable` saying why, and the report states it instead of a baseline.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Mapping, Sequence

import pandas as pd

from hipx.data import filenames
from hipx.data import loader
from hipx.inference.clinical import (  # noqa: F401 - the clinical model, fitted where residual fusion starts too
    DEFAULT_C, FEATURES, BaselineUnavailable, clinical_model, design, fit_logistic, labelled, unavailable_reason)
from hipx.stats import metrics
from hipx.runs import runfiles

logger = logging.getLogger(__name__)

def clinical_baseline(data_dir: str | os.PathLike | None = None,
                      files: Mapping[str, Sequence[str | os.PathLike]] | None = None,
                      C: float = DEFAULT_C) -> dict:
    """Fit the clinical-only logistic regression on train; threshold on val; score val and test.

    Returns ``dict(val, test, threshold, coef, intercept, clinical_stats, n_train, C)``: ``val`` and
    ``test`` are DataFrames (file, patient, label, probability); ``coef`` maps sex/age/bmi to the
    log-odds per training SD; ``threshold`` is Youden's J on validation. Raises
    :class:`BaselineUnavailable` when train or val lacks a class or no clinical value varies in
    train (no model or threshold can be chosen then).
    """
    if data_dir is None and files is None:
        raise ValueError("give data_dir (a folder with train/ val/ test/) or files (split -> image paths)")
    paths = runfiles.split_files({}, data_dir, files)
    tables = {s: loader.clinical_table(paths[s]) for s in loader.SPLITS}
    train = labelled(tables["train"])
    reason = unavailable_reason(train)
    if reason is not None:
        raise BaselineUnavailable(reason)
    stats = loader.ClinicalStats.fit([filenames.decode(f) for f in paths["train"]])
    model = fit_logistic(train, stats, C)
    out: dict = {}
    for split in ("val", "test"):
        table = tables[split][["file", "patient", "label"]].copy()
        table["probability"] = model.predict_proba(design(tables[split], stats))[:, 1]
        out[split] = table
    val = out["val"]
    threshold = metrics.youden_threshold(val["label"].to_numpy(), val["probability"].to_numpy())
    if not math.isfinite(threshold):
        raise BaselineUnavailable(f"the validation split holds one class only ({len(val)} images): no threshold can be "
                         "chosen for the clinical baseline")
    out.update(threshold=float(threshold), coef=dict(zip(FEATURES, map(float, model.coef_[0]))),
               intercept=float(model.intercept_[0]), clinical_stats=stats.to_dict(), n_train=len(train),
               C=float(C))
    logger.info("clinical baseline: val AUC %.3f, threshold %.3f (validation, Youden's J)",
                metrics.roc_auc(val["label"], val["probability"]), threshold)
    return out


def out_of_fold(fold_files: Sequence[Mapping[str, Sequence[str | os.PathLike]]], C: float = DEFAULT_C) -> pd.DataFrame:
    """The clinical baseline out of fold: for each cross-validation fold (split -> image paths, as the
    fold's network was trained, validated and tested), the logistic regression fitted on that fold's
    training images scores its test images, with the fold's own validation threshold. Returns the
    pooled test tables (file, patient, label, probability, prediction, fold). Raises
    :class:`BaselineUnavailable` naming the fold where one cannot be fitted."""
    tables = []
    for k, files in enumerate(fold_files):
        try:
            base = clinical_baseline(files=files, C=C)
        except BaselineUnavailable as exc:
            raise BaselineUnavailable(f"fold {k}: {exc}") from None
        test = base["test"].copy()
        test["prediction"] = (test["probability"] >= base["threshold"]).astype(int)
        test["fold"] = k
        tables.append(test)
    return pd.concat(tables, ignore_index=True)
