"""From a hospital's export (one CSV row per X-ray plus the raw images) to the data folder training
reads: the library of ``preprocess_filenames.py``, which owns the command line.

    code = run(args)   # args: preprocess_filenames.build_parser().parse_args(...), checked by its main

The order of the steps lives here; ``patient_table.py`` reads and checks the CSV, ``imaging.py``
decodes and shapes the images, ``datafolder.py`` writes the folder. Messages go to the console and,
once the output folder exists, to its log (those logged before are held by :class:`_Buffer` and
written there too). The manual: docs/data.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

from hipx.core import files as fileio
from hipx.core.measures import UNSCORED
from hipx.data.preprocessing import Preprocessing
from hipx.data.splits import DEFAULT_FRACTIONS, assign_folds, assign_splits, patient_labels
from hipx.prepare import datafolder
from hipx.prepare.patient_table import (DEFAULT_SEX_MAP, Columns, Options, PreprocessError, Row, SkipLog,
                                        assign_crops, check_measure_column, find_csv, parse_sex_map, read_table, resolve_columns,
                                        unused_files, validate)

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- the steps

def check_paths(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """``(images, out, csv)`` once the folders are usable: ``--images`` a folder, ``--out`` apart from it
    (outputs are never written among the inputs) and the CSV a file outside ``--out``."""
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
    return root, out, csv_path


def read_rows(args: argparse.Namespace, csv_path: Path, root: Path) -> tuple[Columns, list[Row], SkipLog]:
    """``(columns, rows, skips)``: the CSV's usable rows, checked (``--strict``: the first bad row is
    fatal), and every skipped row or unlisted file under ``--images`` in ``skips``."""
    header, records = read_table(csv_path, args.csv_encoding, args.delimiter)
    logger.info("%s: %d rows, columns: %s", csv_path, len(records), ", ".join(header))
    cols = resolve_columns(header, args, csv_path)
    check_measure_column(header, records, cols, csv_path)
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
    return cols, rows, skips


def assign_patients(args: argparse.Namespace, rows: list[Row], from_column: bool
                    ) -> tuple[dict[str, str], dict[str, int]]:
    """``(splits, folds)`` by patient: each patient's split (from the CSV's split column when
    ``from_column``, else drawn stratified by label) and, with ``--folds``, the fold of each train+val
    patient. Unscored rows take neither."""
    scored = [row for row in rows if row.label is not None]
    labels = patient_labels((row.patient, row.label) for row in scored)
    if from_column:
        splits: dict[str, str] = {}
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
    return splits, folds


def build_data_folder(args: argparse.Namespace, buffer: "_Buffer") -> int:
    """The steps of a run, from checking the folders to the written data folder; 0 when done. The
    records ``buffer`` held until the output folder existed go into its log."""
    root, out, csv_path = check_paths(args)
    out_real = out.resolve()  # as given, before the folder is made
    csv_bytes = csv_path.read_bytes()
    cols, rows, skips = read_rows(args, csv_path, root)
    assign_crops(rows, args.split_hips)
    splits, folds = assign_patients(args, rows, from_column=cols.split is not None)

    fingerprint, settings = datafolder.settings_fingerprint(args, csv_bytes, root)
    resume = datafolder.prepare_out(out, fingerprint, args.overwrite)
    file_handler = logging.FileHandler(out / datafolder.LOG, mode="a" if resume else "w", encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s"))
    logging.getLogger().addHandler(file_handler)
    logging.getLogger().removeHandler(buffer)
    try:
        for record in buffer.records:
            file_handler.handle(record)
        # "preprocessing": how a new raw file goes through these steps again (runs copy it, predict.py applies it)
        config = {"csv": str(csv_path.resolve()), "images": str(root), "out": str(out_real),
                  "columns": vars(cols), "settings": settings, "fingerprint": fingerprint,
                  "preprocessing": Preprocessing.from_args(args).to_dict()}
        fileio.write_bytes(out / datafolder.CONFIG, json.dumps(config, indent=1, default=str).encode("utf-8"))
        return datafolder.write_images(args, out, rows, splits, folds, skips, resume, cols.measure_name)
    finally:
        logging.getLogger().removeHandler(file_handler)
        file_handler.close()


# ----------------------------------------------------------------------------- logging and outcome

class _Buffer(logging.Handler):
    """Holds log records until the output folder (and its log file) exists."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def run(args: argparse.Namespace) -> int:
    """What ``preprocess_filenames.py`` does with its parsed and checked flags: log to the console (and
    the output folder's log), build the data folder, and turn a problem into one logged line and an exit
    status: 0 done, 1 a bad input or a file-system error (a folder this run made is removed again),
    130 interrupted."""
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
        return build_data_folder(args, buffer)
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
