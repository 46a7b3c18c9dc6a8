"""The clinical-only models residual fusion starts from (hipx/stats/clinical_models.py)."""
import numpy as np
import pytest
from scipy.optimize import check_grad
from sklearn.linear_model import LogisticRegression, Ridge

from hipx.stats import clinical_models as cm


def draw(n, coef, thetas, seed=0):
    """Classes from a known cumulative-link model: logit P(class <= k) = theta_k + X @ coef."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, len(coef)))
    eta = X @ coef
    u = rng.uniform(size=n)
    cdf = 1 / (1 + np.exp(-(np.asarray(thetas)[None, :] + eta[:, None])))
    klass = (u[:, None] > cdf).sum(axis=1)
    return X, klass


def test_two_classes_is_the_logistic_regression_of_the_lowest_class():
    X, klass = draw(400, [0.8, -0.5, 0.3], [-0.4])
    fit = cm.fit_cumulative_link(X, klass, 2, C=1.0)
    ref = LogisticRegression(C=1.0, max_iter=1000, tol=1e-10).fit(X, (klass == 0).astype(int))
    np.testing.assert_allclose(fit.coef, ref.coef_[0], atol=2e-4)
    assert fit.intercept == pytest.approx(ref.intercept_[0], abs=2e-4)
    np.testing.assert_array_equal(fit.offsets, [0.0])


def test_recovers_a_known_cumulative_link_model():
    coef, thetas = np.array([1.0, -0.6, 0.0]), np.array([-1.5, 0.0, 1.2])
    X, klass = draw(20000, coef, thetas, seed=1)
    fit = cm.fit_cumulative_link(X, klass, 4, C=1e6)
    np.testing.assert_allclose(fit.coef, coef, atol=0.05)
    np.testing.assert_allclose(fit.intercept + fit.offsets, thetas, atol=0.06)
    assert np.all(np.diff(fit.offsets) > 0)


def test_the_likelihood_gradient_is_exact():
    X, klass = draw(60, [0.5, -0.2], [-1.0, 0.3, 1.0], seed=2)
    start = np.array([0.3, -0.1, -0.8, np.log(1.1), np.log(0.7)])
    error = check_grad(lambda q: cm._ordinal_nll(q, X, klass, 4, 1.0)[0],
                       lambda q: cm._ordinal_nll(q, X, klass, 4, 1.0)[1], start)
    assert error < 1e-4


def test_an_empty_middle_class_keeps_finite_ordered_offsets():
    X, klass = draw(300, [1.0, 0.0], [-1.0, 1.0], seed=3)
    klass = np.where(klass == 1, 2, klass)  # nobody in class 1 of 0..2
    fit = cm.fit_cumulative_link(X, klass, 3)
    assert np.all(np.isfinite(fit.offsets)) and fit.offsets[1] >= 0


def test_linear_is_ridge_with_an_unpenalised_intercept():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(200, 3))
    z = X @ [0.5, -0.3, 0.1] + 0.2 + rng.normal(scale=0.5, size=200)
    fit = cm.fit_linear(X, z, alpha=1.0)
    ref = Ridge(alpha=1.0).fit(X, z)
    np.testing.assert_allclose(fit.coef, ref.coef_, atol=1e-10)
    assert fit.intercept == pytest.approx(ref.intercept_, abs=1e-10)


@pytest.mark.parametrize("call, message", [
    (lambda: cm.fit_cumulative_link(np.zeros((4, 2)), [0, 0, 0, 0], 3), "at least two classes"),
    (lambda: cm.fit_cumulative_link(np.zeros((4, 2)), [0, 1, 5, 0], 3), "classes must lie in 0..2"),
    (lambda: cm.fit_linear(np.zeros((3, 2)), [0.0, np.nan, 1.0]), "non-finite"),
    (lambda: cm.fit_logistic(np.zeros((3, 2)), [1, 1, 1]), "both classes"),
])
def test_unusable_input_is_refused_naming_why(call, message):
    with pytest.raises(ValueError, match=message):
        call()
