import math
import warnings

import numpy as np
import pytest
from scipy.special import expit, logit
from sklearn.metrics import roc_auc_score

from hipx.stats import confidence
from hipx.stats import metrics
from hipx.stats.metrics import UndefinedMetricWarning


def _scores(n, seed=0, shift=1.0, prevalence=0.4):
    """Synthetic classifier output: labels and probabilities with AUC around 0.75."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    p = expit(rng.normal(size=n) + shift * (2 * y - 1) - 0.4)
    return y, p


def _width(ci):
    return ci["high"] - ci["low"]


# --------------------------------------------------------------------------- bootstrap

def test_bootstrap_ci_contains_point_and_shrinks_with_more_samples():
    small = confidence.bootstrap_ci(*_scores(100, seed=1), metrics.roc_auc, n_boot=1000)
    large = confidence.bootstrap_ci(*_scores(1000, seed=2), metrics.roc_auc, n_boot=1000)
    for ci in (small, large):
        assert ci["low"] < ci["point"] < ci["high"]
        assert ci["n_boot_valid"] == 1000
    # the width scales like 1/sqrt(n): 10x the data, about 1/3 of the width
    assert _width(large) < 0.5 * _width(small)


def test_bootstrap_ci_same_seed_same_interval_other_seed_differs():
    y, p = _scores(150)
    a = confidence.bootstrap_ci(y, p, metrics.roc_auc, seed=7)
    assert a == confidence.bootstrap_ci(y, p, metrics.roc_auc, seed=7)
    assert a != confidence.bootstrap_ci(y, p, metrics.roc_auc, seed=8)


@pytest.mark.parametrize("func", [metrics.roc_auc, metrics.pr_auc, metrics.brier])
@pytest.mark.parametrize("grouped", [False, True])
def test_vectorised_path_equals_resample_by_resample(func, grouped):
    y, p = _scores(60, seed=3)
    groups = np.arange(60) // 3 if grouped else None
    fast = confidence.bootstrap_ci(y, p, func, groups=groups, n_boot=300, seed=1)
    slow = confidence.bootstrap_ci(y, p, lambda a, b: func(a, b), groups=groups, n_boot=300, seed=1)
    assert fast == pytest.approx(slow, abs=1e-12)


def test_bootstrap_metrics_points_intervals_and_shared_resamples():
    y, p = _scores(300, seed=4)
    out = confidence.bootstrap_metrics(y, p, threshold=0.4, n_boot=500, seed=3)
    assert tuple(out) == confidence.BOOTSTRAP_METRICS + confidence.CALIBRATION_METRICS
    point = metrics.compute_metrics(y, p, 0.4)
    cal = confidence.calibration(y, p)
    point.update(calibration_slope=cal["slope"], calibration_intercept=cal["intercept"])
    for key, ci in out.items():
        assert ci["point"] == point[key]
        assert ci["interval"] == ("bca" if key in confidence.BCA_METRICS else "percentile"), key
        assert ci["low"] <= ci["point"] <= ci["high"], key
        assert ci["low"] < ci["high"]
    # the same resamples as bootstrap_ci with that seed, for ranking and threshold metrics alike
    assert out["roc_auc"] == confidence.bootstrap_ci(y, p, metrics.roc_auc, n_boot=500, seed=3)
    f1 = confidence.bootstrap_ci(y, p, lambda a, b: metrics.threshold_metrics(a, b, 0.4)["f1"], n_boot=500, seed=3,
                                 interval="percentile")
    assert out["f1"] == pytest.approx(f1, abs=1e-12)


def test_patient_bootstrap_of_duplicated_images_equals_image_bootstrap_of_originals():
    y, p = _scores(200, seed=5)
    y2, p2, patients = np.repeat(y, 2), np.repeat(p, 2), np.repeat(np.arange(200), 2)
    original = confidence.bootstrap_metrics(y, p, n_boot=1000, seed=0)
    grouped = confidence.bootstrap_metrics(y2, p2, groups=patients, n_boot=1000, seed=0)
    ignored = confidence.bootstrap_metrics(y2, p2, n_boot=1000, seed=0)
    for key in ("roc_auc", "brier", "sensitivity", "mcc"):
        # each sampled patient brings both copies: the same resampled data, up to duplication
        assert grouped[key] == pytest.approx(original[key], abs=1e-12), key
        # treating the copies as independent images pretends there is twice the data: ~1/sqrt(2) width
        assert _width(ignored[key]) < 0.85 * _width(original[key]), key


@pytest.mark.parametrize("grouped", [True, False])
def test_images_of_a_patient_move_together(grouped):
    rng = np.random.default_rng(6)
    patients = np.repeat([f"P{i:03d}" for i in range(40)], 2)   # two hips per patient
    y = np.repeat(rng.integers(0, 2, 40), 2)
    p = np.repeat(rng.permutation(40) / 40, 2)                   # a score unique to each patient
    counts_seen = []

    def record(yy, pp):
        counts_seen.append(np.unique(pp, return_counts=True)[1])
        return metrics.roc_auc(yy, pp)

    confidence.bootstrap_ci(y, p, record, groups=patients if grouped else None, n_boot=50, interval="percentile")
    resampled = counts_seen[1:]  # the first call is the point estimate
    assert len(resampled) == 50
    all_even = all((c % 2 == 0).all() for c in resampled)
    assert all_even is grouped  # ungrouped resampling splits patients, so the check can fail


@pytest.mark.parametrize("groups,match", [
    (np.arange(5), "one patient id per image"),
    ([1, 2, None, 4, 5, 6], "1 of 6 patient ids are missing"),
    ([1.0, 2.0, math.nan, 4.0, 5.0, 6.0], "1 of 6 patient ids are missing"),
])
def test_bad_groups_raise(groups, match):
    y, p = _scores(6, seed=0, prevalence=0.5)
    with pytest.raises(ValueError, match=match):
        confidence.bootstrap_ci(y, p, metrics.brier, groups=groups, n_boot=10)


@pytest.mark.parametrize("kwargs,match", [(dict(n_boot=0), "n_boot"), (dict(alpha=1.5), "alpha")])
def test_bad_bootstrap_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        confidence.bootstrap_ci([0, 1], [0.2, 0.8], metrics.brier, **kwargs)


def test_single_class_resamples_are_dropped_counted_and_warned():
    y = np.zeros(20, dtype=int)
    y[:2] = 1
    p = np.linspace(0.05, 0.95, 20)
    with pytest.warns(UndefinedMetricWarning, match="dropped"):
        ci = confidence.bootstrap_ci(y, p, metrics.roc_auc, n_boot=400, seed=0)
    # P(no positive in a resample) = 0.9^20 = 12%
    assert 300 < ci["n_boot_valid"] < 390
    assert not math.isnan(ci["low"]) and not math.isnan(ci["high"])


# --------------------------------------------------------------------------- DeLong

def _structural_components(y, p):
    """V10 (one per positive) and V01 (one per negative) straight from DeLong's definition."""
    y, p = np.asarray(y), np.asarray(p)
    x, z = p[y == 1], p[y == 0]
    psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
    return psi.mean(axis=1), psi.mean(axis=0)


