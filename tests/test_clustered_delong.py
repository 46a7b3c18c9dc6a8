"""The clustered DeLong variance (confidence.delong_auc / delong_test with ``groups``) checked tightly
enough to see its within-patient cross term (issue 32, item 8: a 10 % tolerance let the variance without
it through).

Two references that share no code with confidence._delong: Obuchowski's formula (Biometrics
1997;53:567-578, eq. 3-5) written out from its definitions in exact fractions on a small hand-made set,
and a brute-force leave-one-patient-out jackknife on a larger simulated one. Each test shows, on its own
data, that dropping the cross term moves the variance by far more than the test's tolerance.
"""
from fractions import Fraction

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from hipx.stats import confidence

# (patient, label, score of model 1, score of model 2): several images per patient, both classes within
# P1-P4, ties across patients (0.5, 0.4, 0.6, 0.7); model 1 carries a patient effect (P1, P2 high, P3 low)
HAND = [("P1", 1, "0.9", "0.6"), ("P1", 0, "0.6", "0.3"), ("P1", 1, "0.7", "0.8"),
        ("P2", 1, "0.8", "0.5"), ("P2", 0, "0.7", "0.2"),
        ("P3", 0, "0.2", "0.4"), ("P3", 0, "0.3", "0.1"), ("P3", 1, "0.4", "0.9"),
        ("P4", 1, "0.5", "0.7"), ("P4", 0, "0.1", "0.6"),
        ("P5", 0, "0.5", "0.5"), ("P5", 0, "0.4", "0.3"),
        ("P6", 1, "0.6", "0.4")]


def psi(x: Fraction, y: Fraction) -> Fraction:
    """DeLong's kernel: 1 when the positive scores higher, 1/2 when tied."""
    return Fraction(1) if x > y else Fraction(1, 2) if x == y else Fraction(0)


def obuchowski(labels: list[int], patients: list[str], scores: list[list[Fraction]], cross: bool = True):
    """AUCs and their covariance matrix, in exact fractions, straight from Obuchowski's definitions:
    V10 of a positive image = mean psi over all negative images, V01 of a negative one = mean psi over all
    positives; per patient the summed V10 (V01) minus m_i A (n_i A); S10, S01 over the patients holding a
    positive (negative) image, S11 over all patients: the cross term. ``cross=False`` leaves S11 out."""
    pos = [i for i, y in enumerate(labels) if y == 1]
    neg = [i for i, y in enumerate(labels) if y == 0]
    m, n = len(pos), len(neg)
    units = sorted(set(patients))
    parts = []
    for s in scores:
        auc = sum(psi(s[i], s[j]) for i in pos for j in neg) / (m * n)
        v10 = {i: sum(psi(s[i], s[j]) for j in neg) / n for i in pos}
        v01 = {j: sum(psi(s[i], s[j]) for i in pos) / m for j in neg}
        dx = {u: sum(v10[i] - auc for i in pos if patients[i] == u) for u in units}
        dy = {u: sum(v01[j] - auc for j in neg if patients[j] == u) for u in units}
        parts.append((auc, dx, dy))
    i10, i01, i = len({patients[k] for k in pos}), len({patients[k] for k in neg}), len(units)
    cov = [[Fraction(0)] * len(scores) for _ in scores]
    for a, (_, dxa, dya) in enumerate(parts):
        for b, (_, dxb, dyb) in enumerate(parts):
            s10 = Fraction(i10, (i10 - 1) * m) * sum(dxa[u] * dxb[u] for u in units)
            s01 = Fraction(i01, (i01 - 1) * n) * sum(dya[u] * dyb[u] for u in units)
            s11 = Fraction(i, i - 1) * sum(dxa[u] * dyb[u] + dxb[u] * dya[u] for u in units)
            cov[a][b] = s10 / m + s01 / n + (s11 / (m * n) if cross else 0)
    return [p[0] for p in parts], cov


