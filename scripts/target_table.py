"""python scripts/target_table.py RUNS TIMES N [N ...]

The markdown table of scripts/target_table.sh from its run groups' cv_summary.json: per number of
patients and target, the pooled out-of-fold ROC AUC and, for graded targets, how well the predicted
measurement agrees with the measured one (measure_report.py), each with its patient-bootstrap 95 % CI."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from report_render import ci  # noqa: E402

TARGETS = ("binary", "continuous", "ordinal")


def agreement(summary: dict) -> str:
    block = summary.get("measurement")
    if not block:
        return "-"
    stats = block["statistics"]
    if block["kind"] == "continuous":
        return f"MAE {ci(stats['mae'], digits=2)}; Pearson r {ci(stats['pearson_r'], digits=2)}"
    return f"weighted kappa {ci(stats['kappa_quadratic'], digits=2)}; class MAE {ci(stats['mae_classes'], digits=2)}"


def main(runs: Path, times: Path, patients: list[str]) -> None:
    seconds = dict(line.split("\t") for line in times.read_text().splitlines() if line)
    print("| patients | target | pooled out-of-fold ROC AUC (95 % CI) | predicted against measured T-score (95 % CI) "
          "| wall time |")
    print("|---:|---|---|---|---:|")
    for n in patients:
        for target in TARGETS:
            name = f"n{n}_{target}"
            path = runs / name / "cv_summary.json"
            if not path.is_file():
                print(f"| {n} | {target} | not run | | |")
                continue
            summary = json.loads(path.read_text())
            wall = f"{int(seconds[name]) / 60:.1f} min" if name in seconds else "n/a"
            print(f"| {n} | {target} | {ci(summary['pooled']['metrics']['roc_auc'])} | {agreement(summary)} | {wall} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