def test_delong_hand_computed_three_positives_two_negatives():
    # positives X = 0.9, 0.5, 0.4; negatives Y = 0.5, 0.2 (one tie: X2 = Y1)
    y = [1, 1, 1, 0, 0]
    p = [0.9, 0.5, 0.4, 0.5, 0.2]
    # V10: X1 beats both -> 1; X2 ties Y1, beats Y2 -> (0.5 + 1) / 2 = 0.75; X3 -> (0 + 1) / 2 = 0.5
    # V01: Y1 -> (1 + 0.5 + 0) / 3 = 0.5; Y2 -> 1
    v10, v01 = np.array([1.0, 0.75, 0.5]), np.array([0.5, 1.0])
    got10, got01 = _structural_components(y, p)
    np.testing.assert_allclose(got10, v10)
    np.testing.assert_allclose(got01, v01)
    # AUC = mean V10 = 0.75; S10 = var(V10) = 0.0625, S01 = var(V01) = 0.125
    # Var = S10 / m + S01 / n = 0.0625 / 3 + 0.125 / 2 = 1 / 12
    out = confidence.delong_auc(y, p)
    assert out["auc"] == pytest.approx(0.75)
    assert out["se"] == pytest.approx(math.sqrt(1 / 12))
    assert out["se"] ** 2 == pytest.approx(np.var(v10, ddof=1) / 3 + np.var(v01, ddof=1) / 2)
    # Wald interval on the logit scale: logit(0.75) +/- 1.96 * se / (0.75 * 0.25), mapped back
    half = 1.959963984540054 * math.sqrt(1 / 12) / (0.75 * 0.25)
    assert out["low"] == pytest.approx(expit(logit(0.75) - half))
    assert out["high"] == pytest.approx(expit(logit(0.75) + half)) and out["high"] < 1.0


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, True)])
def test_delong_matches_sklearn_auc_and_brute_force_variance(seed, ties):
    y, p1 = _scores(120, seed=seed)
    p2 = expit(logit(p1) + np.random.default_rng(seed).normal(size=120))
    if ties:
        p1, p2 = np.round(p1, 1), np.round(p2, 1)
    single = confidence.delong_auc(y, p1)
    assert single["auc"] == pytest.approx(roc_auc_score(y, p1), abs=1e-12)
    a10, a01 = _structural_components(y, p1)
    b10, b01 = _structural_components(y, p2)
    m, n = a10.size, a01.size
    assert single["se"] ** 2 == pytest.approx(np.var(a10, ddof=1) / m + np.var(a01, ddof=1) / n, rel=1e-10)
    test = confidence.delong_test(y, p1, p2)
    assert test["auc2"] == pytest.approx(roc_auc_score(y, p2), abs=1e-12)
    var_diff = np.var(a10 - b10, ddof=1) / m + np.var(a01 - b01, ddof=1) / n
    assert test["se"] ** 2 == pytest.approx(var_diff, rel=1e-10)
    assert test["z"] == pytest.approx(test["diff"] / test["se"])


