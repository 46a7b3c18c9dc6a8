"""Uncertainty for published test-set numbers: bootstrap and DeLong confidence intervals,
paired model comparison, and calibration.

    from confidence import bootstrap_metrics, delong_auc, calibration
    bootstrap_metrics(y_true, y_prob, threshold=0.5, groups=patient_ids)  # 95% CIs for every metric

Reporting guidelines for diagnostic-accuracy and AI studies (STARD 2015, TRIPOD+AI 2024,
CLAIM 2024) ask for confidence intervals and calibration, not point estimates alone.

Several images of one patient (both hips, several crops) are not independent. Pass the
patient ids as ``groups`` so the bootstrap resamples patients and every image of a sampled
patient comes along (cluster bootstrap; Field & Welsh, JRSS B 2007;69:369-390); resampling
images instead gives intervals that are too narrow. The DeLong functions assume one image per
patient; with several, prefer the grouped bootstrap.

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

import metrics
from metrics import UndefinedMetricWarning, check_inputs

__all__ = [
    "BOOTSTRAP_METRICS", "bootstrap_ci", "bootstrap_metrics", "paired_bootstrap_diff",
    "delong_auc", "delong_test", "calibration", "reliability_curve",
]

Metric = Callable[[np.ndarray, np.ndarray], float]

# Metrics reported with a bootstrap interval by bootstrap_metrics().
BOOTSTRAP_METRICS = ("roc_auc", "pr_auc", "brier", "accuracy", "sensitivity", "specificity", "precision",
                     "npv", "f1", "f2", "balanced_accuracy", "mcc")
# metrics.py functions whose resamples are computed vectorised (weighted_metrics key).
_VECTORISED = {metrics.roc_auc: "roc_auc", metrics.pr_auc: "pr_auc", metrics.brier: "brier"}
_CELLS = 2 ** 20  # resamples x images per chunk: bounds memory (8 MB per float matrix)
_CLIP = 1e-6  # probabilities are clipped to [_CLIP, 1 - _CLIP] before the logit


# --------------------------------------------------------------------------- resampling

def _vectorised_key(metric: Metric) -> str | None:
    """weighted_metrics key when ``metric`` is one of the metrics.py functions, else None."""
    return next((key for func, key in _VECTORISED.items() if metric is func), None)


def _check_bootstrap_args(n_boot: Any, alpha: Any) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise ValueError(f"alpha must be in (0, 1) (0.05 for a 95% interval), got {alpha!r}")


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


def _replicates(y: np.ndarray, probs: list[np.ndarray], keys_or_metric: tuple[str, ...] | Metric,
                threshold: float, groups: Any, n_boot: int, seed: int) -> list[dict[str, np.ndarray]] | list[np.ndarray]:
    """Bootstrap replicates for each prediction vector in ``probs``, all on the same resamples.

    With a tuple of metric names, returns one dict name -> (n_boot,) array per prediction vector
    (vectorised); with a callable, one (n_boot,) array per prediction vector.
    """
    codes, n_units = _unit_codes(groups, y.size)
    rng = np.random.default_rng(seed)
    vectorised = isinstance(keys_or_metric, tuple)
    parts: list[list[Any]] = [[] for _ in probs]
    idx = np.arange(y.size)
    with warnings.catch_warnings():
        # Single-class resamples are expected; they are counted and reported once by the caller.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        for w in _resample_weights(codes, n_units, n_boot, rng):
            for i, p in enumerate(probs):
                if vectorised:
                    parts[i].append(metrics.weighted_metrics(y, p, threshold, w))
                else:
                    parts[i].append([keys_or_metric(y[rows], p[rows])
                                     for rows in (np.repeat(idx, row.astype(np.int64)) for row in w)])
    if vectorised:
        return [{k: np.concatenate([c[k] for c in chunks]) for k in keys_or_metric} for chunks in parts]
    return [np.asarray([v for chunk in chunks for v in chunk], dtype=np.float64) for chunks in parts]


def _percentile(point: float, reps: np.ndarray, alpha: float) -> dict[str, float | int]:
    # Percentile interval (Efron & Tibshirani, An Introduction to the Bootstrap 1993, ch. 13).
    valid = reps[~np.isnan(reps)]
    if valid.size == 0:
        low = high = math.nan
    else:
        low, high = (float(q) for q in np.quantile(valid, [alpha / 2, 1 - alpha / 2]))
    return {"point": float(point), "low": low, "high": high, "n_boot_valid": int(valid.size)}


def _warn_dropped(dropped: dict[str, int], n_boot: int) -> None:
    if dropped:
        listed = ", ".join(f"{k} ({v})" for k, v in dropped.items())
        warnings.warn(f"bootstrap: resamples where the metric is undefined (one class or 0/0) were dropped, "
                      f"out of {n_boot}: {listed}; the interval is conditional on the remaining resamples",
                      UndefinedMetricWarning, stacklevel=3)


# --------------------------------------------------------------------------- bootstrap

def bootstrap_ci(y_true: Any, y_prob: Any, metric: Metric, groups: Any = None, n_boot: int = 2000,
                 seed: int = 0, alpha: float = 0.05) -> dict[str, float | int]:
    """Percentile bootstrap confidence interval of ``metric(y_true, y_prob)``.

    Resamples patients when ``groups`` (one patient id per image) is given, else images.
    ``metric`` is a callable ``(y, p) -> float`` returning NaN where undefined; such resamples
    are dropped (warned) and ``n_boot_valid`` counts the rest. :func:`metrics.roc_auc`,
    :func:`metrics.pr_auc` and :func:`metrics.brier` are evaluated vectorised.
    Returns ``dict(point, low, high, n_boot_valid)``; same seed, same interval.
    """
    y, p = check_inputs(y_true, y_prob)
    _check_bootstrap_args(n_boot, alpha)
    point = metric(y, p)
    key = _vectorised_key(metric)
    if key is not None:
        reps = _replicates(y, [p], (key,), 0.5, groups, n_boot, seed)[0][key]
    else:
        reps = _replicates(y, [p], metric, 0.5, groups, n_boot, seed)[0]
    out = _percentile(point, reps, alpha)
    _warn_dropped({getattr(metric, "__name__", "metric"): n_boot - out["n_boot_valid"]}
                  if out["n_boot_valid"] < n_boot else {}, n_boot)
    return out


def bootstrap_metrics(y_true: Any, y_prob: Any, threshold: float = 0.5, groups: Any = None, n_boot: int = 2000,
                      seed: int = 0, alpha: float = 0.05) -> dict[str, dict[str, float | int]]:
    """Percentile bootstrap intervals for every metric of :data:`BOOTSTRAP_METRICS`.

    All metrics share the same resamples (patients when ``groups`` is given). Points equal
    :func:`metrics.compute_metrics`. Returns name -> ``dict(point, low, high, n_boot_valid)``.
    """
    y, p = check_inputs(y_true, y_prob)
    _check_bootstrap_args(n_boot, alpha)
    point = metrics.compute_metrics(y, p, threshold)  # validates threshold, warns if undefined
    reps = _replicates(y, [p], BOOTSTRAP_METRICS, float(threshold), groups, n_boot, seed)[0]
    out = {k: _percentile(point[k], reps[k], alpha) for k in BOOTSTRAP_METRICS}
    _warn_dropped({k: n_boot - v["n_boot_valid"] for k, v in out.items() if v["n_boot_valid"] < n_boot}, n_boot)
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
    _warn_dropped({getattr(metric, "__name__", "metric"): n_boot - ci["n_boot_valid"]}
                  if ci["n_boot_valid"] < n_boot else {}, n_boot)
    return {"diff": ci["point"], "low": ci["low"], "high": ci["high"], "p_value": float(p_value),
            "n_boot_valid": ci["n_boot_valid"]}


# --------------------------------------------------------------------------- DeLong

def _delong(y: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs (k,) and their DeLong covariance (k, k) for k prediction vectors (k, n) on the same cases.

    Fast midrank algorithm of Sun & Xu, IEEE Signal Process Lett 2014;21:1389-1393, for the
    covariance of DeLong, DeLong & Clarke-Pearson, Biometrics 1988;44:837-845.
    """
    pos = y == 1
    m, n = int(pos.sum()), int((~pos).sum())
    x, z = probs[:, pos], probs[:, ~pos]
    tx = rankdata(x, axis=1)                       # midranks among positives
    ty = rankdata(z, axis=1)                       # midranks among negatives
    tz = rankdata(np.hstack([x, z]), axis=1)       # midranks among all cases
    auc = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    # Structural components: V10_i = mean_j psi(X_i, Y_j), V01_j = mean_i psi(X_i, Y_j),
    # psi = 1 if X > Y, 1/2 if tied (DeLong 1988 eq. 3-4; Sun & Xu 2014 eq. 8-9).
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    # S = S10 / m + S01 / n with sample covariances over positives and negatives (DeLong eq. 5).
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return auc, cov


