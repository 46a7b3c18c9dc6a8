"""Decision-curve analysis: is acting on the model's probability better than treating everyone or no one?

    from hipx.stats.decision import decision_curve
    curve = decision_curve(y_true, y_prob)          # thresholds 5 % to 50 %
    curve["net_benefit"], curve["treat_all"]         # treat-none is 0 at every threshold

A threshold probability p_t says how a clinician weighs a missed osteoporosis against an unneeded
work-up (DXA, treatment): at p_t = 20 % one true positive is worth four false positives. Acting on
every image whose probability is at least p_t has the net benefit

    NB(p_t) = TP / n - FP / n * p_t / (1 - p_t)

true positives per image, net of the harm of the false positives (Vickers & Elkin, Med Decis Making
2006;26:565-574; Vickers, Van Calster & Steyerberg, BMJ 2016;352:i6). Treat-all has
NB = prevalence - (1 - prevalence) * p_t / (1 - p_t), treat-none 0. A model is useful at p_t when
its curve lies above both. The numbers equal those of the ``dcurves`` package (tests). Net benefit
is per image, like every other test metric, and uses the prevalence of the data scored: on a
case-control sample it does not transfer to a clinic with another prevalence.

Its 95 % interval (:func:`net_benefit_ci`, at the report table's thresholds and the run's) is a
percentile bootstrap over patients: every image of a resampled patient comes along
(:func:`confidence.bootstrap_weighted`, the resamples of the other metrics' intervals for the same
seed). Percentile, as for the other metrics at a fixed threshold: net benefit counts treated images,
so its bootstrap distribution is discrete and BCa's bias correction unstable there.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from hipx.stats import confidence
from hipx.stats.metrics import check_inputs

# Threshold probabilities of the curve: osteoporosis work-up is cheap (DXA), so thresholds above one
# half (a false positive worse than a missed case) are not clinically sensible.
LOW, HIGH, STEP = 0.05, 0.50, 0.01
# Rows of the report's net-benefit table.
TABLE_THRESHOLDS = (0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.40, 0.50)


def thresholds(run_threshold: float | None = None) -> np.ndarray:
    """The grid LOW..HIGH in steps of STEP, stretched (up to 0.95) to hold ``run_threshold``."""
    high = HIGH
    if run_threshold is not None and math.isfinite(run_threshold) and run_threshold > HIGH:
        high = min(0.95, math.ceil(run_threshold / STEP) * STEP)
    return np.round(np.arange(LOW, high + STEP / 2, STEP), 10)


def _check_thresholds(t: Any) -> np.ndarray:
    t = np.atleast_1d(np.asarray(t, dtype=np.float64))
    bad = ~((t > 0) & (t < 1))
    if bad.any():
        raise ValueError(f"threshold probabilities must lie in (0, 1), got {t[bad][0]!r}")
    return t


def net_benefit(y_true: Any, y_prob: Any, threshold_probs: Any) -> np.ndarray:
    """Net benefit of treating the images with probability >= each threshold probability."""
    y, p = check_inputs(y_true, y_prob)
    t = _check_thresholds(threshold_probs)
    treated = p[None, :] >= t[:, None]
    tp = (treated & (y[None, :] == 1)).sum(axis=1)
    fp = (treated & (y[None, :] == 0)).sum(axis=1)
    return (tp - fp * t / (1 - t)) / y.size


def weighted_net_benefit(y: np.ndarray, p: np.ndarray, threshold: float, weights: np.ndarray) -> np.ndarray:
    """Net benefit at ``threshold`` for each row of frequency weights ``(B, n)`` (an image drawn k times
    counts k times): each treated image gains 1 if it has osteoporosis and loses the odds of the
    threshold if not, averaged. With every weight 1 it is :func:`net_benefit`."""
    gain = np.where(p >= threshold, np.where(y == 1, 1.0, -threshold / (1 - threshold)), 0.0)
    return weights @ gain / weights.sum(axis=1)


def net_benefit_ci(y_true: Any, y_prob: Any, threshold_probs: Any = TABLE_THRESHOLDS, groups: Any = None,
                   n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> list[dict[str, Any]]:
    """Net benefit at each threshold probability with its percentile bootstrap interval, resampling
    patients where ``groups`` (one patient id per image) is given, else images; every threshold on the
    same resamples. Returns one ``dict(threshold, point, low, high, n_boot_valid, interval)`` per threshold."""
    y, p = check_inputs(y_true, y_prob)
    t = _check_thresholds(threshold_probs)
    return [{"threshold": float(ti),
             **confidence.bootstrap_weighted(functools.partial(weighted_net_benefit, y, p, float(ti)), y.size, groups,
                                             n_boot, seed, alpha, interval="percentile")}
            for ti in t]


def treat_all(y_true: Any, threshold_probs: Any) -> np.ndarray:
    """Net benefit of treating every image."""
    y = np.asarray(y_true)
    prevalence = float(np.mean(y == 1))
    t = _check_thresholds(threshold_probs)
    return prevalence - (1 - prevalence) * t / (1 - t)


def decision_curve(y_true: Any, y_prob: Any, threshold_probs: Any = None, run_threshold: float | None = None,
                   groups: Any = None, n_boot: int = 0, seed: int = 0, alpha: float = 0.05) -> dict[str, Any]:
    """Net benefit of the model, treat-all and treat-none over ``threshold_probs`` (default
    :func:`thresholds` for ``run_threshold``), and the model's net benefit at ``run_threshold``.

    Returns plain lists: ``dict(thresholds, net_benefit, treat_all, treat_none, prevalence, n,
    run_threshold, at_run_threshold)`` (the last two None without a run threshold). With ``n_boot``
    resamples (of patients, ``groups``), also ``net_benefit_ci``: :func:`net_benefit_ci` at
    :data:`TABLE_THRESHOLDS`, and ``at_run_threshold["net_benefit_ci"]``.
    """
    y, p = check_inputs(y_true, y_prob)
    t = thresholds(run_threshold) if threshold_probs is None else _check_thresholds(threshold_probs)
    with_ci = functools.partial(net_benefit_ci, y, p, groups=groups, n_boot=n_boot, seed=seed, alpha=alpha)
    at_run = None
    if run_threshold is not None and 0 < run_threshold < 1:
        at_run = {"net_benefit": float(net_benefit(y, p, [run_threshold])[0]),
                  "treat_all": float(treat_all(y, [run_threshold])[0])}
        if n_boot:
            at_run["net_benefit_ci"] = with_ci([run_threshold])[0]
    curve = {"thresholds": t.tolist(), "net_benefit": net_benefit(y, p, t).tolist(),
             "treat_all": treat_all(y, t).tolist(), "treat_none": [0.0] * t.size,
             "prevalence": float(y.mean()), "n": int(y.size),
             "run_threshold": None if run_threshold is None else float(run_threshold), "at_run_threshold": at_run}
    if n_boot:
        curve["net_benefit_ci"] = with_ci(TABLE_THRESHOLDS)
    return curve


def useful_range(curve: dict) -> tuple[float, float] | None:
    """Lowest and highest threshold probability of the grid where the model beats treat-all and
    treat-none, or None where it beats them nowhere."""
    nb, ta = np.asarray(curve["net_benefit"]), np.asarray(curve["treat_all"])
    better = (nb > ta) & (nb > 0)
    if not better.any():
        return None
    t = np.asarray(curve["thresholds"])[better]
    return float(t.min()), float(t.max())
