"""A generated pelvis export as a hospital's CR modality would store it: DICOM files to try predict.py on.

    python scripts/to_dicom.py EXPORT OUT [--scout] [--clinical CLINICAL.csv]

EXPORT is what ``synthetic.py --pelvis --out EXPORT`` wrote (``patient_list.csv``, ``raw/*.png``). Each
view becomes ``OUT/<name>.dcm``: 12-bit, MONOCHROME1 (bone dark), with a rescale (intercept -1024) and a
window (centre 1000, width 4000), so that reading it back exercises what ``imaging.read_image`` does with
a real export. ``--scout`` adds ``OUT/scout.dcm``, a view without a hip (two flat greys), on which no femur
is found. ``--clinical`` writes the views' sex, age and BMI as ``predict.py --csv`` reads them
(``file,sex,age,bmi``, by DICOM file name; NA for the scout view). OUT must not exist; the export is only read.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hipx.core.cli import run_main  # noqa: E402

LEVELS = 4000  # stored values 0..4000: 12 bits
RESCALE = (1, -1024)  # slope, intercept
WINDOW = (1000, 4000)  # centre, width
SCOUT = (400, 600, 3000, 2500)  # height, width, left and right grey of the view without a hip


def write_dicom(path: Path, stored) -> None:
    """``stored`` (2-D, 0..4095) as a 12-bit MONOCHROME1 CR image with a rescale and a window."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta, ds.SOPClassUID, ds.SOPInstanceUID = meta, meta.MediaStorageSOPClassUID, \
        meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PhotometricInterpretation, ds.SamplesPerPixel = "CR", "MONOCHROME1", 1
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = RESCALE
    ds.WindowCenter, ds.WindowWidth = WINDOW
    ds.PixelData = stored.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("export", type=Path, help="folder written by synthetic.py --pelvis --out EXPORT")
    p.add_argument("out", type=Path, help="folder to write the DICOM files to (must not exist)")
    p.add_argument("--scout", action="store_true", help="also write scout.dcm, a view without a hip")
    p.add_argument("--clinical", type=Path, default=None, metavar="CSV",
                   help="also write sex, age and BMI per DICOM file here (file,sex,age,bmi), for predict.py --csv")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import cv2
    import numpy as np

    table = args.export / "patient_list.csv"
    if not table.is_file():
        raise SystemExit(f"{args.export}: no patient_list.csv; give a folder written by synthetic.py --pelvis --out")
    if args.out.exists():
        raise SystemExit(f"{args.out} exists; choose a new folder")
    if args.clinical is not None and args.clinical.exists():
        raise SystemExit(f"--clinical {args.clinical} exists; choose a new file")
    with open(table, newline="") as fh:
        rows = list(csv.DictReader(fh))
    args.out.mkdir(parents=True)
    written = []
    for row in rows:
        png = args.export / "raw" / row["image"]
        grey = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
        if grey is None:
            raise SystemExit(f"{png}: cannot read it as a grey PNG")
        name = f"{png.stem}.dcm"
        write_dicom(args.out / name, np.rint((255 - grey.astype(np.float64)) / 255 * LEVELS))  # bone dark
        written.append((name, row))
    if args.scout:
        h, w, left, right = SCOUT
        flat = np.full((h, w), float(left))
        flat[:, w // 2:] = right
        write_dicom(args.out / "scout.dcm", flat)
    if args.clinical is not None:
        with open(args.clinical, "w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(["file", "sex", "age", "bmi"])
            out.writerows([name, row["sex"], row["age"], row["bmi"]] for name, row in written)
            if args.scout:  # listed, its values unknown: predict.py asks for every file before it cuts any
                out.writerow(["scout.dcm", "NA", "NA", "NA"])
    print(f"{len(written) + args.scout} DICOM files written to {args.out}"
          + (f"; sex, age and BMI in {args.clinical}" if args.clinical else ""))
    return 0


if __name__ == "__main__":
    run_main(main)
