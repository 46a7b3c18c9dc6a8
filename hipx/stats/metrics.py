"""Test-set metrics for a binary classifier: pure functions of ``(y_true, y_prob[, threshold])``.

    from hipx.stats.metrics import compute_metrics
    compute_metrics(y_true, y_prob, threshold=0.5)   # -> dict of plain floats / ints

``y_true`` holds labels 0 (normal) / 1 (osteoporosis), ``y_prob`` the predicted probability
of osteoporosis; an image is predicted positive when ``prob >= threshold``.

A metric that is undefined for the data it is given (a split with one class, a ratio 0/0
such as precision with no predicted positives) is returned as NaN with one
:class:`UndefinedMetricWarning` per call naming the metric(s); nothing raises for that.
Bad input (different lengths, labels other than 0/1, probabilities outside [0, 1] or not
finite, an empty split) raises ``ValueError`` saying what was wrong and how often.

Every metric is computed from frequency weights over the cases (one row of ones for a plain
call), so :mod:`confidence` evaluates thousands of bootstrap resamples with the very same
formulas in one vectorised pass (:func:`weighted_metrics`).
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

__all__ = [
    "UndefinedMetricWarning", "THRESHOLD_METRICS",
    "check_inputs", "roc_auc", "pr_auc", "brier", "threshold_metrics", "rates_from_counts",
    "youden_threshold", "compute_metrics", "weighted_metrics",
]

# Keys of threshold_metrics(), in the order they are reported.
THRESHOLD_METRICS = ("accuracy", "precision", "npv", "sensitivity", "specificity", "f0_5", "f1", "f2",
                     "balanced_accuracy", "mcc", "f2acc", "tp", "fp", "tn", "fn")
_COUNTS = ("tp", "fp", "tn", "fn")


class UndefinedMetricWarning(RuntimeWarning):
    """A metric is undefined for the given data (one class, 0/0) and was set to NaN."""


# --------------------------------------------------------------------------- validation

def _describe_bad(values: np.ndarray, mask: np.ndarray) -> str:
    bad = values[mask]
    shown = ", ".join(repr(v.item() if hasattr(v, "item") else v) for v in bad[:5])
    return f"{shown}{', ...' if bad.size > 5 else ''}"


def check_inputs(y_true: Any, y_prob: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert labels and probabilities to 1-D ``int64`` / ``float64`` arrays.

    Raises ``ValueError`` for an empty split, arrays that are not 1-D or differ in length,
    labels other than 0/1 and probabilities that are not finite or lie outside [0, 1];
    the message says which input, how many values and shows the first few.
    """
    y = np.asarray(y_true)
    p = np.asarray(y_prob)
    for name, a in (("y_true", y), ("y_prob", p)):
        if a.ndim != 1:
            raise ValueError(f"{name} must be 1-D (one value per image), got shape {a.shape}; "
                             "for a (n, 1) model output pass .ravel(), for (n, 2) softmax pass [:, 1]")
        if a.dtype.kind not in "biuf":
            raise ValueError(f"{name} must be numeric, got dtype {a.dtype}")
    if y.shape[0] != p.shape[0]:
        raise ValueError(f"y_true and y_prob differ in length: {y.shape[0]} labels, {p.shape[0]} probabilities")
    if y.shape[0] == 0:
        raise ValueError("empty split: y_true and y_prob have no values")
    bad = (y != 0) & (y != 1)  # NaN labels are caught here too
    if bad.any():
        raise ValueError(f"y_true: {int(bad.sum())} of {y.size} labels are not 0 (normal) or 1 (osteoporosis): "
                         f"{_describe_bad(y, bad)}")
    p = p.astype(np.float64, copy=False)
    nonfinite = ~np.isfinite(p)
    outside = np.isfinite(p) & ((p < 0) | (p > 1))
    if nonfinite.any() or outside.any():
        raise ValueError(f"y_prob must be finite probabilities in [0, 1]: {int(nonfinite.sum())} of {p.size} "
                         f"values are NaN/inf and {int(outside.sum())} lie outside [0, 1]: "
                         f"{_describe_bad(p, nonfinite | outside)}")
    return y.astype(np.int64, copy=False), p


