"""python synthetic.py --out data --n 500 --seed 0 [--size 704 407] [--examples images/synthetic_examples.png] [--pelvis]
   python synthetic.py --out data_B --n 200 --seed 1 --site B      # a second hospital, for external validation

The embedded demo data set: synthetic hip radiographs (proximal femur, AP view) with a known cause
of osteoporosis and a mask of where it is drawn, so the whole suite can be run and checked without
patient data; ``--pelvis`` instead writes whole pelvis views as a hospital exports them, the input
of ``preprocess_filenames.py --roi femur``; ``--site B`` a second hospital (:data:`SITES`) for
external validation; ``--clinical-share``/``--image-noise`` set how much each source tells. The data model, what each source tells about the label,
and the files written: docs/data.md, "The demo data".
"""
from __future__ import annotations

import argparse
import ctypes
import logging
from typing import Sequence

from hipx.core import runtime
from hipx.core.cli import add_output, add_seed, run_main
from hipx.prepare.synthetic import *  # noqa: F401,F403 - the generator, as `import synthetic` always gave it
from hipx.core.choices import IMAGE_SIZE, MIN_SIDE
from hipx.prepare.synthetic import (CLINICAL_COLUMNS, DEFAULT_CLINICAL_SHARE, IMAGE_SD, ORACLE_COLUMNS, PELVIS_LIST,
                                    PELVIS_TRUTH, PICTURE_COLUMNS, SITES, check_regime, generate, generate_pelvis,
                                    oracle_auc, plot_examples)

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Write the synthetic hip radiograph demo data set.")
    data = parser.add_argument_group("data set")
    add_output(data, "output folder (new or empty; or an identical earlier run)")
    data.add_argument("--n", type=int, default=500, help="number of patients, two hips (images) each")
    add_seed(data, "the drawing: the same seed gives the same bytes")
    data.add_argument("--size", type=int, nargs=2, default=list(IMAGE_SIZE), metavar=("H", "W"),
                      help="image height and width in pixels")
    data.add_argument("--site", choices=sorted(SITES), default="A",
                      help="hospital: A (default) or B, an older population with more osteoporosis, another exposure "
                           "curve, more noise and the side markers at the bottom, for external validation")
    regime = parser.add_argument_group(
        "regime", "how much of the disease the clinical values explain and how clearly the picture shows it "
                  "(docs/fusion.md); left out: the demo's own")
    regime.add_argument("--clinical-share", type=float, default=None, metavar="S",
                        help=f"share (0-1) of the latent bone density's variance that sex, age and BMI explain "
                             f"(demo: {DEFAULT_CLINICAL_SHARE:.2f}); the prevalence stays about 35 %%")
    regime.add_argument("--image-noise", type=float, default=None, metavar="SD",
                        help=f"per-picture noise on the drawn bone density, in its SD units (demo: {IMAGE_SD}); "
                             "larger: the picture shows the disease less clearly")
    extra = parser.add_argument_group("pictures")
    extra.add_argument("--examples", metavar="PATH",
                       help="also draw 2 normal and 2 osteoporosis examples into this PNG")
    extra.add_argument("--pelvis", action="store_true",
                       help="instead write whole AP pelvis views as a hospital export (OUT/raw, OUT/patient_list.csv, "
                            "OUT/pelvis.csv with the femoral heads) for preprocess_filenames.py --roi femur")
    return parser


def _keep_freed_memory() -> None:
    """Ask glibc to keep freed image-sized buffers instead of handing each back to the system:
    otherwise every numpy temporary page-faults afresh, and drawing takes twice as long (the
    effect of MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_, see mallopt(3)). No-op elsewhere."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"--n must be at least 1, got {args.n}")
    if min(args.size) < MIN_SIDE:
        parser.error(f"--size must be at least {MIN_SIDE} {MIN_SIDE}, got {args.size[0]} {args.size[1]}")
    try:
        check_regime(args.clinical_share, args.image_noise)
    except ValueError as exc:
        parser.error(str(exc))
    if args.pelvis and (args.site != "A" or args.clinical_share is not None or args.image_noise is not None):
        parser.error("--pelvis draws site A's pelvis views in the demo's regime only; leave out --site, "
                     "--clinical-share and --image-noise, or drop --pelvis")
    runtime.setup_logging()  # the log format of every command
    _keep_freed_memory()
    if args.pelvis:
        try:
            generate_pelvis(args.out, args.n, args.seed, (round(args.size[1] * 1.05), args.size[1] // 2))
        except FileExistsError as exc:
            parser.exit(2, f"{parser.prog}: error: {exc}\n")
        print(f"{args.out}: {args.n} AP pelvis views in {args.out}/raw, list {PELVIS_LIST}, truth {PELVIS_TRUTH}")
        return 0
    try:
        manifest = generate(args.out, args.n, args.seed, tuple(args.size), args.site, args.clinical_share,
                            args.image_noise)
    except (FileExistsError, NotADirectoryError) as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    if args.examples:
        plot_examples(args.out, manifest, args.examples)
        logger.info("examples drawn to %s", args.examples)
    aucs = {name: oracle_auc(manifest, cols) for name, cols in
            (("clinical", CLINICAL_COLUMNS), ("picture", PICTURE_COLUMNS), ("oracle", ORACLE_COLUMNS))}
    print(f"{args.out}: {len(manifest)} images of {args.n} patients; test ROC-AUC of a logistic regression on "
          + ", ".join(f"{k} {v:.3f}" for k, v in aucs.items()))
    return 0


if __name__ == "__main__":
    run_main(main)
