"""learning_curve.py: the inverse power law AUC(n) = a - b n^-c, fitted, extrapolated with intervals."""
import json
import math

import numpy as np
import pytest

from hipx.stats import learning_curve as lc

A, B, C = 0.85, 1.2, 0.5  # a curve from 0.61 at 25 patients to 0.79 at 400, ceiling 0.85
NS = np.array([25.0, 50, 100, 200, 400])


def truth(n):
    return A - B * np.asarray(n, dtype=float) ** -C


def points(auc, se=0.01, ns=NS):
    se = np.broadcast_to(se, np.shape(ns))
    return [{"n_patients": float(n), "auc": float(y), "se": float(s)} for n, y, s in zip(ns, auc, se)]


def test_exact_points_give_back_the_curve():
    fit = lc.fit_curve(points(truth(NS)))
    assert fit["a"] == pytest.approx(A, abs=1e-5)
    assert fit["b"] == pytest.approx(B, rel=1e-4)
    assert fit["c"] == pytest.approx(C, abs=1e-5)
    assert fit["chi2"] == pytest.approx(0, abs=1e-8) and fit["dof"] == 2
    assert lc.predict(fit, 4000) == pytest.approx(truth(4000), abs=1e-5)
    assert (fit["n_min"], fit["n_max"], fit["n_points"]) == (25, 400, 5)


def test_the_fit_recovers_the_parameters_of_a_noisy_power_law():
    rng = np.random.default_rng(0)
    ns = np.geomspace(25, 800, 6)
    fits = [lc.fit_curve(points(truth(ns) + rng.normal(0, 0.005, len(ns)), 0.005, ns)) for _ in range(40)]
    a, c = np.median([f["a"] for f in fits]), np.median([f["c"] for f in fits])
    assert a == pytest.approx(A, abs=0.02)
    assert c == pytest.approx(C, abs=0.1)
    assert np.median([lc.predict(f, 8000) for f in fits]) == pytest.approx(truth(8000), abs=0.01)


def test_weights_follow_the_variances_and_a_diagonal_covariance_is_the_same_fit():
    y = truth(NS) + np.array([0.0, 0.0, 0.0, 0.0, -0.05])  # the last point off the curve
    se = np.array([0.01, 0.01, 0.01, 0.01, 0.2])  # ... but too uncertain to pull it
    fit = lc.fit_curve(points(y, se))
    assert fit["a"] == pytest.approx(A, abs=0.01)
    assert lc.fit_curve(points(y, 0.01))["a"] < A - 0.02  # with equal weights it pulls
    same = lc.fit_curve(points(y, se), cov=np.diag(se ** 2))
    assert (same["a"], same["c"]) == pytest.approx((fit["a"], fit["c"]), abs=1e-9)
    assert same["weights"] == "covariance"


def test_a_point_with_a_ci_is_weighted_by_its_half_width():
    y = truth(NS)
    with_se = lc.fit_curve(points(y + [0.01, -0.01, 0.0, 0.01, -0.005], 0.02))
    with_ci = lc.fit_curve([{"n_patients": p["n_patients"], "auc": p["auc"], "low": p["auc"] - 1.959964 * 0.02,
                             "high": p["auc"] + 1.959964 * 0.02} for p in points(y + [0.01, -0.01, 0.0, 0.01, -0.005])])
    assert with_ci["points"][0]["se"] == pytest.approx(0.02, rel=1e-6)
    assert (with_ci["a"], with_ci["c"]) == pytest.approx((with_se["a"], with_se["c"]), abs=1e-6)


def test_the_extrapolation_interval_covers_the_truth_at_about_its_nominal_rate():
    # 200 learning curves drawn from the power law with se 0.01 per point; the 95 % parametric-bootstrap
    # interval of the AUC at 10x the largest n should hold the true AUC there in about 95 % of them
    rng = np.random.default_rng(2026)
    at_10x = truth(10 * NS.max())
    hits = gains = 0
    for draw in range(200):
        result = lc.extrapolate(points(truth(NS) + rng.normal(0, 0.01, len(NS))), multiples=(10,), n_boot=200,
                                seed=draw, band_points=2)
        e = result["extrapolation"][0]
        hits += e["low"] <= at_10x <= e["high"]
        gains += result["gain"]["low"] <= at_10x - truth(NS.max()) <= result["gain"]["high"]
    assert 0.85 <= hits / 200 <= 0.99
    assert 0.85 <= gains / 200 <= 0.995


