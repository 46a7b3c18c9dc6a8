"""python3 preprocess_filenames.py --csv patient_list.csv --images RAW_DIR --out data/

From a hospital's export (one CSV row per X-ray plus the raw images) to training data that
loses nothing: every image becomes an 8-bit grayscale PNG of a fixed size (704 high x 407 wide
by default) whose name carries the label and the clinical values (``filenames.encode``), put in
``OUT/train``, ``OUT/val`` or ``OUT/test`` by patient. The original work did the same by hand from
``pateint_list.csv`` (sic); that spelling is found too when ``--csv`` is not given.

Inputs. Images are PNG (8 or 16 bit), JPEG, TIFF or DICOM, given in the CSV as a path relative to
``--images`` (absolute paths and ``..`` are refused). 8-bit images keep their grey values; 16-bit
(and float) images are scaled by their own min/max. DICOM: the rescale slope/intercept (modality
LUT) is applied, then the window centre/width stored in the file (the first one if several),
else min/max; MONOCHROME1 is inverted so bone is always bright. Colour becomes grey (BT.601 luma).

Columns. Found case-insensitively under the names in ``--help`` or named by the ``--*-col`` flags.
The label is 0 (normal) / 1 (osteoporosis), or derived from a T-score (``T <= --tscore-cutoff``,
WHO: -2.5). Sex, age and BMI may be absent or empty: the value is then written ``NA`` (logged).
BMI is taken from ``--bmi-col``; where that is empty and height and weight are known it is
computed (height in cm or m, ``--height-unit auto`` takes a value below 3 as metres).

Geometry. An optional box from the CSV (``--box-cols x0 y0 x1 y1``, pixels of the raw image, x to
the right, y down, x1/y1 exclusive; a row with all four empty uses the whole image) is cut first.
The image is then fitted to ``--size H W``: ``pad`` (default: keep the aspect ratio, pad with
black, centred), ``crop`` (keep the ratio, centre-crop) or ``stretch``.

Hips (``--split-hips``). An AP pelvis in standard radiological display shows the patient's right
hip on the image's left. The image's left half becomes crop 1 (right hip) unchanged; the right
half becomes crop 2 (left hip) mirrored left-right. So every crop has the same orientation: the
patient's RIGHT hip as displayed, femoral head / acetabulum (medial side) toward the crop's RIGHT
edge, greater trochanter and lateral soft tissue toward its LEFT edge (as ``synthetic.py`` draws
them). An odd middle column is dropped. With several images per patient, image k (CSV order,
from 0) gives crops 2k+1 (right) and 2k+2 (left). Without ``--split-hips`` the crop number comes
from ``--crop-col``, else 1, 2, ... per patient in CSV order.

Splits. Patient-level and stratified by the patient's label (the max over their rows), so no
patient is in two splits (``--split 0.7 0.15 0.15 --seed 0``), or taken from ``--split-col``
(train/val/test). ``--folds K`` numbers the train+val patients 0..K-1 (patient-level, stratified)
for cross-validation; test patients stay held out (fold ``NA``).

Patient ids must be usable in a file name: non-empty, no ``/``, ``\\``, ``-``, control characters
or ``<>:"|?*``, not starting with ``.``. A row with such an id is skipped with its reason.
``--sanitize-ids`` instead rewrites every id: each run of characters other than letters, digits,
``_`` and ``.`` becomes one ``_`` (``2018-0187`` -> ``2018_0187``), leading dots are dropped; ids
that then collide (or differ only in case) are skipped. The manifest keeps the CSV's id.

Outputs. ``OUT/<split>/<patient>_<crop>_<label>-<sex>-<age>-<bmi>.png``; ``OUT/manifest.csv`` (one
row per file: file, source, patient, crop, split, [fold], label, sex, age, bmi, row [, hip]
[, patient_csv]); ``OUT/skipped.csv`` (every CSV row and every file under ``--images`` that was not
used: row = line number in the CSV file, header = line 1; reason; message);
``OUT/preprocess_config.json`` and ``OUT/preprocess.log``. A summary table goes to stdout.

Safety. Inputs are only read. ``--out`` may not be, contain or lie inside ``--images`` (or contain
the CSV). A non-empty ``--out`` is refused unless ``--overwrite``, which deletes only what this
tool writes (its bookkeeping files and, in ``OUT/train|val|test``, PNGs whose names decode with
``filenames.decode``) and leaves everything else alone. Every file is written to a temporary file
in the same folder and renamed into place (``runfiles.atomic_write``), so no half-written PNG or CSV is
ever seen.

Resume. A run writes ``OUT/.preprocess_in_progress`` (a fingerprint of the CSV's bytes and of
every setting that shapes the output) before its first image and removes it when it has finished. Running the same
command again on a folder with that marker resumes: files already written are kept and only the
rest are made; with a different CSV or settings the folder is refused (``--overwrite`` starts
over). A finished folder is never touched again without ``--overwrite``.

Problems. A bad row (unparsable or out-of-range value, label not 0/1, missing or corrupt image,
path outside ``--images``, an image listed twice (a repeat with the same values is skipped and the
first row used; repeats that differ are all skipped), conflicting sex or split across a patient's
rows, invalid id) is skipped and listed in skipped.csv with the CSV line. ``--strict`` makes them
fatal: every bad CSV row is listed before anything is written; an image that cannot be read stops
the run at that image (rerun to resume). Rows of empty fields and files under ``--images`` that
the CSV does not name are listed but never fatal. A missing value in the id, image or label column
skips the row; in sex, age or BMI it becomes ``NA``. A missing id, image or label/T-score column is
always fatal, and the message lists the columns present.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Mapping, Sequence

import filenames
import runfiles
from choices import MIN_SIDE
from cli import run_main
from splits import DEFAULT_FRACTIONS, IMAGE_SIZE, SPLITS, assign_folds, assign_splits, patient_labels

logger = logging.getLogger(__name__)

CSV_NAMES = ("patient_list.csv", "pateint_list.csv")  # the second is the original export's spelling
MARKER = ".preprocess_in_progress"
MANIFEST = "manifest.csv"
SKIPPED = "skipped.csv"
CONFIG = "preprocess_config.json"
LOG = "preprocess.log"
OWN_FILES = (MANIFEST, SKIPPED, CONFIG, LOG, MARKER)
FORMAT_VERSION = 1  # part of the resume fingerprint: bump when outputs for the same input change
DEFAULT_SEX_MAP = "F=1,female=1,W=1,M=0,male=0,1=1,0=0"  # W: weiblich; 1 female / 0 male as in filenames
MISSING = frozenset({"", "na", "n/a", "nan", "null", "none"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic"})

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
         "sex": "--sex-col", "age": "--age-col", "bmi": "--bmi-col", "height": "--height-col",
         "weight": "--weight-col", "crop": "--crop-col", "split": "--split-col", "box": "--box-cols"}
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "test": "test", "testing": "test"}

# Plausible ranges: a value outside is a typo (e.g. T-score -25 for -2.5), not a patient.
AGE_RANGE, BMI_RANGE = filenames.AGE_RANGE, filenames.BMI_RANGE  # the file-name format's plausible ranges
TSCORE_RANGE = (-10.0, 10.0)
HEIGHT_RANGE_M = (0.3, 2.8)
WEIGHT_RANGE_KG = (1.0, 500.0)


class PreprocessError(Exception):
    """A problem that stops the run; the message says what and where."""


class ImageReadError(ValueError):
    """An image file that cannot be decoded into a 2-D grey image."""


class BoxError(ValueError):
    """A crop box that does not fit the image."""


class OddImageError(ValueError):
    """An image that decodes but cannot be a training image (roi.image_problem): too small, or blank."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class RowProblem(ValueError):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


