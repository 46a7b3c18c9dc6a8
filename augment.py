"""python augment.py --preview data/train/IMAGE.png --out images/augment_preview.png [--draws 4] [--seed 0]

The training-time augmentations, under the original work's module name: the code lives in
``hipx/data/augment.py`` (pure functions of ``(image, rng)`` and the ``Augmenter`` the loader calls);
this file re-exports it and is the command that draws a preview grid of every augmentation.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from hipx.core.choices import IMAGE_SIZE
from hipx.core import runtime
from hipx.core.cli import add_output, add_seed, run_main
from hipx.data.augment import *  # noqa: F401,F403 - the augmentations, as `import augment` always gave them
from hipx.data.augment import preview


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preview", required=True, metavar="FILE", help="8-bit grayscale image to augment")
    add_output(p, "PNG to write", default="images/augment_preview.png")
    p.add_argument("--draws", type=int, default=4, help="draws of every augmentation (default: %(default)s)")
    add_seed(p, "the draws")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=list(IMAGE_SIZE),
                   help="resize the input to H x W first, as the loader does (default: %(default)s)")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    runtime.setup_logging()  # the log format of every command
    if args.draws < 2:
        raise SystemExit(f"--draws {args.draws}: must be >= 2 (the input column shows two channels)")
    if min(args.size) < 8:
        raise SystemExit(f"--size {args.size[0]} {args.size[1]}: both sides must be >= 8 pixels")
    preview(args.preview, args.out, draws=args.draws, seed=args.seed, size=args.size)
    print(args.out)


if __name__ == "__main__":
    run_main(main)
