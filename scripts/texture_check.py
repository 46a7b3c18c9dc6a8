"""How much a plain texture model tells from the images: the yardstick a network should beat.

    python scripts/texture_check.py DATA_DIR [--folds 5] [--seed 0] [--by field] [--learning_curve 0.25 0.5 1.0]

Out-of-fold, on the same patient folds as ``main.py --folds K --cv oof --seed S``: for each fold a
logistic regression (standardised inputs, L2) is fitted on the fold's training and validation
images and scores its test images. Inputs, per image (grey levels of the whole image, resized to
224 x 128): five intensity percentiles, the mean band-pass energy at four scales (difference of
Gaussians, sigma 1-16 pixels: trabecular streaks to cortex) and, in four horizontal bands from top
(femoral head) to bottom (shaft), mean, SD and gradient magnitude of the standardised image. Pixels
at 0 (a segmentation's black background) are left out of the statistics.

Prints the pooled out-of-fold ROC AUC with a patient-bootstrap 95 % CI, and with ``--by`` the same
within each value of a manifest column (e.g. ``field`` from ``preprocess_filenames.py --roi``).
About 10 s for the 514 hip-dev crops with 2000 resamples on the 2-core CPU machine.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hipx.stats import confidence  # noqa: E402
from hipx.reports import cv as cv_report  # noqa: E402
from hipx.data import filenames  # noqa: E402
from hipx.core.cli import add_bootstrap, add_seed, run_main  # noqa: E402
from hipx.data import subsets  # noqa: E402
from hipx.data.folds import oof_splits  # noqa: E402
from hipx.stats import learning_curve as lc  # noqa: E402
from hipx.stats import metrics  # noqa: E402
from hipx.reports.style import ci  # noqa: E402

WORK_SIZE = (128, 224)  # (width, height) of the image the features are computed on
SCALES = (1, 2, 4, 8)  # band-pass sigma (pixels at WORK_SIZE); each band is sigma .. 2 sigma
BANDS = 4  # horizontal bands, femoral head at the top to shaft at the bottom
C = 0.3  # L2 strength for about 30 inputs and a few hundred images


def texture_features(grey: np.ndarray) -> np.ndarray:
    """The 5 + 4 + 3 * 4 = 21 numbers of one grey image (see the module docstring)."""
    a = cv2.resize(grey.astype(np.float32), WORK_SIZE, interpolation=cv2.INTER_AREA)
    inside = a > 0
    if inside.sum() < 0.05 * a.size:  # nearly all black: use every pixel
        inside = np.ones_like(inside)
    values = a[inside]
    z = (a - values.mean()) / (values.std() + 1e-6)
    out = list(np.percentile(values, [5, 25, 50, 75, 95]) / 255.0)
    for s in SCALES:
        band = cv2.GaussianBlur(z, (0, 0), s) - cv2.GaussianBlur(z, (0, 0), 2 * s)
        out.append(float(np.abs(band[inside]).mean()))
    for part in np.array_split(z, BANDS, axis=0):
        gy, gx = np.gradient(part)
        out += [float(part.mean()), float(part.std()), float(np.hypot(gx, gy).mean())]
    return np.asarray(out, dtype=np.float64)


def read_grey(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise ValueError(f"{path}: not a readable image")
    return img


def out_of_fold(data_dir: Path, folds: int, seed: int, size: float | int | None = None,
                features: dict | None = None) -> pd.DataFrame:
    """file, patient, label, probability of every image, each scored by the fold model that never saw it.
    ``size`` (a learning-curve size, as main.py --learning_curve): fit on that nested subset of each fold's
    training patients only (the network's subsets: the same order, seed [seed, fold]); None: on the fold's
    training and validation images, the yardstick as first measured."""
    splits = oof_splits(data_dir, folds, seed)
    files = sorted({f for s in splits for f in s["test"]})
    if features is None:
        features = {f: texture_features(read_grey(f)) for f in files}
    rows = []
    for k, split in enumerate(splits):
        # nothing to choose on validation: a fixed penalty
        fit = split["train"] + split["val"] if size is None else subsets.subset_files(split["train"], size, [seed, k])
        x = np.stack([features[f] for f in fit])
        y = [filenames.decode(f).label for f in fit]
        model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000)).fit(x, y)
        p = model.predict_proba(np.stack([features[f] for f in split["test"]]))[:, 1]
        for f, prob in zip(split["test"], p):
            info = filenames.decode(f)
            rows.append({"file": Path(f).name, "patient": info.patient, "label": info.label, "probability": prob})
    return pd.DataFrame(rows)


def auc_line(part: pd.DataFrame, n_boot: int, seed: int) -> str:
    y = part["label"].to_numpy(dtype=np.int64)
    if not 0 < y.sum() < len(y):
        return f"n/a (one class) over {len(part)} images"
    auc = confidence.bootstrap_metrics(y, part["probability"].to_numpy(dtype=float), 0.5,
                                       groups=part["patient"].to_numpy(), n_boot=n_boot, seed=seed)["roc_auc"]
    return f"{ci(auc)} over {len(part)} images of {part['patient'].nunique()} patients"


def learning_curve(data_dir: Path, folds: int, seed: int, sizes: list, n_boot: int) -> list[str]:
    """The texture model's learning curve on the network's nested subsets: per size the pooled out-of-fold
    AUC with its patient CI and the training patients per fold, fitted and extrapolated as the CV report
    does (hipx.stats.learning_curve), and its verdict."""
    splits = oof_splits(data_dir, folds, seed)
    features = {f: texture_features(read_grey(f)) for f in sorted({f for s in splits for f in s["test"]})}
    points, lines = [], []
    for size in sizes:
        n = [len({filenames.decode(f).patient for f in subsets.subset_files(s["train"], size, [seed, k])})
             for k, s in enumerate(splits)]
        table = out_of_fold(data_dir, folds, seed, size, features)
        y = table["label"].to_numpy(dtype=np.int64)
        point = confidence.bootstrap_ci(y, table["probability"].to_numpy(dtype=float), metrics.roc_auc,
                                        groups=table["patient"].to_numpy(), n_boot=n_boot, seed=seed)
        points.append({"n_patients": float(np.mean(n)), "auc": point["point"], "low": point["low"],
                       "high": point["high"]})
        lines.append(f"  size {size:g}: {np.mean(n):.1f} training patients per fold, pooled out-of-fold ROC AUC "
                     f"{point['point']:.3f} ({point['low']:.3f} to {point['high']:.3f})")
    try:
        fit = lc.extrapolate(points, seed=seed)
    except ValueError as exc:  # fewer than 3 sizes, or a point without an interval (one class, AUC 1)
        return lines + [f"  no fit: {exc}"]
    ext = "; ".join(f"{e['multiple']:g}x ({e['n_patients']:.0f}): {e['auc']:.3f} ({e['low']:.3f} to "
                    f"{e['high']:.3f})" for e in fit["extrapolation"])
    return lines + [f"  fit AUC(n) = {fit['a']:.3f} - {fit['b']:.3g} n^-{fit['c']:.3f}; extrapolated {ext}",
                    f"  {fit['verdict']}"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data_dir", type=Path, help="data folder of preprocess_filenames.py (train/ val/ test/)")
    p.add_argument("--folds", type=int, default=5, help="out-of-fold folds, as main.py --folds (default: 5)")
    add_seed(p, "the folds, as main.py --seed")
    p.add_argument("--by", nargs="+", default=[], metavar="COLUMN", help="manifest columns to break down by")
    p.add_argument("--learning_curve", nargs="+", type=subsets.parse_size, default=None, metavar="SIZE",
                   help="also the learning curve on these sizes of each fold's training patients (fractions or "
                        "counts, as main.py --learning_curve; fitted on the training subset only)")
    add_bootstrap(p)
    args = p.parse_args(argv)
    pooled = out_of_fold(args.data_dir, args.folds, args.seed)
    print(f"texture model, pooled out-of-fold ROC AUC {auc_line(pooled, args.bootstrap, args.seed)}")
    if args.by:
        for g in cv_report.subgroup_results(pooled, args.data_dir, args.by, args.bootstrap, args.seed):
            auc = ci(g["roc_auc"]) if g["roc_auc"] else "n/a (one class)"
            print(f"  {g['column']} = {g['value']}: {auc} over {g['n_images']} images of {g['n_patients']} patients")
    if args.learning_curve:
        print("texture model, learning curve (fitted on each fold's nested training subset, as the network's):")
        print("\n".join(learning_curve(args.data_dir, args.folds, args.seed, args.learning_curve, args.bootstrap)))
    return 0


if __name__ == "__main__":
    run_main(main)
