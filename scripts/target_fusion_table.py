"""python scripts/target_fusion_table.py outs/g32_   (after scripts/target_fusion.sh)

docs/targets.md's table "residual fusion for every target": per generated regime and size, the pooled
out-of-fold ROC AUC (95 % CI) of each way to train, the clinical baseline refitted per fold, and the
paired differences (patient bootstrap, 2000 resamples, seed 0) that the goals of issue 32 are about:
every residual row against the baseline and against image only, binary residual against the best mode.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hipx.data import filenames  # noqa: E402
from hipx.reports import baseline  # noqa: E402
from hipx.runs import runfiles  # noqa: E402
from hipx.stats import confidence, metrics  # noqa: E402

MODES = {"res": "binary residual", "cres": "continuous residual", "ores": "ordinal residual",
         "clate": "continuous late", "late": "late", "image": "image only"}
REGIMES = {"clinical": "clinical dominates", "both": "both needed", "image": "image dominates"}
N_BOOT, SEED = 2000, 0


def pooled(group: Path) -> pd.DataFrame:
    """Every fold's test predictions, one row per image (each patient scored by the fold that never saw it)."""
    parts = [runfiles.read_predictions(fold, "test")[["file", "label", "probability"]]
             for fold in sorted(group.glob("fold*")) if (fold / runfiles.PREDICTIONS["test"]).is_file()]
    table = pd.concat(parts, ignore_index=True)
    table["file"] = table["file"].map(lambda f: Path(f).name)
    table["patient"] = table["file"].map(lambda f: filenames.decode(f).patient)
    return table.sort_values("file").reset_index(drop=True)


def clinical(group: Path, files: pd.Series) -> np.ndarray:
    configs = [runfiles.load_run(fold).config for fold in sorted(group.glob("fold*"))]
    base = baseline.out_of_fold([runfiles.split_files(c) for c in configs])
    base = base.assign(file=base["file"].map(lambda f: Path(f).name)).set_index("file")
    return base.loc[files, "probability"].to_numpy(dtype=float)


def ci(point: float, low: float, high: float, signed: bool = False) -> str:
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(point)} ({f.format(low)} to {f.format(high)})"


def cell(prefix: str, regime: str, n: int) -> list[str] | None:
    groups = {m: Path(f"{prefix}{regime}_{n}_{m}") for m in MODES}
    groups = {m: g for m, g in groups.items() if (g / "cv_summary.json").is_file()}
    if "res" not in groups:
        return None
    tables = {m: pooled(g) for m, g in groups.items()}
    ref = tables["res"]
    for m, t in tables.items():
        assert t["file"].equals(ref["file"]) and t["label"].equals(ref["label"]), f"{m}: other test images"
    y, patients = ref["label"].to_numpy(dtype=int), ref["patient"].to_numpy()
    probs = {m: t["probability"].to_numpy(dtype=float) for m, t in tables.items()}
    probs["baseline"] = clinical(groups["res"], ref["file"])
    aucs = {m: confidence.bootstrap_ci(y, p, metrics.roc_auc, groups=patients, n_boot=N_BOOT, seed=SEED)
            for m, p in probs.items()}

    def diff(a: str, b: str) -> str:
        d = confidence.paired_bootstrap_diff(y, probs[a], probs[b], metrics.roc_auc, groups=patients,
                                             n_boot=N_BOOT, seed=SEED)
        return ci(d["diff"], d["low"], d["high"], signed=True)

    best = max((m for m in probs if m != "baseline"), key=lambda m: aucs[m]["point"])
    worst_graded = {m: min(aucs[m]["point"] - aucs["baseline"]["point"],
                           aucs[m]["point"] - aucs.get("image", aucs[m])["point"]) for m in ("cres", "ores")
                    if m in probs}
    row = [REGIMES[regime], str(n)]
    row += [ci(aucs[m]["point"], aucs[m]["low"], aucs[m]["high"]) if m in probs else "" for m in (*MODES, "baseline")]
    row += [diff(m, "baseline") if m in probs else "" for m in ("res", "cres", "ores")]
    row += [MODES[best], diff("res", best) if best != "res" else "+0.000 (binary residual is the best)"]
    row += [", ".join(f"{MODES[m]} {v:+.3f}" for m, v in worst_graded.items())]
    return row


def main(prefix: str) -> None:
    head = ["regime", "patients", *MODES.values(), "clinical baseline", "binary residual - baseline",
            "continuous residual - baseline", "ordinal residual - baseline", "best mode",
            "binary residual - best", "graded residual: lower of (- baseline, - image only)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|")
    for n in (150, 500):
        for regime in REGIMES:
            row = cell(prefix, regime, n)
            if row:
                print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "outs/g32_")
