"""Writing a data folder from a checked patient table: ``OUT/train|val|test`` with one PNG per crop
named in the file-name format, ``OUT/unscored`` for rows with a measurement but no label (label
``NA``, never scored), ``manifest.csv`` (with the ``measure`` kept, measures.py), ``skipped.csv`` and
the summary table.

The second half of ``preprocess_filenames.py`` (the first reads the table: ``patient_table.py``). It
owns what makes the output safe: nothing but its own files is replaced (``--overwrite``), every file
is written atomically, and an interrupted run resumes from its fingerprint. Details: docs/data.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

import cv2
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from hipx.data import filenames
from hipx.core import measures
from hipx.data import roi
from hipx.core import files as fileio
from hipx.data.imaging import BoxError, ImageReadError, OddImageError, crop_box, read_image
from hipx.data.preprocessing import DATA_FOLDER_CONFIG, Preprocessing
from hipx.prepare.patient_table import PreprocessError, Row, SkipLog
from hipx.data.splits import SPLITS

logger = logging.getLogger(__name__)

MARKER = ".preprocess_in_progress"
MANIFEST = "manifest.csv"
SKIPPED = "skipped.csv"
CONFIG = DATA_FOLDER_CONFIG  # with the preprocessing record (preprocessing.py) that runs copy
LOG = "preprocess.log"
OWN_FILES = (MANIFEST, SKIPPED, CONFIG, LOG, MARKER)
FORMAT_VERSION = 2  # part of the resume fingerprint: bump when outputs for the same input change
FOLDERS = SPLITS + (measures.UNSCORED,)  # where this tool writes images


def _fmt(value: float | int | None) -> str:
    if value is None:
        return "NA"
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _own_output(name: str) -> bool:
    """A file in OUT/<split>/ that this tool writes (an image with a decodable name, or its temp file)."""
    if fileio.TEMP_NAME.match(name):
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
    files += [p for p in out.iterdir() if fileio.TEMP_NAME.match(p.name) and p.is_file()]
    for split in FOLDERS:
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
        make_folder(out / split)
    if not resume:
        fileio.write_bytes(marker, json.dumps({"fingerprint": fingerprint, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                         "command": sys.argv}, indent=1).encode("utf-8"))
    return resume


def make_folder(folder: Path) -> None:
    """An image folder of OUT, never written through a symbolic link."""
    if folder.is_symlink():
        raise PreprocessError(f"{folder} is a symbolic link; refusing to write through it")
    folder.mkdir(exist_ok=True)


def settings_fingerprint(args: argparse.Namespace, csv_bytes: bytes, images: Path) -> tuple[str, dict]:
    """(hash, settings) of what decides the output files, which a resumed run must match."""
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
        rows = [m for m in manifest if m["split"] == split or split == "total" and m["split"] in SPLITS]
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
    unscored = [m for m in manifest if m["split"] == measures.UNSCORED]
    if unscored:
        lines += ["", f"{measures.UNSCORED}: {len(unscored)} images of {len({m['patient'] for m in unscored})} "
                  f"patients with a {unscored[0][measures.NAME_COLUMN]} but no label ({measures.UNSCORED}/: they "
                  "train graded targets, never scored)"]
    n = len(manifest)
    missing = ", ".join(f"{c} {sum(m[c] == 'NA' for m in manifest)}/{n}" for c in ("sex", "age", "bmi"))
    if measures.COLUMN in (manifest[0] if manifest else {}):
        missing += f", {manifest[0][measures.NAME_COLUMN]} {sum(m[measures.COLUMN] == '' for m in manifest)}/{n}"
    lines += ["", f"missing values (images): {missing}"]
    reasons = Counter(r["reason"] for r in skipped)
    lines += roi_summary(manifest)
    lines.append(f"skipped: {len(skipped)} (see {SKIPPED})")
    for reason, count in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"  {reason:<20}{count:>6}")
    return "\n".join(lines)



def write_images(args: argparse.Namespace, out: Path, rows: list[Row], splits: dict[str, str],
                 folds: dict[str, int], skips: SkipLog, resume: bool, measure_name: str | None = None) -> int:
    """Every row's image(s) into ``out`` (a row without a label into unscored/), then manifest.csv
    (with the ``measure`` columns when ``measure_name`` is given) and skipped.csv; prints the summary."""
    root = Path(args.images).resolve()
    manifest: list[dict[str, str]] = []
    reused = 0
    if any(row.label is None for row in rows):
        make_folder(out / measures.UNSCORED)
    with logging_redirect_tqdm():  # warnings print above the progress bar, not through it
        for row in tqdm(rows, desc="images", unit="img", disable=None):
            split = measures.UNSCORED if row.label is None else splits[row.patient]
            result = _write_row(args, out, root, row, split, folds, skips, resume)
            if result is not None:
                for entry in result[0]:
                    if measure_name is not None:
                        entry.update({measures.COLUMN: "" if row.measure is None else _fmt(row.measure),
                                      measures.NAME_COLUMN: measure_name})
                manifest += result[0]
                reused += result[1]
    if resume:
        logger.info("resumed: %d row(s) were already written, %d made now", reused, len(rows) - reused)

    fieldnames = ["file", "source", "patient", "crop", "split"] + (["fold"] if args.folds else []) + \
        ["label", "sex", "age", "bmi"] + ([measures.COLUMN, measures.NAME_COLUMN] if measure_name else []) + \
        ["row"] + (["hip"] if args.split_hips else []) + \
        (list(ROI_COLUMNS) if args.roi else []) + (["patient_csv"] if args.sanitize_ids else [])
    fileio.write_csv(out / MANIFEST, manifest, fieldnames)
    fileio.write_csv(out / SKIPPED, skips.rows, ["row", "image", "patient", "reason", "message"])

    # Images of an interrupted run that this run did not make again (e.g. their source became unreadable).
    written = {m["file"] for m in manifest}
    for split in FOLDERS:
        if not (out / split).is_dir():
            continue
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
    n_unscored = sum(m["split"] == measures.UNSCORED for m in manifest)
    logger.info("wrote %d images to %s (%s, %s)%s", len(manifest), out, MANIFEST, SKIPPED,
                f", {n_unscored} of them without a label to {measures.UNSCORED}/ (never scored)" if n_unscored else "")
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
            # the steps after decoding, as predict.py repeats them on a new raw file (preprocessing.py)
            cut = Preprocessing.from_args(args).cut(img, row.path)
            found = cut.roi
            for note in found.notes if found is not None else ():
                logger.warning("%s: %s", row.image, note)
            fitted = [crop.image for crop in cut.crops]
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
            fileio.write_bytes(path, png.tobytes(), fsync=False)
    entries = []
    for crop, hip, path in targets:
        entry = {"file": f"{split}/{path.name}", "source": row.path.relative_to(root).as_posix(),
                 "patient": row.patient, "crop": str(crop), "split": split}
        if args.folds:
            entry["fold"] = str(folds[row.patient]) if row.patient in folds and row.label is not None else "NA"
        entry.update(label=_fmt(row.label), sex=_fmt(row.sex), age=_fmt(row.age), bmi=_fmt(row.bmi),
                     row=str(row.line))
        if args.split_hips:
            entry["hip"] = hip
        if found is not None:
            entry.update(roi_columns(found, 0 if hip == "right" else 1))
        if args.sanitize_ids:
            entry["patient_csv"] = row.patient_csv
        entries.append(entry)
    return entries, reused
