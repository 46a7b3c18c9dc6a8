"""python report.py --run outs/<save_dir>/fold<fold> [--data_dir data] [--bootstrap 2000] [--interval bca]
   python report.py --cv outs/<save_dir>          # cross-validation summary
   python report.py --cv outs/<save_dir> --by field hip   # ... and its pooled AUC per subgroup
   python report.py --cv outs/<save_dir> --target_auc 0.8  # ... the patients its learning curve says 0.8 needs
   python report.py --run RUN --external DATA_DIR [--name B] [--recalibrate intercept --calibrate_on val]
                                                   # another hospital's data
   python report.py --run RUN --recalibrate intercept   # recalibrated on the run's own validation images

Run report: the test-set numbers of one run with what a clinical reader needs to trust them, written
into the run folder as report.md (figures in report_figures/), report.html (self-contained) and
report_metrics.json: the data per split, training curves, ROC and precision-recall curves, the
confusion matrix at the threshold chosen on validation, calibration, every test metric with a 95%
confidence interval over patients, a decision curve, a clinical-only baseline (age, sex, BMI) with a
paired comparison, AUCs by sex, age and BMI band, and a case gallery of the most confident hits and
misses with their heatmaps; beside it the model card model_card.md, filled from the same numbers.
--cv summarises the folds of a cross-validation (cv_report.md, .html, and the group's model_card.md);
--external scores another hospital's labelled images with the run (RUN/external/NAME/); --recalibrate
without --external refits the run's calibration on its own validation images and reports its test images
(RUN/recalibrated/METHOD/; the run's own files stay as they are).

The work is done in hipx/reports/: run_report.py (this report), cv.py (--cv), external.py (--external),
recalibration.py (--recalibrate on the run's validation images), model_card.py (the model card).
"""
from __future__ import annotations

import argparse

from hipx.core.cli import add_bootstrap, add_data_dir, run_main
from hipx.reports.defaults import GALLERY


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--run", help="run folder outs/<save_dir>/fold<fold>")
    what.add_argument("--cv", metavar="SAVE_DIR", help="summarise every tested fold*/ run in outs/<save_dir>")
    add_data_dir(p, default=None, unset="where the run's config says")
    p.add_argument("--by", nargs="+", metavar="COLUMN", default=None,
                   help="with --cv (oof design): pooled out-of-fold ROC AUC within each value of these columns "
                        "of the data folder's manifest.csv, e.g. field, hip, sex (default: field, where "
                        "preprocess_filenames.py --roi wrote it)")
    p.add_argument("--target_auc", type=float, default=None, metavar="AUC",
                   help="with --cv of a cross-validation with a learning curve (main.py --learning_curve): the AUC "
                        "whose number of training patients the summary estimates (default: the folds' own)")
    add_bootstrap(p.add_argument_group("confidence intervals (of the AUCs, Brier score and calibration)"), interval=True,
                  seed=True, default=None, unset="with --cv the summary's own, as main.py --folds wrote it; else 2000")
    ext = p.add_argument_group("external validation (external.py)")
    ext.add_argument("--external", metavar="DATA_DIR", default=None,
                     help="with --run (a run folder or a cross-validation group outs/<save_dir>): score every image "
                          "of this labelled folder of another hospital with the run and write RUN/external/NAME/")
    ext.add_argument("--name", default=None, help="name of the external validation (default: the folder's name)")
    ext.add_argument("--recalibrate", choices=("intercept", "logistic"), default=None,
                     help="refit calibration in the large (intercept) or intercept and slope (logistic): with "
                          "--external on --calibrate_on, reporting the other external images; without it on the "
                          "run's own validation images (val_predictions.csv), reporting its test images in "
                          "RUN/recalibrated/METHOD/")
    ext.add_argument("--calibrate_on", metavar="PART", default=None,
                     help="the external images to recalibrate on: a split (train, val, test) of the external "
                          "folder, or a share of its patients, e.g. 0.3 (drawn with --seed)")
    p.add_argument("--gallery", type=int, default=GALLERY, metavar="N",
                   help="case gallery of the run report: the N most confident test images of each outcome (TP, TN, "
                        "FP, FN) with their expected-gradients maps; 0 for none (default: %(default)s)")
    return p


def check_flags(args: argparse.Namespace) -> None:
    """Flags that only make sense together; SystemExit with one line naming what is missing."""
    if args.by and not args.cv:
        raise SystemExit("--by splits a cross-validation summary into subgroups: use it with --cv SAVE_DIR")
    if args.target_auc is not None and not args.cv:
        raise SystemExit("--target_auc reads a cross-validation's learning curve: use it with --cv SAVE_DIR")
    if args.target_auc is not None and not 0.5 < args.target_auc < 1:
        raise SystemExit(f"--target_auc {args.target_auc}: give an AUC within (0.5, 1), e.g. 0.8")
    external_flags = [f for f, v in (("--name", args.name), ("--calibrate_on", args.calibrate_on)) if v is not None]
    if external_flags and not args.external:
        raise SystemExit(f"{external_flags[0]} belongs to an external validation: add --external DATA_DIR"
                         + (" (without it, --recalibrate fits on the run's own validation images)"
                            if args.recalibrate else ""))
    if args.recalibrate and not args.run:
        raise SystemExit("--recalibrate refits one run's probabilities: give it with --run RUN (on its validation "
                         "images, or with --external DATA_DIR on another hospital's)")
    if args.external and not args.run:
        raise SystemExit("--external scores another hospital's data with a trained run: give it with --run RUN")
    if args.gallery < 0:
        raise SystemExit(f"--gallery {args.gallery}: give a number of images per outcome, 0 for no gallery")


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    check_flags(args)
    from hipx.reports import run_report  # numpy, pandas, matplotlib, torch: after the flags are checked

    return run_report.run_command(args)


if __name__ == "__main__":
    run_main(main)