def test_delong_test_identical_predictors_p_one_different_predictors_p_small():
    y, p = _scores(200, seed=8, shift=1.5)
    same = confidence.delong_test(y, p, p)
    assert (same["diff"], same["z"], same["p_value"]) == (0.0, 0.0, 1.0)
    noise = np.random.default_rng(9).random(200)
    different = confidence.delong_test(y, p, noise)
    assert different["diff"] > 0.25 and different["p_value"] < 1e-4


def test_delong_needs_two_cases_per_class():
    with pytest.warns(UndefinedMetricWarning, match="at least 2 positive"):
        out = confidence.delong_auc([0, 0, 1], [0.1, 0.2, 0.9])
    assert out["auc"] == 1.0 and math.isnan(out["se"])


# --------------------------------------------------------------------------- paired bootstrap

def test_paired_bootstrap_diff_identical_and_different_models():
    y, p = _scores(200, seed=10, shift=1.5)
    same = confidence.paired_bootstrap_diff(y, p, p, metrics.roc_auc, n_boot=500)
    assert (same["diff"], same["low"], same["high"], same["p_value"]) == (0.0, 0.0, 0.0, 1.0)
    noise = np.random.default_rng(11).random(200)
    diff = confidence.paired_bootstrap_diff(y, p, noise, metrics.roc_auc, n_boot=500)
    assert diff["diff"] == pytest.approx(metrics.roc_auc(y, p) - metrics.roc_auc(y, noise))
    assert 0 < diff["low"] < diff["diff"] < diff["high"]
    assert diff["p_value"] == pytest.approx(2 / 501)  # no resample reaches 0: the smallest p for B = 500
    # generic callable, grouped: same numbers as the vectorised path
    groups = np.arange(200) // 2
    fast = confidence.paired_bootstrap_diff(y, p, noise, metrics.roc_auc, groups=groups, n_boot=200, seed=2)
    slow = confidence.paired_bootstrap_diff(y, p, noise, lambda a, b: metrics.roc_auc(a, b), groups=groups,
                                            n_boot=200, seed=2)
    assert fast == pytest.approx(slow, abs=1e-12)


def test_paired_bootstrap_p_value_large_for_close_models():
    y, p = _scores(150, seed=12)
    p2 = expit(logit(p) + np.random.default_rng(13).normal(scale=0.05, size=150))
    out = confidence.paired_bootstrap_diff(y, p, p2, metrics.brier, n_boot=500)
    assert out["low"] < 0 < out["high"] and out["p_value"] > 0.05


# --------------------------------------------------------------------------- calibration