def _delong_defined(y: np.ndarray, p: np.ndarray, name: str) -> bool:
    n_pos = int(y.sum())
    if n_pos < 2 or y.size - n_pos < 2:
        warnings.warn(f"{name}: DeLong variance needs at least 2 positives and 2 negatives, got n_pos={n_pos}, "
                      f"n_neg={y.size - n_pos}; results set to NaN", UndefinedMetricWarning, stacklevel=3)
        return False
    return True


def delong_auc(y_true: Any, y_prob: Any, alpha: float = 0.05) -> dict[str, float]:
    """ROC AUC with DeLong standard error and Wald interval ``auc +/- z * se`` clipped to [0, 1].

    Returns ``dict(auc, se, low, high)``; NaN (warned) with fewer than 2 cases in a class.
    """
    y, p = check_inputs(y_true, y_prob)
    if not _delong_defined(y, p, "delong_auc"):
        return {"auc": metrics.roc_auc(y, p) if 0 < y.sum() < y.size else math.nan,
                "se": math.nan, "low": math.nan, "high": math.nan}
    auc, cov = _delong(y, p[None, :])
    se = math.sqrt(max(cov[0, 0], 0.0))
    half = norm.ppf(1 - alpha / 2) * se
    a = float(auc[0])
    return {"auc": a, "se": se, "low": float(max(0.0, a - half)), "high": float(min(1.0, a + half))}


