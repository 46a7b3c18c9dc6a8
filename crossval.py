"""Running a K-fold cross-validation: the K fold runs of ``main.py --folds K``, one after the other,
then their summary. Which patients each fold holds is :mod:`folds`; the summary is :mod:`cv_report`.

    python3 main.py --folds 5 --cv oof --save_dir cv   # outs/cv/fold0..4/, outs/cv/cv_summary.json
"""
from __future__ import annotations

import argparse
import logging
from typing import Callable

import cv_report
import folds
import runfiles

logger = logging.getLogger(__name__)


def cross_validate(args: argparse.Namespace, run_fold: Callable[[argparse.Namespace], dict],
                   is_main: bool = True) -> list[dict]:
    """Train and test fold ``<fold>0`` .. ``<fold>K-1`` with ``run_fold`` (each fold's configuration
    names its design, fold and seed), then write the summary over them (``is_main``: this process
    writes files). Returns each fold's test metrics."""
    design = folds.resolve_design(args.data_dir, args.cv)
    logger.info("cross-validation design: %s", cv_report.DESIGN_TEXT[design])
    results, runs = [], []
    for k in range(args.folds):
        fold_args = argparse.Namespace(**vars(args))
        fold_args.fold, fold_args.cv_folds, fold_args.cv_fold, fold_args.cv_seed, fold_args.cv_design = \
            f"{args.fold}{k}", args.folds, k, args.seed, design
        logger.info("cross-validation fold %d (folds 0-%d): fold%s", k, args.folds - 1, fold_args.fold)
        results.append(run_fold(fold_args))
        runs.append(runfiles.run_dir(args.save_dir, fold_args.fold, args.out_root))
    if is_main:
        group = runfiles.run_group(args.save_dir, args.out_root)
        cv = cv_report.write_cv_summary(group.dir, runs, n_boot=args.bootstrap or 2000, seed=args.seed)
        print(cv_report.headline(cv))
        print(f"cross-validation summary: {group.report_file}")
    return results
