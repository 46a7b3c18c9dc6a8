"""python main.py --model dense_net --fold _Dense_LF --augment cat_elastic --late_fuse True

Train, validate and test an osteoporosis classifier on hip X-rays.

Data: ``--data_dir`` (default ``data/``) holds ``train/ val/ test/`` with images named
``<patient>_<crop>_<label>-<sex>-<age>-<bmi>.png`` (see ``filenames.py``); make the demo set with
``python synthetic.py --out data``. Every epoch is validated on all of val; the best epoch by
``--select_metric`` is kept in ``outs/<save_dir>/fold<fold>/best.pth`` and only that checkpoint is
scored on test, at the threshold chosen on validation.

An interrupted run (Ctrl-C, a lost machine) continues exactly where its last finished epoch left it:

    python main.py --resume --save_dir <save_dir> --fold <fold>

Every setting comes from the run; ``--resume --extend_epochs N`` trains a finished run N epochs
longer (docs/troubleshooting.md).
"""
from __future__ import annotations

import argparse

from hipx.core.cli import given_flags, run_main  # stdlib only: --help and a mistyped flag answer at once

# The flags are declared in hipx/training/options.py (bench.py reads the same ones) and the session they
# start is hipx/training/session.py; both are imported inside the functions, so that nothing but the
# standard library loads before the command line is checked (torch: ~5 s).


def build_parser() -> argparse.ArgumentParser:
    """Every flag of main.py, with this docstring as ``--help``'s description."""
    from hipx.training import options

    return options.build_parser(__doc__)


def check_args(args: argparse.Namespace) -> None:
    """Refuse flags that make no sense together, naming them; the settings' own values (and the fusion
    flags, ``fusion.from_flags``) are checked with the configuration they make (``options.settings``)."""
    if args.focal_gamma is not None and args.loss != "focal":
        raise SystemExit("--focal_gamma only applies with --loss focal")
    if (args.test or args.resume) and args.save_dir is None:
        raise SystemExit(f"--{'test' if args.test else 'resume'} needs an existing run: give its --save_dir "
                         "(and --fold)")
    if args.overwrite and not args.test:
        raise SystemExit("--overwrite only applies with --test (scoring a run again replaces its test result)")
    if args.test and args.resume:
        raise SystemExit("--test and --resume exclude each other: --resume trains, --test only scores")
    if args.config and (args.test or args.resume):
        raise SystemExit(f"--config re-runs a saved configuration as a new run; --{'test' if args.test else 'resume'}"
                         " reads the run's own (give its --save_dir and --fold instead)")
    if args.extend_epochs and not args.resume:
        raise SystemExit("--extend_epochs N trains an existing, finished run longer: give it with --resume "
                         "--save_dir/--fold")


def main(argv: list[str] | None = None) -> dict | list[dict]:
    """Train (or ``--resume``, or ``--test``) the run the flags name; returns its test metrics (a list
    of them, one per fold, with ``--folds K``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    given = given_flags(parser, argv)
    check_args(args)
    from hipx.training import session

    return session.start(args, given)


if __name__ == "__main__":
    run_main(main)
