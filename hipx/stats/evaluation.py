"""The numbers a model's probabilities on a labelled set get, wherever that set comes from: every
test metric with patient-bootstrap CIs, the clustered DeLong AUC CI, calibration, confusion counts and
the decision curve. The run report (``report.py``) and external validation (``external.py``) both
describe a model with :func:`evaluate`, so their figures mean the same.
"""
from __future__ import annotations

import numpy as np

from hipx.stats import confidence
from hipx.stats import decision
from hipx.stats import metrics

ALPHA = 0.05  # two-sided: 95 % intervals everywhere


def evaluate(y: np.ndarray, p: np.ndarray, threshold: float, groups: np.ndarray, n_boot: int, seed: int,
             interval: str = "bca") -> dict:
    """Every test metric and the calibration slope and intercept with patient-bootstrap 95% CIs (all on
    the same resamples), the DeLong AUC CI clustered by patient, calibration, confusion counts and the
    decision curve, its net benefit at the table's thresholds with patient-bootstrap CIs."""
    point = metrics.compute_metrics(y, p, threshold)
    return {"threshold": float(threshold),
            "metrics": confidence.bootstrap_metrics(y, p, threshold, groups=groups, n_boot=n_boot, seed=seed,
                                                    alpha=ALPHA, interval=interval),
            "delong_auc": confidence.delong_auc(y, p, alpha=ALPHA, groups=groups),
            "calibration": confidence.calibration(y, p),
            "confusion": {k: int(point[k]) for k in ("tp", "fp", "tn", "fn")},
            "decision_curve": decision.decision_curve(y, p, run_threshold=float(threshold), groups=groups,
                                                      n_boot=n_boot, seed=seed, alpha=ALPHA)}