# ----------------------------------------------------------------------------- images

def read_image(path: str | os.PathLike) -> np.ndarray:
    """Any supported file (PNG 8/16 bit, JPEG, TIFF, DICOM) as an 8-bit grey image (H, W).

    8-bit grey stays as it is; colour becomes BT.601 luma; other depths are scaled by their own
    min/max. DICOM gets its modality LUT, its window (else min/max), and MONOCHROME1 inverted.
    Raises :class:`ImageReadError` naming the file.
    """
    path = Path(path)
    try:
        if _is_dicom(path):
            return _read_dicom(path)
        return _read_raster(path)
    except ImageReadError:
        raise
    except Exception as exc:  # decoders raise anything from OSError to struct.error on bad data
        raise ImageReadError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    with open(path, "rb") as f:
        head = f.read(132)
    return head[128:132] == b"DICM"


def _read_raster(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im.load()
        im = ImageOps.exif_transpose(im)  # show it the way a viewer does
    if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
    elif im.mode == "1":
        im = im.convert("L")
    return _to_uint8(np.asarray(im), path)


def _to_uint8(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.ndim == 3:
        channels = arr.shape[2]
        if channels in (2, 4):  # grey+alpha, RGB+alpha: drop alpha
            arr = arr[..., :-1]
        if arr.shape[2] == 3:
            luma = arr.astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # ITU-R BT.601
            if arr.dtype == np.uint8:
                return np.clip(np.rint(luma), 0, 255).astype(np.uint8)
            arr = luma
        elif arr.shape[2] == 1:
            arr = arr[..., 0]
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageReadError(f"{path}: expected a 2-D image, got an array of shape {arr.shape}")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    return _minmax(arr, path)


def _minmax(arr: np.ndarray, path: Path) -> np.ndarray:
    a = arr.astype(np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        raise ImageReadError(f"{path}: no finite pixel values")
    lo, hi = float(a[finite].min()), float(a[finite].max())
    if hi <= lo:
        logger.warning("%s: every pixel has the same value %g; written black", path, lo)
        return np.zeros(a.shape, np.uint8)
    a = np.where(finite, a, lo)
    return np.clip(np.rint((a - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)


def _first(value) -> float | None:
    """A DICOM value that may be multi-valued (several windows): its first entry."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        if len(value) == 0:
            return None
        value = value[0]
    return float(value)


def apply_window(x: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """DICOM VOI window to 0..255 (float), formulas of DICOM PS3.3 C.11.2.1.2."""
    if function == "SIGMOID":
        return 255.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((x - (center - width / 2.0)) / width * 255.0, 0, 255)
    if width <= 1:
        return np.where(x <= center - 0.5, 0.0, 255.0)
    return np.clip(((x - (center - 0.5)) / (width - 1.0) + 0.5) * 255.0, 0, 255)


def _read_dicom(path: Path) -> np.ndarray:
    import pydicom  # imported here: only DICOM inputs pay for it
    from pydicom.pixels import apply_modality_lut

    ds = pydicom.dcmread(path, force=path.suffix.lower() in DICOM_SUFFIXES)
    if "PixelData" not in ds:
        raise ImageReadError(f"{path}: DICOM file without pixel data")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageReadError(f"{path}: multi-frame DICOM ({frames} frames) is not supported; export one frame")
    arr = ds.pixel_array
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if not photometric.startswith("MONOCHROME"):
        return _to_uint8(arr, path)  # colour (pydicom returns RGB)
    values = apply_modality_lut(arr, ds).astype(np.float64)  # rescale slope / intercept
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is not None and width is not None and width > 0:
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
        grey = np.rint(apply_window(values, center, width, function)).astype(np.uint8)
    else:
        grey = _minmax(values, path)
    if photometric == "MONOCHROME1":  # low values are bright: invert so bone is bright
        grey = 255 - grey
    return grey


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    if img.shape == (h, w):
        return img.copy()
    shrink = h * w < img.shape[0] * img.shape[1]
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def fit_image(img: np.ndarray, size: Sequence[int] = IMAGE_SIZE, fit: str = "pad") -> np.ndarray:
    """Resize a 2-D image to exactly ``size`` = (height, width).

    ``pad`` keeps the aspect ratio and centres the image on black; ``crop`` keeps the ratio and
    cuts the centre; ``stretch`` ignores the ratio.
    """
    H, W = int(size[0]), int(size[1])
    if H < 1 or W < 1:
        raise ValueError(f"size must be positive, got {tuple(size)}")
    if fit not in ("pad", "crop", "stretch"):
        raise ValueError(f"fit {fit!r} not supported; use 'pad', 'crop' or 'stretch'")
    h, w = img.shape[:2]
    if fit == "stretch":
        return _resize(img, H, W)
    scale = min(H / h, W / w) if fit == "pad" else max(H / h, W / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if fit == "pad":
        nh, nw = min(nh, H), min(nw, W)
        out = np.zeros((H, W), dtype=img.dtype)
        top, left = (H - nh) // 2, (W - nw) // 2
        out[top:top + nh, left:left + nw] = _resize(img, nh, nw)
        return out
    nh, nw = max(nh, H), max(nw, W)
    resized = _resize(img, nh, nw)
    top, left = (nh - H) // 2, (nw - W) // 2
    return np.ascontiguousarray(resized[top:top + H, left:left + W])


def split_hips(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An AP pelvis (radiological display) -> (right hip, left hip mirrored).

    The image's left half is the patient's right hip, returned as is; the right half is the left
    hip, mirrored so that both show the femoral head toward their right edge.
    """
    h, w = img.shape[:2]
    half = w // 2
    if half < 1:
        raise ImageReadError(f"image of width {w} cannot be split into two hips")
    right_hip = img[:, :half]
    left_hip = img[:, w - half:][:, ::-1]
    return np.ascontiguousarray(right_hip), np.ascontiguousarray(left_hip)


def crop_box(img: np.ndarray, box: Sequence[int]) -> np.ndarray:
    """Cut ``img[y0:y1, x0:x1]``; raise :class:`BoxError` if the box is not inside the image."""
    x0, y0, x1, y1 = box
    h, w = img.shape[:2]
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise BoxError(f"box x0={x0} y0={y0} x1={x1} y1={y1} is not inside the image ({w} wide, {h} high)")
    return np.ascontiguousarray(img[y0:y1, x0:x1])


# ----------------------------------------------------------------------------- CSV

@dataclass
class Row:
    """One usable CSV row (values already parsed)."""

    line: int
    image: str
    path: Path
    patient: str
    patient_csv: str
    label: int
    sex: int | None
    age: float | None
    bmi: float | None
    crop: int | None = None
    split: str | None = None
    box: tuple[int, int, int, int] | None = None
    crops: list[tuple[int, str]] = field(default_factory=list)

    def values(self) -> tuple:
        return (self.patient, self.label, self.sex, self.age, self.bmi, self.crop, self.split, self.box)


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
    cols = Columns(id=id_col, image=image_col, label=label_col, tscore=tscore_col,
                   sex=find("sex", args.sex_col), age=find("age", args.age_col), bmi=find("bmi", args.bmi_col),
                   height=find("height", args.height_col), weight=find("weight", args.weight_col),
                   crop=find("crop", args.crop_col, auto=False), split=find("split", args.split_col, auto=False),
                   box=box)
    used = {"patient id": cols.id, "image": cols.image, "label": cols.label, "T-score": cols.tscore,
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


def parse_label(record: Mapping[str, str], cols: Columns, opts: Options) -> int:
    """1 (osteoporosis) / 0 from the label column, or from the T-score at ``--tscore-cutoff``."""
    if cols.tscore is not None:
        text = _cell(record, cols.tscore)
        if _missing(text):
            raise RowProblem("missing_value", f"T-score is missing ({text!r} in column {cols.tscore!r})")
        t = _in_range(_number(text, "T-score"), TSCORE_RANGE, "T-score", text)
        return int(t <= opts.tscore_cutoff)
    text = _cell(record, cols.label)
    if _missing(text):
        raise RowProblem("missing_value", f"label is missing ({text!r} in column {cols.label!r})")
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
FIELD_PARSERS = (("patient", parse_patient), ("path", parse_image), ("label", parse_label), ("sex", parse_sex),
                 ("age", parse_age), ("bmi", parse_bmi), ("crop", parse_crop), ("split", parse_split),
                 ("box", parse_box))


def parse_row(line: int, record: Mapping[str, str], cols: Columns, opts: Options
              ) -> tuple[Row | None, list[RowProblem], Path | None]:
    """Parse one CSV row: (row or None, every problem found, the image file if it resolved).
    Every field is parsed, so one pass reports all of a row's problems."""
    problems: list[RowProblem] = []
    values: dict = {}
    for name, parse in FIELD_PARSERS:
        try:
            values[name] = parse(record, cols, opts)
        except RowProblem as exc:
            problems.append(exc)
            values[name] = None
    if problems:
        return None, problems, values["path"]
    row = Row(line=line, image=_cell(record, cols.image), patient_csv=_cell(record, cols.id), **values)
    return row, problems, values["path"]


# ----------------------------------------------------------------------------- the run

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

    def grouped(rows: list[Row], key) -> dict:
        """Rows by ``key(row)``, in CSV order."""
        groups: dict = defaultdict(list)
        for row in rows:
            groups[key(row)].append(row)
        return groups

    def drop(bad: set[int]) -> list[Row]:
        return [r for r in rows if r.line not in bad]

    # The same file on several rows: identical rows are one entry, differing rows are ambiguous.
    bad: set[int] = set()
    for group in grouped(rows, lambda r: r.path).values():
        if len(group) < 2:
            continue
        if all(r.values() == group[0].values() for r in group):
            for r in group[1:]:
                skips.skip(r.line, r.image, r.patient_csv, "duplicate_image",
                            f"duplicate image entry: {r.image!r} is already listed on line {group[0].line} "
                            "with the same values; this row is ignored")
                bad.add(r.line)
        else:
            lines = ", ".join(str(r.line) for r in group)
            for r in group:
                skips.skip(r.line, r.image, r.patient_csv, "duplicate_image",
                            f"duplicate image entry: {r.image!r} is listed on lines {lines} with different values")
                bad.add(r.line)
    rows = drop(bad)

    # Ids that would share file names (after --sanitize-ids, or only differing in case).
    bad = set()
    for group in grouped(rows, lambda r: r.patient.casefold()).values():
        originals = sorted({r.patient_csv for r in group})
        if len(originals) > 1:
            for r in group:
                skips.skip(r.line, r.image, r.patient_csv, "id_collision",
                            f"patient ids {', '.join(map(repr, originals))} would give the same file names "
                            f"(as {r.patient!r}, or differing only in case)")
                bad.add(r.line)
    rows = drop(bad)

    # One patient, one sex and one split.
    bad = set()
    for group in grouped(rows, lambda r: r.patient).values():
        for attr, reason in (("sex", "conflicting_sex"), ("split", "conflicting_split")):
            seen = {getattr(r, attr) for r in group} - {None}
            if len(seen) > 1:
                detail = ", ".join(f"{getattr(r, attr)} on line {r.line}"
                                   for r in group if getattr(r, attr) is not None)
                for r in group:
                    skips.skip(r.line, r.image, r.patient_csv, reason,
                                f"patient {r.patient_csv!r} has conflicting {attr} across rows: {detail}"
                                + (" (1 female, 0 male)" if attr == "sex" else ""))
                    bad.add(r.line)
    rows = drop(bad)

    if cols.crop is not None:
        bad = set()
        for (_, crop), group in grouped(rows, lambda r: (r.patient, r.crop)).items():
            if len(group) > 1:
                lines = ", ".join(str(r.line) for r in group)
                for r in group:
                    skips.skip(r.line, r.image, r.patient_csv, "duplicate_crop",
                                f"patient {r.patient_csv!r} has crop {crop} on lines {lines}")
                    bad.add(r.line)
        rows = drop(bad)
    return rows, referenced


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


def _fmt(value: float | int | None) -> str:
    if value is None:
        return "NA"
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _own_output(name: str) -> bool:
    """A file in OUT/<split>/ that this tool writes (an image with a decodable name, or its temp file)."""
    if runfiles.TEMP_NAME.match(name):
        return True
    if not name.endswith(".png"):
        return False
    try:
        filenames.decode(name)
    except filenames.FileNameError:
        return False
    return True


def _own_files(out: Path) -> list[Path]:
    files = [out / n for n in OWN_FILES if (out / n).is_file() or (out / n).is_symlink()]
    files += [p for p in out.iterdir() if runfiles.TEMP_NAME.match(p.name) and p.is_file()]
    for split in SPLITS:
        folder = out / split
        if folder.is_symlink():
            raise PreprocessError(f"{folder} is a symbolic link; refusing to write through it")
        if folder.is_dir():
            files += [p for p in sorted(folder.iterdir()) if p.is_file() and _own_output(p.name)]
    return files


def prepare_out(out: Path, fingerprint: str, overwrite: bool) -> bool:
    """Make ``out`` ready; True when an interrupted run with the same fingerprint is resumed."""
    if out.exists() and not out.is_dir():
        raise PreprocessError(f"--out {out} exists and is not a folder")
    entries = sorted(out.iterdir()) if out.exists() else []
    marker = out / MARKER
    resume = False
    if entries and not overwrite:
        if not marker.is_file():
            what = "a finished run (manifest.csv)" if (out / MANIFEST).is_file() else f"{len(entries)} entries"
            raise PreprocessError(f"--out {out} is not empty ({what}); nothing was changed. Choose an empty or new "
                                  "folder, or pass --overwrite (it replaces only files this tool writes)")
        try:
            previous = json.loads(marker.read_text(encoding="utf-8")).get("fingerprint")
        except (OSError, ValueError, AttributeError):
            previous = None
        if previous != fingerprint:
            raise PreprocessError(f"--out {out} holds an interrupted run made from a different CSV or settings; "
                                  "nothing was changed. Rerun that exact command to finish it, or pass --overwrite "
                                  "to start over")
        resume = True
        logger.info("resuming the interrupted run in %s: images already written are kept", out)
    elif entries:
        own = _own_files(out)
        for path in own:
            path.unlink()
        others = sum(1 for _ in out.rglob("*") if _.is_file())
        logger.info("--overwrite: removed %d file(s) written by an earlier run in %s", len(own), out)
        if others:
            logger.warning("--overwrite: %d other file(s) in %s are not this tool's and were left alone", others, out)
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        folder = out / split
        if folder.is_symlink():
            raise PreprocessError(f"{folder} is a symbolic link; refusing to write through it")
        folder.mkdir(exist_ok=True)
    if not resume:
        runfiles.write_bytes(marker, json.dumps({"fingerprint": fingerprint, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                         "command": sys.argv}, indent=1).encode("utf-8"))
    return resume


def _fingerprint(args: argparse.Namespace, csv_bytes: bytes, images: Path) -> tuple[str, dict]:
    # what decides the output files: not --overwrite or --strict, and the CSV by its content, not its path
    settings = {k: v for k, v in sorted(vars(args).items()) if k not in ("overwrite", "strict", "csv", "images", "out")}
    settings["images"] = str(images)
    settings["csv_sha256"] = hashlib.sha256(csv_bytes).hexdigest()
    settings["format_version"] = FORMAT_VERSION
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest(), settings


ROI_COLUMNS = ("roi", "roi_box", "field", "flipped", "marks_found", "marks_masked")


def roi_columns(found: "roi.Result", index: int) -> dict[str, str]:
    """Manifest columns of hip ``index`` (0 right, 1 left) of a ``roi.find_hips`` result."""
    hip = found.hips[index]
    return {"roi": "femur" if hip.found else "half", "roi_box": " ".join(map(str, hip.box)),
            "field": "bone_only" if found.bone_only else "radiograph", "flipped": str(int(found.flipped)), "marks_found": str(found.marks_found),
            "marks_masked": str(hip.marks_masked)}


def roi_summary(manifest: Sequence[Mapping[str, str]]) -> list[str]:
    """Lines of the summary table for ``--roi``: femur found or fallen back, orientation, markers."""
    crops = [m for m in manifest if "roi" in m]
    if not crops:
        return []
    images = {m["source"]: m for m in crops}
    n, k = len(crops), len(images)
    found = sum(m["roi"] == "femur" for m in crops)
    counts = [("femur found", found), ("fell back to half image", n - found),
              ("bone-only segmentations", sum(m.get("field") == "bone_only" for m in images.values())),
              ("images turned upright", sum(m["flipped"] == "1" for m in images.values())),
              ("images with markers/text", sum(m["marks_found"] != "0" for m in images.values())),
              ("crops with markers masked", sum(m["marks_masked"] != "0" for m in crops))]
    return ["", f"region of interest (--roi): {n} hip crops from {k} images"] + \
        [f"  {label:<26}{count:>6}" for label, count in counts]


def summary_table(manifest: Sequence[Mapping[str, str]], skipped: Sequence[Mapping[str, str]],
                  folds: int | None) -> str:
    """The text printed at the end: counts per split and class, missing values, skipped rows."""
    lines = [f"{'split':<7}{'patients':>9}{'images':>8}{'normal':>8}{'osteo':>7}{'prevalence':>12}"]
    for split in SPLITS + ("total",):
        rows = [m for m in manifest if split == "total" or m["split"] == split]
        n, pos = len(rows), sum(m["label"] == "1" for m in rows)
        prevalence = f"{pos / n:.1%}" if n else "-"
        lines.append(f"{split:<7}{len({m['patient'] for m in rows}):>9}{n:>8}{n - pos:>8}{pos:>7}{prevalence:>12}")
    if folds:
        lines.append("")
        lines.append(f"{'fold':<7}{'patients':>9}{'images':>8}{'osteo':>7}")
        for k in range(folds):
            rows = [m for m in manifest if m.get("fold") == str(k)]
            lines.append(f"{k:<7}{len({m['patient'] for m in rows}):>9}{len(rows):>8}"
                         f"{sum(m['label'] == '1' for m in rows):>7}")
    n = len(manifest)
    missing = ", ".join(f"{c} {sum(m[c] == 'NA' for m in manifest)}/{n}" for c in ("sex", "age", "bmi"))
    lines += ["", f"missing values (images): {missing}"]
    reasons = Counter(r["reason"] for r in skipped)
    lines += roi_summary(manifest)
    lines.append(f"skipped: {len(skipped)} (see {SKIPPED})")
    for reason, count in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"  {reason:<20}{count:>6}")
    return "\n".join(lines)


def run(args: argparse.Namespace, buffer: "_Buffer") -> int:
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
                    len(unused), ", ".join(unused[:3]), SKIPPED)
    if not rows:
        raise PreprocessError(f"{csv_path}: no usable rows ({len(skips.rows)} skipped); see the messages above")

    assign_crops(rows, args.split_hips)
    labels = patient_labels((row.patient, row.label) for row in rows)
    if cols.split is not None:
        splits = {}
        for row in rows:
            splits.setdefault(row.patient, row.split)
    else:
        splits = assign_splits(labels, args.split or DEFAULT_FRACTIONS, args.seed)
    folds: dict[str, int] = {}
    if args.folds:
        dev = {p: y for p, y in labels.items() if splits[p] != "test"}
        try:
            folds = assign_folds(dev, args.folds, args.seed)
        except ValueError as exc:
            raise PreprocessError(f"{exc} (train+val patients)") from exc

    fingerprint, settings = _fingerprint(args, csv_bytes, root)
    resume = prepare_out(out, fingerprint, args.overwrite)
    file_handler = logging.FileHandler(out / LOG, mode="a" if resume else "w", encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s"))
    logging.getLogger().addHandler(file_handler)
    logging.getLogger().removeHandler(buffer)
    try:
        for record in buffer.records:
            file_handler.handle(record)
        config = {"csv": str(csv_path.resolve()), "images": str(root), "out": str(out_real),
                  "columns": vars(cols), "settings": settings, "fingerprint": fingerprint}
        runfiles.write_bytes(out / CONFIG, json.dumps(config, indent=1, default=str).encode("utf-8"))
        return _write_images(args, out, rows, splits, folds, skips, resume)
    finally:
        logging.getLogger().removeHandler(file_handler)
        file_handler.close()


def _write_images(args: argparse.Namespace, out: Path, rows: list[Row], splits: dict[str, str],
                  folds: dict[str, int], skips: SkipLog, resume: bool) -> int:
    root = Path(args.images).resolve()
    manifest: list[dict[str, str]] = []
    reused = 0
    with logging_redirect_tqdm():  # warnings print above the progress bar, not through it
        for row in tqdm(rows, desc="images", unit="img", disable=None):
            result = _write_row(args, out, root, row, splits[row.patient], folds, skips, resume)
            if result is not None:
                manifest += result[0]
                reused += result[1]
    if resume:
        logger.info("resumed: %d row(s) were already written, %d made now", reused, len(rows) - reused)

    fieldnames = ["file", "source", "patient", "crop", "split"] + (["fold"] if args.folds else []) + \
        ["label", "sex", "age", "bmi", "row"] + (["hip"] if args.split_hips else []) + \
        (list(ROI_COLUMNS) if args.roi else []) + (["patient_csv"] if args.sanitize_ids else [])
    runfiles.write_csv(out / MANIFEST, manifest, fieldnames)
    runfiles.write_csv(out / SKIPPED, skips.rows, ["row", "image", "patient", "reason", "message"])

    # Images of an interrupted run that this run did not make again (e.g. their source became unreadable).
    written = {m["file"] for m in manifest}
    for split in SPLITS:
        for path in sorted((out / split).iterdir()):
            if path.is_file() and _own_output(path.name) and f"{split}/{path.name}" not in written:
                logger.warning("removing %s: not part of this run", path)
                path.unlink()

    for split in SPLITS:
        labels = {m["label"] for m in manifest if m["split"] == split}
        count = sum(m["split"] == split for m in manifest)
        if count == 0:
            logger.warning("split %s has no images", split)
        elif len(labels) == 1:
            logger.warning("split %s has only class %s (%d images): AUC and similar metrics are undefined there",
                           split, labels.pop(), count)
    (out / MARKER).unlink()
    logger.info("wrote %d images to %s (%s, %s)", len(manifest), out, MANIFEST, SKIPPED)
    print(summary_table(manifest, skips.rows, args.folds))
    return 0


def _write_row(args: argparse.Namespace, out: Path, root: Path, row: Row, split: str, folds: dict[str, int],
               skips: SkipLog, resume: bool) -> tuple[list[dict[str, str]], bool] | None:
    """Read, cut, fit and write one row's image(s): (manifest entries, already there), or None if skipped."""
    targets = [(crop, hip, out / split / filenames.encode(row.patient, crop, row.label, row.sex, row.age, row.bmi))
               for crop, hip in row.crops]
    # --roi recomputes on resume: its manifest columns come from the finder (well under a second)
    reused = resume and all(path.is_file() for _, _, path in targets) and not args.roi
    found = None
    if not reused:
        try:
            img = read_image(row.path)
            if row.box is not None:
                img = crop_box(img, row.box)
            problem = roi.image_problem(img, bool(args.roi))
            if problem is not None:
                raise OddImageError(problem[0], f"{row.path}: {problem[1]}")
            if args.roi:
                found = roi.find_hips(img, aspect=args.size[0] / args.size[1])
                for note in found.notes:
                    logger.warning("%s: %s", row.image, note)
                parts = [hip.image for hip in found.hips]
            else:
                parts = split_hips(img) if args.split_hips else (img,)
            fitted = [fit_image(part, args.size, args.fit) for part in parts]
        except (ImageReadError, BoxError, OddImageError) as exc:
            if args.strict:
                raise PreprocessError(f"--strict: {skips.csv_path.name} line {row.line}: {exc}") from exc
            skips.skip(row.line, row.image, row.patient_csv, exc.kind if isinstance(exc, OddImageError) else
                       "bad_box" if isinstance(exc, BoxError) else "unreadable_image", str(exc))
            return None
        for (_, _, path), arr in zip(targets, fitted):
            ok, png = cv2.imencode(".png", arr)
            if not ok:
                raise PreprocessError(f"cannot encode {path} as PNG")
            runfiles.write_bytes(path, png.tobytes(), fsync=False)
    entries = []
    for crop, hip, path in targets:
        entry = {"file": f"{split}/{path.name}", "source": row.path.relative_to(root).as_posix(),
                 "patient": row.patient, "crop": str(crop), "split": split}
        if args.folds:
            entry["fold"] = str(folds[row.patient]) if row.patient in folds else "NA"
        entry.update(label=str(row.label), sex=_fmt(row.sex), age=_fmt(row.age), bmi=_fmt(row.bmi),
                     row=str(row.line))
        if args.split_hips:
            entry["hip"] = hip
        if found is not None:
            entry.update(roi_columns(found, 0 if hip == "right" else 1))
        if args.sanitize_ids:
            entry["patient_csv"] = row.patient_csv
        entries.append(entry)
    return entries, reused


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
    g.add_argument("--out", required=True, help="output folder (new or empty; see --overwrite)")
    g.add_argument("--csv-encoding", default="utf-8-sig", help="text encoding of the CSV (default: %(default)s)")
    g.add_argument("--delimiter", default=None, help="CSV field separator (default: detected among , ; tab |)")

    g = parser.add_argument_group("columns (names are matched case-insensitively)")
    for role, help_text in (("id", "patient id"), ("image", "image path relative to --images"),
                            ("label", "label 0 normal / 1 osteoporosis")):
        g.add_argument(FLAGS[role], dest=f"{role}_col", metavar="NAME",
                       help=f"{help_text} (default: first of {', '.join(COLUMN_CANDIDATES[role])})")
    g.add_argument("--tscore-col", metavar="NAME", help="derive the label from this T-score column instead")
    g.add_argument("--tscore-cutoff", type=float, default=-2.5,
                   help="label 1 when T-score <= this (default: %(default)s, the WHO definition)")
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
    g.add_argument("--seed", type=int, default=0, help="seed of the split and folds (default: %(default)s)")
    g.add_argument("--split-col", metavar="NAME", help="take each patient's split from this column (train/val/test)")
    g.add_argument("--folds", type=int, default=None, metavar="K",
                   help="also number train+val patients into K folds (manifest column 'fold')")

    g = parser.add_argument_group("safety")
    g.add_argument("--overwrite", action="store_true",
                   help="allow a non-empty --out; only files this tool writes are replaced or removed")
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
    build_parser().parse_args()  # --help and a mistyped flag answer here, before the image libraries load

# used by the functions above; imported last so that the line above answers without them
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402
from tqdm import tqdm  # noqa: E402
from tqdm.contrib.logging import logging_redirect_tqdm  # noqa: E402

import roi  # noqa: E402

if __name__ == "__main__":
    run_main(main)
