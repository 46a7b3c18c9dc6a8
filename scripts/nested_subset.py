"""python scripts/nested_subset.py SOURCE TARGET N SEED

The first N patients of one seeded order of SOURCE's patients (so the subsets are nested: the 25 are
among the 50), every image of them copied into TARGET/train/ for ``main.py --folds K --cv oof``, and
their rows of SOURCE's manifest.csv (with the measurement, measures.py) written to TARGET/manifest.csv.
The label-efficiency and target-table measurements draw their patient subsets with it."""
import csv
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hipx.data import filenames  # noqa: E402


def main(source: Path, target: Path, n: int, seed: int) -> None:
    files = [f for split in ("train", "val", "test") for f in filenames.list_split(source, split)]
    patients = sorted({filenames.decode(f).patient for f in files})
    if n > len(patients):
        sys.exit(f"{n} patients asked for, {source} has {len(patients)}")
    chosen = set(np.random.default_rng(seed).permutation(patients)[:n])  # one order for every N: nested
    (target / "train").mkdir(parents=True)
    kept = {}
    for f in files:
        if filenames.decode(f).patient in chosen:
            shutil.copy2(f, target / "train" / f.name)
            kept[f.name] = f"train/{f.name}"
    manifest = source / "manifest.csv"
    if manifest.is_file():
        with manifest.open(newline="") as fh:
            reader = csv.DictReader(fh)
            rows = [{**r, "file": kept[Path(r["file"]).name], "split": "train"}
                    for r in reader if Path(r["file"]).name in kept]
            fields = reader.fieldnames
        with (target / "manifest.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
