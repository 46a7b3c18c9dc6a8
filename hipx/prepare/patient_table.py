"""A hospital export's patient list (``patient_list.csv``): its columns found, every row parsed and
checked, the usable rows returned and every refused one recorded with its CSV line and reason.

The first half of ``preprocess_filenames.py`` (the second writes the data folder: ``datafolder.py``).
Stdlib only, so that the script's ``--help`` answers before the image libraries load. What the
columns may hold and why a row is skipped: docs/data.md.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import logging
import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Mapping, Sequence

from hipx.data import filenames

logger = logging.getLogger(__name__)

CSV_NAMES = ("patient_list.csv", "pateint_list.csv")  # the second is the original export's spelling
DEFAULT_SEX_MAP = "F=1,female=1,W=1,M=0,male=0,1=1,0=0"  # W: weiblich; 1 female / 0 male as in filenames
MISSING = frozenset({"", "na", "n/a", "nan", "null", "none"})

# Default column names, tried in this order, case-insensitively.
COLUMN_CANDIDATES: dict[str, tuple[str, ...]] = {
    "id": ("patient_id", "patient", "id", "patientid", "pid"),
    "image": ("image", "file", "filename", "path", "image_path", "img"),
    "label": ("label", "osteoporosis", "target"),
    "sex": ("sex", "gender"),
    "age": ("age",),
    "bmi": ("bmi",),
    "height": ("height", "height_cm", "height_m"),
    "weight": ("weight", "weight_kg"),
}
FLAGS = {"id": "--id-col", "image": "--image-col", "label": "--label-col", "tscore": "--tscore-col",
         "grade": "--grade-col", "bmd": "--bmd-col",
         "sex": "--sex-col", "age": "--age-col", "bmi": "--bmi-col", "height": "--height-col",
         "weight": "--weight-col", "crop": "--crop-col", "split": "--split-col", "box": "--box-cols"}
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "test": "test", "testing": "test"}

# Plausible ranges: a value outside is a typo (e.g. T-score -25 for -2.5), not a patient.
AGE_RANGE, BMI_RANGE = filenames.AGE_RANGE, filenames.BMI_RANGE  # the file-name format's plausible ranges
TSCORE_RANGE = (-10.0, 10.0)
BMD_RANGE = (0.05, 3.0)  # g/cm^2 (DXA hip BMD lies around 0.4-1.3); 850 would be mg/cm^2
GRADE_RANGE = (0.0, 10.0)  # ordered grades such as Singh 1-6 or WHO classes 0-2
MEASURE_RANGES = {"T-score": TSCORE_RANGE, "BMD": BMD_RANGE, "grade": GRADE_RANGE}  # by measures.NAMES
HEIGHT_RANGE_M = (0.3, 2.8)
WEIGHT_RANGE_KG = (1.0, 500.0)


class PreprocessError(Exception):
    """A problem that stops the run; the message says what and where."""


class RowProblem(ValueError):
    """Why one CSV row is skipped: ``kind`` is the reason column of skipped.csv."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass
class Row:
    """One usable CSV row (values already parsed)."""

    line: int
    image: str
    path: Path
    patient: str
    patient_csv: str
    label: int | None  # None: no binary label, a measurement only (an unscored row)
    sex: int | None
    age: float | None
    bmi: float | None
    measure: float | None = None  # the T-score, BMD or grade (--tscore-col/--bmd-col/--grade-col)
    crop: int | None = None
    split: str | None = None
    box: tuple[int, int, int, int] | None = None
    crops: list[tuple[int, str]] = field(default_factory=list)

    def values(self) -> tuple:
        return (self.patient, self.label, self.sex, self.age, self.bmi, self.measure, self.crop, self.split,
                self.box)


@dataclass
class Columns:
    id: str
    image: str
    label: str | None
    tscore: str | None
    sex: str | None
    age: str | None
    bmi: str | None
    height: str | None
    weight: str | None
    crop: str | None
    split: str | None
    box: tuple[str, str, str, str] | None
    measure: str | None = None  # the column kept as the measurement: --grade-col/--bmd-col, else --tscore-col
    measure_name: str | None = None  # what it is: a name of measures.NAMES


