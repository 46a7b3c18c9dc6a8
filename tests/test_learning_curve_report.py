"""reports/learning_curve.py: the learning curve's figure and tables for the cross-validation report."""
import numpy as np
import pytest

from hipx.reports import learning_curve as lc_report
from hipx.stats import learning_curve as lc

NS = [25, 50, 100, 200, 400]


@pytest.fixture(scope="module")
def curve():
    net = [{"n_patients": n, "auc": 0.85 - 1.2 * n ** -0.5 + e, "low": 0.85 - 1.2 * n ** -0.5 + e - 0.04,
            "high": 0.85 - 1.2 * n ** -0.5 + e + 0.04} for n, e in zip(NS, [0.01, -0.01, 0.005, 0.0, -0.005])]
    base = [{"n_patients": n, "auc": 0.70 + e, "se": 0.03} for n, e in zip(NS, [0.01, -0.01, 0.02, -0.005, 0.0])]
    fit = lc.extrapolate(net, target=0.8, n_boot=300)
    base_fit = lc.extrapolate(base, n_boot=300)
    return net, base, fit, base_fit


def test_figure_is_a_png_with_or_without_a_fit(curve):
    net, base, fit, base_fit = curve
    for args in ((net, base, fit), (net, base, fit, base_fit), (net, None, None), (net, base, None)):
        png = lc_report.figure(*args)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_tables_hold_the_points_the_extrapolation_and_the_verdict(curve):
    net, base, fit, base_fit = curve
    text = lc_report.table_markdown(net, base, fit, base_fit)
    assert text.startswith("## Learning curve: would more patients help?\n\n> The curve is still rising")
    assert "| Training patients | Network AUC (95 % CI) | Clinical baseline AUC (95 % CI) |" in text
    first = net[0]
    assert f"| 25 | {first['auc']:.3f} ({first['low']:.3f} to {first['high']:.3f}) | 0.710 (0.651 to 0.769) |" in text
    tenfold = fit["extrapolation"][2]
    assert (f"| 4000 | 10 | {tenfold['auc']:.3f} ({tenfold['low']:.3f} to {tenfold['high']:.3f}) | "
            f"{base_fit['extrapolation'][2]['auc']:.3f}") in text
    assert "Clinical baseline: The data do not show that more patients would help" in text
    assert "Figueroa et al." in text and "parametric bootstrap" in text
    only_points = lc_report.table_markdown(net)
    assert "| 400 |" in only_points and "x largest measured" not in only_points


def test_blocks_name_the_figure_for_the_html_report(curve):
    net, base, fit, _ = curve
    blocks = lc_report.report_blocks(net, base, fit, figure_name="learning_curve")
    assert blocks[0] == ("h2", "Learning curve: would more patients help?")
    assert blocks[1] == ("callout", fit["verdict"])
    assert blocks[-1][0] == "figures" and blocks[-1][1][0][0] == "learning_curve"
    assert all(isinstance(cell, str) for b in blocks if b[0] == "table" for row in b[2] for cell in row)
    assert np.isfinite(fit["a"])
