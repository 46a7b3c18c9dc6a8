"""The clinical-only models residual fusion starts from, one per target (``hipx.core.targets``).

Each is fitted on the training images' normalised clinical vectors ``X`` (sex, age, BMI as the network
receives them) and returns the linear term the network starts with, ``h = intercept + X @ coef``, in
the head's own units:

* binary: the logistic regression of the label (``h`` the osteoporosis logit);
* continuous: the ridge regression of the standardised measurement (``h`` the predicted ``z``);
* ordinal: the cumulative-link (proportional odds) model ``logit P(class <= k) = h + delta_k`` with
  ``delta_0 = 0`` and increasing offsets (McCullagh 1980), fitted by penalised maximum likelihood.

The L2 penalty is scikit-learn's default strength on standardised inputs (``C = 1``, ``alpha = 1``):
with about a hundred training patients an unpenalised fit can run off when one value separates the
classes. With two classes the cumulative-link model *is* the logistic regression (tested).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit

DEFAULT_C = 1.0


@dataclass(frozen=True)
class LinearStart:
    """``h = intercept + X @ coef``; ``offsets``: the ordinal head's ``delta_k`` (``[0, ...]``, increasing)."""
    coef: np.ndarray
    intercept: float
    offsets: np.ndarray | None = None


def _checked(X: np.ndarray, y: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if X.ndim != 2 or len(X) != len(y):
        raise ValueError(f"{what}: X must be (n, p) with one {what} value per row; got {X.shape} and {y.shape}")
    if not (np.isfinite(X).all() and np.isfinite(y).all()):
        raise ValueError(f"{what}: non-finite values in the clinical vectors or the targets")
    return X, y


def fit_logistic(X: np.ndarray, label: np.ndarray, C: float = DEFAULT_C) -> LinearStart:
    """The clinical logistic regression of the binary label (scikit-learn, L2, ``C``)."""
    from sklearn.linear_model import LogisticRegression

    X, label = _checked(X, label, "label")
    if len(np.unique(label)) < 2:
        raise ValueError("the clinical logistic regression needs both classes among the training images")
    model = LogisticRegression(C=C, max_iter=1000).fit(X, label.astype(int))
    return LinearStart(model.coef_[0].copy(), float(model.intercept_[0]))


def fit_linear(X: np.ndarray, z: np.ndarray, alpha: float = 1.0 / DEFAULT_C) -> LinearStart:
    """The clinical ridge regression of the standardised measurement ``z`` (intercept unpenalised)."""
    X, z = _checked(X, z, "measurement")
    if len(z) < 2:
        raise ValueError(f"the clinical regression of the measurement needs at least 2 images; got {len(z)}")
    mean_x, mean_z = X.mean(axis=0), z.mean()
    Xc = X - mean_x
    coef = np.linalg.solve(Xc.T @ Xc + alpha * np.eye(X.shape[1]), Xc.T @ (z - mean_z))
    return LinearStart(coef, float(mean_z - mean_x @ coef))


def _ordinal_nll(params: np.ndarray, X: np.ndarray, klass: np.ndarray, n_classes: int, C: float):
    """Penalised negative log-likelihood of the cumulative-link model and its gradient; ``params`` =
    coef (p), theta_0, log of the K-2 gaps between consecutive thresholds."""
    p = X.shape[1]
    coef, theta0, log_gaps = params[:p], params[p], params[p + 1:]
    gaps = np.exp(log_gaps)
    theta = theta0 + np.concatenate([[0.0], np.cumsum(gaps)])  # K-1 increasing thresholds
    eta = X @ coef
    # P(class = y) = F(theta_y + eta) - F(theta_{y-1} + eta), F(-inf) = 0, F(+inf) = 1
    upper = np.where(klass < n_classes - 1, theta[np.minimum(klass, n_classes - 2)] + eta, np.inf)
    lower = np.where(klass > 0, theta[np.maximum(klass - 1, 0)] + eta, -np.inf)
    f_up, f_lo = expit(upper), expit(lower)
    prob = np.clip(f_up - f_lo, 1e-300, None)
    # log P without cancellation at the ends: the first class is log F(upper), the last log(1 - F(lower))
    logp = np.where(klass == 0, log_expit(upper),
                    np.where(klass == n_classes - 1, log_expit(-lower), np.log(prob)))
    nll = -logp.sum() + 0.5 * coef @ coef / C
    # d log P / d upper = f_up (1 - f_up) / P ; d log P / d lower = -f_lo (1 - f_lo) / P
    d_up = np.where(np.isfinite(upper), f_up * (1 - f_up), 0.0) / prob
    d_lo = np.where(np.isfinite(lower), -f_lo * (1 - f_lo), 0.0) / prob
    d_eta = d_up + d_lo
    g_coef = -(X.T @ d_eta) + coef / C
    d_theta = np.zeros(n_classes - 1)
    np.add.at(d_theta, np.minimum(klass, n_classes - 2)[klass < n_classes - 1], d_up[klass < n_classes - 1])
    np.add.at(d_theta, np.maximum(klass - 1, 0)[klass > 0], d_lo[klass > 0])
    g_theta0 = -d_theta.sum()
    # theta_j = theta_0 + sum_{i<j} gap_i: d/d log_gap_i = gap_i * sum_{j>i} d_theta_j
    tail = np.cumsum(d_theta[::-1])[::-1][1:]
    g_gaps = -(tail * gaps)
    return nll, np.concatenate([g_coef, [g_theta0], g_gaps])


def fit_cumulative_link(X: np.ndarray, klass: np.ndarray, n_classes: int, C: float = DEFAULT_C) -> LinearStart:
    """The clinical cumulative-link model of the ordinal class (0 = lowest): ``coef``, ``intercept`` =
    theta_0 and ``offsets`` = theta_k - theta_0, so that ``logit P(class <= k) = intercept + X @ coef +
    offsets[k]``, as :class:`hipx.models.Classifier`'s ordinal head computes it."""
    X, klass_f = _checked(X, klass, "class")
    klass = klass_f.astype(int)
    if n_classes < 2 or klass.min() < 0 or klass.max() >= n_classes:
        raise ValueError(f"classes must lie in 0..{n_classes - 1}; got {klass.min()}..{klass.max()}")
    if len(np.unique(klass)) < 2:
        raise ValueError("the clinical cumulative-link model needs at least two classes among the training images")
    p = X.shape[1]
    counts = np.bincount(klass, minlength=n_classes) + 0.5  # smoothed: an empty class keeps a finite gap
    cum = np.cumsum(counts)[:-1] / counts.sum()
    theta = np.log(cum / (1 - cum))  # the marginal thresholds: a start with coef 0
    gaps = np.maximum(np.diff(theta), 1e-3)
    start = np.concatenate([np.zeros(p), [theta[0]], np.log(gaps)])
    result = minimize(_ordinal_nll, start, args=(X, klass, n_classes, C), jac=True, method="L-BFGS-B")
    params = result.x
    coef, theta0 = params[:p], float(params[p])
    offsets = np.concatenate([[0.0], np.cumsum(np.exp(params[p + 1:]))])
    return LinearStart(coef.copy(), theta0, offsets)


def fit_start(spec, X: np.ndarray, labels: np.ndarray, values: np.ndarray) -> LinearStart:
    """The clinical model of target ``spec`` (``hipx.core.targets.TargetSpec``) on the clinical vectors ``X``:
    the label's logistic regression (binary), the ridge regression of the standardised measurement
    (continuous) or the cumulative-link model of its classes (ordinal). ``labels`` and ``values`` (NaN where
    unknown) are per row of ``X``; each kind uses the rows it can."""
    labels, values = np.asarray(labels, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if spec.kind == "binary":
        known = np.isfinite(labels)
        return fit_logistic(X[known], labels[known])
    known = np.isfinite(values)
    if spec.kind == "continuous":
        return fit_linear(X[known], (values[known] - spec.mean) / spec.sd)
    return fit_cumulative_link(X[known], spec.classify(values[known]), spec.n_classes)