def delong_test(y_true: Any, p1: Any, p2: Any) -> dict[str, float]:
    """DeLong test of equal AUCs for two correlated ROC curves (two models, same cases).

    z = (AUC1 - AUC2) / se with var = S11 + S22 - 2 S12 (DeLong 1988 sec. 3); two-sided p.
    Identical predictors give z = 0, p = 1. Returns ``dict(auc1, auc2, diff, se, z, p_value)``.
    """
    y, a = check_inputs(y_true, p1)
    _, b = check_inputs(y_true, p2)
    if not _delong_defined(y, a, "delong_test"):
        nan = math.nan
        return {"auc1": nan, "auc2": nan, "diff": nan, "se": nan, "z": nan, "p_value": nan}
    auc, cov = _delong(y, np.vstack([a, b]))
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


def calibration(y_true: Any, y_prob: Any) -> dict[str, float]:
    """Calibration slope, calibration-in-the-large and Brier score.

    slope: b in logit P(y=1) = a + b * logit(p) (logistic recalibration, Cox, Biometrika
    1958;45:562-565); 1 is ideal, < 1 means over-confident (too extreme) predictions.
    intercept: a in logit P(y=1) = a + logit(p), slope fixed at 1 (offset logistic regression);
    0 is ideal, < 0 means risks are overestimated on average (Van Calster et al., J Clin
    Epidemiol 2016;74:167-176; BMC Med 2019;17:230). Probabilities are clipped to [1e-6, 1 - 1e-6].
    NaN (warned) for a single-class split or when the fit does not converge.
    """
    y, p = check_inputs(y_true, y_prob)
    out = {"slope": math.nan, "intercept": math.nan, "brier": metrics.brier(y, p)}
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
