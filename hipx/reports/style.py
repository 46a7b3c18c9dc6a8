"""How every report looks and words its numbers: the colours, the axes' style and the PNG encoding of a
figure, and the text of a number, an interval, a p-value and a mean ± SD.

    from hipx.reports.style import NET, BASE, png, style_axes, ci, fmt
    ci({"point": 0.81, "low": 0.73, "high": 0.88})   # '0.810 (0.730 to 0.880)'

The one home of these helpers for the run report (:mod:`render`), the measurement section, the CV
summary, the external validation, the case gallery and the comparison of runs. It imports nothing of
the project (and not matplotlib: a figure is only asked to save itself), so any report module can use it.
"""
from __future__ import annotations

import io
import math
from typing import Any, Mapping

NET, BASE = "#1f5fa8", "#d9730d"  # network / clinical baseline colours in every figure
# colours of further models (compare.py), after NET and BASE
PALETTE = (NET, BASE, "#2a9d4b", "#8e44ad", "#c0392b", "#7f8c8d", "#b8860b", "#17becf")
DPI = 110  # of every report figure


# --------------------------------------------------------------------------- figures

def png(fig: Any) -> bytes:
    """The PNG bytes of a matplotlib figure, trimmed to what is drawn."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def style_axes(ax: Any) -> None:
    """The reports' axes: a light grid, no top and right frame."""
    ax.grid(True, alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)


# --------------------------------------------------------------------------- text

def fmt(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals; 'n/a' for None, NaN or infinity."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def ci(d: Mapping | None, key: str = "point", digits: int = 3) -> str:
    """'0.812 (0.731 to 0.884)' from dict(point|auc|diff, low, high); 'n/a' for None."""
    if d is None:
        return "n/a"
    if not math.isfinite(d.get(key, math.nan) if d.get(key) is not None else math.nan):
        return "n/a"
    low, high = d.get("low"), d.get("high")
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return f"{fmt(d[key], digits)} (CI n/a)"
    return f"{fmt(d[key], digits)} ({fmt(low, digits)} to {fmt(high, digits)})"


def p_text(value: float | None) -> str:
    """A p-value: '< 0.001', '0.123' or 'n/a'."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def p_relation(value: float | None) -> str:
    """'< 0.001' or '= 0.123', to follow a 'p' in a sentence."""
    text = p_text(value)
    return text if text.startswith("<") else f"= {text}"


def mean_sd_text(d: Mapping, digits: int = 1) -> str:
    """'61.2 ± 8.4' from dict(mean, sd, n) (metrics.mean_sd); 'n/a' where n is 0."""
    if not d or d.get("n", 0) == 0:
        return "n/a"
    sd = f" ± {d['sd']:.{digits}f}" if math.isfinite(d["sd"]) else ""
    return f"{d['mean']:.{digits}f}{sd}"


def interval_text(interval: str) -> str:
    """The bootstrap interval's name in words (confidence.bootstrap_ci's ``interval``)."""
    return {"bca": "BCa bootstrap", "percentile": "percentile bootstrap"}.get(interval, interval)
