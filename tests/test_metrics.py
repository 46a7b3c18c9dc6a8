import contextlib
import math
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from hipx.stats import metrics
from hipx.stats.metrics import UndefinedMetricWarning


def _scores(seed, n, ties=False):
    """Labels with about 40% positives and informative, optionally heavily tied, probabilities."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    p = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.0 * (2 * y - 1))))
    if ties:
        p = np.round(p, 1)
    return y, p


@contextlib.contextmanager
def _no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# --------------------------------------------------------------------------- hand-computed values

@pytest.mark.parametrize("y,p,expected", [
    ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.75),       # MONAI compute_roc_auc case: 3 of 4 pairs ordered
    ([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9], 0.875),       # one tied pair counts 1/2: (1 + 1 + 0.5 + 1) / 4
    ([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5], 0.5),         # all tied
    ([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9], 0.0),         # perfectly inverted
    ([0, 1], [0.3, 0.3000001], 1.0),
])
def test_roc_auc_hand_values(y, p, expected):
    assert metrics.roc_auc(y, p) == pytest.approx(expected, abs=1e-15)


def test_pr_auc_and_brier_hand_values():
    # Descending: 0.8 (pos) P=1 R=1/2; 0.4 (neg); 0.35 (pos) P=2/3 R=1 -> AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
    assert metrics.pr_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(5 / 6, abs=1e-15)
    # Tied scores are one threshold: at 0.5 both cases enter, P = 1/2, R = 1 -> AP = 1/2
    assert metrics.pr_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert metrics.brier([0, 1], [0.2, 0.6]) == pytest.approx((0.2 ** 2 + 0.4 ** 2) / 2)


def test_threshold_metrics_hand_computed_confusion_matrix():
    # 10 images: TP=3, FN=2 (positives), TN=4, FP=1 (negatives), threshold 0.5
    y = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    p = [0.9, 0.7, 0.5, 0.4, 0.1, 0.6, 0.3, 0.2, 0.2, 0.0]  # 0.5 itself is predicted positive
    tp, fn, tn, fp = 3, 2, 4, 1
    prec, rec = tp / (tp + fp), tp / (tp + fn)

    def fbeta(b):
        return (1 + b * b) * prec * rec / (b * b * prec + rec)

    expected = {
        "accuracy": 7 / 10, "precision": 3 / 4, "npv": 4 / 6, "sensitivity": 3 / 5, "specificity": 4 / 5,
        "f0_5": fbeta(0.5), "f1": fbeta(1), "f2": fbeta(2), "balanced_accuracy": (3 / 5 + 4 / 5) / 2,
        "mcc": (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)),
    }
    expected["f2acc"] = 1.5 * expected["f2"] + expected["accuracy"]
    # the same numbers written out: F1 = 2/3, F2 = 15/24, F0.5 = 3.75/5.25, MCC = 10/sqrt(600)
    assert (expected["f1"], expected["f2"]) == pytest.approx((2 / 3, 15 / 24))
    assert (expected["f0_5"], expected["mcc"]) == pytest.approx((3.75 / 5.25, 10 / math.sqrt(600)))

    got = metrics.threshold_metrics(y, p, 0.5)
    assert list(got) == list(metrics.THRESHOLD_METRICS)
    assert (got["tp"], got["fp"], got["tn"], got["fn"]) == (tp, fp, tn, fn)
    assert all(type(got[k]) is int for k in ("tp", "fp", "tn", "fn"))
    for key, value in expected.items():
        assert type(got[key]) is float
        assert got[key] == pytest.approx(value, abs=1e-14), key


def test_compute_metrics_keys_types_and_values():
    y, p = [0, 0, 1, 1, 0], [0.1, 0.4, 0.35, 0.8, 0.6]
    with _no_warnings():
        out = metrics.compute_metrics(y, p, threshold=0.5)
    assert list(out)[:7] == ["roc_auc", "pr_auc", "brier", "n", "n_pos", "prevalence", "threshold"]
    assert list(out)[7:] == list(metrics.THRESHOLD_METRICS)
    assert (out["n"], out["n_pos"], out["prevalence"], out["threshold"]) == (5, 2, 0.4, 0.5)
    assert type(out["n"]) is int and type(out["roc_auc"]) is float
    assert out["roc_auc"] == metrics.roc_auc(y, p) == pytest.approx(4 / 6)
    assert out == metrics.compute_metrics(np.array(y, dtype=bool), np.array(p))


# --------------------------------------------------------------------------- against scikit-learn

@pytest.mark.parametrize("seed,n,ties", [(0, 30, False), (1, 150, False), (2, 150, True), (3, 1000, True),
                                         (4, 7, True)])
def test_ranking_metrics_match_sklearn(seed, n, ties):
    y, p = _scores(seed, n, ties)
    assert 0 < y.sum() < n
    assert metrics.roc_auc(y, p) == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert metrics.pr_auc(y, p) == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
    assert metrics.brier(y, p) == pytest.approx(skm.brier_score_loss(y, p), abs=1e-15)


@pytest.mark.parametrize("seed,threshold", [(0, 0.5), (1, 0.3), (2, 0.7), (3, 0.5)])
def test_threshold_metrics_match_sklearn(seed, threshold):
    y, p = _scores(seed, 200, ties=seed % 2 == 1)
    pred = (p >= threshold).astype(int)
    got = metrics.threshold_metrics(y, p, threshold)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred).ravel()
    assert (got["tp"], got["fp"], got["tn"], got["fn"]) == (tp, fp, tn, fn)
    expected = {
        "accuracy": skm.accuracy_score(y, pred),
        "precision": skm.precision_score(y, pred),
        "npv": skm.precision_score(y, pred, pos_label=0),
        "sensitivity": skm.recall_score(y, pred),
        "specificity": skm.recall_score(y, pred, pos_label=0),
        "f0_5": skm.fbeta_score(y, pred, beta=0.5),
        "f1": skm.f1_score(y, pred),
        "f2": skm.fbeta_score(y, pred, beta=2),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "mcc": skm.matthews_corrcoef(y, pred),
    }
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


# --------------------------------------------------------------------------- undefined metrics

def test_single_class_gives_nan_and_one_warning_naming_the_metrics():
    with pytest.warns(UndefinedMetricWarning) as record:
        out = metrics.compute_metrics([0, 0, 0], [0.1, 0.7, 0.2])
    assert len(record) == 1
    message = str(record[0].message)
    for key in ("roc_auc", "pr_auc", "sensitivity", "balanced_accuracy", "mcc"):
        assert math.isnan(out[key]) and key in message
    assert "n_pos=0" in message
    assert out["specificity"] == pytest.approx(2 / 3) and out["accuracy"] == pytest.approx(2 / 3)
    assert out["brier"] == pytest.approx((0.01 + 0.49 + 0.04) / 3)
    assert record[0].filename == __file__  # points at the caller, not at metrics.py


@pytest.mark.parametrize("func", [metrics.roc_auc, metrics.pr_auc])
def test_ranking_metric_without_positives_is_nan(func):
    with pytest.warns(UndefinedMetricWarning, match=func.__name__):
        assert math.isnan(func([0, 0], [0.2, 0.9]))


def test_only_positives_auc_nan_but_average_precision_defined():
    with pytest.warns(UndefinedMetricWarning, match="roc_auc"):
        assert math.isnan(metrics.roc_auc([1, 1], [0.2, 0.9]))
    with _no_warnings():
        assert metrics.pr_auc([1, 1], [0.2, 0.9]) == 1.0


def test_no_predicted_positive_makes_precision_and_mcc_nan_but_f1_zero():
    y, p = [0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4]
    with pytest.warns(UndefinedMetricWarning) as record:
        out = metrics.threshold_metrics(y, p, 0.9)
    assert len(record) == 1 and "precision, mcc" in str(record[0].message)
    assert math.isnan(out["precision"]) and math.isnan(out["mcc"])
    assert out["sensitivity"] == 0.0 and out["f1"] == 0.0 and out["f2acc"] == 0.5
    assert out["f1"] == skm.f1_score(y, [0, 0, 0, 0], zero_division=0.0)


# --------------------------------------------------------------------------- validation

@pytest.mark.parametrize("y,p,match", [
    ([], [], "empty"),
    ([0, 1, 1], [0.2, 0.3], "3 labels, 2 probabilities"),
    ([0, 2, 1, -1], [0.1, 0.2, 0.3, 0.4], "2 of 4 labels are not 0"),
    ([0, 1, math.nan], [0.1, 0.2, 0.3], "1 of 3 labels"),
    ([0, 1, 1], [0.1, math.nan, math.inf], "2 of 3 values are NaN/inf and 0 lie outside"),
    ([0, 1, 1], [-0.1, 1.5, 0.5], "0 of 3 values are NaN/inf and 2 lie outside"),
    ([[0, 1]], [[0.1, 0.2]], "1-D"),
    (["a", "b"], [0.1, 0.2], "numeric"),
])
def test_bad_inputs_raise_clear_errors(y, p, match):
    with pytest.raises(ValueError, match=match):
        metrics.compute_metrics(y, p)


@pytest.mark.parametrize("threshold", [-0.1, 1.1, math.nan, "high"])
def test_bad_threshold_raises(threshold):
    with pytest.raises(ValueError, match="threshold"):
        metrics.threshold_metrics([0, 1], [0.2, 0.8], threshold)


# --------------------------------------------------------------------------- threshold selection

def test_youden_hand_case_ties_go_to_threshold_nearest_half():
    # Thresholds 0.8 and 0.35 both give J = 1/2; 0.35 is closer to 0.5
    assert metrics.youden_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.35
    # J: 0.7 -> 1/2 - 0, 0.5 -> 1/2 - 1/2, 0.3 -> 1 - 1/2, 0.1 -> 0; the maxima 0.7 and 0.3 are
    # equally close to 0.5 -> the lower one
    y, p = [0, 1, 0, 1], [0.1, 0.3, 0.5, 0.7]
    assert metrics.youden_threshold(y, p) == 0.3
    assert metrics.youden_threshold([0, 0, 1, 1], [0.1, 0.3, 0.7, 0.9]) == 0.7  # the only J = 1


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, True)])
def test_youden_matches_brute_force_over_sklearn_roc_curve(seed, ties):
    y, p = _scores(seed, 120, ties)
    fpr, tpr, thr = skm.roc_curve(y, p, drop_intermediate=False)
    j = tpr - fpr
    best = thr[np.isclose(j, j.max(), rtol=0, atol=1e-12)]
    expected = best[np.argmin(np.abs(best - 0.5) - 1e-9 * (best < 0.5))]  # nearest 0.5, lower on a tie
    t = metrics.youden_threshold(y, p)
    assert t == expected
    out = metrics.threshold_metrics(y, p, t)
    assert out["sensitivity"] + out["specificity"] - 1 == pytest.approx(j.max())


def test_youden_single_class_is_nan_with_warning():
    with pytest.warns(UndefinedMetricWarning, match="youden_threshold"):
        assert math.isnan(metrics.youden_threshold([1, 1, 1], [0.2, 0.5, 0.9]))


# --------------------------------------------------------------------------- frequency weights

def test_weighted_metrics_equal_metrics_of_repeated_cases():
    y, p = _scores(5, 40, ties=True)
    rng = np.random.default_rng(0)
    weights = rng.integers(0, 4, size=(6, y.size))
    weights[:, :2] = 1  # keep both classes present
    y[:2] = [0, 1]
    got = metrics.weighted_metrics(y, p, 0.4, weights)
    for row, w in enumerate(weights):
        rows = np.repeat(np.arange(y.size), w)
        expected = metrics.compute_metrics(y[rows], p[rows], 0.4)
        for key, values in got.items():
            assert values[row] == pytest.approx(expected[key], abs=1e-12), key
