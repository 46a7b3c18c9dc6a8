"""python scripts/fusion_table.py outs/f20_   (after scripts/fusion_regimes.sh)

docs/fusion.md's table from the cross-validation groups ``<prefix><regime>_<n>_<mode>``: pooled
out-of-fold ROC AUC (95 % CI) of each fusion mode and of the clinical baseline fitted per fold.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

MODES = ("image", "early", "late", "residual")
REGIMES = {"clinical": "clinical dominates", "both": "both needed", "image": "image dominates"}


def ci(block: dict) -> str:
    return f"{block['point']:.3f} ({block['low']:.3f}-{block['high']:.3f})"


def main(prefix: str) -> None:
    head = ["regime", "patients", *(f"{m}" for m in MODES), "clinical baseline", "residual - baseline",
            "residual - image only"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|")
    for n in (150, 500):
        for regime, text in REGIMES.items():
            summaries = {}
            for mode in MODES:
                path = Path(f"{prefix}{regime}_{n}_{mode}") / "cv_summary.json"
                if path.is_file():
                    summaries[mode] = json.loads(path.read_text())["pooled"]
            if not summaries:
                continue
            cells = [ci(summaries[m]["metrics"]["roc_auc"]) if m in summaries else "" for m in MODES]
            bases = {round(s["baseline"]["metrics"]["roc_auc"]["point"], 12) for s in summaries.values()
                     if s.get("baseline")}
            assert len(bases) <= 1, f"{regime} {n}: the groups' baselines differ: not the same folds"
            res = summaries.get("residual", {})
            base = ci(res["baseline"]["metrics"]["roc_auc"]) if res.get("baseline") else ""
            diff = res.get("comparison", {}).get("auc_difference")
            vs_base = f"{diff['diff']:+.3f} ({diff['low']:+.3f} to {diff['high']:+.3f})" if diff else ""
            vs_image = (f"{res['metrics']['roc_auc']['point'] - summaries['image']['metrics']['roc_auc']['point']:+.3f}"
                        if res and "image" in summaries else "")
            print("| " + " | ".join([text, str(n), *cells, base, vs_base, vs_image]) + " |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "outs/f20_")
