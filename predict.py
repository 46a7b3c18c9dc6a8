"""python3 predict.py --run outs/<save_dir>/fold<fold> data/test more/image.png --out predictions.csv
   python3 predict.py --run outs/<save_dir> new/ --out predictions.csv   # fold ensemble of a --folds run

Score hip radiographs with a trained run: probability of osteoporosis and the run's decision (the work
is done by ``hipx.inference.predict``).

IMAGES are files or folders (their .png/.npy/.jpg/.tif images, not recursive). Sex, age and BMI
come from the file name (``filenames.PATTERN``) or, for any file listed there, from ``--csv``
with columns ``file,sex,age,bmi`` (``file`` as given on the command line or just the file name;
sex 1 female / 0 male; an empty or NA value is imputed with the training mean, as in training).

Everything about the network comes from the run's ``best.pth``: architecture, image size,
fusion mode, clinical normalisation statistics and the threshold chosen on validation. Inputs
are built by ``loader.run_dataset``, exactly as the run's validation and test images (grey [0, 1],
resized, enhanced copy, 8-bit like the loader's cache, no augmentation). A colour image is converted to
grey, as the loader does. Refused, with the file named and nothing written: a file that does not
decode, an array that is not 2-D, non-finite values, an image under 16 pixels on a side.

Output (written atomically): ``file,probability,prediction`` with prediction 1 (osteoporosis)
when probability >= the run's threshold; a run with a graded target (``main.py --target``) adds the
measurement it predicts (``predicted_T-score``, ``predicted_class``). An existing ``--out`` is replaced only with ``--overwrite``.
"""
from __future__ import annotations

import argparse

from hipx.core.choices import TTA_CHOICES
from hipx.core.cli import add_device, add_output, run_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files or folders")
    p.add_argument("--run", required=True, help="run folder outs/<save_dir>/fold<fold> (its best.pth), a "
                   "checkpoint file, or a cross-validation run group outs/<save_dir> (mean of its fold models)")
    p.add_argument("--tta", choices=("auto", *TTA_CHOICES), default="auto", help="flip: average each image's "
                   "probability with its left/right mirror's; auto (default): as the run was validated (--tta)")
    p.add_argument("--csv", default=None, metavar="CLINICAL.csv", help="sex/age/BMI for files whose names do not "
                   "carry them: columns file,sex,age,bmi")
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
