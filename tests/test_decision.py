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


# -- the patient-bootstrap interval of net benefit (issue 32, item 5) ---------------------------------

def _patients(seed, n_patients, prevalence=0.3):
    """Two images per patient sharing the label, probabilities close within a patient."""
    rng = np.random.default_rng(seed)
    y = np.repeat((rng.random(n_patients) < prevalence).astype(int), 2)
    p = np.clip(np.repeat(rng.beta(2, 5, n_patients), 2) + 0.25 * y + rng.normal(0, 0.05, y.size), 0, 1)
    return y, p, np.repeat([f"P{i}" for i in range(n_patients)], 2)


def test_net_benefit_interval_covers_the_point_at_every_table_threshold():
    y, p, groups = _patients(0, 80)
    rows = decision.net_benefit_ci(y, p, decision.TABLE_THRESHOLDS, groups=groups, n_boot=400, seed=1)
    assert [r["threshold"] for r in rows] == list(decision.TABLE_THRESHOLDS)
    np.testing.assert_allclose([r["point"] for r in rows], decision.net_benefit(y, p, decision.TABLE_THRESHOLDS),
                               rtol=0, atol=1e-12)
    for r in rows:
        assert r["low"] <= r["point"] <= r["high"] and r["low"] < r["high"], r
        assert r["n_boot_valid"] == 400 and r["interval"] == "percentile"


def test_net_benefit_interval_shrinks_with_more_patients():
    def widths(n_patients):
        y, p, groups = _patients(2, n_patients)
        return np.array([r["high"] - r["low"] for r in decision.net_benefit_ci(
            y, p, decision.TABLE_THRESHOLDS, groups=groups, n_boot=400, seed=3)])

    few, many = widths(50), widths(800)  # 16 times the patients: about a quarter of the width
    assert (many < 0.6 * few).all(), (few, many)


def test_net_benefit_interval_equals_a_hand_written_patient_bootstrap():
    # patient B has two images, one a true and one a false positive at 0.2; D's two are untreated
    y = np.array([1, 1, 0, 0, 1, 0, 0])
    p = np.array([0.9, 0.7, 0.3, 0.1, 0.4, 0.05, 0.15])
    groups = np.array(["A", "B", "B", "C", "E", "D", "D"])
    n_boot, seed, t = 300, 7, 0.2
    units = np.unique(groups)  # the suite's order of patients
    draws = np.random.default_rng(seed).integers(0, units.size, size=(n_boot, units.size))
    reps = []
    for row in draws:
        rows = np.concatenate([np.flatnonzero(groups == units[k]) for k in row])
        reps.append(decision.net_benefit(y[rows], p[rows], [t])[0])
    low, high = np.quantile(reps, [0.025, 0.975])
    (got,) = decision.net_benefit_ci(y, p, [t], groups=groups, n_boot=n_boot, seed=seed)
    assert got["point"] == pytest.approx(decision.net_benefit(y, p, [t])[0], abs=1e-12)
    assert (got["low"], got["high"]) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))


def test_a_patients_two_images_are_resampled_together():
    """Each patient's image twice, with the patients as groups, resamples exactly as the one-image set
    resamples its images; resampling the images apart would give a narrower, wrong interval."""
    y, p = _random(4, n=120)
    y2, p2, groups = np.repeat(y, 2), np.repeat(p, 2), np.repeat(np.arange(120), 2)
    one = decision.net_benefit_ci(y, p, decision.TABLE_THRESHOLDS, n_boot=300, seed=5)
    together = decision.net_benefit_ci(y2, p2, decision.TABLE_THRESHOLDS, groups=groups, n_boot=300, seed=5)
    apart = decision.net_benefit_ci(y2, p2, decision.TABLE_THRESHOLDS, n_boot=300, seed=5)
    for a, b, c in zip(one, together, apart):
        assert (b["low"], b["high"]) == (pytest.approx(a["low"], abs=1e-12), pytest.approx(a["high"], abs=1e-12))
        assert c["high"] - c["low"] < b["high"] - b["low"]


def test_decision_curve_carries_the_intervals_into_the_table():
    from hipx.reports import render

    y, p, groups = _patients(6, 60)
    plain = decision.decision_curve(y, p, run_threshold=0.3)
    assert "net_benefit_ci" not in plain and "net_benefit_ci" not in plain["at_run_threshold"]
    curve = decision.decision_curve(y, p, run_threshold=0.3, groups=groups, n_boot=200, seed=0)
    assert curve["net_benefit_ci"] == decision.net_benefit_ci(y, p, decision.TABLE_THRESHOLDS, groups=groups,
                                                              n_boot=200, seed=0)
    at_run = curve["at_run_threshold"]["net_benefit_ci"]
    assert at_run["threshold"] == 0.3 and at_run["low"] <= curve["at_run_threshold"]["net_benefit"] <= at_run["high"]
    header, rows = render.decision_rows([("network", curve)], decision.TABLE_THRESHOLDS)
    assert header[1] == "Net benefit (95% CI), network"
    first = curve["net_benefit_ci"][0]
    assert rows[0][:2] == ["5%", f"{first['point']:.3f} ({first['low']:.3f} to {first['high']:.3f})"]
    assert render.decision_rows([("network", plain)], decision.TABLE_THRESHOLDS)[0][1] == "Net benefit, network"
    assert f"{at_run['low']:.3f} to {at_run['high']:.3f}" in render.decision_text("network", curve, 0.3)
