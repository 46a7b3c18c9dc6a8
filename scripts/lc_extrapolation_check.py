"""How far a learning curve's extrapolation misses (issue 31): fit the inverse power law to the points of a
cross-validation's learning curve up to ``--fit_max`` training patients only, extrapolate it to the larger
sizes that were measured, and set the extrapolation (with its 95 % interval) beside the measured AUC (with
its patient CI), for the network and the clinical baseline, pooled out of fold and (out of fold) as the mean
within folds.

    python scripts/lc_extrapolation_check.py outs/lc_demo --fit_max 200

Reads ``cv_summary.json`` (``learning_curve``, written by ``main.py --learning_curve`` / ``report.py --cv``);
the fit and its intervals are the report's own (``hipx.stats.learning_curve.extrapolate``, seed 0).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hipx.stats import learning_curve as lc  # noqa: E402


def check(points: list[dict], fit_max: float, what: str) -> list[str]:
    """Lines: the fit on the points up to ``fit_max`` and, per larger point, extrapolated against measured."""
    used = [p for p in points if p["n_patients"] <= fit_max]
    later = [p for p in points if p["n_patients"] > fit_max]
    if len(used) < 3 or not later:
        return [f"{what}: {len(used)} points up to {fit_max:g} patients and {len(later)} beyond: nothing to check"]
    result = lc.extrapolate(used, at=[p["n_patients"] for p in later], seed=0)
    sizes = ", ".join(f"{p['n_patients']:g}" for p in used)
    lines = [f"{what}: fit on n = {sizes}: AUC(n) = "
             f"{result['a']:.3f} - {result['b']:.3g} n^-{result['c']:.3f}; {result['verdict']}"]
    by_n = {e["n_patients"]: e for e in result["extrapolation"]}
    for p in later:
        e = by_n[p["n_patients"]]
        inside = "inside" if e["low"] <= p["auc"] <= e["high"] else "OUTSIDE"
        lines.append(f"  n = {p['n_patients']:g}: extrapolated {e['auc']:.3f} ({e['low']:.3f} to {e['high']:.3f}); "
                     f"measured {p['auc']:.3f} ({p['low']:.3f} to {p['high']:.3f}); missed by {e['auc'] - p['auc']:+.3f}, "
                     f"measured point {inside} the extrapolation's interval")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("group", help="the cross-validation's folder (outs/<save_dir>)")
    parser.add_argument("--fit_max", type=float, default=200, help="fit the points up to this many training patients")
    args = parser.parse_args(argv)
    path = Path(args.group) / "cv_summary.json"
    if not path.is_file():
        parser.error(f"{path} not found: run main.py --folds K --learning_curve ... (or report.py --cv) first")
    block = json.loads(path.read_text()).get("learning_curve")
    if not block:
        parser.error(f"{path} holds no learning curve (train with main.py --learning_curve)")
    within = block.get("within_folds") or {}
    for what, points in (("network, pooled", block.get("points")), ("clinical baseline, pooled", block.get("baseline_points")),
                         ("network, mean within folds", within.get("points")),
                         ("clinical baseline, mean within folds", within.get("baseline_points"))):
        if points:
            print("\n".join(check(points, args.fit_max, what)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
