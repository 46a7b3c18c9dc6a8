"""python3 preprocess_filenames.py --csv patient_list.csv --images RAW_DIR --out data/

From a hospital's export (one CSV row per X-ray plus the raw images) to the data folder training
reads: fixed-size 8-bit PNGs named in the file-name format, split by patient into
``OUT/train|val|test``, with ``manifest.csv`` (keeping the T-score, BMD or grade as ``measure``) and
``skipped.csv``; rows with a measurement but an empty label go to ``OUT/unscored/``. The script owns
the command line and the order of the steps; ``patient_table.py`` reads and checks the CSV,
``imaging.py`` decodes and shapes the images, ``datafolder.py`` writes the folder. The manual:
docs/data.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
from pathlib import Path
from typing import Sequence

from hipx.runs import runfiles
from hipx.core.choices import MIN_SIDE
from hipx.core.cli import add_output, add_overwrite, add_seed, run_script
from hipx.core.measures import UNSCORED
from hipx.prepare.patient_table import (COLUMN_CANDIDATES, DEFAULT_SEX_MAP, FLAGS, Options, PreprocessError, SkipLog,
                           assign_crops, find_csv, parse_sex_map, read_table, resolve_columns, unused_files,
                           validate)
from hipx.data.splits import DEFAULT_FRACTIONS, IMAGE_SIZE, assign_folds, assign_splits, patient_labels

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- the steps

def run(args: argparse.Namespace, buffer: "_Buffer") -> int:
    """The steps of a run, from checking the folders to the written data folder; 0 when done."""
    images = Path(args.images)
    if not images.is_dir():
        raise PreprocessError(f"--images {images} is not a folder")
    root = images.resolve()
    out = Path(args.out)
    out_real = out.resolve()
    if out_real == root or out_real.is_relative_to(root) or root.is_relative_to(out_real):
        raise PreprocessError(f"--out {out} must be outside --images {images} (and not contain it): "
                              "outputs are never written among the inputs")
    csv_path = Path(args.csv) if args.csv else find_csv(images)
    if not csv_path.is_file():
        raise PreprocessError(f"--csv {csv_path} is not a file")
    if csv_path.resolve().is_relative_to(out_real):
        raise PreprocessError(f"--out {out} contains the CSV {csv_path}; choose an output folder of its own")

    csv_bytes = csv_path.read_bytes()
    header, records = read_table(csv_path, args.csv_encoding, args.delimiter)
    logger.info("%s: %d rows, columns: %s", csv_path, len(records), ", ".join(header))
    cols = resolve_columns(header, args, csv_path)
    sex_map = args.sex_map if args.sex_map is not None else parse_sex_map(DEFAULT_SEX_MAP)
    if cols.sex is not None:
        logger.info("sex map (1 female, 0 male): %s", ", ".join(f"{k}={v}" for k, v in sex_map.items()))
    opts = Options(root=root, sex_map=sex_map, tscore_cutoff=args.tscore_cutoff,
                   height_unit=args.height_unit, sanitize_ids=args.sanitize_ids)
    skips = SkipLog(csv_path, args.strict)
    rows, referenced = validate(header, records, cols, opts, skips)
    skips.fail_if_strict()
    unused = unused_files(root, referenced, {csv_path.resolve()})
    for name in unused:
        skips.skip("", name, "", "not_in_csv", f"file {name} under --images is not listed in the CSV", warn=False)
    if unused:
        logger.info("%d file(s) under --images are not listed in the CSV (e.g. %s); they are listed in %s",
                    len(unused), ", ".join(unused[:3]), datafolder.SKIPPED)
    if not rows:
        raise PreprocessError(f"{csv_path}: no usable rows ({len(skips.rows)} skipped); see the messages above")

    assign_crops(rows, args.split_hips)
    scored = [row for row in rows if row.label is not None]  # unscored rows take no split and no fold
    labels = patient_labels((row.patient, row.label) for row in scored)
    if cols.split is not None:
        splits = {}
        for row in scored:
            splits.setdefault(row.patient, row.split)
    else:
        splits = assign_splits(labels, args.split or DEFAULT_FRACTIONS, args.seed)
    mixed = sorted({row.patient for row in rows if row.label is None} & set(splits))
    if mixed:  # their unscored/ images must stay on their patient's side of every split and fold
        logger.warning("%d patient(s) have images in %s/ and labelled ones (e.g. %s): training on %s/ must leave "
                       "out the images of patients in val, test or the held-out fold (manifest column patient)",
                       len(mixed), UNSCORED, ", ".join(mixed[:3]), UNSCORED)
    folds: dict[str, int] = {}
    if args.folds:
        dev = {p: y for p, y in labels.items() if splits[p] != "test"}
        try:
            folds = assign_folds(dev, args.folds, args.seed)
        except ValueError as exc:
            raise PreprocessError(f"{exc} (train+val patients)") from exc

    fingerprint, settings = datafolder.settings_fingerprint(args, csv_bytes, root)
    resume = datafolder.prepare_out(out, fingerprint, args.overwrite)
    file_handler = logging.FileHandler(out / datafolder.LOG, mode="a" if resume else "w", encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s"))
    logging.getLogger().addHandler(file_handler)
    logging.getLogger().removeHandler(buffer)
    try:
        for record in buffer.records:
            file_handler.handle(record)
        config = {"csv": str(csv_path.resolve()), "images": str(root), "out": str(out_real),
                  "columns": vars(cols), "settings": settings, "fingerprint": fingerprint}
        runfiles.write_bytes(out / datafolder.CONFIG, json.dumps(config, indent=1, default=str).encode("utf-8"))
        return datafolder.write_images(args, out, rows, splits, folds, skips, resume, cols.measure_name)
    finally:
        logging.getLogger().removeHandler(file_handler)
        file_handler.close()


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
               "  python3 preprocess_filenames.py --csv patient_list.csv --images raw/ --out data/\n"
               "  python3 preprocess_filenames.py --images raw/ --out data/ --id-col PatientID --image-col File \\\n"
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


class _Buffer(logging.Handler):
    """Holds log records until the output folder (and its log file) exists."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def main(argv: Sequence[str] | None = None) -> int:
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

    root = logging.getLogger()
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(levelname)-7s %(message)s"))
    buffer = _Buffer()
    old_level = root.level
    root.setLevel(logging.INFO)
    root.addHandler(console)
    root.addHandler(buffer)
    fresh = not Path(args.out).exists()  # made by this run: a failure removes it again
    try:
        return run(args, buffer)
    except PreprocessError as exc:
        logger.error("%s", exc)
        return 1
    except OSError as exc:  # disk full, permissions, ...: say so plainly
        removed = fresh and Path(args.out).is_dir()
        if removed:
            shutil.rmtree(args.out, ignore_errors=True)
        logger.error("%s%s", exc, f" (removed {args.out}, which this run had begun to write)" if removed else "")
        return 1
    except KeyboardInterrupt:
        logger.error("interrupted; run the same command again to finish (images written so far are kept)")
        return 130
    finally:
        root.removeHandler(console)
        root.removeHandler(buffer)
        root.setLevel(old_level)


if __name__ == "__main__":
    run_script(build_parser, __file__)  # --help and a mistyped flag answer before the image libraries load

from hipx.prepare import datafolder  # noqa: E402 - numpy, OpenCV, Pillow: after the command line is checked