@pytest.fixture(scope="module")
def calibrated():
    rng = np.random.default_rng(14)
    p = expit(rng.normal(scale=1.5, size=20000))
    y = (rng.random(20000) < p).astype(int)  # y ~ Bernoulli(p): perfectly calibrated
    return y, p


def test_calibration_of_a_calibrated_predictor(calibrated):
    y, p = calibrated
    out = confidence.calibration(y, p)
    assert abs(out["slope"] - 1) < 0.1 and abs(out["intercept"]) < 0.1
    assert out["brier"] == metrics.brier(y, p)


@pytest.mark.parametrize("transform,slope,intercept", [
    (lambda lp: 2 * lp, 0.5, 0.0),        # over-confident: logits twice too extreme
    (lambda lp: lp / 2, 2.0, 0.0),        # under-confident
    (lambda lp: lp + 1, 1.0, -1.0),       # risks overestimated by one logit
])
def test_calibration_detects_miscalibration(calibrated, transform, slope, intercept):
    y, p = calibrated
    out = confidence.calibration(y, expit(transform(logit(p))))
    assert out["slope"] == pytest.approx(slope, abs=0.1 * slope)
    assert out["intercept"] == pytest.approx(intercept, abs=0.1)


def test_calibration_single_class_and_separation_give_nan_with_warning():
    with pytest.warns(UndefinedMetricWarning, match="one class"):
        out = confidence.calibration([1, 1, 1], [0.2, 0.5, 1.0])
    assert math.isnan(out["slope"]) and math.isnan(out["intercept"]) and out["brier"] > 0
    with pytest.warns(UndefinedMetricWarning, match="slope"):
        out = confidence.calibration([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])  # perfectly separated: slope -> inf
    assert math.isnan(out["slope"]) and not math.isnan(out["intercept"])


def test_calibration_clips_extreme_probabilities():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = confidence.calibration([0, 1, 0, 1, 1, 0], [0.0, 1.0, 0.3, 0.6, 0.2, 0.7])
    assert all(math.isfinite(v) for v in out.values())


