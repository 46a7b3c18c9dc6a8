"""python scripts/target_table.py RUNS TIMES N [N ...]

The markdown table of scripts/target_table.sh from its run groups' cv_summary.json: per number of
patients and target, the pooled out-of-fold ROC AUC, its paired difference against the binary
target on the same patients, and, for graded targets, how well the predicted measurement agrees
with the measured one (measure_report.py), each with its patient-bootstrap 95 % CI."""
import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hipx.stats import confidence  # noqa: E402
from hipx.data import filenames  # noqa: E402
from hipx.stats import metrics  # noqa: E402
from hipx.reports.style import ci  # noqa: E402

TARGETS = ("binary", "continuous", "ordinal")


def agreement(summary: dict) -> str:
    block = summary.get("measurement")
    if not block:
        return "-"
    stats = block["statistics"]
    if block["kind"] == "continuous":
        return f"MAE {ci(stats['mae'], digits=2)}; Pearson r {ci(stats['pearson_r'], digits=2)}"
    return f"weighted kappa {ci(stats['kappa_quadratic'], digits=2)}; class MAE {ci(stats['mae_classes'], digits=2)}"


def pooled(group: Path) -> pd.DataFrame:
    """The out-of-fold test predictions of a run group's folds, one row per image."""
    return pd.concat([pd.read_csv(f) for f in sorted(group.glob("fold*/test_predictions.csv"))], ignore_index=True)


def against_binary(runs: Path, n: str, target: str) -> str:
    """The pooled AUC difference target - binary on the same images, paired bootstrap over patients."""
    if target == "binary" or not (runs / f"n{n}_binary").is_dir():
        return "-"
    both = pooled(runs / f"n{n}_{target}").merge(pooled(runs / f"n{n}_binary"), on=["file", "label"],
                                                 suffixes=("", "_binary"), validate="one_to_one")
    groups = both["file"].map(lambda f: filenames.decode(f).patient).to_numpy()
    d = confidence.paired_bootstrap_diff(both["label"].to_numpy(), both["probability"].to_numpy(),
                                         both["probability_binary"].to_numpy(), metrics.roc_auc, groups=groups)
    return f"{d['diff']:+.3f} ({d['low']:+.3f} to {d['high']:+.3f})"


def main(runs: Path, times: Path, patients: list[str]) -> None:
    seconds = dict(line.split("\t") for line in times.read_text().splitlines() if line)
    print("| patients | target | pooled out-of-fold ROC AUC (95 % CI) | minus binary (paired, 95 % CI) "
          "| predicted against measured T-score (95 % CI) | wall time |")
    print("|---:|---|---|---|---|---:|")
    for n in patients:
        for target in TARGETS:
            name = f"n{n}_{target}"
            path = runs / name / "cv_summary.json"
            if not path.is_file():
                print(f"| {n} | {target} | not run | | | |")
                continue
            summary = json.loads(path.read_text())
            wall = f"{int(seconds[name]) / 60:.1f} min" if name in seconds else "n/a"
            print(f"| {n} | {target} | {ci(summary['pooled']['metrics']['roc_auc'])} | {against_binary(runs, n, target)} "
                  f"| {agreement(summary)} | {wall} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
