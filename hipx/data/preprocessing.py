"""How a data folder's images were made from a hospital's raw files, as one object that is recorded
with the data folder (``preprocess_config.json``), copied into every run trained on it
(``preprocessing.json``) and applied to a new raw file with the very functions that made the data
folder, so that ``predict.py`` scores a new scan as the run was trained.

    pre = Preprocessing.from_data_folder("data")        # FileNotFoundError: the folder records none
    crops = pre.apply("new/scan.dcm")                    # [Crop(image, box, side, found, note), ...]
    record_preprocessing("data", "outs/r/fold_X")         # when a run folder is made
    pre = run_preprocessing("outs/r/fold_X")              # predict.py; None where nothing is recorded

The pipeline, step by step (``preprocess_filenames.py`` runs it through :meth:`Preprocessing.cut`, and
so does :meth:`Preprocessing.apply`):

1. decode: :func:`imaging.read_image` to 8-bit grey (:data:`imaging.DECODING`: DICOM rescale, window,
   MONOCHROME1 inversion; 16-bit and other depths by their min/max);
2. the export's crop box (``--box-cols``): only rows of the export's CSV have one;
3. check: :func:`roi.image_problem` (too small, blank);
4. cut: ``--roi femur`` :func:`roi.find_hips` (both proximal femurs, oriented as ``--split-hips``),
   ``--split-hips`` :func:`imaging.split_hips`, else the whole image;
5. fit: :func:`imaging.fit_image` to ``--size`` by ``--fit``.

The result is what a data folder's PNG holds (8-bit grey; PNG is lossless). The run's loader does
the rest for a data-folder file and a crop made here alike: grey / 255, resized to the run's
``--image_size``, and its contrast-enhanced copy (``loader.prepare``). No torch here.
"""
from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from hipx.core.files import read_json, write_json
from hipx.data import imaging, roi
from hipx.data.splits import IMAGE_SIZE

logger = logging.getLogger(__name__)

FORMAT = "hipx-preprocessing/1"
FILE = "preprocessing.json"  # in a run folder: the preprocessing of the data folder it was trained on
DATA_FOLDER_CONFIG = "preprocess_config.json"  # in a data folder made by preprocess_filenames.py (datafolder.CONFIG)
RUN_CONFIG = "config.json"  # a run folder's configuration (runfiles.CONFIG; runs is a layer above data)
FITS = ("pad", "crop", "stretch")


class PreprocessingError(ValueError):
    """A recorded preprocessing that cannot be read, or that this code cannot repeat; the message says why."""


@dataclass(frozen=True)
class Crop:
    """One image the pipeline makes from a raw file: what the data folder's PNG would hold."""

    image: np.ndarray  # uint8 (H, W) at the recorded size
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (x1, y1 exclusive) on the decoded raw image
    side: str  # 'right' or 'left' (the patient's hip), '' for the whole image
    found: bool = True  # --roi femur: False where the femoral head was not found (the crop is the half field)
    note: str = ""  # why it was not found


@dataclass
class Cut:
    """:meth:`Preprocessing.cut` of one image: its crops and, with ``--roi femur``, the finder's result."""

    crops: list[Crop]
    roi: roi.Result | None = None


def _checks() -> dict:
    """The limits of :func:`roi.image_problem`, which refuses an image before it is cut."""
    return {"min_source_side": roi.MIN_SOURCE_SIDE, "min_roi_side": roi.MIN_ROI_SIDE,
            "min_grey_range": roi.MIN_GREY_RANGE}


def _plain(value: Any) -> Any:
    """``value`` as JSON gives it back (tuples as lists), so that recorded and current settings compare."""
    return json.loads(json.dumps(value))


