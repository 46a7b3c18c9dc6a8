"""python predict.py --run outs/<save_dir>/fold<fold> data/test more/image.png --out predictions.csv
   python predict.py --run outs/<save_dir> new/ --out predictions.csv   # fold ensemble of a --folds run
   python predict.py --run outs/<save_dir>/fold<fold> dicom_export/ --csv clinical.csv --out predictions.csv
   python predict.py --run model.onnx data/test --out predictions.csv   # an export.py model, onnxruntime

Score hip radiographs with a trained run: probability of osteoporosis and the run's decision (the work
is done by ``hipx.inference.predict``).

IMAGES are files or folders, searched recursively (.png/.jpg/.jpeg/.tif/.tiff/.bmp/.npy, DICOM .dcm/.dicom/
.dic and DICOM files without a suffix), as pretrain.py lists its folders.

Raw files or a data folder's crops (``--as-trained``). A run trained on a data folder made by
``preprocess_filenames.py`` remembers how its images were made (``preprocessing.json`` in the run folder,
else its data folder's ``preprocess_config.json``): DICOM decoding, ``--roi femur`` or ``--split-hips``,
the size. A hospital's raw file -- a whole AP pelvis, DICOM included -- goes through exactly those steps
and gives one row per hip, with the crop box on the raw image (``side,box_x0,box_y0,box_x1,box_y1``);
an image where no femur is found, or that is blank or unreadable, gets one row saying why
(``note``) instead of a probability. The exit status is 0 when at least one image was scored. Files
already in the data folder's format (named in the file-name format, already cut) are scored as they
are, as before; a run with no recorded preprocessing (the demo data of synthetic.py) scores every
file as it is.

Sex, age and BMI come from the file name (``filenames.PATTERN``) or, for any file listed there, from
``--csv`` with columns ``file,sex,age,bmi`` (``file`` as given on the command line or just the file name;
sex 1 female / 0 male; an empty or NA value is imputed with the training mean, as in training). A raw
file's name carries none: list it in ``--csv``. An image-only run (``--fusion image``) asks for none.

Everything about the network comes from the run's ``best.pth``: architecture, image size, fusion mode,
clinical normalisation statistics and the threshold chosen on validation. An exported model (``--run
model.onnx``, written by ``export.py`` with ``model.preprocessing.json`` beside it) is scored with
onnxruntime on the CPU, everything read from that JSON (threshold, target, size, statistics, and the
run's raw-file preprocessing where it recorded one); the graph has the run's flip TTA built in, so
``--tta`` stays auto, and the CSV has the same columns as with the run. Inputs are built by
``loader.run_dataset``, exactly as the run's validation and test images (grey [0, 1], resized, enhanced
copy, 8-bit like the loader's cache, no augmentation). A colour image is converted to grey, as the
loader does. Refused, with the file named and nothing written: a file that does not decode, an array
that is not 2-D, non-finite values, an image under 16 pixels on a side (a data folder's image; a raw
file's problem is its row's note).

Output (written atomically): ``file,probability,prediction`` with prediction 1 (osteoporosis)
when probability >= the run's threshold; a run with a graded target (``main.py --target``) adds the
measurement it predicts (``predicted_T-score``, ``predicted_class``); raw files add
``side,box_x0,box_y0,box_x1,box_y1,note`` (boxes in raw-image pixels, x1/y1 exclusive). An existing
``--out`` is replaced only with ``--overwrite``.
"""
from __future__ import annotations

import argparse

from hipx.core.choices import AS_TRAINED, TTA_CHOICES
from hipx.core.cli import add_device, add_output, run_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files or folders (searched recursively)")
    p.add_argument("--run", required=True, help="run folder outs/<save_dir>/fold<fold> (its best.pth), a "
                   "checkpoint file, a cross-validation run group outs/<save_dir> (mean of its fold models), or "
                   "an exported model.onnx (export.py; scored with onnxruntime on the CPU)")
    p.add_argument("--tta", choices=("auto", *TTA_CHOICES), default="auto", help="flip: average each image's "
                   "probability with its left/right mirror's; auto (default): as the run was validated (--tta)")
    p.add_argument("--as-trained", dest="as_trained", choices=AS_TRAINED, default="auto",
                   help="what IMAGES are. raw: a hospital's raw radiographs (DICOM too), each cut by the run's "
                   "recorded preprocessing (decoding, femur ROI or hip split, size) into one row per hip; crops: "
                   "images in the data folder's format, scored as they are (as before); auto (default): raw for a "
                   "file that is not a .png/.npy named in the file-name format, when the run records its "
                   "preprocessing, else crops")
    p.add_argument("--csv", default=None, metavar="CLINICAL.csv", help="sex/age/BMI for files whose names do not "
                   "carry them (raw files): columns file,sex,age,bmi; not needed for an image-only run")
    add_output(p, "output CSV", default="predictions.csv", overwrite="--out if it exists")
    add_device(p)
    p.add_argument("--batch_size", type=int, default=16, help="(default: %(default)s)")
    return p


def main(argv: list[str] | None = None) -> list[dict]:
    """Parse the flags, then score and write (:func:`hipx.inference.predict.run`); returns the rows."""
    args = build_parser().parse_args(argv)
    from hipx.inference import predict  # torch: after --help and a mistyped flag have answered

    return predict.run(args)


if __name__ == "__main__":
    run_main(main)