def find_csv(images: Path, cwd: Path | None = None) -> Path:
    """patient_list.csv (or the original's pateint_list.csv) in the images folder, its parent or cwd."""
    cwd = Path.cwd() if cwd is None else cwd
    places: list[Path] = []
    for folder in (images, images.resolve().parent, cwd):
        if folder.resolve() not in [p.resolve() for p in places]:
            places.append(folder)
    found = [folder / name for folder in places for name in CSV_NAMES if (folder / name).is_file()]
    if not found:
        raise PreprocessError(f"no --csv given and none of {', '.join(CSV_NAMES)} found in "
                              f"{', '.join(str(p) for p in places)}; pass --csv PATH")
    if len(found) > 1:
        logger.warning("several CSV files found (%s); using the first", ", ".join(map(str, found)))
    logger.info("using CSV %s (found automatically; pass --csv to choose another)", found[0])
    return found[0]


def read_table(path: Path, encoding: str = "utf-8-sig", delimiter: str | None = None
               ) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (line number, fields) of every non-blank record; line numbers count the header as 1."""
    try:
        with open(path, newline="", encoding=encoding) as f:
            text = f.read()
    except UnicodeDecodeError as exc:
        raise PreprocessError(f"{path}: not valid {encoding} text ({exc}); pass --csv-encoding, e.g. cp1252") from exc
    if delimiter is None:
        first = text.split("\n", 1)[0]
        try:
            delimiter = csv.Sniffer().sniff(first, delimiters=",;\t|").delimiter
        except csv.Error:
            delimiter = ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    records: list[tuple[int, list[str]]] = []
    header: list[str] | None = None
    previous = 0
    try:
        for fields in reader:
            start, previous = previous + 1, reader.line_num
            if not fields:
                continue
            if header is None:
                header = [h.strip() for h in fields]
                continue
            records.append((start, fields))
    except csv.Error as exc:
        raise PreprocessError(f"{path} line {reader.line_num}: cannot parse CSV: {exc}") from exc
    if header is None:
        raise PreprocessError(f"{path} is empty; expected a header line with the column names")
    seen: dict[str, str] = {}
    for name in header:
        if not name:
            continue  # unnamed trailing columns of a spreadsheet export
        if name.casefold() in seen:
            raise PreprocessError(f"{path}: column {name!r} appears twice in the header (as {seen[name.casefold()]!r})")
        seen[name.casefold()] = name
    return header, records


def resolve_columns(header: Sequence[str], args: argparse.Namespace, csv_path: Path) -> Columns:
    """Map roles (id, image, label, ...) to the CSV's column names; fatal for a missing required one."""
    lookup = {h.casefold(): h for h in header}
    present = ", ".join(header)

    def find(role: str, given: str | None, auto: bool = True) -> str | None:
        if given is not None:
            name = lookup.get(given.strip().casefold())
            if name is None:
                raise PreprocessError(f"{FLAGS.get(role, role)} {given!r}: {csv_path} has no such column; "
                                      f"columns present: {present}")
            return name
        if auto:
            for candidate in COLUMN_CANDIDATES.get(role, ()):
                if candidate in lookup:
                    return lookup[candidate]
        return None

    def required(role: str, given: str | None, hint: str = "") -> str:
        name = find(role, given)
        if name is None:
            tried = ", ".join(COLUMN_CANDIDATES[role])
            raise PreprocessError(f"{csv_path}: no {role} column (looked for {tried}); pass {FLAGS[role]} NAME{hint}; "
                                  f"columns present: {present}")
        return name

    id_col = required("id", args.id_col)
    image_col = required("image", args.image_col)
    if args.tscore_col is not None:
        label_col, tscore_col = None, find("tscore", args.tscore_col)
    else:
        label_col = required("label", args.label_col, " or --tscore-col NAME to derive it from the T-score")
        tscore_col = None
    box = None
    if args.box_cols:
        box = tuple(find("box", name) for name in args.box_cols)  # type: ignore[assignment]
    measure_name, measure_col = ("T-score", tscore_col) if tscore_col is not None else (None, None)
    for role, name in (("grade", "grade"), ("bmd", "BMD")):
        if getattr(args, f"{role}_col", None) is not None:
            measure_name, measure_col = name, find(role, getattr(args, f"{role}_col"))
    cols = Columns(id=id_col, image=image_col, label=label_col, tscore=tscore_col,
                   sex=find("sex", args.sex_col), age=find("age", args.age_col), bmi=find("bmi", args.bmi_col),
                   height=find("height", args.height_col), weight=find("weight", args.weight_col),
                   crop=find("crop", args.crop_col, auto=False), split=find("split", args.split_col, auto=False),
                   box=box, measure=measure_col, measure_name=measure_name)
    used = {"patient id": cols.id, "image": cols.image, "label": cols.label, "T-score": cols.tscore,
            f"measure ({measure_name})": cols.measure,
            "sex": cols.sex, "age": cols.age, "BMI": cols.bmi, "height": cols.height, "weight": cols.weight,
            "crop": cols.crop, "split": cols.split}
    logger.info("columns: %s", ", ".join(f"{k} <- {v!r}" for k, v in used.items() if v is not None))
    if cols.sex is None:
        logger.warning("no sex column (looked for %s): sex is NA for every image; pass --sex-col",
                       ", ".join(COLUMN_CANDIDATES["sex"]))
    if cols.age is None:
        logger.warning("no age column (looked for %s): age is NA for every image; pass --age-col",
                       ", ".join(COLUMN_CANDIDATES["age"]))
    if cols.bmi is None and (cols.height is None or cols.weight is None):
        logger.warning("no BMI column and no height and weight columns: BMI is NA for every image; "
                       "pass --bmi-col, or --height-col and --weight-col")
    elif cols.bmi is None:
        logger.info("BMI computed from %r and %r (height unit: %s)", cols.height, cols.weight, args.height_unit)
    return cols