@dataclass(frozen=True)
class Preprocessing:
    """The steps that made a data folder's images (module docstring), with the settings of each.

    ``assumed`` names what an older data folder did not record (``decoding``, ``roi parameters``,
    ``checks``): it is taken from this code, and said so wherever it is used."""

    size: tuple[int, int] = IMAGE_SIZE  # (height, width) of the data folder's images
    fit: str = "pad"
    split_hips: bool = False
    roi: str | None = None  # 'femur' or None
    box_cols: tuple[str, ...] | None = None  # the export's CSV columns of a crop box per row
    decoding: Mapping = field(default_factory=lambda: copy.deepcopy(imaging.DECODING))
    roi_parameters: Mapping | None = None  # roi.parameters() where roi is set
    checks: Mapping = field(default_factory=_checks)
    assumed: tuple[str, ...] = ()
    _checked: bool = field(default=False, init=False, compare=False, repr=False)  # check_repeatable passed

    def __post_init__(self) -> None:
        if len(self.size) != 2 or min(int(v) for v in self.size) < 1:
            raise PreprocessingError(f"size {self.size}: expected (height, width) in pixels")
        if self.fit not in FITS:
            raise PreprocessingError(f"fit {self.fit!r}: expected one of {', '.join(FITS)}")
        if self.roi not in (None, "femur"):
            raise PreprocessingError(f"roi {self.roi!r}: this code knows only 'femur' (or none)")
        object.__setattr__(self, "size", tuple(int(v) for v in self.size))
        if self.roi and self.roi_parameters is None:
            object.__setattr__(self, "roi_parameters", roi.parameters())

    # -- made, written, read ----------------------------------------------------------------------
    @classmethod
    def from_args(cls, args: Any) -> "Preprocessing":
        """From ``preprocess_filenames.py``'s checked flags (``--size --fit --split-hips --roi --box-cols``)."""
        return cls(size=tuple(args.size), fit=args.fit, split_hips=bool(args.split_hips or args.roi),
                   roi=args.roi, box_cols=tuple(args.box_cols) if args.box_cols else None)

    def to_dict(self) -> dict:
        """The JSON form (``preprocessing.json``, ``preprocess_config.json``'s ``preprocessing``): the
        settings and, for a reader without this code, each step in words."""
        return {
            "format": FORMAT,
            "made_by": "preprocess_filenames.py",
            "steps": self.steps(),
            "decoding": _plain(self.decoding),
            "box_cols": list(self.box_cols) if self.box_cols else None,
            "checks": _plain(self.checks),
            "roi": None if not self.roi else {"name": self.roi, "aspect": self.size[0] / self.size[1],
                                              "parameters": _plain(self.roi_parameters)},
            "split_hips": self.split_hips,
            "size": list(self.size),
            "fit": self.fit,
            "output": "uint8 grey, written as an 8-bit PNG named in the file-name format (filenames.PATTERN)",
            "enhancement": "none in the data folder: a run's loader scales each image by 1/255, resizes it to the "
                           "run's image size and adds its contrast-enhanced copy (loader.prepare: CLAHE and edges)",
            "assumed": list(self.assumed),
        }

    @classmethod
    def from_dict(cls, data: Mapping, where: str | os.PathLike = "preprocessing") -> "Preprocessing":
        """Read :meth:`to_dict`'s form back; errors name ``where`` (the file it came from)."""
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise PreprocessingError(f"{where}: not a preprocessing record of this code (format {found!r}, expected "
                                     f"{FORMAT!r})")
        try:
            region = data.get("roi") or {}
            return cls(size=tuple(data["size"]), fit=data["fit"], split_hips=bool(data["split_hips"]),
                       roi=region.get("name"), box_cols=tuple(data["box_cols"]) if data.get("box_cols") else None,
                       decoding=data["decoding"], roi_parameters=region.get("parameters"),
                       checks=data.get("checks") or _checks(), assumed=tuple(data.get("assumed") or ()))
        except (KeyError, TypeError, ValueError) as exc:
            raise PreprocessingError(f"{where}: unreadable preprocessing record ({type(exc).__name__}: {exc})") from None

    @classmethod
    def from_data_folder(cls, path: str | os.PathLike) -> "Preprocessing":
        """What ``preprocess_filenames.py`` recorded in the data folder ``path``. A folder made before the
        record existed gives its flags (``settings``), with the decoding, the ROI finder's parameters and
        the checks taken from this code (``assumed``). ``FileNotFoundError`` where nothing is recorded
        (the demo data of ``synthetic.py``: its images are made in the data folder's format)."""
        config_path = Path(path) / DATA_FOLDER_CONFIG
        if not config_path.is_file():
            raise FileNotFoundError(f"{path}: no {DATA_FOLDER_CONFIG}; only a data folder made by "
                                    "preprocess_filenames.py records how its images were made")
        try:
            config = read_json(config_path)
        except (OSError, ValueError) as exc:
            raise PreprocessingError(f"{config_path}: unreadable ({exc})") from None
        if "preprocessing" in config:
            return cls.from_dict(config["preprocessing"], config_path)
        settings = config.get("settings") if isinstance(config, Mapping) else None
        if not isinstance(settings, Mapping) or "size" not in settings:
            raise PreprocessingError(f"{config_path}: neither 'preprocessing' nor the flags ('settings' with 'size') "
                                     "of preprocess_filenames.py")
        region = settings.get("roi")
        return cls(size=tuple(settings["size"]), fit=settings.get("fit", "pad"),
                   split_hips=bool(settings.get("split_hips") or region), roi=region,
                   box_cols=tuple(settings["box_cols"]) if settings.get("box_cols") else None,
                   assumed=("decoding", "checks") + (("roi parameters",) if region else ()))

    def steps(self) -> list[str]:
        """The pipeline in words, in order."""
        out = [f"decode with {self.decoding.get('reader', 'imaging.read_image')} (version "
               f"{self.decoding.get('version')}) to 8-bit grey"]
        if self.box_cols:
            out.append(f"cut the export's box per row (CSV columns {', '.join(self.box_cols)})")
        out.append("refuse an image with a side under "
                   f"{self.checks['min_roi_side' if self.roi else 'min_source_side']} pixels or fewer than "
                   f"{self.checks['min_grey_range']} grey levels (roi.image_problem)")
        if self.roi:
            out.append("cut each hip's proximal femur at native resolution (roi.find_hips, aspect "
                       f"{self.size[0]}/{self.size[1]}), upside-down images turned, markers painted over, the left "
                       "hip mirrored; a hip whose head is not found falls back to the half field")
        elif self.split_hips:
            out.append("split into the right hip (image left half) and the left hip (right half, mirrored)")
        out.append(f"fit to {self.size[0]} x {self.size[1]} pixels ({self.fit})")
        return out

    # -- repeated -----------------------------------------------------------------------------------
    def differences(self) -> list[str]:
        """How the recorded steps differ from what this code does (empty: this code repeats them)."""
        out = []
        if _plain(self.decoding) != _plain(imaging.DECODING):
            out.append(f"image decoding (recorded version {self.decoding.get('version')}, this code's "
                       f"{imaging.DECODING['version']})")
        if self.roi and _plain(self.roi_parameters) != _plain(roi.parameters()):
            changed = sorted(k for k in set(self.roi_parameters) | set(roi.parameters())
                             if _plain(self.roi_parameters.get(k)) != _plain(roi.parameters().get(k)))
            out.append(f"the femur finder's parameters ({', '.join(changed)})")
        if _plain(self.checks) != _plain(_checks()):
            out.append(f"the image checks (recorded {_plain(self.checks)}, this code's {_checks()})")
        return out

    def check_repeatable(self, where: str = "the run's preprocessing") -> None:
        """Raise :class:`PreprocessingError` when this code cannot repeat the recorded steps (once checked,
        not again)."""
        if self._checked:
            return
        differ = self.differences()
        if differ:
            raise PreprocessingError(f"{where}: this code does not repeat how the images were made: {'; '.join(differ)} "
                                     "differ. Score crops made then (predict.py --as-trained crops), or use the "
                                     "version of this code that made the data folder")
        if self.assumed:
            logger.warning("%s: made before data folders recorded %s; this code's are assumed", where,
                           " and ".join(self.assumed))
        object.__setattr__(self, "_checked", True)

    def cut(self, img: np.ndarray, where: str | os.PathLike = "", offset: tuple[int, int] = (0, 0)) -> Cut:
        """Steps 3-5 on a decoded 8-bit grey image (after the export's box, whose corner is ``offset``):
        its crops, boxes on the image the box was cut from. Raises ``imaging.OddImageError`` (kind,
        sentence naming ``where``) for an image that cannot be used."""
        problem = roi.image_problem(img, bool(self.roi))
        if problem is not None:
            raise imaging.OddImageError(problem[0], f"{where}: {problem[1]}")
        h, w = img.shape[:2]
        found = None
        if self.roi:
            found = roi.find_hips(img, aspect=self.size[0] / self.size[1])
            parts = [(hip.image, hip.box, hip.side, hip.found,
                      next((n for n in found.notes if n.startswith(f"{hip.side} hip")), "")) for hip in found.hips]
        elif self.split_hips:
            right, left = imaging.split_hips(img)
            half = w // 2
            parts = [(right, (0, 0, half, h), "right", True, ""), (left, (w - half, 0, w, h), "left", True, "")]
        else:
            parts = [(img, (0, 0, w, h), "", True, "")]
        dx, dy = offset
        crops = [Crop(imaging.fit_image(part, self.size, self.fit),
                      (int(box[0]) + dx, int(box[1]) + dy, int(box[2]) + dx, int(box[3]) + dy), side, ok, note)
                 for part, box, side, ok, note in parts]
        return Cut(crops, found)

    def apply(self, raw_path: str | os.PathLike, box: Sequence[int] | None = None) -> list[Crop]:
        """A raw file (any format :func:`imaging.read_image` reads, DICOM included) through the recorded
        pipeline: its crops as the data folder holds them, each with its box on the decoded raw image
        and its side. ``box``: the export's crop box, where the data folder was made with ``--box-cols``.
        Raises :class:`PreprocessingError` when this code cannot repeat the steps,
        ``imaging.ImageReadError`` / ``BoxError`` / ``OddImageError`` (naming the file) for a file that
        cannot be used."""
        self.check_repeatable()
        if self.box_cols and box is None:
            raise PreprocessingError(f"{raw_path}: the data folder's images were cut by the export's box per row "
                                     f"(--box-cols {' '.join(self.box_cols)}), which a new file does not have; cut "
                                     "it the same way and score the crop (predict.py --as-trained crops)")
        img = imaging.read_image(raw_path)
        offset = (0, 0)
        if box is not None:
            img = imaging.crop_box(img, box)
            offset = (int(box[0]), int(box[1]))
        return self.cut(img, raw_path, offset).crops


