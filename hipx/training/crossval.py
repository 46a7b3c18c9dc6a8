"""Running a K-fold cross-validation: the K fold runs of ``main.py --folds K``, one after the other
(each by the training session, ``session.run``), then their summary. Which patients each fold holds
is :mod:`folds`; the summary is :mod:`cv_report`.

    python main.py --folds 5 --cv oof --save_dir cv   # outs/cv/fold0..4/, outs/cv/cv_summary.json
"""
from __future__ import annotations

import logging
from typing import Callable

from hipx.reports import cv as cv_report
from hipx.data import folds
from hipx.runs import runfiles
from hipx.runs.runchecks import Outcome
from hipx.core.runconfig import RunConfig

logger = logging.getLogger(__name__)


def cross_validate(cfg: RunConfig, run_fold: Callable[[RunConfig], Outcome], is_main: bool = True) -> list[dict]:
    """Train and test fold ``<fold>0`` .. ``<fold>K-1`` with ``run_fold`` (each fold's configuration
    names its design, fold and seed; it returns the fold's test metrics, the configuration the fold
    ran with and whether it was left unchanged), then write the summary over them (``is_main``: this
    process writes files) with the folds' own bootstrap settings. A cross-validation whose folds were
    all finished before keeps its summary as it was. ``cfg`` names the design and the folds' seed when
    it holds a resumed cross-validation's own (``runchecks.resume_group``). Returns each fold's test
    metrics."""
    design = cfg.cv_design or folds.resolve_design(cfg.data_dir, cfg.cv)
    cv_seed = cfg.seed if cfg.cv_seed is None else cfg.cv_seed
    logger.info("cross-validation design: %s", cv_report.DESIGN_TEXT[design])
    group = runfiles.run_group(cfg.save_dir, cfg.out_root)
    results, runs, unchanged, n_boot, seed = [], [], [], cfg.bootstrap, cfg.seed
    for k in range(cfg.folds):
        fold_cfg = cfg.replace(fold=f"{cfg.fold}{k}", cv_folds=cfg.folds, cv_fold=k, cv_seed=cv_seed, cv_design=design)
        logger.info("cross-validation fold %d (folds 0-%d): fold%s", k, cfg.folds - 1, fold_cfg.fold)
        outcome = run_fold(fold_cfg)
        results.append(outcome.result)
        runs.append(group.run(fold_cfg.fold).dir)
        unchanged.append(outcome.unchanged)
        n_boot, seed = outcome.cfg.bootstrap, outcome.cfg.seed  # a resumed fold has its run's own settings
    if is_main and all(unchanged) and group.summary_file.is_file():
        logger.info("every fold of the cross-validation %s is finished and tested; its summary stays as it was, "
                    "nothing changed", group.dir)
        summary = runfiles.read_json(group.summary_file)
        print("\n".join([cv_report.headline(summary), *cv_report.subgroup_lines(summary)]))
        print(f"cross-validation summary: {group.report_file}")
    elif is_main:
        cv = cv_report.write_cv_summary(group.dir, runs, n_boot=n_boot or 2000, seed=seed)
        print("\n".join([cv_report.headline(cv), *cv_report.subgroup_lines(cv)]))
        print(f"cross-validation summary: {group.report_file}")
    return results
