"""The file-name format that carries label and clinical data: the one place that knows it, and
:func:`list_split`, which lists a split folder's images with every name checked.

    <patient>_<crop>_<label>-<sex>-<age>-<bmi>.<ext>      e.g. 20180187_1_0-1-44-25.03404305.png

label 0 normal / 1 osteoporosis; sex 1 female / 0 male; age in years; BMI unrounded.
A missing clinical value is written ``NA``. ``.png`` and ``.npy`` (a 2-D array) are read.

The label may be ``NA`` too (no binary label, ``SampleInfo.label`` None): only for the images of
a data folder's ``unscored/`` (:func:`list_unscored`), which have a measurement (e.g. a Singh grade
between the cut's classes) that trains graded targets but are never scored (``measures.py``).
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from hipx.core.measures import UNSCORED

EXTENSIONS = (".png", ".npy")
PATTERN = "<patient>_<crop>_<label>-<sex>-<age>-<bmi>.<png|npy>  (e.g. 20180187_1_0-1-44-25.03404305.png; missing values as NA)"

_NUM = r"(?:\d+(?:\.\d+)?|NA)"
_RE = re.compile(
    rf"^(?P<patient>[^/\\]+?)_(?P<crop>\d+)_(?P<label>[01]|NA)-(?P<sex>[01]|NA)-(?P<age>{_NUM})-(?P<bmi>{_NUM})$"
)


# Plausible ranges, shared with preprocess_filenames.py: a value outside is a typo, not a patient.
AGE_RANGE = (0.0, 130.0)  # years
BMI_RANGE = (5.0, 150.0)  # kg/m^2

FIELDS = ("label", "sex", "age", "bmi")  # after <patient>_<crop>_, separated by '-'
_FIELD_RULES = {
    "label": (r"[01]|NA", "0 (normal), 1 (osteoporosis) or NA (no binary label: unscored/ only)"),
    "sex": (r"[01]|NA", "1 (female), 0 (male) or NA"),
    "age": (_NUM, "a number of years such as 44 or 71.5, or NA"),
    "bmi": (_NUM, "a number such as 25.03404305, or NA"),
}


class FileNameError(ValueError):
    """A file name that does not follow :data:`PATTERN`."""


@dataclass(frozen=True)
class SampleInfo:
    patient: str
    crop: int
    label: int | None  # None: NA, no binary label (an image of unscored/)
    sex: float  # 1 female, 0 male, NaN missing
    age: float  # years, NaN missing
    bmi: float  # kg/m^2, NaN missing

    @property
    def clinical(self) -> tuple[float, float, float]:
        """(sex, age, bmi) in the order the models use."""
        return (self.sex, self.age, self.bmi)


def _fmt(value: float | None, integer: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "NA"
    if value < 0:
        raise ValueError(f"clinical values must be >= 0, got {value}")
    if integer:
        if float(value) != int(value):
            raise ValueError(f"expected a whole number, got {value}")
        return str(int(value))
    text = repr(float(value))  # shortest exact text: BMI stays unrounded
    if "e" in text or "inf" in text:
        raise ValueError(f"cannot write {value} in a file name")
    return text[:-2] if text.endswith(".0") else text


def encode(patient: str, crop: int, label: int | None, sex: float | None, age: float | None,
           bmi: float | None, ext: str = ".png") -> str:
    """File name for one image. ``None`` or NaN clinical values, and a ``None`` label (an unscored
    image), are written ``NA``."""
    patient = str(patient)
    if not patient or any(c in patient for c in "/\\-") or patient.strip() != patient:
        raise ValueError(f"patient id {patient!r} must be non-empty, without '/', '\\', '-' or surrounding spaces")
    if label is not None and label not in (0, 1):
        raise ValueError(f"label must be 0 (normal), 1 (osteoporosis) or None (unscored), got {label!r}")
    if ext not in EXTENSIONS:
        raise ValueError(f"extension {ext!r} not supported; use one of {EXTENSIONS}")
    if sex is not None and not (isinstance(sex, float) and math.isnan(sex)) and sex not in (0, 1):
        raise ValueError(f"sex must be 1 (female), 0 (male) or missing, got {sex!r}")
    label_text = "NA" if label is None else str(int(label))
    name = f"{patient}_{int(crop)}_{label_text}-{_fmt(sex, True)}-{_fmt(age)}-{_fmt(bmi)}{ext}"
    decode(name)  # the format must round-trip
    return name


def decode(path: str | os.PathLike) -> SampleInfo:
    """Parse a file name (any directory part is ignored); raise :class:`FileNameError` if malformed."""
    name = os.path.basename(os.fspath(path))
    stem, ext = os.path.splitext(name)
    if ext.lower() not in EXTENSIONS:
        raise FileNameError(f"{path}: extension {ext or '(none)'!r} not supported; expected {PATTERN}")
    match = _RE.match(stem)
    if match is None:
        raise FileNameError(f"{path}: file name does not match the format: {_which_field(stem)}; expected {PATTERN}")
    g = match.groupdict()

    def num(text: str) -> float:
        return math.nan if text == "NA" else float(text)

    info = SampleInfo(patient=g["patient"], crop=int(g["crop"]), label=None if g["label"] == "NA" else int(g["label"]),
                      sex=num(g["sex"]), age=num(g["age"]), bmi=num(g["bmi"]))
    for field, value, (lo, hi) in (("age", info.age, AGE_RANGE), ("bmi", info.bmi, BMI_RANGE)):
        if not math.isnan(value) and not lo <= value <= hi:
            raise FileNameError(f"{path}: {field} {g[field]} is outside the plausible range {lo:g}..{hi:g} "
                                "(the range preprocess_filenames.py accepts); write NA if unknown")
    return info


def _which_field(stem: str) -> str:
    """What is wrong with a stem that does not match: the first field of the format it breaks."""
    head, _, tail = stem.rpartition("_")
    if not head:
        return "no '<patient>_<crop>_' before the label and clinical values"
    patient, _, crop = head.rpartition("_")
    if not patient:
        return f"no crop number: {stem!r} has one '_' where the format has two"
    if not re.fullmatch(r"\d+", crop):
        return f"crop {crop!r} is not a whole number"
    values = tail.split("-")
    if len(values) == len(FIELDS) + 1 and "" in values[1:]:  # "50--5": a minus sign, read as a separator
        at = values.index("", 1)
        field = FIELDS[at] if at < len(FIELDS) else FIELDS[-1]
        return (f"{field} '-{values[at + 1]}' is negative; clinical values are >= 0 (age {AGE_RANGE[0]:g}.."
                f"{AGE_RANGE[1]:g} years, BMI {BMI_RANGE[0]:g}..{BMI_RANGE[1]:g}), or NA when unknown: rename the "
                f"file with the right value or NA (preprocess_filenames.py writes names from a CSV)")
    if len(values) != len(FIELDS):
        return (f"{len(values)} '-'-separated values {tail!r} after the crop number; the format has "
                f"{len(FIELDS)}: {'-'.join(FIELDS)}")
    for field, text in zip(FIELDS, values):
        rule, accepted = _FIELD_RULES[field]
        if not re.fullmatch(rule, text):
            return f"{field} {text!r} is not {accepted}"
    return "see the pattern"


def scored(path: str | os.PathLike) -> SampleInfo:
    """:func:`decode` for an image that is scored (train/val/test, a test set, a Grad-CAM case):
    raise :class:`FileNameError` naming the file when its label is NA."""
    info = decode(path)
    if info.label is None:
        raise FileNameError(f"{path}: label NA (no binary label) belongs in {UNSCORED}/, which trains graded "
                            "targets only; a scored image needs label 0 (normal) or 1 (osteoporosis)")
    return info


def _images(folder: Path) -> list[Path]:
    """Sorted image files of ``folder``; a folder named like an image is refused."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTENSIONS)
    folders = [p for p in files if p.is_dir()]
    if folders:
        raise ValueError(f"{folders[0]} is a folder named like an image; {folder} must hold image files only: "
                         "move or rename that folder")
    return files