def check_measure_column(header: Sequence[str], records: Sequence[tuple[int, list[str]]], cols: Columns,
                         csv_path: Path) -> None:
    """The measurement column asked for (--tscore-col/--grade-col/--bmd-col) must hold a value in some row:
    an empty one is named as empty, before any image is read (not as a missing column, nor row by row)."""
    if cols.measure is None:
        return
    index = list(header).index(cols.measure)
    if any(len(fields) > index and not _missing(fields[index]) for _, fields in records):
        return
    flag = FLAGS[{"T-score": "tscore", "grade": "grade", "BMD": "bmd"}[cols.measure_name]]
    raise PreprocessError(f"{flag} {cols.measure!r}: the column is empty in {csv_path} (none of its {len(records)} "
                          f"rows has a value); give the column that holds the {cols.measure_name}, or leave {flag} "
                          "out" + (" and give --label-col" if flag == FLAGS["tscore"] else ""))


def parse_sex_map(text: str) -> dict[str, int]:
    """'F=1,M=0' -> {'f': 1, 'm': 0} (keys case-insensitive; 1 female, 0 male)."""
    mapping: dict[str, int] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or value.strip() not in ("0", "1"):
            raise argparse.ArgumentTypeError(
                f"--sex-map entry {item.strip()!r}: expected VALUE=1 (female) or VALUE=0 (male), e.g. 'F=1,M=0'")
        mapping[_norm_key(key)] = int(value)
    if not mapping:
        raise argparse.ArgumentTypeError("--sex-map is empty; e.g. 'F=1,M=0'")
    return mapping


def _norm_key(text: str) -> str:
    key = text.strip().casefold()
    with contextlib.suppress(ValueError, OverflowError):
        number = float(key)
        if number.is_integer():
            return str(int(number))  # '1.0' from a spreadsheet is '1'
    return key


def id_problem(patient: str) -> str | None:
    """Why ``patient`` cannot be used in a file name, or None."""
    bad = sorted({c for c in patient if c in '/\\-<>:"|?*' or ord(c) < 32})
    if bad:
        return (f"patient id {patient!r} contains {', '.join(map(repr, bad))}; file names cannot hold "
                "'/', '\\', control characters or <>:\"|?*, and '-' separates the values in the name")
    if patient.startswith("."):
        return f"patient id {patient!r} starts with '.', which would make a hidden file"
    try:
        filenames.encode(patient, 1, 0, None, None, None)
    except ValueError as exc:
        return str(exc)
    return None


def sanitize_id(patient: str) -> str:
    """Each run of characters other than letters, digits, '_' and '.' -> '_'; leading dots dropped."""
    return re.sub(r"[^\w.]+", "_", patient.strip()).lstrip(".")


