"""Coverage of the AUC intervals and type I error of the paired AUC tests on clustered data.

    python scripts/simulate_coverage.py [--sims 400] [--boot 1000] [--patients 75] [--seed 0]

Each simulated study has ``--patients`` patients with two hips each. A patient's label holds for
both hips, and the two hips' scores share a patient effect (intra-patient correlation 0.6), as
left and right hips of one person do:

    score = mu * label + u_patient + e_hip,   u ~ N(0, 0.6), e ~ N(0, 0.4)

so the true AUC (a positive and a negative image of different patients) is Phi(mu / sqrt(2)).
Prints, with its Monte-Carlo standard error, how often the 95% interval holds the true AUC
(DeLong per image, DeLong clustered by patient, patient-bootstrap percentile and BCa) and how
often the paired tests reject a true null (two models of equal AUC, correlated within patient).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from scipy.special import expit
from scipy.stats import norm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hipx.stats import confidence  # noqa: E402
from hipx.core.cli import add_seed  # noqa: E402
from hipx.stats import metrics  # noqa: E402

ICC = 0.6  # share of a score's variance common to both hips of a patient
HIPS = 2


def mu_for_auc(auc: float) -> float:
    """Class separation giving true AUC ``auc`` under the model above (score variance 1)."""
    return math.sqrt(2) * norm.ppf(auc)


def clustered_study(rng: np.random.Generator, n_patients: int, auc: float, prevalence: float = 0.4,
                    n_models: int = 1, model_corr: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels (n,), probabilities (n_models, n) and patient ids (n,) of one study, n = 2 * n_patients.

    Every model has the same true AUC; two models' patient and hip effects correlate ``model_corr``.
    Both classes are guaranteed to hold at least two patients.
    """
    mu = mu_for_auc(auc)
    while True:
        label = (rng.random(n_patients) < prevalence).astype(np.int64)
        if 2 <= label.sum() <= n_patients - 2:
            break
    cov = np.full((n_models, n_models), model_corr) + (1 - model_corr) * np.eye(n_models)
    u = rng.multivariate_normal(np.zeros(n_models), cov, size=n_patients).T * math.sqrt(ICC)
    e = rng.multivariate_normal(np.zeros(n_models), cov, size=n_patients * HIPS).T * math.sqrt(1 - ICC)
    y = np.repeat(label, HIPS)
    score = mu * y + np.repeat(u, HIPS, axis=1) + e
    return y, expit(score), np.repeat(np.arange(n_patients), HIPS)


def delong_coverage(n_sims: int, n_patients: int, auc: float, seed: int, clustered: bool) -> float:
    """Share of studies whose DeLong 95% interval holds the true AUC."""
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(n_sims):
        y, p, g = clustered_study(rng, n_patients, auc)
        ci = confidence.delong_auc(y, p[0], groups=g if clustered else None)
        hits += ci["low"] <= auc <= ci["high"]
    return hits / n_sims


def bootstrap_coverage(n_sims: int, n_patients: int, auc: float, seed: int, n_boot: int,
                       interval: str) -> float:
    """Share of studies whose patient-bootstrap 95% interval (BCa or percentile) holds the true AUC."""
    rng = np.random.default_rng(seed)
    hits = 0
    for i in range(n_sims):
        y, p, g = clustered_study(rng, n_patients, auc)
        ci = confidence.bootstrap_ci(y, p[0], metrics.roc_auc, groups=g, n_boot=n_boot, seed=i, interval=interval)
        hits += ci["low"] <= auc <= ci["high"]
    return hits / n_sims


def paired_type1(n_sims: int, n_patients: int, auc: float, seed: int, method: str, n_boot: int = 1000,
                 alpha: float = 0.05) -> float:
    """Share of studies where a paired test rejects equal AUCs of two models that have equal true AUC.

    ``method``: "delong" (per image), "delong_clustered" or "bootstrap" (paired patient bootstrap).
    """
    rng = np.random.default_rng(seed)
    rejected = 0
    for i in range(n_sims):
        y, p, g = clustered_study(rng, n_patients, auc, n_models=2)
        if method == "bootstrap":
            pv = confidence.paired_bootstrap_diff(y, p[0], p[1], metrics.roc_auc, groups=g, n_boot=n_boot,
                                                  seed=i)["p_value"]
        else:
            pv = confidence.delong_test(y, p[0], p[1], groups=g if method == "delong_clustered" else None)["p_value"]
        rejected += pv < alpha
    return rejected / n_sims


def mc_se(share: float, n: int) -> float:
    """Monte-Carlo standard error of a share estimated from n simulations."""
    return math.sqrt(share * (1 - share) / n)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sims", type=int, default=400, help="simulated studies per row (default: %(default)s)")
    p.add_argument("--boot", type=int, default=1000, help="bootstrap resamples per study (default: %(default)s)")
    p.add_argument("--patients", type=int, default=75, help="patients per study, two hips each (default: %(default)s)")
    p.add_argument("--auc", type=float, default=0.927, help="true AUC (default: %(default)s)")
    add_seed(p, "the simulated studies")
    return p


def main(argv: list[str] | None = None) -> list[tuple[str, float, float]]:
    args = build_parser().parse_args(argv)
    n, k, auc, s = args.sims, args.patients, args.auc, args.seed
    rows = [
        ("95% CI coverage, DeLong per image", delong_coverage(n, k, auc, s, clustered=False), 0.95),
        ("95% CI coverage, DeLong clustered (Obuchowski)", delong_coverage(n, k, auc, s, clustered=True), 0.95),
        ("95% CI coverage, patient bootstrap percentile",
         bootstrap_coverage(n, k, auc, s, args.boot, "percentile"), 0.95),
        ("95% CI coverage, patient bootstrap BCa", bootstrap_coverage(n, k, auc, s, args.boot, "bca"), 0.95),
        ("type I error at 0.05, paired DeLong per image", paired_type1(n, k, auc, s, "delong"), 0.05),
        ("type I error at 0.05, paired DeLong clustered", paired_type1(n, k, auc, s, "delong_clustered"), 0.05),
        ("type I error at 0.05, paired patient bootstrap",
         paired_type1(n, k, auc, s, "bootstrap", n_boot=args.boot), 0.05),
    ]
    print(f"{n} simulated studies of {k} patients x {HIPS} hips (intra-patient correlation {ICC}), true AUC {auc}, "
          f"{args.boot} bootstrap resamples, seed {s}")
    print(f"| {'quantity':<48} | nominal | observed | Monte-Carlo SE |")
    print(f"|{'-' * 50}|--------:|---------:|---------------:|")
    for name, value, nominal in rows:
        print(f"| {name:<48} | {nominal:7.2f} | {value:8.3f} | {mc_se(nominal, n):14.3f} |")
    return [(name, value, mc_se(nominal, n)) for name, value, nominal in rows]


if __name__ == "__main__":
    main()
