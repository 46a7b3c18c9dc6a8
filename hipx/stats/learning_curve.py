"""Learning curves: would more patients help? The inverse power law fitted to AUCs measured on nested
subsets of the training patients, its extrapolation with an interval, and the patients a target AUC needs.

    from hipx.stats.learning_curve import fit_curve, extrapolate
    points = [{"n_patients": 40, "auc": 0.66, "se": 0.040}, {"n_patients": 80, "auc": 0.71, "low": 0.64, "high": 0.78},
              {"n_patients": 160, "auc": 0.74, "se": 0.030}]
    result = extrapolate(points, target=0.80)   # fit, AUC at 2x 5x 10x with 95 % intervals, n for 0.80, verdict
    result["verdict"]                           # the sentence a user reads

The model is Figueroa et al.'s (BMC Med Inform Decis Mak 2012;12:8, "Predicting sample size required for
classification performance")::

    AUC(n) = a - b * n^(-c),      a <= 1 (the ceiling the curve approaches), b >= 0 (it rises), c > 0

fitted by weighted nonlinear least squares, each point weighted by the inverse of its variance (the
square of its standard error, or of its CI's half-width / z). With ``cov`` (the points' covariance, e.g.
from one patient bootstrap over every point: the pooled out-of-fold AUCs of all subsets are scored on the
same patients, so their errors are correlated) it is generalised least squares.

How it is fitted: for a fixed ``c`` the model is linear in ``a`` and ``b``, so their weighted least-squares
solution under the bounds is exact and closed-form (a convex problem in two variables: the unconstrained
solution, or the best on the edge a = 1 or b = 0); the residual sum of squares is then a function of ``c``
alone, minimised over a grid of ``c`` in [:data:`C_RANGE`] and refined by golden-section search (variable
projection, Golub & Pereyra 1973). No starting values to choose, the grid finds the global minimum over
``c`` (no local one), and it is vectorised: a thousand refits take a few tens of milliseconds.

Why a parametric bootstrap for the intervals, not the delta method: a learning curve has 3 to 6 points
for 3 parameters, ``b`` and ``c`` trade off strongly, the extrapolation to 10x is far from the data and
nonlinear in ``c``, and on a flat curve the fit sits on the bound b = 0, where the delta method's normal
approximation does not hold (it would give a symmetric interval around a gain that cannot be negative).
The bootstrap redraws the points from the fitted curve with their own variances (or ``cov``), refits each
draw under the same bounds and reads percentile intervals off the refits' predictions; the simulation in
tests/test_learning_curve.py checks that the 95 % interval of the 10x extrapolation covers the truth at
about its nominal rate.

The curve is flat when the interval of the gain from the largest n to ``horizon`` times it reaches 0 (its
lower end below :data:`FLAT_TOLERANCE`; the gain cannot be negative under the bounds, so "reaches" is the test):
the data do not show that more patients would help.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.stats import chi2 as chi2_dist
from scipy.stats import norm

__all__ = ["C_RANGE", "FLAT_TOLERANCE", "MODEL", "fit_curve", "predict", "patients_for", "extrapolate", "verdict"]

MODEL = "AUC(n) = a - b * n^(-c)"
# c is searched here. Above 4 the curve has reached its ceiling one point after the first (2^-4 of the rise
# is left at twice the smallest n); below 0.01, n^-c is 1 - c ln n to within 1 % up to 10^5 patients, a straight
# line in log n where a smaller c only trades off against a larger b. The data cannot tell values beyond
# either end from the end itself.
C_RANGE = (0.01, 4.0)
# A gain whose interval reaches this is "0" in a report that prints AUCs with three decimals.
FLAT_TOLERANCE = 0.0005
# below this the flat verdict says the gain is small as well as uncertain; above it, only uncertain
_SMALL_GAIN = 0.01
_GRID = 61  # log-spaced grid of c (steps of 0.1 in log c) before the golden-section refinement
_GOLDEN_STEPS = 24  # bootstrap refits: the bracket of two grid steps shrinks to 0.618^24, about 1e-5 of it
_GOLDEN_STEPS_POINT = 60  # the reported fit: to the last digits (a target's n is (b / (a - t))^(1/c))


# --------------------------------------------------------------------------- input

def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what} is {value!r}, not a number")
    return float(value)


def _points(points: Sequence[Any], ci_level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, auc, se) arrays of ``points``: mappings with ``n_patients`` (or ``n``), ``auc`` and ``se`` or
    ``low`` and ``high`` (a ``ci_level`` interval), or (n, auc, se) triples. ``ValueError`` naming the point."""
    if isinstance(points, (str, bytes, Mapping)) or not isinstance(points, Sequence):
        raise ValueError(f"learning-curve points must be a list of {{n_patients, auc, se}} (or low/high) entries, "
                         f"got {type(points).__name__}")
    if not 0 < ci_level < 1:
        raise ValueError(f"ci_level must be in (0, 1) (0.95 for 95 % intervals), got {ci_level!r}")
    z = norm.ppf(0.5 + ci_level / 2)
    rows = []
    for i, p in enumerate(points):
        where = f"learning-curve point {i}"
        if isinstance(p, Mapping):
            if "n_patients" not in p and "n" not in p or "auc" not in p:
                raise ValueError(f"{where} {dict(p)!r} needs n_patients, auc and se (or low and high)")
            n = _number(p.get("n_patients", p.get("n")), f"{where}: n_patients")
            where = f"learning-curve point {i} (n_patients {n:g})"
            auc = _number(p["auc"], f"{where}: auc")
            if p.get("se") is not None:
                se = _number(p["se"], f"{where}: se")
            elif p.get("low") is not None and p.get("high") is not None:
                low, high = _number(p["low"], f"{where}: low"), _number(p["high"], f"{where}: high")
                if not (math.isfinite(low) and math.isfinite(high) and low <= high):
                    raise ValueError(f"{where}: interval {low!r} to {high!r} is not an interval (low <= high, finite)")
                se = (high - low) / (2 * z)
            else:
                raise ValueError(f"{where} has neither se nor low and high; each point needs its uncertainty to "
                                 "weight the fit (the CI of the pooled AUC)")
        else:
            if isinstance(p, (str, bytes)) or not isinstance(p, Sequence) or len(p) != 3:
                raise ValueError(f"{where} {p!r} must be a mapping or an (n_patients, auc, se) triple")
            n, auc, se = (_number(v, f"{where}: {k}") for k, v in zip(("n_patients", "auc", "se"), p))
            where = f"learning-curve point {i} (n_patients {n:g})"
        if not (math.isfinite(n) and n > 0):
            raise ValueError(f"{where}: n_patients must be a positive number of patients")
        if not (math.isfinite(auc) and 0 <= auc <= 1):
            reason = " (a subset or test part with one class has no AUC)" if math.isnan(auc) else ""
            raise ValueError(f"{where}: AUC {auc!r} is not within 0..1{reason}")
        if not (math.isfinite(se) and se > 0):
            reason = " (a zero-width interval: one class, or too few patients for a bootstrap)" if se == 0 else ""
            raise ValueError(f"{where}: standard error {float(se)!r} must be > 0{reason}; the fit weights each point by "
                             "1 / se^2")
        rows.append((n, auc, se))
    distinct = sorted({r[0] for r in rows})
    if len(distinct) < 3:
        raise ValueError(f"the power law has 3 parameters (a, b, c): its fit needs points at 3 or more patient "
                         f"counts, got {len(distinct)} ({', '.join(f'{n:g}' for n in distinct) or 'none'})")
    n, auc, se = (np.array(col, dtype=float) for col in zip(*rows))
    return n, auc, se


