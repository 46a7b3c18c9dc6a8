"""The measurement behind the label: a T-score, a BMD or an ordered grade (e.g. the Singh index),
kept for every image in a data folder's ``manifest.csv`` so that training can learn from it and not
only from the yes/no it was cut into (``main.py --target``, ``targets.py``).

Two manifest columns carry it: ``measure`` (the number; empty when unknown) and ``measure_name``
(what it is: one of :data:`NAMES`). ``preprocess_filenames.py --tscore-col/--grade-col/--bmd-col``
and ``synthetic.py`` (the demo's true T-score) write them. Lower is always worse: osteoporosis is a
value at or below the clinical cut (T <= -2.5, Singh grade <= 2).

Images with a measurement but no binary label (a grade between the cut's classes, e.g. Singh 3-4)
live in the data folder's :data:`UNSCORED` folder: they train graded targets and are never scored.
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

COLUMN = "measure"
NAME_COLUMN = "measure_name"
MANIFEST = "manifest.csv"
UNSCORED = "unscored"  # data-folder subfolder: images that train graded targets, never scored


@dataclass(frozen=True)
class Kind:
    name: str
    scale: str  # "continuous" (T-score, BMD) or "grade" (ordered integer levels)
    cut: float | None  # the clinical cut: osteoporosis when the value is <= cut (None: no standard one)
    unit: str


NAMES: dict[str, Kind] = {k.name: k for k in (
    Kind("T-score", "continuous", -2.5, "SD"),  # WHO: T <= -2.5
    Kind("BMD", "continuous", None, "g/cm^2"),  # no cut without a reference population: give --cut
    Kind("grade", "grade", 2.0, "grade"),  # Singh index: grades 1-2 osteoporosis
)}
# The WHO classes of a T-score: osteoporosis (<= -2.5), osteopenia (<= -1), normal
WHO_BOUNDS = (-2.5, -1.0)


@dataclass(frozen=True)
class Measures:
    """A data folder's measurement: what it is and its value per image file name (base name)."""
    name: str
    values: dict[str, float]

    @property
    def kind(self) -> Kind:
        return NAMES[self.name]

    def of(self, paths: Sequence[str | os.PathLike]) -> list[float]:
        """The value of each image (NaN where the manifest has none)."""
        return [self.values.get(Path(p).name, math.nan) for p in paths]


class MeasureError(ValueError):
    """A manifest whose measurement columns cannot be read."""


def read(data_dir: str | os.PathLike) -> Measures | None:
    """The measurement in ``data_dir/manifest.csv``, or None when the manifest has none (or no
    manifest exists). Raises :class:`MeasureError` naming the row of a malformed value."""
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        return None
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if COLUMN not in (reader.fieldnames or []):
            return None
        if NAME_COLUMN not in reader.fieldnames or "file" not in reader.fieldnames:
            raise MeasureError(f"{path}: a '{COLUMN}' column needs 'file' and '{NAME_COLUMN}' columns beside it")
        names, values = set(), {}
        for line, row in enumerate(reader, start=2):
            text = (row[COLUMN] or "").strip()
            if text in ("", "NA"):
                continue
            try:
                value = float(text)
            except ValueError:
                raise MeasureError(f"{path} row {line}: {COLUMN} {text!r} is not a number") from None
            if not math.isfinite(value):
                raise MeasureError(f"{path} row {line}: {COLUMN} {text!r} is not a finite number")
            name = (row[NAME_COLUMN] or "").strip()
            if name not in NAMES:
                raise MeasureError(f"{path} row {line}: {NAME_COLUMN} {name!r}; expected one of {', '.join(NAMES)}")
            names.add(name)
            values[Path(row["file"]).name] = value
    if len(names) > 1:
        raise MeasureError(f"{path}: one measurement per data folder, found {', '.join(sorted(names))}")
    return Measures(names.pop(), values) if names else None


def absence(data_dir: str | os.PathLike) -> str:
    """Why ``data_dir`` has no measurement (:func:`read` gave None), as a clause naming the file: no
    manifest, no measure column, or a measure column without a single value."""
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        return f"the data folder {data_dir} has no {MANIFEST}"
    with path.open(newline="", encoding="utf-8") as fh:
        if COLUMN not in (csv.DictReader(fh).fieldnames or []):
            return f"{path} has no '{COLUMN}' column"
    return f"{path} has a '{COLUMN}' column, but it is empty (no row has a value)"
