"""Who a report's images are: a split's images, patients, prevalence and clinical values
(:func:`describe_split`), and the network's ROC AUC within the clinical subgroups of sex, age band
and BMI band (:func:`subgroups`). The run report, the cross-validation summary and the model card
describe their data with these, so a split is summarised one way everywhere.

    from hipx.reports.cohort import describe_split
    describe_split(paths["test"])   # {"images": 12, "patients": 8, "prevalence": 0.5, "age": {...}, ...}
"""
from __future__ import annotations

import math
import os
import warnings
from typing import Any, Sequence

import numpy as np
import pandas as pd

from hipx.data import loader
from hipx.stats import confidence, metrics
from hipx.stats.evaluation import ALPHA

# Subgroups of the test set: (variable, decoded field, [(label, low, high)]) with low <= value < high.
SUBGROUPS = (("Sex", "sex", (("female", 1, 2), ("male", 0, 1))),
             ("Age", "age", (("< 65 years", -math.inf, 65), (">= 65 years", 65, math.inf))),
             # WHO bands (WHO Technical Report Series 894, 2000)
             ("BMI", "bmi", (("< 25 kg/m²", -math.inf, 25), ("25 to < 30 kg/m²", 25, 30),
                             (">= 30 kg/m²", 30, math.inf))))


def _summary(values: Any) -> dict[str, float | int]:
    """Mean, SD and count (:func:`metrics.mean_sd`) with the smallest and largest value: the range a
    model card gives as the population the network was trained on (NaN where no value is known)."""
    known = pd.Series(values, dtype=np.float64).dropna()
    return {**metrics.mean_sd(known), "min": float(known.min()) if len(known) else math.nan,
            "max": float(known.max()) if len(known) else math.nan}


def describe_split(files: Sequence[str | os.PathLike]) -> dict:
    """Images, patients, prevalence and clinical summaries of one split. Clinical values are
    summarised per patient (mean over the patient's images), missing = missing on all images."""
    table = loader.clinical_table(files)
    if table.empty:
        return {"images": 0, "patients": 0}
    per_patient = table.groupby("patient").agg(label=("label", "max"), sex=("sex", "mean"), age=("age", "mean"),
                                               bmi=("bmi", "mean"))
    n_pat = len(per_patient)
    sex = per_patient["sex"].dropna()
    return {"images": len(table), "osteoporosis_images": int(table["label"].sum()),
            "prevalence": float(table["label"].mean()), "patients": n_pat,
            "osteoporosis_patients": int(per_patient["label"].sum()),
            "age": _summary(per_patient["age"]), "bmi": _summary(per_patient["bmi"]),
            "female_percent": float(100 * sex.mean()) if len(sex) else math.nan,
            "missing_percent": {c: float(100 * per_patient[c].isna().mean()) for c in loader.CLINICAL_NAMES}}


def with_clinical_values(predictions: pd.DataFrame) -> pd.DataFrame:
    """Scored images (one row per image with ``file``, a name or a path) with each image's sex, age and
    BMI, read from its file name."""
    clinical = loader.clinical_table(list(predictions["file"]))[list(loader.CLINICAL_NAMES)]
    return predictions.reset_index(drop=True).join(clinical)


def subgroups(test: pd.DataFrame, n_boot: int, seed: int, interval: str = "bca") -> list[dict]:
    """Network ROC AUC with its patient-bootstrap CI in each :data:`SUBGROUPS` band of the test set.

    ``test``: one row per image with label, probability, patient, sex, age, bmi. Images with the
    value missing fall in no band; a band holding one class is left out (its AUC is undefined).
    Resamples of a small band that hold one class are left out of its interval: one warning
    (:func:`warn_dropped`) names the bands, not one per band.
    """
    out = []
    for variable, field, bands in SUBGROUPS:
        for label, low, high in bands:
            rows = test[(test[field] >= low) & (test[field] < high)]
            y = rows["label"].to_numpy(dtype=np.int64)
            if len(rows) == 0 or y.min() == y.max():
                continue
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                auc = confidence.bootstrap_ci(y, rows["probability"].to_numpy(dtype=np.float64), metrics.roc_auc,
                                              groups=rows["patient"].to_numpy(), n_boot=n_boot, seed=seed,
                                              alpha=ALPHA, interval=interval)
            for w in caught:  # say which subgroup a warning concerns
                if not issubclass(w.category, confidence.ResamplesDropped):
                    warnings.warn(f"{variable} {label}: {w.message}", w.category, stacklevel=2)
            out.append({"variable": variable, "group": label, "images": len(rows),
                        "patients": int(rows["patient"].nunique()), "positives": int(y.sum()), "roc_auc": auc})
    warn_dropped([(f"{g['variable']} {g['group']}", g["roc_auc"]) for g in out], n_boot)
    return out


# why a subgroup's interval may rest on fewer resamples than asked for: said once on the console and
# beside every subgroup table
DROPPED_WHY = ("in a small subgroup some bootstrap resamples hold patients of one class only, where the AUC is "
               "undefined; they are left out, so that subgroup's interval rests on the resamples left")


def dropped_counts(named: Sequence[tuple[str, Any]], n_boot: int) -> list[str]:
    """``"Sex male 66 of 200"`` for each (subgroup, AUC interval) whose interval left resamples out."""
    return [f"{name} {n_boot - ci['n_boot_valid']} of {n_boot}" for name, ci in named
            if ci and ci.get("n_boot_valid", n_boot) < n_boot]


def warn_dropped(named: Sequence[tuple[str, Any]], n_boot: int) -> None:
    """One warning for all subgroups whose AUC interval left resamples out (:func:`dropped_counts`)."""
    counts = dropped_counts(named, n_boot)
    if counts:
        warnings.warn(f"{DROPPED_WHY} (resamples left out: {'; '.join(counts)})",
                      confidence.ResamplesDropped, stacklevel=3)


def dropped_sentence(named: Sequence[tuple[str, Any]], n_boot: int) -> str | None:
    """The sentence beside a subgroup table saying which intervals rest on fewer resamples, or None."""
    counts = dropped_counts(named, n_boot)
    if not counts:
        return None
    return f"{DROPPED_WHY[0].upper()}{DROPPED_WHY[1:]} (resamples left out: {'; '.join(counts)})."