def list_split(data_dir: str | os.PathLike, split: str) -> list[Path]:
    """Sorted image files of one split, with every file name checked (and a binary label: an
    image labelled NA belongs in ``unscored/``, :func:`list_unscored`)."""
    folder = Path(data_dir) / split
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no folder {folder}. Expected {Path(data_dir)}/train|val|test/ with files named "
            f"{PATTERN}. Make the demo set with: python synthetic.py --out {data_dir}")
    files = _images(folder)
    if not files:
        raise ValueError(f"{folder} holds no .png or .npy images; expected files named {PATTERN}")
    for p in files:
        scored(p)  # fail early, naming the file
    return files


def list_unscored(data_dir: str | os.PathLike) -> list[Path]:
    """Sorted image files of ``data_dir/unscored/`` (images with a measurement but no binary label,
    written by ``preprocess_filenames.py``), names checked; [] when the folder is absent."""
    folder = Path(data_dir) / UNSCORED
    if not folder.is_dir():
        return []
    files = _images(folder)
    for p in files:
        decode(p)  # fail early, naming the file
    return files


def field_spans(path: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """Where each field (patient, crop, label, sex, age, bmi, ext) lies in a file's base name, as
    ``(start, end)`` character offsets; raise :class:`FileNameError` if malformed."""
    name = os.path.basename(os.fspath(path))
    decode(name)
    stem, ext = os.path.splitext(name)
    match = _RE.match(stem)
    return {**{key: match.span(key) for key in _RE.groupindex}, "ext": (len(stem) + 1, len(name))}