def test_extrapolate_reports_2x_5x_10x_and_asked_counts_with_intervals():
    result = lc.extrapolate(points(truth(NS) + [0.004, -0.006, 0.003, 0.005, -0.004]), at=(1000,), n_boot=500)
    assert [e["n_patients"] for e in result["extrapolation"]] == [800, 2000, 4000, 1000]
    assert [e["multiple"] for e in result["extrapolation"]] == [2, 5, 10, 2.5]
    for e in result["extrapolation"]:
        assert e["low"] < e["auc"] < e["high"] <= 1.0
        assert e["auc"] == pytest.approx(truth(e["n_patients"]), abs=0.03)
    widths = [e["high"] - e["low"] for e in result["extrapolation"][:3]]
    assert widths == sorted(widths)  # further out, wider
    assert result["params_ci"]["a"]["low"] <= result["a"] <= result["params_ci"]["a"]["high"] <= 1.0
    band = result["band"]
    assert band["n_patients"][0] == 25 and band["n_patients"][-1] == pytest.approx(4000)
    assert all(lo <= y <= hi for lo, y, hi in zip(band["low"], band["auc"], band["high"]))
    json.dumps(result)  # plain numbers: it goes into cv_summary.json as it is
    assert lc.extrapolate(points(truth(NS)), n_boot=500, seed=1) == lc.extrapolate(points(truth(NS)), n_boot=500,
                                                                                     seed=1)


def test_the_patients_a_target_auc_needs():
    fit = lc.fit_curve(points(truth(NS)))
    assert lc.patients_for(fit, 0.82) == pytest.approx((B / (A - 0.82)) ** (1 / C), rel=1e-3)  # 1600
    assert lc.patients_for(fit, 0.85) == math.inf
    assert lc.patients_for({"a": 0.8, "b": 0.0, "c": 0.5}, 0.7) == 0.0  # flat above the target: any n
    result = lc.extrapolate(points(truth(NS)), target=0.82, n_boot=500)
    t = result["target"]
    assert (t["status"], t["n"]) == ("extrapolated", 1600)
    assert t["low"] < 1600 and (t["high"] is None or t["high"] > 1600)
    assert "reaches AUC 0.820 at about 1600 patients" in result["verdict"]
    assert lc.extrapolate(points(truth(NS)), target=0.70, n_boot=500)["target"]["status"] == "reached"  # n = 64
    far = lc.extrapolate(points(truth(NS)), target=0.845, n_boot=500)  # (1.2 / 0.005)^2 = 57600 > 4000
    assert (far["target"]["status"], far["target"]["n"]) == ("not reached", None)
    assert "AUC 0.845 is not reached within 10x the patients (4000)" in far["verdict"]


def test_a_flat_curve_says_the_data_do_not_show_that_more_patients_would_help():
    flat = lc.extrapolate(points(0.70 + np.array([0.01, -0.012, 0.008, -0.01, 0.004]), 0.03), target=0.8, n_boot=500)
    assert flat["flat"] and flat["gain"]["low"] < lc.FLAT_TOLERANCE
    assert flat["verdict"].startswith("The data do not show that more patients would help")
    assert "not reached within 10x" in flat["verdict"]
    rising = lc.extrapolate(points(truth(NS)), n_boot=500)
    assert not rising["flat"] and rising["gain"]["low"] > 0.01
    assert rising["verdict"].startswith("The curve is still rising: from 400 to 4000 patients (10x) the fit "
                                        "gains 0.041")


def test_three_rising_points_are_not_called_flat_without_saying_that_they_may_rise():
    # 50, 100, 200 patients from the rising curve: three points pin a, b and c exactly, so the refits can
    # saturate right after the data; the interval then reaches 0 while the fit itself still rises
    ns = [50, 100, 200]
    result = lc.extrapolate(points(truth(ns), 0.02, ns), n_boot=500)
    assert result["flat"] and result["gain"]["point"] == pytest.approx(truth(2000) - truth(200), abs=1e-6)
    assert result["verdict"].startswith("The data do not show that more patients would help, nor that they would "
                                        "not: from 200 to 2000 patients (10x) the fit gains 0.058 AUC")
    assert "with 3 points for 3 parameters the curve's shape is barely pinned down" in result["verdict"]


