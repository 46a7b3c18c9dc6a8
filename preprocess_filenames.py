"""python preprocess_filenames.py --csv patient_list.csv --images RAW_DIR --out data/

From a hospital's export (one CSV row per X-ray plus the raw images) to the data folder training
reads: fixed-size 8-bit PNGs named in the file-name format, split by patient into
``OUT/train|val|test``, with ``manifest.csv`` (keeping the T-score, BMD or grade as ``measure``) and
``skipped.csv``; rows with a measurement but an empty label go to ``OUT/unscored/``. The script owns
the command line; ``hipx/prepare/export.py`` the order of the steps, ``patient_table.py`` reads and
checks the CSV, ``imaging.py`` decodes and shapes the images, ``datafolder.py`` writes the folder. The
manual: docs/data.md.
"""
from __future__ import annotations

import argparse
import math
from typing import Sequence

from hipx.core.choices import MIN_SIDE
from hipx.core.cli import add_output, add_overwrite, add_seed, run_main
from hipx.core.measures import UNSCORED
from hipx.data.splits import IMAGE_SIZE
from hipx.prepare.patient_table import COLUMN_CANDIDATES, DEFAULT_SEX_MAP, FLAGS, parse_sex_map


# ----------------------------------------------------------------------------- command line

def _size(text: str) -> int:
    value = int(text)
    if value < MIN_SIDE:  # what training accepts (loader.check_shape)
        raise argparse.ArgumentTypeError(f"size must be at least {MIN_SIDE} pixels, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"split fraction must be between 0 and 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="preprocess_filenames.py",
        description="Turn a hospital export (CSV + raw X-rays) into fixed-size 8-bit PNGs named\n"
                    "<patient>_<crop>_<label>-<sex>-<age>-<bmi>.png, split by patient into OUT/train|val|test,\n"
                    "with OUT/manifest.csv and OUT/skipped.csv. Inputs are only read.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n"
               "  python preprocess_filenames.py --csv patient_list.csv --images raw/ --out data/\n"
               "  python preprocess_filenames.py --images raw/ --out data/ --id-col PatientID --image-col File \\\n"
               "      --tscore-col T_score --sex-col Gender --sex-map 'w=1,m=0' --height-col Height \\\n"
               "      --weight-col Weight --split-hips --folds 5\n\n"
               "An interrupted run is finished by running the same command again.")
    g = parser.add_argument_group("input and output")
    g.add_argument("--csv", help="the export's patient list (default: patient_list.csv or pateint_list.csv in "
                                 "--images, its parent or the current folder)")
    g.add_argument("--images", required=True, help="folder with the raw X-rays; CSV image paths are relative to it")
    add_output(g, "output folder (new or empty; see --overwrite)")
    g.add_argument("--csv-encoding", default="utf-8-sig", help="text encoding of the CSV (default: %(default)s)")
    g.add_argument("--delimiter", default=None, help="CSV field separator (default: detected among , ; tab |)")

    g = parser.add_argument_group("columns (names are matched case-insensitively)")
    for role, help_text in (("id", "patient id"), ("image", "image path relative to --images"),
                            ("label", "label 0 normal / 1 osteoporosis")):
        g.add_argument(FLAGS[role], dest=f"{role}_col", metavar="NAME",
                       help=f"{help_text} (default: first of {', '.join(COLUMN_CANDIDATES[role])})")
    g.add_argument("--tscore-col", metavar="NAME", help="derive the label from this T-score column instead; the "
                   "T-score is kept in manifest.csv (measure, measure_name T-score) unless --grade-col/--bmd-col")
    g.add_argument("--tscore-cutoff", type=float, default=-2.5,
                   help="label 1 when T-score <= this (default: %(default)s, the WHO definition)")
    g.add_argument("--grade-col", metavar="NAME", help="an ordered whole-number grade (e.g. Singh 1-6, lower = "
                   "worse) kept in manifest.csv (measure, measure_name grade) for graded training targets; the "
                   "label still comes from the label column or --tscore-col. A row with an empty label and a "
                   f"grade goes to OUT/{UNSCORED}/ (label NA): it trains graded targets and is never scored")
    g.add_argument("--bmd-col", metavar="NAME", help="a bone mineral density in g/cm^2 kept in manifest.csv (measure, "
                   f"measure_name BMD), as --grade-col (an empty label with a BMD: OUT/{UNSCORED}/)")
    for role, help_text in (("sex", "sex"), ("age", "age in years"), ("bmi", "BMI in kg/m^2"),
                            ("height", "height in cm or m, with --weight-col: BMI where --bmi-col is empty"),
                            ("weight", "weight in kg")):
        g.add_argument(FLAGS[role], dest=f"{role}_col", metavar="NAME",
                       help=f"{help_text} (default: first of {', '.join(COLUMN_CANDIDATES[role])}; absent: NA)")
    g.add_argument("--sex-map", type=parse_sex_map, default=None, metavar="MAP",
                   help=f"CSV value -> 1 female / 0 male, case-insensitive (default: '{DEFAULT_SEX_MAP}')")
    g.add_argument("--height-unit", choices=("auto", "cm", "m"), default="auto",
                   help="unit of --height-col; auto: a value below 3 is metres (default: %(default)s)")
    g.add_argument("--crop-col", metavar="NAME", help="crop number per row (default: 1, 2, ... per patient)")
    g.add_argument("--box-cols", nargs=4, metavar=("X0", "Y0", "X1", "Y1"),
                   help="columns with a crop box in raw-image pixels, cut before resizing")
    g.add_argument("--sanitize-ids", action="store_true",
                   help="rewrite patient ids for file names (runs of other than letters, digits, _ and . -> _) "
                        "instead of skipping rows whose id contains '-', '/', ...")

    g = parser.add_argument_group("images")
    g.add_argument("--size", nargs=2, type=_size, default=list(IMAGE_SIZE), metavar=("H", "W"),
                   help="output height and width (default: %(default)s)")
    g.add_argument("--fit", choices=("pad", "crop", "stretch"), default="pad",
                   help="keep the aspect ratio and pad with black, keep it and centre-crop, or stretch "
                        "(default: %(default)s)")
    g.add_argument("--split-hips", action="store_true",
                   help="cut an AP pelvis into crop 1 (right hip, image left half) and crop 2 (left hip, mirrored)")
    g.add_argument("--roi", choices=("femur",), default=None,
                   help="cut each hip's proximal femur (head, neck, trochanters, upper shaft) at native resolution, "
                        "oriented as --split-hips (which it implies); upside-down images are turned and markers "
                        "painted over (see roi.py)")

    g = parser.add_argument_group("splits")
    g.add_argument("--split", nargs=3, type=_fraction, metavar=("TRAIN", "VAL", "TEST"),
                   help="patient fractions, stratified by label (default: 0.7 0.15 0.15)")
    add_seed(g, "the split and folds")
    g.add_argument("--split-col", metavar="NAME", help="take each patient's split from this column (train/val/test)")
    g.add_argument("--folds", type=int, default=None, metavar="K",
                   help="also number train+val patients into K folds (manifest column 'fold')")

    g = parser.add_argument_group("safety")
    add_overwrite(g, "an earlier run in a non-empty --out", note=": only files this tool writes are replaced or "
                  "removed")
    g.add_argument("--strict", action="store_true",
                   help="make a bad row or image fatal instead of skipping it (every bad CSV row is listed)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse and cross-check the flags, then build the data folder (:func:`hipx.prepare.export.run`);
    returns the exit status (0 done, 1 a bad input, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.split is not None and args.split_col is not None:
        parser.error("--split and --split-col exclude each other")
    if args.split is not None and not math.isclose(sum(args.split), 1.0, abs_tol=1e-6):
        parser.error(f"--split fractions must sum to 1, got {' + '.join(map(str, args.split))} = {sum(args.split):g}")
    if args.roi and args.crop_col is not None:
        parser.error("--roi cuts two hips per image and numbers the crops itself; it excludes --crop-col")
    args.split_hips = args.split_hips or bool(args.roi)
    if args.split_hips and args.crop_col is not None:
        parser.error("--split-hips numbers the crops itself; it excludes --crop-col")
    if args.tscore_col is not None and args.label_col is not None:
        parser.error("give either --label-col or --tscore-col, not both")
    if args.grade_col is not None and args.bmd_col is not None:
        parser.error("one measurement per data folder: give either --grade-col or --bmd-col, not both")
    if args.folds is not None and args.folds < 2:
        parser.error(f"--folds must be at least 2, got {args.folds}")

    from hipx.prepare import export  # numpy, OpenCV, Pillow: after the command line is checked

    return export.run(args)


if __name__ == "__main__":
    run_main(main)