_DECIMAL_COMMA = re.compile(r"^[+-]?\d+,\d+$")


def _number(text: str, what: str) -> float:
    t = text.strip()
    if _DECIMAL_COMMA.match(t):
        t = t.replace(",", ".")
    try:
        value = float(t)
    except ValueError:
        raise RowProblem("unparsable_value", f"{what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise RowProblem("unparsable_value", f"{what} {text!r} is not a finite number")
    return value


def _in_range(value: float, bounds: tuple[float, float], what: str, text: str) -> float:
    if not bounds[0] <= value <= bounds[1]:
        raise RowProblem("out_of_range", f"{what} {text!r} is outside the plausible range {bounds[0]:g}..{bounds[1]:g}")
    return value


def _missing(text: str) -> bool:
    return text.strip().casefold() in MISSING


def resolve_image(root: Path, text: str) -> Path:
    """The file a CSV image path names, inside ``root`` (already resolved); RowProblem otherwise."""
    raw = text.strip().replace("\\", "/")  # Windows exports use backslashes
    if raw.startswith("/") or re.match(r"^[A-Za-z]:", raw):
        raise RowProblem("absolute_path", f"image path {text!r} is absolute; give it relative to --images {root}")
    parts = PurePosixPath(raw).parts
    if ".." in parts:
        raise RowProblem("path_escape", f"image path {text!r} contains '..'; it must stay inside --images {root}")
    path = root.joinpath(*parts)
    real = path.resolve()
    if not real.is_relative_to(root):
        raise RowProblem("path_escape", f"image path {text!r} leads outside --images {root} (via a link, to {real})")
    if not real.is_file():
        raise RowProblem("missing_file", f"image file not found: {path}")
    return real


@dataclass
class Options:
    """What parse_row needs from the command line."""

    root: Path
    sex_map: dict[str, int]
    tscore_cutoff: float
    height_unit: str
    sanitize_ids: bool


def _cell(record: Mapping[str, str], col: str | None) -> str:
    return (record.get(col) or "").strip() if col else ""


def parse_patient(record: Mapping[str, str], cols: Columns, opts: Options) -> str:
    text = _cell(record, cols.id)
    if _missing(text):
        raise RowProblem("missing_value", f"patient id is missing ({text!r} in column {cols.id!r})")
    pid = sanitize_id(text) if opts.sanitize_ids else text
    why = id_problem(pid)
    if why:
        hint = "" if opts.sanitize_ids else "; pass --sanitize-ids to rewrite ids"
        raise RowProblem("invalid_id", f"{why}{hint}")
    return pid


def parse_image(record: Mapping[str, str], cols: Columns, opts: Options) -> Path:
    text = _cell(record, cols.image)
    if _missing(text):
        raise RowProblem("missing_value", f"image path is missing ({text!r} in column {cols.image!r})")
    return resolve_image(opts.root, text)


def parse_measure(record: Mapping[str, str], cols: Columns, opts: Options) -> float | None:
    """The measurement (T-score, BMD or grade) kept in the manifest; None when the row has none."""
    if cols.measure is None:
        return None
    text = _cell(record, cols.measure)
    if _missing(text):
        if unscored(record, cols):
            label = cols.tscore if cols.tscore is not None else cols.label
            raise RowProblem("missing_value", f"label is missing (column {label!r}) and so is the "
                                              f"{cols.measure_name} ({text!r} in column {cols.measure!r})")
        return None  # a labelled row without its measurement (or a T-score label's empty cell: parse_label)
    return _measure(text, cols.measure_name, cols.measure)


def unscored(record: Mapping[str, str], cols: Columns) -> bool:
    """A row whose label cell (or T-score giving the label) is empty while a separate measurement
    column exists: kept with label None when that measurement is known; its images go to unscored/."""
    col = cols.tscore if cols.tscore is not None else cols.label
    return cols.measure not in (None, col) and _missing(_cell(record, col))


def _measure(text: str, name: str, col: str) -> float:
    """A measurement cell as a number in its plausible range (a grade: a whole number)."""
    try:
        value = _in_range(_number(text, name), MEASURE_RANGES[name], name, text)
    except RowProblem as exc:
        raise RowProblem(exc.kind, f"{exc} (column {col!r})") from None
    if name == "grade" and not value.is_integer():
        raise RowProblem("unparsable_value", f"grade {text!r} is not a whole number (column {col!r}); grades are "
                                             "ordered levels such as Singh 1-6")
    return value


def parse_label(record: Mapping[str, str], cols: Columns, opts: Options) -> int | None:
    """1 (osteoporosis) / 0 from the label column, or from the T-score at ``--tscore-cutoff``; None
    when that cell is empty and a separate measurement column exists (:func:`unscored`)."""
    col = cols.tscore if cols.tscore is not None else cols.label
    text = _cell(record, col)
    if unscored(record, cols):
        return None
    if _missing(text):
        what = "T-score" if cols.tscore is not None else "label"
        raise RowProblem("missing_value", f"{what} is missing ({text!r} in column {col!r})")
    if cols.tscore is not None:
        return int(_measure(text, "T-score", cols.tscore) <= opts.tscore_cutoff)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if value not in (0.0, 1.0):
        raise RowProblem("invalid_label", f"label {text!r} must be 0 (normal) or 1 (osteoporosis)")
    return int(value)


def parse_sex(record: Mapping[str, str], cols: Columns, opts: Options) -> int | None:
    text = _cell(record, cols.sex)
    if _missing(text):
        return None
    value = opts.sex_map.get(_norm_key(text))
    if value is None:
        accepted = ", ".join(f"{k}={v}" for k, v in opts.sex_map.items())
        raise RowProblem("unparsable_value", f"sex {text!r} is not in the sex map ({accepted}); pass --sex-map")
    return value


def parse_age(record: Mapping[str, str], cols: Columns, opts: Options) -> float | None:
    text = _cell(record, cols.age)
    return None if _missing(text) else _in_range(_number(text, "age"), AGE_RANGE, "age", text)


def parse_bmi(record: Mapping[str, str], cols: Columns, opts: Options) -> float | None:
    """The BMI column, else weight / height^2 from those columns (height in m or cm, --height-unit)."""
    text = _cell(record, cols.bmi)
    if not _missing(text):
        return _in_range(_number(text, "BMI"), BMI_RANGE, "BMI", text)
    h_text, w_text = _cell(record, cols.height), _cell(record, cols.weight)
    if _missing(h_text) or _missing(w_text):
        return None
    height = _number(h_text, "height")
    unit = opts.height_unit if opts.height_unit != "auto" else ("m" if height < 3 else "cm")
    height_m = height / 100.0 if unit == "cm" else height
    _in_range(height_m, HEIGHT_RANGE_M, f"height ({unit})", h_text)
    weight = _in_range(_number(w_text, "weight"), WEIGHT_RANGE_KG, "weight (kg)", w_text)
    value = round(weight / height_m ** 2, 8)  # 8 decimals: far below measurement error, short names
    return _in_range(value, BMI_RANGE, "BMI computed from height and weight", f"{value:g}")


def parse_crop(record: Mapping[str, str], cols: Columns, opts: Options) -> int | None:
    if cols.crop is None:
        return None
    text = _cell(record, cols.crop)
    if _missing(text):
        raise RowProblem("missing_value", f"crop number is missing (column {cols.crop!r})")
    value = _number(text, "crop number")
    if not value.is_integer() or value < 1:
        raise RowProblem("unparsable_value", f"crop number {text!r} must be a whole number >= 1")
    return int(value)


def parse_split(record: Mapping[str, str], cols: Columns, opts: Options) -> str | None:
    if cols.split is None:
        return None
    if unscored(record, cols):
        return None  # never scored: no split
    text = _cell(record, cols.split)
    value = SPLIT_ALIASES.get(text.casefold())
    if value is None:
        raise RowProblem("unparsable_value", f"split {text!r} (column {cols.split!r}) must be train, val or test")
    return value


def parse_box(record: Mapping[str, str], cols: Columns, opts: Options) -> tuple[int, int, int, int] | None:
    if cols.box is None:
        return None
    texts = [_cell(record, c) for c in cols.box]
    if all(_missing(t) for t in texts):
        return None  # no box for this row: the whole image
    if any(_missing(t) for t in texts):
        raise RowProblem("missing_value", f"crop box {texts} is incomplete (give all of x0 y0 x1 y1 or none)")
    x0, y0, x1, y1 = (int(round(_number(t, f"box {c}"))) for t, c in zip(texts, cols.box))
    if not (0 <= x0 < x1 and 0 <= y0 < y1):
        raise RowProblem("bad_box", f"crop box x0={x0} y0={y0} x1={x1} y1={y1} needs 0 <= x0 < x1 and 0 <= y0 < y1")
    return (x0, y0, x1, y1)


# Row field -> its parser, in the order problems are reported.
FIELD_PARSERS = (("patient", parse_patient), ("path", parse_image), ("label", parse_label),
                 ("measure", parse_measure), ("sex", parse_sex), ("age", parse_age), ("bmi", parse_bmi),
                 ("crop", parse_crop), ("split", parse_split), ("box", parse_box))


def parse_row(line: int, record: Mapping[str, str], cols: Columns, opts: Options
              ) -> tuple[Row | None, list[RowProblem], Path | None]:
    """Parse one CSV row: (row or None, every problem found, the image file if it resolved).
    Every field is parsed, so one pass reports all of a row's problems (a cell read by two fields,
    a T-score that is label and measurement, once). A row whose label cell is empty but whose
    measurement is known is kept with label None: its images go to unscored/ (:func:`unscored`)."""
    problems: list[RowProblem] = []
    values: dict = {}
    for name, parse in FIELD_PARSERS:
        try:
            values[name] = parse(record, cols, opts)
        except RowProblem as exc:
            if str(exc) not in map(str, problems):
                problems.append(exc)
            values[name] = None
    if problems:
        return None, problems, values["path"]
    row = Row(line=line, image=_cell(record, cols.image), patient_csv=_cell(record, cols.id), **values)
    return row, problems, values["path"]


class SkipLog:
    """skipped.csv rows; in strict mode a problem is fatal."""

    def __init__(self, csv_path: Path, strict: bool):
        self.csv_path, self.strict = csv_path, strict
        self.rows: list[dict[str, str]] = []

    def skip(self, line: int | str, image: str, patient: str, reason: str, message: str, warn: bool = True) -> None:
        self.rows.append({"row": str(line), "image": image, "patient": patient, "reason": reason, "message": message})
        if warn:
            logger.warning("%s line %s: %s (skipped)", self.csv_path.name, line, message)

    def row_problems(self) -> list[dict[str, str]]:
        """What --strict refuses: everything but blank rows and files the CSV does not name."""
        return [r for r in self.rows if r["reason"] not in ("not_in_csv", "empty_row")]

    def fail_if_strict(self) -> None:
        problems = self.row_problems()
        if self.strict and problems:
            shown = "\n".join(f"  line {r['row']}: {r['message']}" for r in problems[:50])
            more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
            raise PreprocessError(f"--strict: {len(problems)} problem(s) in {self.csv_path}:\n{shown}{more}")


def validate(header: list[str], records: list[tuple[int, list[str]]], cols: Columns, opts: Options,
             skips: SkipLog) -> tuple[list[Row], set[Path]]:
    """Every row parsed and cross-checked; returns the usable rows and every file the CSV names."""
    rows, referenced = parse_rows(header, records, cols, opts, skips)
    return cross_check(rows, cols, skips), referenced


def parse_rows(header: list[str], records: list[tuple[int, list[str]]], cols: Columns, opts: Options,
               skips: SkipLog) -> tuple[list[Row], set[Path]]:
    """Each row parsed on its own (a broken or unusable row is skipped, naming its line); returns the
    parsed rows and every file the CSV names."""
    rows: list[Row] = []
    referenced: set[Path] = set()
    for line, fields in records:
        if all(not f.strip() for f in fields):
            skips.skip(line, "", "", "empty_row", "empty row")
            continue
        # Fewer fields, or extra ones with content, means a broken line (extra empty ones: a trailing separator).
        if len(fields) < len(header) or any(f.strip() for f in fields[len(header):]):
            skips.skip(line, "", "", "bad_row", f"row has {len(fields)} fields, the header has {len(header)}")
            continue
        record = dict(zip(header, fields))
        row, problems, path = parse_row(line, record, cols, opts)
        if path is not None:
            referenced.add(path)
        if row is None:
            image = (record.get(cols.image) or "").strip()
            skips.skip(line, image, (record.get(cols.id) or "").strip(), problems[0].kind,
                        "; ".join(str(p) for p in problems))
            continue
        rows.append(row)
    return rows, referenced


def cross_check(rows: list[Row], cols: Columns, skips: SkipLog) -> list[Row]:
    """Rows checked against each other: the same file twice, ids that would share file names, one
    patient with two sexes or splits, a crop listed twice. Returns the rows left."""
    def grouped(rows: list[Row], key) -> dict:
        """Rows by ``key(row)``, in CSV order."""
        groups: dict = defaultdict(list)
        for row in rows:
            groups[key(row)].append(row)
        return groups

    bad: set[int] = set()

    def refuse(group: Sequence[Row], reason: str, message: Callable[[Row], str]) -> None:
        """Skip every row of ``group`` for ``reason``."""
        for r in group:
            skips.skip(r.line, r.image, r.patient_csv, reason, message(r))
            bad.add(r.line)

    def drop() -> list[Row]:
        dropped = [r for r in rows if r.line not in bad]
        bad.clear()
        return dropped

    # The same file on several rows: identical rows are one entry, differing rows are ambiguous.
    for group in grouped(rows, lambda r: r.path).values():
        if len(group) < 2:
            continue
        if all(r.values() == group[0].values() for r in group):
            refuse(group[1:], "duplicate_image", lambda r: f"duplicate image entry: {r.image!r} is already listed "
                   f"on line {group[0].line} with the same values; this row is ignored")
        else:
            lines = ", ".join(str(r.line) for r in group)
            refuse(group, "duplicate_image",
                   lambda r: f"duplicate image entry: {r.image!r} is listed on lines {lines} with different values")
    rows = drop()

    # Ids that would share file names (after --sanitize-ids, or only differing in case).
    for group in grouped(rows, lambda r: r.patient.casefold()).values():
        originals = sorted({r.patient_csv for r in group})
        if len(originals) > 1:
            refuse(group, "id_collision", lambda r: f"patient ids {', '.join(map(repr, originals))} would give "
                   f"the same file names (as {r.patient!r}, or differing only in case)")
    rows = drop()

    # One patient, one sex and one split.
    for group in grouped(rows, lambda r: r.patient).values():
        for attr, reason in (("sex", "conflicting_sex"), ("split", "conflicting_split")):
            seen = {getattr(r, attr) for r in group} - {None}
            if len(seen) > 1:
                detail = ", ".join(f"{getattr(r, attr)} on line {r.line}"
                                   for r in group if getattr(r, attr) is not None)
                refuse(group, reason, lambda r: f"patient {r.patient_csv!r} has conflicting {attr} across rows: "
                       f"{detail}" + (" (1 female, 0 male)" if attr == "sex" else ""))
    rows = drop()

    if cols.crop is not None:
        for (_, crop), group in grouped(rows, lambda r: (r.patient, r.crop)).items():
            if len(group) > 1:
                lines = ", ".join(str(r.line) for r in group)
                refuse(group, "duplicate_crop", lambda r: f"patient {r.patient_csv!r} has crop {crop} on lines {lines}")
        rows = drop()
    return rows


def assign_crops(rows: Sequence[Row], hips: bool) -> None:
    """Fill ``row.crops`` with (crop number, hip side) in CSV order."""
    count: dict[str, int] = defaultdict(int)
    for row in rows:
        k = count[row.patient]
        count[row.patient] += 1
        if hips:
            row.crops = [(2 * k + 1, "right"), (2 * k + 2, "left")]
        elif row.crop is not None:
            row.crops = [(row.crop, "")]
        else:
            row.crops = [(k + 1, "")]


def unused_files(root: Path, referenced: set[Path], exclude: set[Path]) -> list[str]:
    """Files under ``root`` (relative, sorted) that no CSV row names."""
    found = []
    for dirpath, dirnames, files in os.walk(root):
        dirnames.sort()
        for name in sorted(files):
            path = Path(dirpath) / name
            if path.resolve() not in referenced and path.resolve() not in exclude:
                found.append(path.relative_to(root).as_posix())
    return found
