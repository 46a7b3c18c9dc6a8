"""The test metrics, under the original work's name: pure functions of ``(y_true, y_prob, threshold)``
returning plain floats. The code lives in ``hipx/stats/metrics.py``; this file re-exports it.
"""
from hipx.stats.metrics import *  # noqa: F401,F403
from hipx.stats.metrics import compute_metrics  # noqa: F401
