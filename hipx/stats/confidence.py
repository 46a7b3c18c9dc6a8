"""Uncertainty for published test-set numbers: bootstrap and DeLong confidence intervals,
paired model comparison, calibration, and multiple-comparison adjustment.

    from hipx.stats.confidence import bootstrap_metrics, delong_auc, calibration
    bootstrap_metrics(y_true, y_prob, threshold=0.5, groups=patient_ids)  # 95% CIs for every metric

Reporting guidelines for diagnostic-accuracy and AI studies (STARD 2015, TRIPOD+AI 2024,
CLAIM 2024) ask for confidence intervals and calibration, not point estimates alone.

Several images of one patient (both hips, several crops) are not independent. Pass the
patient ids as ``groups`` so the bootstrap resamples patients and every image of a sampled
patient comes along (cluster bootstrap; Field & Welsh, JRSS B 2007;69:369-390); resampling
images instead gives intervals that are too narrow. The DeLong functions take the same
``groups`` and then average placement values per patient (Obuchowski, Biometrics
1997;53:567-578); without ``groups`` they are DeLong's original, one image per patient.

Intervals for the smooth statistics (:data:`BCA_METRICS`: the AUCs, Brier score, calibration
slope and intercept) are bias-corrected and accelerated (BCa; Efron, JASA 1987;82:171-185), the
acceleration from a leave-one-patient-out jackknife; ``interval="percentile"`` gives plain
percentile intervals. Threshold metrics (proportions at a fixed threshold) always get percentile
intervals: their bootstrap distributions are discrete and BCa's bias correction is unstable there.

Resamples are frequency weights over the cases, so the metrics of :mod:`metrics` are
evaluated for thousands of resamples in one vectorised pass with the same formulas as the
point estimate. Any other ``metric`` callable is evaluated resample by resample.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from scipy.special import expit, logit
from scipy.stats import norm, rankdata

from hipx.stats import metrics
from hipx.stats.metrics import UndefinedMetricWarning, check_inputs

__all__ = [
    "BOOTSTRAP_METRICS", "CALIBRATION_METRICS", "BCA_METRICS", "INTERVALS", "bootstrap_ci", "bootstrap_metrics",
    "paired_bootstrap_diff", "bootstrap_weighted", "delong_auc", "delong_test", "calibration", "recalibration",
    "recalibrate", "weighted_calibration",
    "reliability_curve", "holm", "ResamplesDropped", "warn_dropped",
]

Metric = Callable[[np.ndarray, np.ndarray], float]

# Metrics reported with a bootstrap interval by bootstrap_metrics().
BOOTSTRAP_METRICS = ("roc_auc", "pr_auc", "brier", "accuracy", "sensitivity", "specificity", "precision",
                     "npv", "f1", "f2", "balanced_accuracy", "mcc")
# Calibration slope and intercept, bootstrapped on the same resamples as the metrics.
CALIBRATION_METRICS = ("calibration_slope", "calibration_intercept")
# Statistics that get a BCa interval (the others a percentile interval).
BCA_METRICS = ("roc_auc", "pr_auc", "brier", *CALIBRATION_METRICS)
from hipx.core.choices import CI_INTERVALS as INTERVALS  # noqa: E402 (torch- and NumPy-free, for --help)
# metrics.py functions whose resamples are computed vectorised (weighted_metrics key).
_VECTORISED = {metrics.roc_auc: "roc_auc", metrics.pr_auc: "pr_auc", metrics.brier: "brier"}
_CELLS = 2 ** 20  # resamples x images per chunk: bounds memory (8 MB per float matrix)
_CLIP = 1e-6  # probabilities are clipped to [_CLIP, 1 - _CLIP] before the logit


# --------------------------------------------------------------------------- resampling

def _vectorised_key(metric: Metric) -> str | None:
    """weighted_metrics key when ``metric`` is one of the metrics.py functions, else None."""
    return next((key for func, key in _VECTORISED.items() if metric is func), None)


def _check_bootstrap_args(n_boot: Any, alpha: Any, interval: Any = "percentile") -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise ValueError(f"alpha must be in (0, 1) (0.05 for a 95% interval), got {alpha!r}")
    if interval not in INTERVALS:
        raise ValueError(f"interval {interval!r} not supported; use one of {INTERVALS}")


def _unit_codes(groups: Any, n: int) -> tuple[np.ndarray, int]:
    """Index of the resampling unit (patient) of every image, and the number of units."""
    if groups is None:
        return np.arange(n), n
    g = np.asarray(groups)
    if g.ndim != 1 or g.shape[0] != n:
        raise ValueError(f"groups must hold one patient id per image: got shape {g.shape} for {n} images")
    missing = (np.isnan(g) if g.dtype.kind == "f"
               else np.array([v is None or (isinstance(v, float) and math.isnan(v)) for v in g])
               if g.dtype.kind == "O" else np.zeros(n, dtype=bool))
    if missing.any():
        raise ValueError(f"groups: {int(missing.sum())} of {n} patient ids are missing (None/NaN)")
    try:
        units, codes = np.unique(g, return_inverse=True)
    except TypeError as err:
        raise ValueError(f"groups: patient ids must be all strings or all numbers ({err})") from None
    return codes.ravel(), units.size


def _resample_weights(codes: np.ndarray, n_units: int, n_boot: int,
                      rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Yield (chunk, n_images) frequency weights: units drawn with replacement, n_units per resample.

    Image i gets the number of times its unit was drawn, so a patient's images move together.
    """
    chunk = max(1, min(n_boot, _CELLS // max(codes.size, n_units)))
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        draws = rng.integers(0, n_units, size=(b, n_units))
        flat = (draws + n_units * np.arange(b)[:, None]).ravel()
        counts = np.bincount(flat, minlength=b * n_units).reshape(b, n_units)
        yield counts[:, codes].astype(np.float64)


def _jackknife_weights(codes: np.ndarray, n_units: int) -> Iterator[np.ndarray]:
    """Yield (chunk, n_images) weights leaving out one unit (patient) per row, all units in turn."""
    chunk = max(1, min(n_units, _CELLS // max(codes.size, 1)))
    for start in range(0, n_units, chunk):
        left_out = np.arange(start, min(n_units, start + chunk))
        yield (codes[None, :] != left_out[:, None]).astype(np.float64)


def _weighted(y: np.ndarray, p: np.ndarray, keys: tuple[str, ...], threshold: float,
              w: np.ndarray) -> dict[str, np.ndarray]:
    """The statistics ``keys`` (metrics.weighted_metrics keys and CALIBRATION_METRICS) per weight row."""
    out = metrics.weighted_metrics(y, p, threshold, w)
    if any(k in CALIBRATION_METRICS for k in keys):
        out.update(weighted_calibration(y, p, w))
    return {k: out[k] for k in keys}


def _replicates(y: np.ndarray, probs: list[np.ndarray], keys_or_metric: tuple[str, ...] | Metric,
                threshold: float, groups: Any, n_boot: int, seed: int,
                jackknife: bool = False) -> list[dict[str, np.ndarray]] | list[np.ndarray]:
    """Bootstrap replicates for each prediction vector in ``probs``, all on the same resamples.

    With a tuple of statistic names, returns one dict name -> (n_boot,) array per prediction vector
    (vectorised); with a callable, one (n_boot,) array per prediction vector. With ``jackknife``,
    the leave-one-unit-out values instead (one per patient), for BCa's acceleration.
    """
    codes, n_units = _unit_codes(groups, y.size)
    rng = np.random.default_rng(seed)
    weights = _jackknife_weights(codes, n_units) if jackknife else _resample_weights(codes, n_units, n_boot, rng)
    vectorised = isinstance(keys_or_metric, tuple)
    parts: list[list[Any]] = [[] for _ in probs]
    idx = np.arange(y.size)
    with warnings.catch_warnings():
        # Single-class resamples are expected; they are counted and reported once by the caller.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        for w in weights:
            for i, p in enumerate(probs):
                if vectorised:
                    parts[i].append(_weighted(y, p, keys_or_metric, threshold, w))
                else:
                    parts[i].append([keys_or_metric(y[rows], p[rows])
                                     for rows in (np.repeat(idx, row.astype(np.int64)) for row in w)])
    if vectorised:
        return [{k: np.concatenate([c[k] for c in chunks]) for k in keys_or_metric} for chunks in parts]
    return [np.asarray([v for chunk in chunks for v in chunk], dtype=np.float64) for chunks in parts]


def _percentile(point: float, reps: np.ndarray, alpha: float) -> dict[str, Any]:
    # Percentile interval (Efron & Tibshirani, An Introduction to the Bootstrap 1993, ch. 13).
    valid = reps[~np.isnan(reps)]
    if valid.size == 0:
        low = high = math.nan
    else:
        low, high = (float(q) for q in np.quantile(valid, [alpha / 2, 1 - alpha / 2]))
    return {"point": float(point), "low": low, "high": high, "n_boot_valid": int(valid.size),
            "interval": "percentile"}


def _bca(point: float, reps: np.ndarray, jack: np.ndarray, alpha: float) -> dict[str, Any]:
    """BCa interval (Efron & Tibshirani 1993, ch. 14.3; DiCiccio & Efron, Stat Sci 1996;11:189-228).

    Bias correction z0 from the share of replicates below the point (ties count one half);
    acceleration a = sum(d^3) / (6 sum(d^2)^1.5), d = mean(jack) - jack, from the leave-one-patient-out
    values. Falls back to the percentile interval (``interval`` says so) where BCa is undefined:
    every replicate on one side of the point, or a jackknife value undefined (a class held by one patient).
    """
    out = _percentile(point, reps, alpha)
    valid = reps[~np.isnan(reps)]
    if valid.size == 0 or not math.isfinite(point) or np.isnan(jack).any():
        return out
    below = (np.sum(valid < point) + 0.5 * np.sum(valid == point)) / valid.size
    if not 0 < below < 1:
        return out
    z0 = norm.ppf(below)
    d = jack.mean() - jack
    ss = float(np.sum(d * d))
    a = float(np.sum(d ** 3)) / (6 * ss ** 1.5) if ss > 0 else 0.0
    z = norm.ppf([alpha / 2, 1 - alpha / 2])
    levels = norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z)))
    low, high = (float(q) for q in np.quantile(valid, levels))
    out.update(low=low, high=high, interval="bca")
    return out


class ResamplesDropped(UndefinedMetricWarning):
    """Some bootstrap resamples left out of an interval (the statistic is undefined on them, e.g. a
    resample of a small subgroup holding one class); a caller that explains it in its own words
    catches this kind (its counts are in the interval's ``n_boot_valid``)."""


def warn_dropped(dropped: dict[str, int], n_boot: int) -> None:
    """One :class:`ResamplesDropped` warning naming how many resamples each statistic left out."""
    if dropped:
        listed = ", ".join(f"{k} ({v})" for k, v in dropped.items())
        warnings.warn(f"bootstrap: resamples where the metric is undefined (one class or 0/0) were dropped, "
                      f"out of {n_boot}: {listed}; the interval is conditional on the remaining resamples",
                      ResamplesDropped, stacklevel=3)


# --------------------------------------------------------------------------- bootstrap

def bootstrap_ci(y_true: Any, y_prob: Any, metric: Metric, groups: Any = None, n_boot: int = 2000,
                 seed: int = 0, alpha: float = 0.05, interval: str = "bca") -> dict[str, Any]:
    """Bootstrap confidence interval of ``metric(y_true, y_prob)``, BCa or percentile.

    Resamples patients when ``groups`` (one patient id per image) is given, else images; BCa's
    jackknife leaves out one patient (image) at a time. ``metric`` is a callable ``(y, p) -> float``
    returning NaN where undefined; such resamples are dropped (warned) and ``n_boot_valid`` counts
    the rest. :func:`metrics.roc_auc`, :func:`metrics.pr_auc` and :func:`metrics.brier` are
    evaluated vectorised. Returns ``dict(point, low, high, n_boot_valid, interval)``, ``interval``
    naming the method used ("percentile" where BCa was asked for but is undefined); same seed,
    same interval.
    """
    y, p = check_inputs(y_true, y_prob)
    _check_bootstrap_args(n_boot, alpha, interval)
    point = metric(y, p)
    key = _vectorised_key(metric)
    stat: tuple[str, ...] | Metric = (key,) if key is not None else metric

    def values(**kw: Any) -> np.ndarray:
        r = _replicates(y, [p], stat, 0.5, groups, n_boot, seed, **kw)[0]
        return r[key] if key is not None else r

    reps = values()
    out = _bca(point, reps, values(jackknife=True), alpha) if interval == "bca" else _percentile(point, reps, alpha)
    warn_dropped({getattr(metric, "__name__", "metric"): n_boot - out["n_boot_valid"]}
                  if out["n_boot_valid"] < n_boot else {}, n_boot)
    return out


def fold_mean_auc_ci(y_true: Any, y_prob: Any, folds: Any, groups: Any = None, n_boot: int = 2000, seed: int = 0,
                     alpha: float = 0.05, interval: str = "bca") -> dict[str, Any]:
    """The mean over folds of each fold's ROC AUC (out-of-fold predictions: fold k's images scored by model
    k), with a bootstrap interval over the same patient resamples as :func:`bootstrap_ci` (a drawn patient
    keeps their fold). Pooling the folds' probabilities into one AUC also ranks one fold's images against
    another's, so fold models whose probabilities lie on different scales (early-stopped on few patients,
    their thresholds far apart) lower the pooled AUC though each ranks its own patients well; the mean
    within folds is the ranking each model achieves. Returns :func:`bootstrap_ci`'s dict."""
    y, p = check_inputs(y_true, y_prob)
    _check_bootstrap_args(n_boot, alpha, interval)
    folds = np.asarray(folds)
    if folds.shape != y.shape:
        raise ValueError(f"folds must hold one fold per image: got shape {folds.shape} for {y.size} images")
    rows = [np.flatnonzero(folds == f) for f in np.unique(folds)]
    point = float(np.mean([metrics.roc_auc(y[r], p[r]) for r in rows]))
    codes, n_units = _unit_codes(groups, y.size)

    def values(weights: Iterator[np.ndarray]) -> np.ndarray:
        with warnings.catch_warnings():  # single-class resamples are counted below
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            return np.concatenate([np.mean([_weighted(y[r], p[r], ("roc_auc",), 0.5, w[:, r])["roc_auc"]
                                            for r in rows], axis=0) for w in weights])

    reps = values(_resample_weights(codes, n_units, n_boot, np.random.default_rng(seed)))
    out = (_bca(point, reps, values(_jackknife_weights(codes, n_units)), alpha) if interval == "bca"
           else _percentile(point, reps, alpha))
    warn_dropped({"fold-mean roc_auc": n_boot - out["n_boot_valid"]} if out["n_boot_valid"] < n_boot else {}, n_boot)
    return out


def bootstrap_metrics(y_true: Any, y_prob: Any, threshold: float = 0.5, groups: Any = None, n_boot: int = 2000,
                      seed: int = 0, alpha: float = 0.05, interval: str = "bca") -> dict[str, dict[str, Any]]:
    """Bootstrap intervals for every metric of :data:`BOOTSTRAP_METRICS` and the calibration slope
    and intercept (:data:`CALIBRATION_METRICS`).

    All statistics share the same resamples (patients when ``groups`` is given). Points equal
    :func:`metrics.compute_metrics` and :func:`calibration`. :data:`BCA_METRICS` get BCa intervals
    unless ``interval="percentile"``; the threshold metrics always percentile ones.
    Returns name -> ``dict(point, low, high, n_boot_valid, interval)``.
    """
    y, p = check_inputs(y_true, y_prob)
    _check_bootstrap_args(n_boot, alpha, interval)
    point = dict(metrics.compute_metrics(y, p, threshold))  # validates threshold, warns if undefined
    cal = calibration(y, p)
    point.update(calibration_slope=cal["slope"], calibration_intercept=cal["intercept"])
    keys = (*BOOTSTRAP_METRICS, *CALIBRATION_METRICS)
    reps = _replicates(y, [p], keys, float(threshold), groups, n_boot, seed)[0]
    smooth = BCA_METRICS if interval == "bca" else ()
    jack = _replicates(y, [p], smooth, float(threshold), groups, n_boot, seed, jackknife=True)[0] if smooth else {}
    out = {k: _bca(point[k], reps[k], jack[k], alpha) if k in smooth else _percentile(point[k], reps[k], alpha)
           for k in keys}
    warn_dropped({k: n_boot - v["n_boot_valid"] for k, v in out.items() if v["n_boot_valid"] < n_boot}, n_boot)
    return out


def paired_bootstrap_diff(y_true: Any, p1: Any, p2: Any, metric: Metric, groups: Any = None,
                          n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> dict[str, float | int]:
    """Difference ``metric(y, p1) - metric(y, p2)`` of two models on the same cases, paired bootstrap.

    Both models are scored on the same resamples (patients when ``groups`` is given).
    Two-sided p-value: twice the smaller bootstrap tail beyond 0, with the (1 + count) / (1 + B)
    correction (Davison & Hinkley, Bootstrap Methods 1997, sec. 4.4), capped at 1, so p < alpha
    matches the percentile interval excluding 0. Returns ``dict(diff, low, high, p_value, n_boot_valid)``.
    """
    y, a = check_inputs(y_true, p1)
    _, b = check_inputs(y_true, p2)
    _check_bootstrap_args(n_boot, alpha)
    diff = metric(y, a) - metric(y, b)
    key = _vectorised_key(metric)
    if key is not None:
        r1, r2 = (r[key] for r in _replicates(y, [a, b], (key,), 0.5, groups, n_boot, seed))
    else:
        r1, r2 = _replicates(y, [a, b], metric, 0.5, groups, n_boot, seed)
    d = r1 - r2
    ci = _percentile(diff, d, alpha)
    valid = d[~np.isnan(d)]
    if valid.size:
        tail = min(np.sum(valid <= 0), np.sum(valid >= 0))
        p_value = min(1.0, 2 * (1 + tail) / (1 + valid.size))
    else:
        p_value = math.nan
    warn_dropped({getattr(metric, "__name__", "metric"): n_boot - ci["n_boot_valid"]}
                  if ci["n_boot_valid"] < n_boot else {}, n_boot)
    return {"diff": ci["point"], "low": ci["low"], "high": ci["high"], "p_value": float(p_value),
            "n_boot_valid": ci["n_boot_valid"]}


def bootstrap_weighted(statistic: Callable[[np.ndarray], np.ndarray], n: int, groups: Any = None,
                       n_boot: int = 2000, seed: int = 0, alpha: float = 0.05,
                       interval: str = "bca") -> dict[str, Any]:
    """Bootstrap interval of any statistic of ``n`` cases written as a function of frequency weights:
    ``statistic((B, n) weights) -> (B,)`` values, NaN where undefined (dropped, warned). The point is
    ``statistic`` at weight 1 everywhere. Resamples (patients when ``groups`` is given) and the BCa
    jackknife are those of :func:`bootstrap_ci`; e.g. the correlations of :mod:`measure_report`.
    Returns ``dict(point, low, high, n_boot_valid, interval)``."""
    _check_bootstrap_args(n_boot, alpha, interval)
    codes, n_units = _unit_codes(groups, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        point = float(statistic(np.ones((1, n)))[0])
        reps = np.concatenate([statistic(w) for w in
                               _resample_weights(codes, n_units, n_boot, np.random.default_rng(seed))])
        jack = (np.concatenate([statistic(w) for w in _jackknife_weights(codes, n_units)])
                if interval == "bca" else None)
    out = _bca(point, reps, jack, alpha) if jack is not None else _percentile(point, reps, alpha)
    warn_dropped({getattr(statistic, "__name__", "statistic"): n_boot - out["n_boot_valid"]}
                  if out["n_boot_valid"] < n_boot else {}, n_boot)
    return out

def holm(p_values: Any) -> np.ndarray:
    """Holm's step-down adjustment of several p-values (Holm, Scand J Stat 1979;6:65-70).

    The i-th smallest of m p-values is multiplied by (m - i + 1), made non-decreasing in that order
    and capped at 1; rejecting where the adjusted p < alpha controls the family-wise error rate at
    alpha. NaN p-values stay NaN and do not count towards m.
    """
    p = np.asarray(p_values, dtype=np.float64).ravel()
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if ok.size:
        order = ok[np.argsort(p[ok], kind="stable")]
        scaled = p[order] * (ok.size - np.arange(ok.size))
        out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return out


# --------------------------------------------------------------------------- DeLong

def _delong(y: np.ndarray, probs: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs (k,) and their covariance (k, k) for k prediction vectors (k, n) on the same cases,
    with images clustered in patients ``codes`` (0..I-1; ``arange(n)`` for independent images).

    Placement values by the fast midrank algorithm of Sun & Xu, IEEE Signal Process Lett
    2014;21:1389-1393; covariance of Obuchowski, Biometrics 1997;53:567-578 (eq. 3-5), which sums
    the placement values within each patient. With one image per patient it is exactly DeLong,
    DeLong & Clarke-Pearson, Biometrics 1988;44:837-845.
    """
    pos = y == 1
    m, n = int(pos.sum()), int((~pos).sum())
    x, z = probs[:, pos], probs[:, ~pos]
    tx = rankdata(x, axis=1)                       # midranks among positives
    ty = rankdata(z, axis=1)                       # midranks among negatives
    tz = rankdata(np.hstack([x, z]), axis=1)       # midranks among all cases
    auc = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    # Structural components (placement values): V10_i = mean_j psi(X_i, Y_j), V01_j = mean_i psi(X_i, Y_j),
    # psi = 1 if X > Y, 1/2 if tied (DeLong 1988 eq. 3-4; Sun & Xu 2014 eq. 8-9).
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    n_units = int(codes.max()) + 1
    cp, cn = codes[pos], codes[~pos]
    m_i, n_i = np.bincount(cp, minlength=n_units), np.bincount(cn, minlength=n_units)
    # Per patient: summed placement values minus their expectation under the AUC.
    dx = np.stack([np.bincount(cp, weights=v, minlength=n_units) for v in v10]) - m_i * auc[:, None]
    dy = np.stack([np.bincount(cn, weights=v, minlength=n_units) for v in v01]) - n_i * auc[:, None]
    i10, i01 = int((m_i > 0).sum()), int((n_i > 0).sum())  # patients with a positive / a negative image
    s10 = i10 / ((i10 - 1) * m) * dx @ dx.T
    s01 = i01 / ((i01 - 1) * n) * dy @ dy.T
    s11 = n_units / (n_units - 1) * dx @ dy.T      # zero unless a patient has images of both classes
    cov = s10 / m + s01 / n + (s11 + s11.T) / (m * n)
    return auc, cov


def _delong_codes(y: np.ndarray, groups: Any, name: str) -> np.ndarray | None:
    """Patient codes for _delong, or None (warned) with fewer than 2 patients holding each class."""
    codes, _ = _unit_codes(groups, y.size)
    n_pos, n_neg = np.unique(codes[y == 1]).size, np.unique(codes[y == 0]).size
    if n_pos < 2 or n_neg < 2:
        unit = "patients" if groups is not None else "images"
        warnings.warn(f"{name}: DeLong variance needs at least 2 positive and 2 negative {unit}, got "
                      f"n_pos={n_pos}, n_neg={n_neg}; results set to NaN", UndefinedMetricWarning, stacklevel=3)
        return None
    return codes


def delong_auc(y_true: Any, y_prob: Any, alpha: float = 0.05, groups: Any = None) -> dict[str, float]:
    """ROC AUC with DeLong standard error and a Wald interval on the logit scale.

    With ``groups`` (one patient id per image) the standard error is Obuchowski's, clustered by
    patient. The interval is logit(auc) +/- z * se / (auc (1 - auc)), mapped back, so it stays inside
    (0, 1) and is asymmetric near the ceiling, where a plain auc +/- z * se is too short (Pepe, The
    Statistical Evaluation of Medical Tests for Classification and Prediction, 2003; measured in
    docs/statistics.md). An AUC of exactly 0 or 1 gets the plain interval.
    Returns ``dict(auc, se, low, high)``; NaN (warned) with fewer than 2 patients in a class.
    """
    y, p = check_inputs(y_true, y_prob)
    codes = _delong_codes(y, groups, "delong_auc")
    if codes is None:
        return {"auc": metrics.roc_auc(y, p) if 0 < y.sum() < y.size else math.nan,
                "se": math.nan, "low": math.nan, "high": math.nan}
    auc, cov = _delong(y, p[None, :], codes)
    se = math.sqrt(max(cov[0, 0], 0.0))
    z = norm.ppf(1 - alpha / 2)
    a = float(auc[0])
    if 0.0 < a < 1.0:
        half = z * se / (a * (1 - a))
        low, high = (float(expit(logit(a) + s * half)) for s in (-1, 1))
    else:
        low, high = max(0.0, a - z * se), min(1.0, a + z * se)
    return {"auc": a, "se": se, "low": low, "high": high}


def delong_test(y_true: Any, p1: Any, p2: Any, groups: Any = None) -> dict[str, float]:
    """DeLong test of equal AUCs for two correlated ROC curves (two models, same cases).

    z = (AUC1 - AUC2) / se with var = S11 + S22 - 2 S12 (DeLong 1988 sec. 3); two-sided p.
    With ``groups`` the covariance is Obuchowski's, clustered by patient. Identical predictors
    give z = 0, p = 1. Returns ``dict(auc1, auc2, diff, se, z, p_value)``.
    """
    y, a = check_inputs(y_true, p1)
    _, b = check_inputs(y_true, p2)
    codes = _delong_codes(y, groups, "delong_test")
    if codes is None:
        nan = math.nan
        return {"auc1": nan, "auc2": nan, "diff": nan, "se": nan, "z": nan, "p_value": nan}
    auc, cov = _delong(y, np.vstack([a, b]), codes)
    diff = float(auc[0] - auc[1])
    se = math.sqrt(max(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1], 0.0))
    if se == 0.0:  # degenerate: identical predictors (diff 0) or both variances zero
        z = 0.0 if diff == 0.0 else math.copysign(math.inf, diff)
    else:
        z = diff / se
    return {"auc1": float(auc[0]), "auc2": float(auc[1]), "diff": diff, "se": se, "z": z,
            "p_value": float(2 * norm.sf(abs(z)))}


# --------------------------------------------------------------------------- calibration

def _logistic_fit(y: np.ndarray, x: np.ndarray, offset: np.ndarray, beta: np.ndarray,
                  max_iter: int = 50, tol: float = 1e-10) -> np.ndarray | None:
    """Maximum-likelihood logistic regression logit P(y=1) = x @ beta + offset by Newton-Raphson
    with step halving; ``None`` if it does not converge (e.g. perfect separation)."""
    def loglik(bt: np.ndarray) -> float:
        eta = x @ bt + offset
        return float(np.sum(y * eta - np.logaddexp(0.0, eta)))

    ll = loglik(beta)
    for _ in range(max_iter):
        mu = expit(x @ beta + offset)
        grad = x.T @ (y - mu)
        hess = (x * (mu * (1 - mu))[:, None]).T @ x
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            return None
        for _ in range(30):  # halve the step until the likelihood does not decrease
            new = beta + step
            new_ll = loglik(new)
            if new_ll >= ll - 1e-9 * (1 + abs(ll)):  # rounding slack near the optimum
                break
            step = step / 2
        beta, ll = new, new_ll
        if np.max(np.abs(step)) < tol:
            return beta
    return None


def calibration(y_true: Any, y_prob: Any) -> dict[str, float | int]:
    """Calibration slope, calibration-in-the-large, Brier score and the count of clipped probabilities.

    slope: b in logit P(y=1) = a + b * logit(p) (logistic recalibration, Cox, Biometrika
    1958;45:562-565); 1 is ideal, < 1 means over-confident (too extreme) predictions.
    intercept: a in logit P(y=1) = a + logit(p), slope fixed at 1 (offset logistic regression);
    0 is ideal, < 0 means risks are overestimated on average (Van Calster et al., J Clin
    Epidemiol 2016;74:167-176; BMC Med 2019;17:230). Probabilities are clipped to [1e-6, 1 - 1e-6]
    (logit +-13.8) before the fit; ``n_clipped`` counts those outside, which can pull the slope.
    NaN (warned) for a single-class split or when the fit does not converge.
    """
    y, p = check_inputs(y_true, y_prob)
    out = {"slope": math.nan, "intercept": math.nan, "brier": metrics.brier(y, p),
           "n_clipped": int(np.sum((p < _CLIP) | (p > 1 - _CLIP)))}
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        warnings.warn(f"calibration slope and intercept undefined for one class (n_pos={n_pos}, "
                      f"n_neg={y.size - n_pos}); set to NaN", UndefinedMetricWarning, stacklevel=2)
        return out
    lp = logit(np.clip(p, _CLIP, 1 - _CLIP))
    yf = y.astype(np.float64)
    fit = _logistic_fit(yf, np.column_stack([np.ones_like(lp), lp]), np.zeros_like(lp), np.array([0.0, 1.0]))
    large = _logistic_fit(yf, np.ones((lp.size, 1)), lp, np.zeros(1))
    failed = [name for name, f in (("slope", fit), ("intercept", large)) if f is None]
    if failed:
        warnings.warn(f"calibration {', '.join(failed)}: logistic fit did not converge (perfect separation?); "
                      f"set to NaN", UndefinedMetricWarning, stacklevel=2)
    if fit is not None:
        out["slope"] = float(fit[1])
    if large is not None:
        out["intercept"] = float(large[0])
    return out


def recalibration(y_true: Any, y_prob: Any, slope: bool = False) -> dict[str, float]:
    """Logistic recalibration of probabilities on new data (Steyerberg, Clinical Prediction Models 2019,
    ch. 20): ``intercept`` refits a in logit p' = a + logit(p) (calibration in the large), with
    ``slope`` also b in logit p' = a + b * logit(p). Returns ``dict(a, b)`` (b = 1.0 without ``slope``);
    raises ValueError for a single class or a fit that does not converge. Apply with :func:`recalibrate`.
    """
    y, p = check_inputs(y_true, y_prob)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise ValueError(f"recalibration needs both classes, got {n_pos} positive of {y.size} images")
    lp = logit(np.clip(p, _CLIP, 1 - _CLIP))
    yf = y.astype(np.float64)
    if slope:
        fit = _logistic_fit(yf, np.column_stack([np.ones_like(lp), lp]), np.zeros_like(lp), np.array([0.0, 1.0]))
    else:
        fit = _logistic_fit(yf, np.ones((lp.size, 1)), lp, np.zeros(1))
    if fit is None:
        raise ValueError("recalibration: the logistic fit did not converge (the classes are separated by the "
                         "probability on these images)")
    return {"a": float(fit[0]), "b": float(fit[1]) if slope else 1.0}


def recalibrate(y_prob: Any, a: float, b: float = 1.0) -> np.ndarray:
    """expit(a + b * logit(p)) with p clipped as in :func:`calibration`."""
    p = np.asarray(y_prob, dtype=np.float64)
    return expit(a + b * logit(np.clip(p, _CLIP, 1 - _CLIP)))


def weighted_calibration(y: np.ndarray, p: np.ndarray, weights: np.ndarray,
                         max_iter: int = 60, tol: float = 1e-9) -> dict[str, np.ndarray]:
    """Calibration slope and intercept (as :func:`calibration`) for each row of (B, n) frequency weights.

    Newton-Raphson on all rows at once, each step capped at 5 logits so that a resample with
    (near) separation runs away slowly instead of overflowing; rows that do not converge, hold
    one class or have a singular information matrix are NaN. Inputs must be validated. Returns
    ``dict(calibration_slope, calibration_intercept)`` of (B,) arrays.
    """
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    lp = logit(np.clip(p, _CLIP, 1 - _CLIP))
    yf = y.astype(np.float64)
    n_b = w.shape[0]
    both = (w @ yf > 0) & (w @ (1 - yf) > 0)
    # slope fit: (a, b) in logit P = a + b * lp
    a, b = np.zeros(n_b), np.ones(n_b)
    done, singular = ~both, np.zeros(n_b, dtype=bool)
    for _ in range(max_iter):
        mu = expit(a[:, None] + b[:, None] * lp)
        r, v = w * (yf - mu), w * mu * (1 - mu)
        g0, g1 = r.sum(axis=1), r @ lp
        h00, h01, h11 = v.sum(axis=1), v @ lp, v @ (lp * lp)
        det = h00 * h11 - h01 * h01
        with np.errstate(divide="ignore", invalid="ignore"):
            s0, s1 = (h11 * g0 - h01 * g1) / det, (h00 * g1 - h01 * g0) / det
        bad = ~np.isfinite(s0) | ~np.isfinite(s1) | (det <= 1e-12 * np.maximum(h00 * h11, 1e-300))
        singular |= bad & ~done  # no unique fit (e.g. one distinct probability): stopped, and not valid
        s0, s1 = np.where(bad | done, 0.0, s0), np.where(bad | done, 0.0, s1)
        scale = np.minimum(1.0, 5.0 / np.maximum(np.abs(s0), np.abs(s1)).clip(1e-300))
        a, b = a + scale * s0, b + scale * s1
        done |= bad | (np.maximum(np.abs(s0), np.abs(s1)) < tol)
        if done.all():
            break
    slope_ok = both & done & ~singular & np.isfinite(b)
    # intercept fit: a in logit P = a + lp
    c = np.zeros(n_b)
    done_c, flat = ~both, np.zeros(n_b, dtype=bool)
    for _ in range(max_iter):
        mu = expit(c[:, None] + lp)
        g, h = (w * (yf - mu)).sum(axis=1), (w * mu * (1 - mu)).sum(axis=1)
        flat |= (h <= 0) & ~done_c  # zero information: no fit, not a converged one
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.where(done_c | (h <= 0), 0.0, g / h)
        c = c + np.clip(s, -5.0, 5.0)
        done_c |= np.abs(s) < tol
        if done_c.all():
            break
    return {"calibration_slope": np.where(slope_ok, b, np.nan),
            "calibration_intercept": np.where(both & done_c & ~flat, c, np.nan)}


def reliability_curve(y_true: Any, y_prob: Any, n_bins: int = 10,
                      strategy: str = "uniform") -> dict[str, np.ndarray]:
    """Binned mean predicted probability vs observed fraction of positives, for a reliability plot.

    ``strategy="uniform"``: equal-width bins on [0, 1]; ``"quantile"``: bins with about equal
    counts (tied edges merged). Bins are [e_k, e_{k+1}), the last one closed. Returns
    ``dict(edges, mean_predicted, observed, counts)``; empty bins have NaN means and count 0.
    """
    y, p = check_inputs(y_true, y_prob)
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    elif strategy == "quantile":
        edges = np.unique(np.quantile(p, np.linspace(0.0, 1.0, n_bins + 1)))
        if edges.size == 1:  # every probability equal
            edges = np.r_[edges, edges]
    else:
        raise ValueError(f"strategy {strategy!r} not supported; use 'uniform' or 'quantile'")
    k = edges.size - 1
    bins = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, k - 1)
    counts = np.bincount(bins, minlength=k)
    sum_p = np.bincount(bins, weights=p, minlength=k)
    sum_y = np.bincount(bins, weights=y.astype(np.float64), minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = np.where(counts > 0, sum_p / counts, np.nan)
        observed = np.where(counts > 0, sum_y / counts, np.nan)
    return {"edges": edges, "mean_predicted": mean_predicted, "observed": observed, "counts": counts}