# ----------------------------------------------------------------------------- data folder and run folder

def find(data_dir: str | os.PathLike) -> Preprocessing | None:
    """:meth:`Preprocessing.from_data_folder`, or None where ``data_dir`` records none."""
    try:
        return Preprocessing.from_data_folder(data_dir)
    except FileNotFoundError:
        return None


def record_preprocessing(data_dir: str | os.PathLike, run_dir: str | os.PathLike) -> Path | None:
    """Write the data folder's preprocessing into the run folder as ``preprocessing.json`` (atomically),
    with the data folder's path; returns the file, or None where the data folder records none (the demo
    data of ``synthetic.py``: nothing is written). Call it when the run folder is made."""
    pre = find(data_dir)
    if pre is None:
        return None
    data = pre.to_dict()
    data["data_folder"] = str(Path(data_dir).resolve())
    return write_json(Path(run_dir) / FILE, data)


def _configured_data_dir(folder: Path) -> str | None:
    """The ``data_dir`` in the run folder's configuration (or a fold's, for a run group)."""
    for config in [folder / RUN_CONFIG, *sorted(folder.glob(f"fold*/{RUN_CONFIG}"))]:
        if config.is_file():
            try:
                value = read_json(config).get("data_dir")
            except (OSError, ValueError, AttributeError):
                continue
            return str(value) if value else None
    return None