def test_clustered_delong_equals_obuchowski_written_out_on_a_hand_made_set():
    patients = [r[0] for r in HAND]
    y = np.array([r[1] for r in HAND])
    s1, s2 = ([Fraction(r[k]) for r in HAND] for k in (2, 3))
    auc, cov = obuchowski(list(y), patients, [s1, s2])
    _, without = obuchowski(list(y), patients, [s1, s2], cross=False)
    var_diff = cov[0][0] + cov[1][1] - 2 * cov[0][1]
    var_diff_without = without[0][0] + without[1][1] - 2 * without[0][1]
    # the cross term is no detail here: without it each variance is off by far more than the tolerance below
    assert abs(without[0][0] / cov[0][0] - 1) > 1.0 and abs(var_diff_without / var_diff - 1) > 1.0

    p1, p2 = (np.array([float(v) for v in s]) for s in (s1, s2))
    single = confidence.delong_auc(y, p1, groups=patients)
    assert single["auc"] == pytest.approx(float(auc[0]), rel=1e-12)
    assert single["se"] ** 2 == pytest.approx(float(cov[0][0]), rel=1e-9)
    paired = confidence.delong_test(y, p1, p2, groups=patients)
    assert (paired["auc1"], paired["auc2"]) == pytest.approx((float(auc[0]), float(auc[1])), rel=1e-12)
    assert paired["se"] ** 2 == pytest.approx(float(var_diff), rel=1e-9)


def simulated(seed: int = 0, n_patients: int = 300):
    """Two or three images per patient, each osteoporotic with probability 0.4 (so most patients hold
    both classes), model 1 with a strong patient effect, model 2 without one."""
    rng = np.random.default_rng(seed)
    patients = np.repeat(np.arange(n_patients), rng.integers(2, 4, n_patients))
    y = (rng.random(patients.size) < 0.4).astype(int)
    effect = rng.normal(0.0, 1.5, n_patients)[patients]
    p1 = 1 / (1 + np.exp(-(effect + y + rng.normal(0.0, 1.0, patients.size))))
    p2 = 1 / (1 + np.exp(-(1.2 * y + rng.normal(0.0, 1.0, patients.size))))
    return y, patients, p1, p2


def auc(y: np.ndarray, p: np.ndarray, keep: np.ndarray) -> float:
    """ROC AUC of the images ``keep``, by definition: the mean kernel over every positive-negative pair."""
    x, z = p[keep & (y == 1)][:, None], p[keep & (y == 0)][None, :]
    return float(((x > z) + 0.5 * (x == z)).mean())


def jackknife(patients: np.ndarray, statistic) -> float:
    """Leave-one-patient-out jackknife variance: (I - 1) / I * sum (theta_(-i) - mean)^2."""
    units = np.unique(patients)
    values = np.array([statistic(patients != u) for u in units])
    return (len(units) - 1) / len(units) * float(((values - values.mean()) ** 2).sum())


def cross_term(y: np.ndarray, patients: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """(S11 + S11') / (m n) of models ``a`` and ``b``: the part of the clustered covariance of their AUCs
    that comes from positive and negative images of one patient (with a = b: of one AUC's variance)."""
    pos = y == 1
    units, codes = np.unique(patients, return_inverse=True)

    def centred(p):
        x, z = p[pos][:, None], p[~pos][None, :]
        kernel = (x > z) + 0.5 * (x == z)
        auc = kernel.mean()
        return (np.bincount(codes[pos], weights=kernel.mean(axis=1) - auc, minlength=len(units)),
                np.bincount(codes[~pos], weights=kernel.mean(axis=0) - auc, minlength=len(units)))

    (dxa, dya), (dxb, dyb) = centred(a), centred(b)
    return len(units) / (len(units) - 1) * float(dxa @ dyb + dxb @ dya) / (pos.sum() * (~pos).sum())


TOLERANCE = 0.02  # the jackknife agrees with Obuchowski's variance to about 0.5 % at 300 patients


def test_clustered_delong_agrees_with_a_leave_one_patient_out_jackknife():
    y, patients, p1, p2 = simulated()
    single = confidence.delong_auc(y, p1, groups=patients)["se"] ** 2
    assert auc(y, p1, patients >= 0) == pytest.approx(roc_auc_score(y, p1), abs=1e-12)
    reference = jackknife(patients, lambda keep: auc(y, p1, keep))
    assert single == pytest.approx(reference, rel=TOLERANCE)
    # the cross term is 5 times the tolerance or more: a variance without it cannot pass
    assert abs(cross_term(y, patients, p1, p1)) > 5 * TOLERANCE * single

    paired = confidence.delong_test(y, p1, p2, groups=patients)["se"] ** 2
    reference = jackknife(patients, lambda keep: auc(y, p1, keep) - auc(y, p2, keep))
    assert paired == pytest.approx(reference, rel=TOLERANCE)
    of_difference = (cross_term(y, patients, p1, p1) + cross_term(y, patients, p2, p2)
                     - 2 * cross_term(y, patients, p1, p2))
    assert abs(of_difference) > 5 * TOLERANCE * paired
