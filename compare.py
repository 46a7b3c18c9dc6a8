"""python compare.py outs/cmp/fold_Dense_LF outs/cmp/fold_Dense_EF outs/cmp/fold_Dense_IO --out outs/cmp/compare

Several runs side by side on the same test patients, with paired tests against the first.

Every run must have scored the same test images with the same labels (refused otherwise). The table
is always printed to the terminal; with ``--out`` it also writes ``comparison.md`` (figure in
``comparison_figures/``), ``comparison.html`` (self-contained) and ``comparison.json`` there, each
atomically; existing files are kept unless ``--overwrite``.

For each run: the test ROC AUC with its patient-bootstrap 95% CI, and sensitivity and specificity
at that run's own validation threshold (conditional on the trained model and that threshold). For
every run after the first: the AUC difference against the first run, by a paired bootstrap over
patients (all runs scored on the same resamples), with Holm-adjusted p-values over the
comparisons made. Runs whose configurations differ only in ``--seed`` are also summarised as
mean ± SD across seeds, which shows how much a training repeat moves the numbers beside the CI,
which shows how much the test patients do. One ROC figure holds every run.

The work is done in hipx/reports/compare.py.
"""
from __future__ import annotations

import argparse
import os

from hipx.core.cli import add_bootstrap, add_output, run_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders outs/<save_dir>/fold<fold>; the first is the "
                   "reference of the paired differences")
    add_output(p, "folder for comparison.md, comparison.html and comparison.json", unset="print the table only",
               overwrite="an existing comparison in --out")
    p.add_argument("--names", nargs="+", default=None, help="a short name per run (default: save_dir/fold)")
    add_bootstrap(p.add_argument_group("confidence intervals (of the AUCs and their differences)"), interval=True, seed=True)
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    given: dict[str, str] = {}
    for run in args.runs:  # a run beside itself differs by nothing: p 1.000 would look like a finding
        first = given.get(os.path.realpath(run))
        given.setdefault(os.path.realpath(run), run)
        if first is not None:
            raise SystemExit(f"RUN {run} is given twice{'' if first == run else f' (also as {first})'}: a run "
                             "compared with itself differs by nothing; name different run folders, e.g. python "
                             "compare.py outs/A/fold_x outs/B/fold_x --out comparison")
    from hipx.reports import compare  # numpy, pandas, matplotlib: after the flags are checked

    return compare.run_command(args)


if __name__ == "__main__":
    run_main(main)
