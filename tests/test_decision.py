import warnings

import numpy as np
import pandas as pd
import pytest

from hipx.stats import decision


def _random(seed, n=300, prevalence=0.3):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    p = np.clip(rng.beta(2, 5, n) + 0.25 * y, 0, 1)
    return y, p


def test_hand_computed_net_benefit():
    y = np.array([1, 1, 0, 0, 0])
    p = np.array([0.9, 0.2, 0.6, 0.1, 0.3])
    # at 0.25: treated 0.9 (TP), 0.6 (FP), 0.3 (FP): 1/5 - 2/5 * (1/3)
    assert decision.net_benefit(y, p, [0.25])[0] == pytest.approx(0.2 - 0.4 / 3)
    # at 0.5: treated 0.9 (TP), 0.6 (FP): 1/5 - 1/5
    assert decision.net_benefit(y, p, [0.5])[0] == pytest.approx(0.0)
    assert decision.treat_all(y, [0.25])[0] == pytest.approx(0.4 - 0.6 / 3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_net_benefit_equals_dcurves(seed):
    dcurves = pytest.importorskip("dcurves")
    y, p = _random(seed)
    t = decision.thresholds()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = dcurves.dca(data=pd.DataFrame({"y": y, "model": p}), outcome="y", modelnames=["model"],
                          thresholds=list(t))
    curve = decision.decision_curve(y, p)
    np.testing.assert_allclose(curve["thresholds"], t)
    for name, key in (("model", "net_benefit"), ("all", "treat_all"), ("none", "treat_none")):
        want = ref[ref["model"] == name].sort_values("threshold")["net_benefit"].to_numpy()
        np.testing.assert_allclose(curve[key], want, rtol=0, atol=1e-9)


def test_grid_stretches_to_the_run_threshold_and_reports_it():
    assert decision.thresholds()[0] == pytest.approx(0.05) and decision.thresholds()[-1] == pytest.approx(0.5)
    assert len(decision.thresholds()) == 46
    assert decision.thresholds(0.634)[-1] == pytest.approx(0.64)
    y, p = _random(3)
    curve = decision.decision_curve(y, p, run_threshold=0.3)
    assert curve["at_run_threshold"]["net_benefit"] == pytest.approx(decision.net_benefit(y, p, [0.3])[0])
    perfect = decision.decision_curve(y, y.astype(float))
    np.testing.assert_allclose(perfect["net_benefit"], y.mean())  # no false positive, every case treated
    assert decision.useful_range(perfect) == (pytest.approx(0.05), pytest.approx(0.5))
    assert decision.useful_range(decision.decision_curve(y, 1 - y.astype(float))) is None


def test_thresholds_outside_the_unit_interval_are_refused():
    with pytest.raises(ValueError, match="must lie in"):
        decision.net_benefit([0, 1], [0.2, 0.8], [0.0, 0.5])