def _whitener(se: np.ndarray, cov: Any) -> np.ndarray:
    """W with W^T W = Sigma^-1 (Sigma: diag(se^2), or ``cov``), so least squares on W @ residuals is the
    weighted (generalised) fit; and its inverse L (Sigma = L L^T) draws the bootstrap's noise."""
    if cov is None:
        return np.diag(1.0 / se)
    cov = np.asarray(cov, dtype=float)
    k = len(se)
    if cov.shape != (k, k):
        raise ValueError(f"cov must be the {k} x {k} covariance of the {k} points, got shape {cov.shape}")
    if not (np.all(np.isfinite(cov)) and np.allclose(cov, cov.T, rtol=1e-8, atol=1e-12)):
        raise ValueError("cov must be a finite, symmetric covariance matrix of the points")
    try:
        low = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        raise ValueError("cov is not positive definite: two points are perfectly correlated or one has no "
                         "variance; estimate it from more bootstrap resamples, or give se per point") from None
    return np.linalg.inv(low)


# --------------------------------------------------------------------------- the fit

def _ab(wy: np.ndarray, w1: np.ndarray, wx: np.ndarray,
        exact: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bounded weighted least squares of y ~ a - b x (a <= 1, b >= 0) for whitened ``wy`` (..., k),
    ``w1`` (k,) and ``wx`` (..., k), broadcast: (a, b, rss) of shape (...). ``exact=False`` computes the
    residual sums of squares from inner products: fast, good to about 1e-12 of y's squared norm."""
    s11 = w1 @ w1
    s1x = wx @ w1
    sxx = np.einsum("...k,...k->...", wx, wx)
    sy1 = wy @ w1
    syx = np.einsum("...k,...k->...", wy, wx)
    syy = np.einsum("...k,...k->...", wy, wy)

    def rss(a, b):
        if not exact:
            return syy + a * a * s11 + b * b * sxx - 2 * a * sy1 + 2 * b * syx - 2 * a * b * s1x
        # from the residuals: the sums cancel near an exact fit, and the golden-section search needs the digits
        residual = wy - np.expand_dims(a, -1) * w1 + np.expand_dims(b, -1) * wx
        return np.einsum("...k,...k->...", residual, residual)

    det = s11 * sxx - s1x * s1x
    with np.errstate(divide="ignore", invalid="ignore"):
        a_free = (sxx * sy1 - s1x * syx) / det
        b_free = -(s11 * syx - s1x * sy1) / det
        b_edge = np.maximum(-(syx - s1x) / sxx, 0.0)  # on a = 1
    a_flat = np.minimum(sy1 / s11, 1.0)  # on b = 0
    shape = np.broadcast_shapes(np.shape(sy1), np.shape(syx), np.shape(sxx))
    a, b = np.broadcast_to(a_flat, shape).copy(), np.zeros(shape)
    best = rss(a, b)
    edge = rss(np.ones_like(b_edge), b_edge)
    better = np.isfinite(edge) & (edge < best)
    a, b, best = np.where(better, 1.0, a), np.where(better, b_edge, b), np.where(better, edge, best)
    free = np.isfinite(a_free) & np.isfinite(b_free) & (a_free <= 1.0) & (b_free >= 0.0) & (det > 1e-12 * s11 * sxx)
    free_rss = rss(a_free, b_free)
    better = free & (free_rss < best)
    return np.where(better, a_free, a), np.where(better, b_free, b), np.where(better, free_rss, best)


def _fit_many(n: np.ndarray, wys: np.ndarray, w: np.ndarray, steps: int = _GOLDEN_STEPS) -> dict[str, np.ndarray]:
    """Fit every row of whitened responses ``wys`` (R, k): a, c, b_ref (b in units of (n / n_min)^-c), rss;
    ``steps`` of golden-section search after the grid."""
    ref = n.min()
    w1 = w @ np.ones(len(n))
    log_lo, log_hi = np.log(C_RANGE[0]), np.log(C_RANGE[1])
    grid = np.linspace(log_lo, log_hi, _GRID)
    wx_grid = ((n / ref)[None, :] ** -np.exp(grid)[:, None]) @ w.T  # (G, k)
    _, _, rss = _ab(wys[:, None, :], w1, wx_grid[None, :, :], exact=False)  # (R, G): only to bracket c
    i = np.argmin(rss, axis=1)
    lo, hi = grid[np.maximum(i - 1, 0)], grid[np.minimum(i + 1, _GRID - 1)]

    def profile(log_c: np.ndarray) -> np.ndarray:
        wx = ((n / ref)[None, :] ** -np.exp(log_c)[:, None]) @ w.T
        return _ab(wys, w1, wx)

    ratio = (math.sqrt(5) - 1) / 2
    x1, x2 = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    f1, f2 = profile(x1)[2], profile(x2)[2]
    for _ in range(steps):
        left = f1 <= f2  # the minimum lies in [lo, x2]: x1 becomes the new upper inner point
        lo, hi = np.where(left, lo, x1), np.where(left, x2, hi)
        x_new = np.where(left, hi - ratio * (hi - lo), lo + ratio * (hi - lo))
        f_new = profile(x_new)[2]
        x1, x2 = np.where(left, x_new, x2), np.where(left, x1, x_new)
        f1, f2 = np.where(left, f_new, f2), np.where(left, f1, f_new)
    log_c = np.where(f1 <= f2, x1, x2)
    grid_best = grid[i]
    a, b_ref, rss_best = profile(log_c)
    a_g, b_g, rss_g = profile(grid_best)
    keep_grid = rss_g < rss_best  # a flat profile (b = 0) can wander; keep whichever is lower
    return {"a": np.where(keep_grid, a_g, a), "b_ref": np.where(keep_grid, b_g, b_ref),
            "c": np.exp(np.where(keep_grid, grid_best, log_c)), "rss": np.where(keep_grid, rss_g, rss_best),
            "ref": ref}


def _curve(a: np.ndarray, b_ref: np.ndarray, c: np.ndarray, ref: float, at: np.ndarray) -> np.ndarray:
    """AUC at patient counts ``at`` (m,) for parameter arrays of shape (R,): (R, m)."""
    return a[:, None] - b_ref[:, None] * (at[None, :] / ref) ** -c[:, None]


def _patients_for(a: np.ndarray, b_ref: np.ndarray, c: np.ndarray, ref: float, target: float) -> np.ndarray:
    """n where the curve reaches ``target``: 0 where it is there at every n, inf where never."""
    with np.errstate(divide="ignore", invalid="ignore"):
        n = ref * (b_ref / (a - target)) ** (1.0 / c)
    n = np.where(a <= target, np.inf, n)
    return np.where((a > target) & (b_ref <= 0), 0.0, n)


def fit_curve(points: Sequence[Any], cov: Any = None, ci_level: float = 0.95) -> dict[str, Any]:
    """The weighted least-squares fit of :data:`MODEL` to ``points`` (see the module docstring for their
    form; ``ci_level`` is the level of their low/high intervals), without intervals: ``a``, ``b``, ``c``
    (b in the units of n: AUC = a - b * n^-c), ``chi2`` (weighted residual sum of squares), ``dof`` (points - 3),
    ``p_fit`` (chi-square goodness of fit; NaN with no residual degrees of freedom), ``n_points``, ``n_min``,
    ``n_max`` and the normalised ``points``. ``ValueError`` for a point without an AUC or an uncertainty,
    or fewer than 3 patient counts."""
    n, auc, se = _points(points, ci_level)
    w = _whitener(se, cov)
    fit = _fit_many(n, (w @ auc)[None, :], w, _GOLDEN_STEPS_POINT)
    a, b_ref, c, rss = (float(fit[k][0]) for k in ("a", "b_ref", "c", "rss"))
    rss = max(rss, 0.0)  # an exact fit can come out as -1e-12
    dof = len(n) - 3
    return {"model": MODEL, "a": a, "b": float(b_ref * fit["ref"] ** c), "c": c, "chi2": rss, "dof": dof,
            "p_fit": float(chi2_dist.sf(rss, dof)) if dof > 0 else math.nan,
            "n_points": int(len(n)), "n_min": float(n.min()), "n_max": float(n.max()),
            "weights": "covariance" if cov is not None else "1 / se^2",
            "points": [{"n_patients": float(x), "auc": float(y), "se": float(s)} for x, y, s in zip(n, auc, se)]}


def predict(fit: Mapping[str, Any], n: Any) -> np.ndarray | float:
    """AUC of a fit (:func:`fit_curve`'s dict, or any mapping with a, b, c) at ``n`` patients."""
    n_arr = np.asarray(n, dtype=float)
    if np.any(~np.isfinite(n_arr) | (n_arr <= 0)):
        raise ValueError(f"patient counts must be positive numbers, got {n!r}")
    value = fit["a"] - fit["b"] * n_arr ** -fit["c"]
    return float(value) if np.ndim(value) == 0 else value


def patients_for(fit: Mapping[str, Any], target: float) -> float:
    """The number of patients (a real number; round it up) at which the fitted curve reaches AUC
    ``target``: 0.0 when it is there at every n (b = 0, a >= target), ``math.inf`` when never (a <= target)."""
    target = _number(target, "target AUC")
    if not 0 < target < 1:
        raise ValueError(f"target AUC {target!r} must be within (0, 1)")
    a, b, c = (np.array([float(fit[k])]) for k in ("a", "b", "c"))
    return float(_patients_for(a, b, c, 1.0, target)[0])


# --------------------------------------------------------------------------- extrapolation with intervals

def _quantiles(values: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval; 'inverted_cdf' so that infinite values (never reached) are ordered, not averaged."""
    tail = (1 - level) / 2
    low, high = np.quantile(values, [tail, 1 - tail], method="inverted_cdf")
    return float(low), float(high)


def _needed(value: float, horizon_n: float) -> int | None:
    """Patients needed, rounded up; None beyond the horizon (or never)."""
    return None if not value <= horizon_n else int(math.ceil(round(value, 6)))  # 1600.0000003 is 1600


def extrapolate(points: Sequence[Any], multiples: Sequence[float] = (2, 5, 10), at: Sequence[float] = (),
                target: float | None = None, cov: Any = None, level: float = 0.95, ci_level: float = 0.95,
                horizon: float = 10, n_boot: int = 2000, seed: int | Sequence[int] = 0,
                band_points: int = 60) -> dict[str, Any]:
    """Fit :data:`MODEL` to ``points`` and extrapolate it with parametric-bootstrap ``level`` intervals.

    Returns :func:`fit_curve`'s dict plus:
      ``params_ci``: {a, b, c: {low, high}} (c is not identified where b is 0);
      ``extrapolation``: one {n_patients, multiple, auc, low, high} per ``multiples`` of the largest n and
        per absolute count in ``at``;
      ``gain``: {n_from, n_to, point, low, high}, the AUC gained from the largest n to ``horizon`` times it;
      ``flat``: True when the gain's interval reaches 0 (below :data:`FLAT_TOLERANCE`);
      ``target``: None, or {auc, n (patients needed, rounded up; None beyond ``horizon`` x the largest n),
        n_exact, low, high (None beyond the horizon), status: "reached" (within the measured range),
        "extrapolated" (within the horizon) or "not reached" (beyond it or never)};
      ``band``: {n_patients, auc, low, high} lists, the fit and its pointwise interval from the smallest n
        to ``horizon`` times the largest, for the figure;
      ``level``, ``horizon``, ``n_boot``, ``seed``, ``interval`` (how the intervals were made) and ``verdict``
        (:func:`verdict`).
    """
    horizon, target = _checked_options(n_boot, level, horizon, target)
    fit = fit_curve(points, cov, ci_level)
    _check_counts(multiples, at)
    refits = _bootstrap(fit, cov, n_boot, seed)
    n_max = fit["n_max"]
    gain = _gain(refits, n_max, horizon, level)
    result = {**fit, "params_ci": _params_ci(refits, level),
              "extrapolation": _extrapolation(refits, multiples, at, n_max, level), "gain": gain,
              "flat": bool(gain["low"] < FLAT_TOLERANCE),
              "target": None if target is None else _target_patients(refits, target, n_max, horizon, level),
              "band": _band(refits, fit["n_min"], horizon * n_max, band_points, level),
              "level": level, "horizon": horizon, "n_boot": int(n_boot), "seed": seed,
              "interval": f"parametric bootstrap ({n_boot} refits of points redrawn from the fit with their "
                          f"{'covariance' if cov is not None else 'standard errors'}), percentile"}
    result["verdict"] = verdict(result)
    return result


def _checked_options(n_boot: Any, level: float, horizon: Any, target: Any) -> tuple[float, float | None]:
    """:func:`extrapolate`'s numbers that do not depend on the points, checked: ``horizon`` and ``target`` as
    floats. ``ValueError`` naming the argument and what it accepts."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, numbers.Integral) or n_boot < 100:
        raise ValueError(f"n_boot must be a whole number >= 100 (2000 for reported intervals), got {n_boot!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1) (0.95 for 95 % intervals), got {level!r}")
    horizon = _number(horizon, "horizon")
    if not horizon > 1:
        raise ValueError(f"horizon {horizon!r} must be > 1 (10: up to ten times the largest n)")
    if target is not None:
        target = _number(target, "target AUC")
        if not 0 < target < 1:
            raise ValueError(f"target AUC {target!r} must be within (0, 1)")
    return horizon, target


def _check_counts(multiples: Sequence[float], at: Sequence[float]) -> None:
    """The extrapolation's multiples of the largest n and its absolute patient counts must be positive numbers."""
    for m in multiples:
        if not _number(m, "multiple") > 0:
            raise ValueError(f"extrapolation multiple {m!r} must be > 0")
    for x in at:
        if not _number(x, "extrapolation patient count") > 0:
            raise ValueError(f"extrapolation patient count {x!r} must be > 0")


@dataclass(frozen=True)
class _Refits:
    """The point fit and its bootstrap refits, as arrays in the internal units (b_ref: b at n / ref, ref
    the smallest n): ``point`` holds one row, ``boot`` one per refit."""
    point: dict[str, np.ndarray]
    boot: dict[str, np.ndarray]
    ref: float

    def curves(self, at_n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """AUC at the patient counts ``at_n`` (m,): the point fit's (m,) and the refits' (R, m)."""
        p, b = self.point, self.boot
        return (_curve(p["a"], p["b_ref"], p["c"], self.ref, at_n)[0],
                _curve(b["a"], b["b_ref"], b["c"], self.ref, at_n))


def _bootstrap(fit: Mapping[str, Any], cov: Any, n_boot: int, seed: int | Sequence[int]) -> _Refits:
    """Redraw the points ``n_boot`` times from the fitted curve with their own variances (or ``cov``) and
    refit each draw under the same bounds."""
    n, se = (np.array([p[k] for p in fit["points"]]) for k in ("n_patients", "se"))
    w = _whitener(se, cov)
    ref = fit["n_min"]
    point = {"a": np.array([fit["a"]]), "b_ref": np.array([fit["b"] * ref ** -fit["c"]]), "c": np.array([fit["c"]])}
    fitted = _curve(point["a"], point["b_ref"], point["c"], ref, n)[0]
    rng = np.random.default_rng(seed)
    sigma_root = np.linalg.inv(w)  # L with L L^T = Sigma
    draws = fitted[None, :] + rng.standard_normal((n_boot, len(n))) @ sigma_root.T
    return _Refits(point, _fit_many(n, draws @ w.T, w), ref)


def _interval(refits: _Refits, at_n: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fit's AUC at ``at_n`` and its pointwise percentile interval."""
    est, reps = refits.curves(at_n)
    tail = (1 - level) / 2
    low, high = np.quantile(reps, [tail, 1 - tail], axis=0)
    return est, low, high


def _params_ci(refits: _Refits, level: float) -> dict[str, dict[str, float]]:
    """Percentile intervals of a, b (in the units of n) and c over the refits."""
    boot = refits.boot
    b_orig = boot["b_ref"] * refits.ref ** boot["c"]
    return {k: dict(zip(("low", "high"), _quantiles(v, level)))
            for k, v in (("a", boot["a"]), ("b", b_orig), ("c", boot["c"]))}


def _extrapolation(refits: _Refits, multiples: Sequence[float], at: Sequence[float], n_max: float, level: float
                   ) -> list[dict[str, float]]:
    """The AUC and its interval at each multiple of the largest n, then at each absolute count in ``at``."""
    wanted = [(float(m) * n_max, float(m)) for m in multiples] + [(float(x), float(x) / n_max) for x in at]
    if not wanted:
        return []
    est, low, high = _interval(refits, np.array([x for x, _ in wanted]), level)
    return [{"n_patients": x, "multiple": m, "auc": float(e), "low": float(lo), "high": float(hi)}
            for (x, m), e, lo, hi in zip(wanted, est, low, high)]


def _gain(refits: _Refits, n_max: float, horizon: float, level: float) -> dict[str, float]:
    """The AUC gained from the largest n to ``horizon`` times it, with the percentile interval of the
    refits' gains."""
    est, reps = refits.curves(np.array([n_max, horizon * n_max]))
    g_low, g_high = _quantiles(reps[:, 1] - reps[:, 0], level)
    return {"n_from": n_max, "n_to": horizon * n_max, "point": float(est[1] - est[0]), "low": g_low, "high": g_high}


def _target_patients(refits: _Refits, target: float, n_max: float, horizon: float, level: float
                     ) -> dict[str, Any]:
    """The patients the fit needs to reach AUC ``target``, its interval, and whether that lies within the
    measured range, within the horizon, or beyond it."""
    p, b = refits.point, refits.boot
    exact = float(_patients_for(p["a"], p["b_ref"], p["c"], refits.ref, target)[0])
    low, high = _quantiles(_patients_for(b["a"], b["b_ref"], b["c"], refits.ref, target), level)
    status = "reached" if exact <= n_max else "extrapolated" if exact <= horizon * n_max else "not reached"
    return {"auc": target, "n": _needed(exact, horizon * n_max), "n_exact": exact,
            "low": _needed(low, horizon * n_max), "high": _needed(high, horizon * n_max), "status": status}


def _band(refits: _Refits, n_from: float, n_to: float, band_points: int, level: float) -> dict[str, list[float]]:
    """The fit and its pointwise interval at ``band_points`` log-spaced counts from ``n_from`` to ``n_to``,
    for the figure."""
    grid = np.geomspace(n_from, n_to, band_points)
    est, low, high = _interval(refits, grid, level)
    return {"n_patients": grid.tolist(), "auc": est.tolist(), "low": low.tolist(), "high": high.tolist()}


def _pct(level: float) -> str:
    return f"{100 * level:g} %"


def verdict(result: Mapping[str, Any]) -> str:
    """The sentence a user reads about an :func:`extrapolate` result: whether the data show that more
    patients would help, by how much at ``horizon`` times the largest n, and the patients a target needs."""
    g, n_max, h, level = result["gain"], result["n_max"], result["horizon"], result["level"]
    span = f"from {n_max:g} to {g['n_to']:g} patients ({h:g}x)"
    interval = f"{_pct(level)} interval {g['low']:.3f} to {g['high']:.3f}"
    if result["flat"] and g["point"] < _SMALL_GAIN:
        text = (f"The data do not show that more patients would help: the AUC gained {span} is estimated at "
                f"{g['point']:.3f} ({interval}, which reaches 0)")
        text += f"; a gain as large as {g['high']:.3f} is not ruled out." if g["high"] >= FLAT_TOLERANCE else "."
    elif result["flat"]:
        text = (f"The data do not show that more patients would help, nor that they would not: {span} the fit gains "
                f"{g['point']:.3f} AUC, but its {interval} reaches 0")
        text += (f" (with {result['n_points']} points for 3 parameters the curve's shape is barely pinned down: more "
                 "subset sizes narrow it)." if result["dof"] <= 1 else ".")
    else:
        text = (f"The curve is still rising: {span} the fit gains {g['point']:.3f} AUC ({interval}), towards a "
                f"ceiling of {result['a']:.3f}.")
    t = result.get("target")
    if t:
        if t["low"] is None:  # then high is None too: almost every refit stays below the target
            bounds = f"{_pct(level)} interval: beyond {h:g}x"
        elif t["high"] is None:
            bounds = f"{_pct(level)} interval {t['low']} patients to beyond {h:g}x"
        else:
            bounds = f"{_pct(level)} interval {t['low']} to {t['high']} patients"
        if t["status"] == "reached" and t["n_exact"] <= result["n_min"]:
            text += f" The fit is at or above AUC {t['auc']:.3f} from the smallest subset measured on."
        elif t["status"] == "reached":
            text += (f" The fit reaches AUC {t['auc']:.3f} within the patients measured (at {t['n']} patients; "
                     f"{bounds}).")
        elif t["status"] == "extrapolated":
            text += f" The fit reaches AUC {t['auc']:.3f} at about {t['n']} patients ({bounds})."
        else:
            why = (f"the fitted ceiling is {result['a']:.3f}" if result["a"] <= t["auc"]
                   else f"that would take {t['n_exact']:.3g} patients")
            text += (f" AUC {t['auc']:.3f} is not reached within {h:g}x the patients ({h * n_max:g}): {why} "
                     f"({bounds}).")
    if result["dof"] > 0 and result["p_fit"] < 1 - level:
        text += (f" The points stray from a power law more than their intervals allow (chi-square {result['chi2']:.1f} "
                 f"on {result['dof']} degrees of freedom, p {result['p_fit']:.3f}): read the extrapolation with care.")
    return text
