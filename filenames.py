"""The file-name format that carries label and clinical data: the one place that knows it.

    <patient>_<crop>_<label>-<sex>-<age>-<bmi>.<ext>      e.g. 20180187_1_0-1-44-25.03404305.png

label 0 normal / 1 osteoporosis; sex 1 female / 0 male; age in years; BMI unrounded.
A missing clinical value is written ``NA``. ``.png`` and ``.npy`` (a 2-D array) are read.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

EXTENSIONS = (".png", ".npy")
PATTERN = "<patient>_<crop>_<label>-<sex>-<age>-<bmi>.<png|npy>  (e.g. 20180187_1_0-1-44-25.03404305.png; missing values as NA)"

_NUM = r"(?:\d+(?:\.\d+)?|NA)"
_RE = re.compile(
    rf"^(?P<patient>[^/\\]+?)_(?P<crop>\d+)_(?P<label>[01])-(?P<sex>[01]|NA)-(?P<age>{_NUM})-(?P<bmi>{_NUM})$"
)


class FileNameError(ValueError):
    """A file name that does not follow :data:`PATTERN`."""


@dataclass(frozen=True)
class SampleInfo:
    patient: str
    crop: int
    label: int
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


def encode(patient: str, crop: int, label: int, sex: float | None, age: float | None,
           bmi: float | None, ext: str = ".png") -> str:
    """File name for one image. ``None`` or NaN clinical values are written ``NA``."""
    patient = str(patient)
    if not patient or any(c in patient for c in "/\\-") or patient.strip() != patient:
        raise ValueError(f"patient id {patient!r} must be non-empty, without '/', '\\', '-' or surrounding spaces")
    if label not in (0, 1):
        raise ValueError(f"label must be 0 (normal) or 1 (osteoporosis), got {label!r}")
    if ext not in EXTENSIONS:
        raise ValueError(f"extension {ext!r} not supported; use one of {EXTENSIONS}")
    if sex is not None and not (isinstance(sex, float) and math.isnan(sex)) and sex not in (0, 1):
        raise ValueError(f"sex must be 1 (female), 0 (male) or missing, got {sex!r}")
    name = f"{patient}_{int(crop)}_{label}-{_fmt(sex, True)}-{_fmt(age)}-{_fmt(bmi)}{ext}"
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
        raise FileNameError(f"{path}: file name does not match {PATTERN}")
    g = match.groupdict()

    def num(text: str) -> float:
        return math.nan if text == "NA" else float(text)

    return SampleInfo(patient=g["patient"], crop=int(g["crop"]), label=int(g["label"]),
                      sex=num(g["sex"]), age=num(g["age"]), bmi=num(g["bmi"]))


def field_spans(path: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """Where each field (patient, crop, label, sex, age, bmi, ext) lies in a file's base name, as
    ``(start, end)`` character offsets; raise :class:`FileNameError` if malformed."""
    name = os.path.basename(os.fspath(path))
    decode(name)
    stem, ext = os.path.splitext(name)
    match = _RE.match(stem)
    return {**{key: match.span(key) for key in _RE.groupindex}, "ext": (len(stem) + 1, len(name))}
