"""The demo's continuous run: calibration slope and Brier of its test probabilities with the fitted scale
(what the run scores, the residual SD on validation) against the scale assumed before it was fitted
(targets.LOGIT_PER_SD logit per training SD), both read from the same test predictions.

    python scripts/demo_calibration.py outs/g32_demo/fold_continuous
"""
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hipx.core import targets  # noqa: E402
from hipx.stats import confidence  # noqa: E402


def main(run: str) -> None:
    config = json.loads((Path(run) / "config.json").read_text())
    spec = targets.TargetSpec.from_dict(config["target_spec"])
    test = pd.read_csv(Path(run) / "test_predictions.csv")
    z = (test["predicted"].to_numpy(float) - spec.mean) / spec.sd
    assumed = 1 / (1 + np.exp(-targets.LOGIT_PER_SD * (spec.z_cut - z)))
    fitted = test["probability"].to_numpy(float)
    val = json.loads((Path(run) / "test_metrics.json").read_text())
    print(f"run {run}: {len(test)} test images, residual SD on validation "
          f"{val.get('residual_sd', 'see report')}")
    for name, p in (("assumed scale (3.4 logit per SD)", assumed), ("fitted scale", fitted)):
        c = confidence.calibration(test["label"].to_numpy(int), p)
        print(f"{name:34s} calibration slope {c['slope']:.3f}  intercept {c['intercept']:.3f}  "
              f"Brier {c['brier']:.4f}  clipped {c['n_clipped']}")


if __name__ == "__main__":
    main(sys.argv[1])