def test_reliability_curve_hand_values():
    y = [0, 0, 1, 1, 1, 0]
    p = [0.05, 0.15, 0.12, 0.55, 1.0, 0.95]
    out = confidence.reliability_curve(y, p, n_bins=4)   # bins [0, .25) [.25, .5) [.5, .75) [.75, 1]
    np.testing.assert_allclose(out["edges"], [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_array_equal(out["counts"], [3, 0, 1, 2])
    np.testing.assert_allclose(out["mean_predicted"], [(0.05 + 0.15 + 0.12) / 3, np.nan, 0.55, 0.975])
    np.testing.assert_allclose(out["observed"], [1 / 3, np.nan, 1.0, 0.5])


def test_reliability_curve_quantile_bins_have_equal_counts(calibrated):
    y, p = calibrated
    out = confidence.reliability_curve(y, p, n_bins=10, strategy="quantile")
    assert out["counts"].sum() == y.size and np.all(np.abs(out["counts"] - 2000) <= 1)
    # a calibrated predictor: observed fractions track the mean predictions
    np.testing.assert_allclose(out["observed"], out["mean_predicted"], atol=0.05)
    with pytest.raises(ValueError, match="'uniform' or 'quantile'"):
        confidence.reliability_curve(y, p, strategy="kmeans")


# --------------------------------------------------------------------------- clustered DeLong, BCa, Holm

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import simulate_coverage  # noqa: E402


def test_clustered_delong_with_one_image_per_patient_is_delong():
    y, p1 = _scores(150, seed=20)
    p2 = expit(logit(p1) + np.random.default_rng(20).normal(size=150))
    ids = [f"P{i}" for i in range(150)]
    assert confidence.delong_auc(y, p1, groups=ids) == pytest.approx(confidence.delong_auc(y, p1), rel=1e-12)
    assert confidence.delong_test(y, p1, p2, groups=ids) == pytest.approx(confidence.delong_test(y, p1, p2),
                                                                        rel=1e-12)


def test_clustered_delong_of_duplicated_images_equals_delong_of_originals():
    y, p1 = _scores(120, seed=21)
    p2 = expit(logit(p1) + np.random.default_rng(21).normal(size=120))
    y2, a2, b2, patients = np.repeat(y, 2), np.repeat(p1, 2), np.repeat(p2, 2), np.repeat(np.arange(120), 2)
    original = confidence.delong_test(y, p1, p2)
    clustered = confidence.delong_test(y2, a2, b2, groups=patients)
    assert clustered["se"] == pytest.approx(original["se"], rel=1e-10)
    assert clustered["p_value"] == pytest.approx(original["p_value"], rel=1e-8)
    # ignoring the pairing pretends there is twice the data: standard error about 1/sqrt(2) as large
    assert confidence.delong_test(y2, a2, b2)["se"] < 0.75 * original["se"]


def test_clustered_delong_agrees_with_patient_bootstrap_when_patients_hold_both_classes():
    rng = np.random.default_rng(22)
    patients = np.repeat(np.arange(300), 2)
    y = (rng.random(600) < 0.4).astype(int)                      # hips of one patient may differ
    p = expit(1.2 * (2 * y - 1) + np.repeat(rng.normal(size=300), 2) + 0.7 * rng.normal(size=600))
    se = confidence.delong_auc(y, p, groups=patients)["se"]
    w = next(confidence._resample_weights(*confidence._unit_codes(patients, 600), 2000, rng))
    boot_sd = np.std(metrics.weighted_metrics(y, p, 0.5, w)["roc_auc"], ddof=1)
    assert se == pytest.approx(boot_sd, rel=0.1)


def test_clustered_delong_coverage_and_paired_type_one_error_on_two_hips_per_patient():
    # seeded simulation (scripts/simulate_coverage.py): 75 patients x 2 correlated hips, true AUC 0.927
    n = 500
    tol = 3 * simulate_coverage.mc_se(0.95, n)                 # 3 Monte-Carlo standard errors
    clustered = simulate_coverage.delong_coverage(n, 75, 0.927, seed=1, clustered=True)
    per_image = simulate_coverage.delong_coverage(n, 75, 0.927, seed=1, clustered=False)
    assert abs(clustered - 0.95) < tol
    assert per_image < 0.95 - tol                               # the check can fail: per image is too short
    tol = 3 * simulate_coverage.mc_se(0.05, n)
    type1 = simulate_coverage.paired_type1(n, 75, 0.927, seed=2, method="delong_clustered")
    naive = simulate_coverage.paired_type1(n, 75, 0.927, seed=2, method="delong")
    assert abs(type1 - 0.05) < tol
    assert naive > 0.05 + tol


def test_bca_matches_scipy_for_the_mean_of_skewed_data():
    from scipy.stats import bootstrap
    x = np.random.default_rng(23).exponential(size=60)
    y = np.zeros(60, dtype=int)
    p = x / (x.max() + 1)  # probabilities in [0, 1]; the mean is a smooth, skewed statistic
    ours = confidence.bootstrap_ci(y, p, lambda a, b: float(b.mean()), n_boot=4000, seed=0)
    ref = bootstrap((p,), np.mean, method="BCa", n_resamples=20000, random_state=1).confidence_interval
    perc = confidence.bootstrap_ci(y, p, lambda a, b: float(b.mean()), n_boot=4000, seed=0, interval="percentile")
    assert ours["interval"] == "bca" and perc["interval"] == "percentile"
    width = ref.high - ref.low
    assert ours["low"] == pytest.approx(ref.low, abs=0.03 * width)
    assert ours["high"] == pytest.approx(ref.high, abs=0.03 * width)
    assert ours["high"] > perc["high"]  # right-skewed: BCa moves the interval up


def test_bca_falls_back_to_percentile_where_undefined():
    # the positives are one patient's two hips: leaving that patient out leaves one class (jackknife NaN)
    y, p, g = [0, 0, 1, 1, 0, 0], [0.1, 0.2, 0.8, 0.3, 0.95, 0.4], ["a", "b", "c", "c", "d", "e"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        out = confidence.bootstrap_ci(y, p, metrics.roc_auc, groups=g, n_boot=200)
        perc = confidence.bootstrap_ci(y, p, metrics.roc_auc, groups=g, n_boot=200, interval="percentile")
    assert out == perc and out["interval"] == "percentile"


def test_bootstrap_interval_argument_is_checked():
    with pytest.raises(ValueError, match="interval 'normal' not supported"):
        confidence.bootstrap_metrics([0, 1], [0.2, 0.8], interval="normal")


def test_weighted_calibration_equals_calibration_of_repeated_data():
    y, p = _scores(200, seed=24)
    w = np.random.default_rng(24).integers(0, 3, size=(3, 200)).astype(float)
    got = confidence.weighted_calibration(y, p, np.vstack([np.ones(200), w]))
    for i, row in enumerate(np.vstack([np.ones(200), w])):
        rows = np.repeat(np.arange(200), row.astype(int))
        want = confidence.calibration(y[rows], p[rows])
        assert got["calibration_slope"][i] == pytest.approx(want["slope"], abs=1e-7)
        assert got["calibration_intercept"][i] == pytest.approx(want["intercept"], abs=1e-7)
    one_class = confidence.weighted_calibration(np.array([0, 0, 1]), np.array([0.1, 0.4, 0.8]),
                                                np.array([[1.0, 2.0, 0.0]]))
    assert np.isnan(one_class["calibration_slope"][0]) and np.isnan(one_class["calibration_intercept"][0])


def test_singular_resamples_are_not_valid_calibration_slopes():
    # One distinct probability: the slope is not identifiable, in the point fit and in every resample.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        out = confidence.bootstrap_metrics([0, 1, 0, 1], [0.3] * 4, 0.5, groups=list("aabb"), n_boot=200)
    slope = out["calibration_slope"]
    assert math.isnan(slope["point"]) and math.isnan(slope["low"]) and math.isnan(slope["high"])
    assert slope["n_boot_valid"] == 0
    # the intercept (slope fixed at 1) stays defined: logit(0.5) - logit(0.3)
    assert out["calibration_intercept"]["point"] == pytest.approx(logit(0.5) - logit(0.3))
    # a resample that keeps only the images of one probability is NaN, its neighbours are not
    got = confidence.weighted_calibration(np.array([0, 1, 0, 1]), np.array([0.3, 0.3, 0.6, 0.4]),
                                          np.array([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]))
    assert np.isnan(got["calibration_slope"][0]) and np.isfinite(got["calibration_slope"][1])


def test_calibration_counts_clipped_probabilities():
    out = confidence.calibration([0, 1, 0, 1, 1, 0], [0.0, 1.0, 0.3, 0.6, 1 - 1e-9, 0.7])
    assert out["n_clipped"] == 3


def test_holm_hand_values():
    # sorted 0.01, 0.03, 0.04 -> x3, x2, x1 = 0.03, 0.06, 0.04 -> running max 0.03, 0.06, 0.06
    np.testing.assert_allclose(confidence.holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    out = confidence.holm([0.5, math.nan, 0.9])
    assert math.isnan(out[1]) and out[0] == 1.0 and out[2] == 1.0
    assert confidence.holm([]).size == 0


def test_fold_mean_auc_is_each_folds_own_ranking_on_the_same_patient_resamples():
    """confidence.fold_mean_auc_ci: the mean of the folds' AUCs; one fold gives bootstrap_ci's AUC interval
    exactly (same resamples); a fold model whose probabilities lie on another scale lowers the pooled AUC,
    not the mean within folds."""
    from hipx.stats import confidence, metrics

    rng = np.random.default_rng(4)
    n = 240
    y = (rng.random(n) < 0.4).astype(int)
    p = 1 / (1 + np.exp(-(1.5 * y - 0.75 + rng.normal(0, 1, n))))
    groups = np.repeat(np.arange(n // 2), 2)
    folds = (groups % 3).astype(int)
    one = confidence.fold_mean_auc_ci(y, p, np.zeros(n, int), groups, n_boot=300, seed=1)
    ref = confidence.bootstrap_ci(y, p, metrics.roc_auc, groups=groups, n_boot=300, seed=1)
    assert {k: one[k] for k in ("point", "low", "high")} == pytest.approx({k: ref[k] for k in ("point", "low", "high")})
    shifted = np.where(folds == 1, p ** 4, p)  # fold 1's model: the same ranking on another scale
    within = confidence.fold_mean_auc_ci(y, shifted, folds, groups, n_boot=300, seed=1)
    per_fold = [metrics.roc_auc(y[folds == k], p[folds == k]) for k in range(3)]
    assert within["point"] == pytest.approx(np.mean(per_fold))
    assert within["low"] < within["point"] < within["high"]
    assert metrics.roc_auc(y, shifted) < within["point"] - 0.02  # pooling mixes the scales