def _check_threshold(threshold: Any) -> float:
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}") from None
    if not (0.0 <= t <= 1.0):  # also rejects NaN
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
    return t


# --------------------------------------------------------------------------- weighted core

def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with NaN where den == 0 (an undefined ratio, 0/0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den != 0, np.true_divide(num, den), np.nan)


def _ranking(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC AUC and average precision for each row of frequency weights ``w`` (shape (B, n))."""
    order = np.argsort(p, kind="stable")
    ps = p[order]
    starts = np.flatnonzero(np.concatenate(([True], ps[1:] != ps[:-1])))  # one group per distinct score
    ws = w[:, order]
    pos = y[order].astype(bool)
    pos_w = np.add.reduceat(np.where(pos, ws, 0.0), starts, axis=1)  # (B, k) positives per score
    neg_w = np.add.reduceat(np.where(pos, 0.0, ws), starts, axis=1)
    n_pos, n_neg = pos_w.sum(axis=1), neg_w.sum(axis=1)
    # AUC = P(score_pos > score_neg) + P(tie) / 2, the Mann-Whitney U statistic / (n_pos * n_neg)
    # (Hanley & McNeil, Radiology 1982;143:29-36); equals the trapezoidal area under the ROC curve.
    neg_below = np.cumsum(neg_w, axis=1) - neg_w
    auc = _div((pos_w * (neg_below + 0.5 * neg_w)).sum(axis=1), n_pos * n_neg)
    # Average precision AP = sum_k (R_k - R_{k-1}) P_k over thresholds in decreasing order, without
    # interpolation (Manning, Raghavan & Schuetze, Introduction to IR 2008, ch. 8; scikit-learn's
    # average_precision_score). Tied scores form one threshold.
    tp = np.cumsum(pos_w[:, ::-1], axis=1)
    fp = np.cumsum(neg_w[:, ::-1], axis=1)
    precision = _div(tp, tp + fp)
    precision[np.isnan(precision)] = 0.0  # 0/0 only before the first case, where no positive is added
    ap = _div((pos_w[:, ::-1] * precision).sum(axis=1), n_pos)
    return auc, ap


def rates_from_counts(tp: Any, fp: Any, tn: Any, fn: Any) -> dict[str, np.ndarray]:
    """Threshold metrics from confusion-matrix counts (scalars or arrays, broadcast); NaN where 0/0.

    Counts may be frequency-weighted (non-integer). Returns float arrays for every key of
    :data:`THRESHOLD_METRICS` except the counts themselves.
    """
    tp, fp, tn, fn = (np.asarray(c, dtype=np.float64) for c in (tp, fp, tn, fn))
    pos, neg = tp + fn, tn + fp

    def fbeta(beta: float) -> np.ndarray:
        # F_beta = (1 + b^2) TP / ((1 + b^2) TP + b^2 FN + FP) (van Rijsbergen, Information Retrieval
        # 1979); defined (0) when there are positives but none is predicted, as in scikit-learn.
        b2 = beta * beta
        return _div((1 + b2) * tp, (1 + b2) * tp + b2 * fn + fp)

    sensitivity, specificity = _div(tp, pos), _div(tn, neg)
    f2 = fbeta(2.0)
    accuracy = _div(tp + tn, pos + neg)
    return {
        "accuracy": accuracy,
        "precision": _div(tp, tp + fp),
        "npv": _div(tn, tn + fn),
        "sensitivity": sensitivity,
        "specificity": specificity,
        "f0_5": fbeta(0.5),
        "f1": fbeta(1.0),
        "f2": f2,
        # (sensitivity + specificity) / 2 (Brodersen et al., ICPR 2010); NaN with one class.
        "balanced_accuracy": (sensitivity + specificity) / 2,
        # Matthews, Biochim Biophys Acta 1975;405:442-451. NaN when any margin of the confusion
        # matrix is empty (0/0); scikit-learn's matthews_corrcoef returns 0 there instead.
        "mcc": _div(tp * tn - fp * fn,
                    np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))),
        # The original work's model-selection score.
        "f2acc": 1.5 * f2 + accuracy,
    }


def weighted_metrics(y_true: np.ndarray, y_prob: np.ndarray, threshold: float,
                     weights: np.ndarray) -> dict[str, np.ndarray]:
    """All metrics for each row of a (B, n) matrix of case frequency weights.

    A row of weights ``w`` gives exactly the metrics of the data with case ``i`` repeated
    ``w[i]`` times (a bootstrap resample). Inputs must already be validated
    (:func:`check_inputs`); undefined values are NaN and nothing is warned here.
    Returns arrays of length B for roc_auc, pr_auc, brier, n, n_pos and every threshold metric.
    """
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    y, p = y_true, y_prob
    auc, ap = _ranking(y, p, w)
    is_pos = y == 1
    pred = p >= threshold
    tp, fp = w @ (is_pos & pred), w @ (~is_pos & pred)
    tn, fn = w @ (~is_pos & ~pred), w @ (is_pos & ~pred)
    n = w.sum(axis=1)
    out = {"roc_auc": auc, "pr_auc": ap,
           # Brier score: mean squared error of the probability (Brier, Mon Weather Rev 1950;78:1-3).
           "brier": _div(w @ (p - y) ** 2, n),
           "n": n, "n_pos": tp + fn}
    out.update(rates_from_counts(tp, fp, tn, fn))
    out.update(tp=tp, fp=fp, tn=tn, fn=fn)
    return out


# --------------------------------------------------------------------------- public metrics

def _warn_undefined(names: list[str], y: np.ndarray, p: np.ndarray, threshold: float | None = None,
                    stacklevel: int = 3) -> None:
    """One warning for all undefined metrics of a call; ``stacklevel`` points at the user's call."""
    if not names:
        return
    n_pos = int(y.sum())
    why = f"n_pos={n_pos}, n_neg={y.size - n_pos}"
    if threshold is not None:
        n_pred = int((p >= threshold).sum())
        why += f", predicted positive (prob >= {threshold:g})={n_pred}, predicted negative={p.size - n_pred}"
    warnings.warn(f"{', '.join(names)} undefined for this split (one class or 0/0) and set to NaN: {why}",
                  UndefinedMetricWarning, stacklevel=stacklevel)


def _one(y_true: Any, y_prob: Any, key: str) -> float:
    y, p = check_inputs(y_true, y_prob)
    if key == "brier":
        value = float(np.mean((p - y) ** 2))
    else:
        auc, ap = _ranking(y, p, np.ones((1, y.size)))
        value = float((auc if key == "roc_auc" else ap)[0])
    _warn_undefined([key] if math.isnan(value) else [], y, p, stacklevel=4)
    return value


def roc_auc(y_true: Any, y_prob: Any) -> float:
    """Area under the ROC curve; tied scores count one half. NaN (with a warning) for one class."""
    return _one(y_true, y_prob, "roc_auc")


def pr_auc(y_true: Any, y_prob: Any) -> float:
    """Average precision (area under the precision-recall step curve, as scikit-learn).

    NaN (with a warning) when there is no positive; 1.0 when every case is positive.
    """
    return _one(y_true, y_prob, "pr_auc")


def brier(y_true: Any, y_prob: Any) -> float:
    """Brier score, mean of (prob - label)^2; lower is better, defined for any non-empty split."""
    return _one(y_true, y_prob, "brier")


def _as_python(key: str, value: float) -> float | int:
    return int(round(value)) if key in _COUNTS or key in ("n", "n_pos") else float(value)


def threshold_metrics(y_true: Any, y_prob: Any, threshold: float = 0.5) -> dict[str, float | int]:
    """Confusion-matrix metrics at ``threshold`` (predicted positive when ``prob >= threshold``).

    Keys (:data:`THRESHOLD_METRICS`): accuracy, precision (PPV), npv, sensitivity, specificity,
    f0_5, f1, f2, balanced_accuracy, mcc, f2acc (= 1.5 * F2 + accuracy) as floats and
    tp, fp, tn, fn as ints. Undefined ratios are NaN with one warning naming them.
    """
    y, p = check_inputs(y_true, y_prob)
    t = _check_threshold(threshold)
    all_ = weighted_metrics(y, p, t, np.ones((1, y.size)))
    out = {k: _as_python(k, all_[k][0]) for k in THRESHOLD_METRICS}
    _warn_undefined([k for k, v in out.items() if math.isnan(v)], y, p, t)
    return out


def compute_metrics(y_true: Any, y_prob: Any, threshold: float = 0.5) -> dict[str, float | int]:
    """Everything a run reports for one split.

    Keys: roc_auc, pr_auc, brier, n, n_pos, prevalence, threshold, then every key of
    :func:`threshold_metrics`. Undefined metrics are NaN with a single warning naming them.
    """
    y, p = check_inputs(y_true, y_prob)
    t = _check_threshold(threshold)
    all_ = weighted_metrics(y, p, t, np.ones((1, y.size)))
    out: dict[str, float | int] = {k: _as_python(k, all_[k][0]) for k in ("roc_auc", "pr_auc", "brier", "n", "n_pos")}
    out["prevalence"] = out["n_pos"] / out["n"]
    out["threshold"] = t
    out.update({k: _as_python(k, all_[k][0]) for k in THRESHOLD_METRICS})
    _warn_undefined([k for k, v in out.items() if math.isnan(v)], y, p, t)
    return out


# --------------------------------------------------------------------------- threshold choice

def _roc_points(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct thresholds (descending) with TP and FP counts when predicting ``prob >= t``."""
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], y[order]
    last = np.r_[np.flatnonzero(ps[1:] != ps[:-1]), ps.size - 1]  # last index of each distinct score
    return ps[last], np.cumsum(ys)[last], np.cumsum(1 - ys)[last]


def _closest_to_half(thresholds: np.ndarray, best: np.ndarray) -> float:
    """Among the best thresholds, the one closest to 0.5; if two are equally close, the lower."""
    cand = thresholds[best]
    dist = np.abs(cand - 0.5)
    # 1e-12 slack: 0.7 - 0.5 and 0.5 - 0.3 differ in floating point but are equally close
    return float(np.min(cand[dist <= dist.min() + 1e-12]))


def youden_threshold(y_true: Any, y_prob: Any) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1 (Youden, Cancer 1950;3:32-35).

    Candidates are the ROC points, i.e. the distinct predicted probabilities (predicting
    ``prob >= t``). J is compared exactly (as TP * n_neg - FP * n_pos, integers), and among
    equal maxima the threshold closest to 0.5 wins (the lower one if two are equally close,
    within 1e-12), so a flat optimum does not drift to an extreme. NaN with a warning for a single-class split.
    """
    y, p = check_inputs(y_true, y_prob)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        _warn_undefined(["youden_threshold"], y, p)
        return math.nan
    thresholds, tp, fp = _roc_points(y, p)
    score = tp * n_neg - fp * n_pos  # = J * n_pos * n_neg, exact in integers
    return _closest_to_half(thresholds, score == score.max())


def mean_sd(values: Any) -> dict[str, float | int]:
    """Mean, SD (ddof 1) and count of the finite values (None and NaN are left out); NaN where
    there are too few values for the statistic."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    return {"mean": float(v.mean()) if v.size else math.nan, "sd": float(v.std(ddof=1)) if v.size > 1 else math.nan,
            "n": int(v.size)}