def run_preprocessing(run: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> Preprocessing | None:
    """The preprocessing a run was trained with: ``preprocessing.json`` in the run folder (``run`` may be
    a checkpoint file in it, or a cross-validation run group, whose folds must agree). A run made
    before runs recorded it falls back to its data folder's record (``data_dir``, by default the one
    in the run's ``config.json``). None where neither exists: the run's images are taken to be in the
    data folder's format already."""
    path = Path(run)
    folder = path.parent if path.is_file() else path
    own = folder / FILE
    records = [own] if own.is_file() else sorted(folder.glob(f"fold*/{FILE}"))
    if records:
        found = []
        for record in records:
            try:
                found.append(Preprocessing.from_dict(read_json(record), record))
            except (OSError, json.JSONDecodeError) as exc:
                raise PreprocessingError(f"{record}: unreadable ({exc})") from None
        for record, other in zip(records[1:], found[1:]):
            if other.to_dict() != found[0].to_dict():
                raise PreprocessingError(f"{folder}: its fold runs were trained on differently made images "
                                         f"({records[0]} and {record} differ); an ensemble needs one data folder")
        return found[0]
    data_dir = data_dir if data_dir is not None else _configured_data_dir(folder)
    if data_dir is None or not Path(data_dir).is_dir():
        return None
    pre = find(data_dir)
    if pre is not None:
        logger.info("%s records no %s (trained before runs recorded it): using its data folder's, %s", folder, FILE,
                    Path(data_dir) / DATA_FOLDER_CONFIG)
    return pre
