"""python visualize_gradcam.py --run outs/<save_dir>/fold<fold> --index 0 [--method expected_gradients]
   python visualize_gradcam.py --run outs/<save_dir>/fold<fold> --image new_scans/V1.dcm --csv clinical.csv

Show what a trained network looked at: a heatmap (``cam.py``) drawn over the radiograph, for any
run of main.py. The network (model, fusion mode, image size, normalisation, threshold) comes from
the run's best.pth, and the inputs are built by the loader exactly as at test time, so the picture
explains the run's own test scores; ``--localisation`` measures how much of the map lies on the
demo data's femur; ``--explain`` says whose evidence is mapped (``--target`` is its old name, kept as a
deprecated alias: main.py's ``--target`` is the training target). ``--image`` also takes a hospital's raw
radiograph (a whole pelvis, DICOM included): it is cut by the run's recorded preprocessing exactly as
``predict.py`` cuts it, and each hip's crop gets its picture (``<file>_<side>_<method>.png``), with the
probability predict.py gives it; a hip or file where no femur is found gets one line saying so. The work
is done by ``hipx.inference.heatmaps``. Methods, targets, outputs and the README pictures' commands: docs/heatmaps.md.
"""
from __future__ import annotations

import argparse
import sys

from hipx.core.choices import CAM_DEFAULT_METHOD, CAM_EXPLAIN_CHOICES, CAM_METHODS, OUTCOMES
from hipx.core.cli import add_data_dir, add_device, add_output, positive_int, run_main


class _DeprecatedAlias(argparse.Action):
    """Stores as its ``dest`` does, and says on stderr which flag replaces it (as argparse's
    ``deprecated=True`` of Python 3.13)."""

    def __init__(self, *args, replacement: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.replacement = replacement

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"{parser.prog}: warning: {option_string} is deprecated; use {self.replacement}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("run")
    g.add_argument("--run", required=True, metavar="DIR", help="run folder outs/<save_dir>/fold<fold>/ of main.py")
    add_data_dir(g, default=None, unset="the run's --data_dir; only where its images lie now, the network comes "
                 "from the run")
    add_device(g)

    g = p.add_argument_group("which images")
    which = g.add_mutually_exclusive_group(required=True)
    which.add_argument("--image", nargs="+", metavar="PATH", help="image files named in the data set's format, "
                       "or a hospital's raw radiographs (a whole pelvis, DICOM too): cut by the run's recorded "
                       "preprocessing exactly as predict.py cuts them, one picture per hip")
    which.add_argument("--index", nargs="+", type=int, metavar="N", help="positions in the sorted test split")
    which.add_argument("--select", nargs="+", choices=tuple(OUTCOMES), metavar="KIND",
                       help="most confident test cases of each kind: tp, fp, fn, tn (from test_predictions.csv "
                       "and the run's threshold)")
    which.add_argument("--all", action="store_true", help="every test image")
    which.add_argument("--localisation", action="store_true", help="measure how much heatmap mass falls on the "
                       "region masks of the demo data (DIR/masks/test/), for each --explain; writes "
                       "localisation_<method>[_<target>].json/.csv/.png")
    g.add_argument("--csv", default=None, metavar="CLINICAL.csv", help="sex/age/BMI of --image raw files whose "
                   "names do not carry them, as predict.py --csv: columns file,sex,age,bmi; not needed for an "
                   "image-only run")
    g.add_argument("--top", type=positive_int, default=3, help="cases per kind for --select (default: %(default)s)")

    g = p.add_argument_group("method")
    g.add_argument("--method", choices=CAM_METHODS, default=CAM_DEFAULT_METHOD, help="(default: %(default)s, which "
                   "puts the evidence on the femur of the demo run; gradcam maps a layer's activations and lights up "
                   "mostly soft tissue and shaft there)")
    g.add_argument("--explain", choices=CAM_EXPLAIN_CHOICES, default=None, help="whose evidence to map: "
                   "osteoporosis (the logit), normal (the negated logit) or predicted (per image, the class "
                   "predicted at the run's threshold). Default: osteoporosis for pictures; for --localisation "
                   "both osteoporosis and predicted")
    g.add_argument("--target", dest="explain", choices=CAM_EXPLAIN_CHOICES, action=_DeprecatedAlias,
                   replacement="--explain", help="deprecated alias of --explain (main.py's --target is the "
                   "training target, not the class a map explains)")
    g.add_argument("--layer", default=None, help="module to explain, e.g. features.denseblock3 or features.norm5 "
                   "(default: the model's last dense block; only for gradcam, gradcam++, scorecam)")
    g.add_argument("--window", type=positive_int, default=None, help="occlusion window in pixels of the network "
                   "input (default: about 1/8 of the shorter side)")
    g.add_argument("--batch_size", type=positive_int, default=32, help="inputs per forward pass for scorecam, "
                   "occlusion and expected_gradients (default: %(default)s)")
    g.add_argument("--references", type=positive_int, default=16, metavar="N", help="expected_gradients: training "
                   "images the map is measured against (default: %(default)s)")
    g.add_argument("--steps", type=positive_int, default=4, help="expected_gradients: points on the path from each "
                   "reference to the image (default: %(default)s)")
    g.add_argument("--smooth", type=float, default=None, metavar="PX", help="expected_gradients: Gaussian sigma "
                   "of the map in input pixels, 0 for none (default: 1/32 of the image width)")

    g = p.add_argument_group("output")
    add_output(g, "folder for the pictures", unset="<run>/cams")
    g.add_argument("--sheet", action="store_true", help="all cases on one contact sheet")
    g.add_argument("--cols", type=positive_int, default=None, help="columns of the sheet (default: up to 4)")
    g.add_argument("--save", default=None, metavar="PATH", help="write the one picture (a single case, the sheet "
                   "or the localisation figure) exactly here, e.g. images/Grad_CAM.png")
    g.add_argument("--no_npy", action="store_true", help="do not write the raw heatmap (.npy) beside the picture")
    return p


def main(argv: list[str] | None = None) -> dict:
    """Parse the flags, then draw (:func:`hipx.inference.heatmaps.run`); returns what it wrote."""
    args = build_parser().parse_args(argv)
    from hipx.inference import heatmaps  # torch and matplotlib: after --help and a mistyped flag have answered

    return heatmaps.run(args)


if __name__ == "__main__":
    run_main(main)