def test_a_target_below_the_whole_curve_is_reached_from_the_start():
    result = lc.extrapolate(points(truth(NS)), target=0.55, n_boot=200)
    assert result["target"]["status"] == "reached" and result["target"]["n"] < 25
    assert "at or above AUC 0.550 from the smallest subset measured on" in result["verdict"]


def test_points_that_stray_from_a_power_law_are_flagged():
    zigzag = lc.extrapolate(points(truth(NS) + [0.0, 0.05, -0.05, 0.05, 0.0], 0.01), n_boot=200)
    assert zigzag["p_fit"] < 0.05 and "stray from a power law" in zigzag["verdict"]


@pytest.mark.parametrize("bad, message", [
    ([{"n_patients": 25, "auc": math.nan, "se": 0.01}], r"point 0 \(n_patients 25\): AUC nan is not within 0..1 "
                                                       r"\(a subset or test part with one class has no AUC\)"),
    ([{"n_patients": 25, "auc": 0.7, "se": 0.0}], r"point 0 \(n_patients 25\): standard error 0.0 must be > 0 "
                                                  r"\(a zero-width interval"),
    ([{"n_patients": 25, "auc": 0.7}], r"point 0 \(n_patients 25\) has neither se nor low and high"),
    ([{"n_patients": 0, "auc": 0.7, "se": 0.01}], r"n_patients must be a positive number"),
    ([{"auc": 0.7, "se": 0.01}], r"point 0 .* needs n_patients, auc and se"),
    ([{"n_patients": 25, "auc": 0.7, "low": 0.8, "high": 0.6}], r"interval 0.8 to 0.6 is not an interval"),
    ([(25, 0.7)], r"must be a mapping or an \(n_patients, auc, se\) triple"),
])
def test_a_point_that_cannot_enter_the_fit_is_named(bad, message):
    with pytest.raises(ValueError, match=message):
        lc.fit_curve(bad + points(truth(NS[1:]), ns=NS[1:]))


def test_too_few_patient_counts_or_a_bad_covariance_or_option_is_refused():
    with pytest.raises(ValueError, match=r"needs points at 3 or more patient counts, got 2 \(25, 50\)"):
        lc.fit_curve(points(truth([25, 50, 50]), ns=[25, 50, 50]))
    with pytest.raises(ValueError, match=r"cov must be the 5 x 5 covariance"):
        lc.fit_curve(points(truth(NS)), cov=np.eye(4))
    with pytest.raises(ValueError, match=r"cov is not positive definite"):
        lc.fit_curve(points(truth(NS)), cov=np.ones((5, 5)) * 1e-4)
    with pytest.raises(ValueError, match=r"target AUC 1.2 must be within \(0, 1\)"):
        lc.extrapolate(points(truth(NS)), target=1.2)
    with pytest.raises(ValueError, match=r"n_boot must be a whole number >= 100"):
        lc.extrapolate(points(truth(NS)), n_boot=10)
    with pytest.raises(ValueError, match=r"horizon 1.0 must be > 1"):
        lc.extrapolate(points(truth(NS)), horizon=1)


def test_correlated_points_fit_by_generalised_least_squares():
    # the pooled AUCs of every subset are scored on the same patients: a shared error moves them together
    se = 0.02
    cov = np.full((5, 5), 0.8 * se ** 2) + np.eye(5) * 0.2 * se ** 2
    shifted = truth(NS) + 0.03  # every point up by the same amount: a shared test-set error
    gls = lc.fit_curve(points(shifted, se), cov=cov)
    assert gls["c"] == pytest.approx(C, abs=1e-3)  # the shape is untouched, only the level moves
    result = lc.extrapolate(points(shifted, se), cov=cov, n_boot=500)
    assert result["gain"]["low"] > 0.01 and not result["flat"]
