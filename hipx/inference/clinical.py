"""The clinical model: the logistic regression of the binary label on sex, age and BMI alone.

    coef, intercept = clinical_model(train_files, stats)   # residual fusion's start (inference/network.py)

Fitted on the training images only, on exactly the clinical vector the networks receive
(standardised with the training split's mean and SD, a missing value imputed with the training
mean: :class:`loader.ClinicalStats`). Two users: residual fusion starts its network as this model
(:mod:`hipx.inference.network`), and the run report compares the network with it as the clinical
baseline (:mod:`hipx.reports.baseline`, which scores validation and test with it). It lives below
both, so the network builder needs nothing from the reports.

Where no clinical value varies in training (an export without age, sex and BMI, or with one
value for everyone) there is nothing to fit: :class:`BaselineUnavailable` says why.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Sequence

import numpy as np

from hipx.data import loader

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

FEATURES = loader.CLINICAL_NAMES
# L2 penalty of scikit-learn's default strength on standardised inputs: with ~100 training patients
# an unpenalised fit can run off to infinite coefficients when one value separates the classes.
DEFAULT_C = 1.0


class BaselineUnavailable(ValueError):
    """The clinical-only model (the clinical baseline, residual fusion's start) cannot be fitted on
    this data; the message says why."""


def unavailable_reason(train: pd.DataFrame) -> str | None:
    """Why no clinical model can be fitted on the training table (:func:`loader.clinical_table`), or None.

    The model needs both classes and at least one clinical value that is known for some
    training images and not the same for all of them.
    """
    if train["label"].nunique() < 2:
        return (f"the training split holds only label {train['label'].iloc[0]} ({len(train)} images): "
                "the clinical baseline needs both classes")
    states = loader.clinical_states(train)
    if "varies" in states.values():
        return None
    return ("no clinical value varies in the training split ("
            + ", ".join(f"{name} {state}" for name, state in states.items())
            + "), so there is no clinical-only model to compare with")


def labelled(table: pd.DataFrame) -> pd.DataFrame:
    """The images with a binary label: a graded target's run also trains on images without one
    (measures.UNSCORED), which a logistic regression of the label cannot use."""
    return table[table["label"].notna()].astype({"label": int})


def design(table: pd.DataFrame, stats: loader.ClinicalStats) -> np.ndarray:
    """The clinical vectors the networks receive (normalised, missing values imputed) of a
    :func:`loader.clinical_table`."""
    return np.stack([stats.normalise(v) for v in table[list(FEATURES)].to_numpy(dtype=np.float64)])


def fit_logistic(train: pd.DataFrame, stats: loader.ClinicalStats, C: float = DEFAULT_C) -> LogisticRegression:
    """The clinical-only logistic regression on the training table's normalised clinical vectors."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=C, max_iter=1000)
    model.fit(design(train, stats), train["label"].to_numpy())
    return model


def clinical_model(train_files: Sequence[str | os.PathLike], stats: loader.ClinicalStats,
                   C: float = DEFAULT_C) -> tuple[np.ndarray, float]:
    """Coefficients and intercept of the clinical logistic regression on the training images, on the
    clinical vector as normalised by ``stats`` (the network's own): the clinical baseline's model, and
    residual fusion's start for the binary label (:func:`start_model`).
    Raises :class:`BaselineUnavailable` where no clinical model can be fitted."""
    train = labelled(loader.clinical_table(train_files))
    reason = unavailable_reason(train)
    if reason is not None:
        raise BaselineUnavailable(reason)
    model = fit_logistic(train, stats, C)
    return model.coef_[0].astype(np.float64), float(model.intercept_[0])


def start_model(train_files: Sequence[str | os.PathLike], stats: loader.ClinicalStats, spec,
                values: Sequence[float]):
    """Residual fusion's start for target ``spec`` (a ``targets.TargetSpec``), on the clinical vector as
    normalised by ``stats``: the logistic regression of the label (binary, as :func:`clinical_model`), the
    ridge regression of the standardised measurement (continuous) or the cumulative-link model of its classes
    (ordinal), on the training images that carry what it learns (``values``: the measurement, NaN where none).
    Returns ``clinical_models.LinearStart``; raises :class:`BaselineUnavailable` where nothing can be fitted."""
    from hipx.stats import clinical_models

    table = loader.clinical_table(train_files)
    v = np.asarray(values, dtype=np.float64)
    usable = table["label"].notna().to_numpy() if not spec.graded else np.isfinite(v)
    if spec.graded:
        states = loader.clinical_states(table[usable])
        reason = None if "varies" in states.values() else (
            "no clinical value varies among the measured training images ("
            + ", ".join(f"{name} {state}" for name, state in states.items()) + ")")
    else:
        reason = unavailable_reason(labelled(table))
    if reason is not None:
        raise BaselineUnavailable(reason)
    try:
        return clinical_models.fit_start(spec, design(table[usable], stats),
                                         table["label"][usable].to_numpy(dtype=np.float64), v[usable])
    except ValueError as exc:
        raise BaselineUnavailable(str(exc)) from None
