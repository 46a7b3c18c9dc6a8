"""Running a K-fold cross-validation: the K fold runs of ``main.py --folds K``, one after the other
(each by the training session, ``session.run``), then their summary. Which patients each fold holds
is :mod:`folds`; the summary is :mod:`cv_report`.

    python main.py --folds 5 --cv oof --save_dir cv   # outs/cv/fold0..4/, outs/cv/cv_summary.json
    python main.py --folds 5 --cv oof --save_dir cv --learning_curve 0.25 0.5   # + outs/cv/lc_0.25/fold0..4/ ...

With ``--learning_curve`` every size below the whole training side is a cross-validation of its own,
``<save_dir>/lc_<size>/`` (:func:`runfiles.learning_curve_folder`): the same folds, each trained on
the nested subset of its training patients (``cv_subset``, :func:`folds.config_files`), validated and tested
on the fold's own parts; the full size (1.0) is the cross-validation itself. The sizes are checked against
every fold before any fold trains; a resumed cross-validation goes on size by size, fold by fold.
"""
from __future__ import annotations

import logging
from typing import Callable

from hipx.core.cli import UserError
from hipx.core.runconfig import RunConfig
from hipx.data import folds
from hipx.reports import cv as cv_report
from hipx.runs import runfiles
from hipx.runs.runchecks import Outcome

logger = logging.getLogger(__name__)


def cross_validate(cfg: RunConfig, run_fold: Callable[[RunConfig], Outcome], is_main: bool = True) -> list[dict]:
    """Train and test fold ``<fold>0`` .. ``<fold>K-1`` with ``run_fold`` (each fold's configuration
    names its design, fold and seed; it returns the fold's test metrics, the configuration the fold
    ran with and whether it was left unchanged), then, with ``--learning_curve``, the same folds on each
    subset size, then write the summary over them (``is_main``: this process writes files) with the folds'
    own bootstrap settings. A cross-validation whose folds were all finished before keeps its summary as
    it was. ``cfg`` names the design and the folds' seed when it holds a resumed cross-validation's own
    (``runchecks.resume_group``). Returns each fold's test metrics (of the cross-validation itself)."""
    design = cfg.cv_design or folds.resolve_design(cfg.data_dir, cfg.cv)
    cv_seed = cfg.seed if cfg.cv_seed is None else cfg.cv_seed
    logger.info("cross-validation design: %s", cv_report.DESIGN_TEXT[design])
    group = runfiles.run_group(cfg.save_dir, cfg.out_root)
    sizes = subset_sizes(cfg, design, cv_seed) if cfg.learning_curve else []
    outcomes = run_folds(cfg, design, cv_seed, run_fold)
    results, runs = [o.result for o in outcomes], [group.run(o.cfg.fold).dir for o in outcomes]
    for size in sizes:
        sub = cfg.replace(save_dir=f"{cfg.save_dir}/{runfiles.learning_curve_folder(size)}", learning_curve=None,
                          target_auc=None, cv_subset=size)
        logger.info("learning curve: the %d folds on the training subset %s (%s)", cfg.folds, size, sub.save_dir)
        outcomes += run_folds(sub, design, cv_seed, run_fold)
    n_boot, seed = outcomes[-1].cfg.bootstrap, outcomes[-1].cfg.seed  # a resumed fold has its run's own settings
    if is_main and all(o.unchanged for o in outcomes) and group.summary_file.is_file():
        logger.info("every fold of the cross-validation %s is finished and tested; its summary stays as it was, "
                    "nothing changed", group.dir)
        summary = runfiles.read_json(group.summary_file)
        print("\n".join([cv_report.headline(summary), *cv_report.subgroup_lines(summary)]))
        print(f"cross-validation summary: {group.report_file}")
    elif is_main:
        with runfiles.hold_run(group.dir, "main.py --folds (the cross-validation summary)"):
            cv = cv_report.write_cv_summary(group.dir, runs, n_boot=n_boot or 2000, seed=seed)
        print("\n".join([cv_report.headline(cv), *cv_report.subgroup_lines(cv)]))
        if (cv.get("learning_curve") or {}).get("fit"):
            print(f"learning curve: {cv['learning_curve']['fit']['verdict']}")
        print(f"cross-validation summary: {group.report_file}")
    return results


def run_folds(cfg: RunConfig, design: str, cv_seed: int, run_fold: Callable[[RunConfig], Outcome]) -> list[Outcome]:
    """The K fold runs of one cross-validation (``cfg.save_dir``), in order."""
    outcomes = []
    for k in range(cfg.folds):
        fold_cfg = cfg.replace(fold=f"{cfg.fold}{k}", cv_folds=cfg.folds, cv_fold=k, cv_seed=cv_seed, cv_design=design)
        logger.info("cross-validation fold %d (folds 0-%d): %s/fold%s", k, cfg.folds - 1, cfg.save_dir, fold_cfg.fold)
        outcomes.append(run_fold(fold_cfg))
    return outcomes


def subset_sizes(cfg: RunConfig, design: str, cv_seed: int) -> list[float | int]:
    """The learning curve's subset sizes to train, in the order given (1.0, the cross-validation itself, left
    out), checked against every fold's training patients before any fold trains: each a subset of two or
    more patients with both classes, no two sizes the same number of patients, none all of them. A user's
    mistake is one line naming the fold."""
    given = " ".join(f"{s:g}" if isinstance(s, float) else str(s) for s in cfg.learning_curve)
    sizes = [s for s in cfg.learning_curve if not (isinstance(s, float) and s == 1.0)]
    if not sizes:
        raise UserError(f"--learning_curve {given}: 1.0 is the cross-validation itself; give smaller sizes too, "
                        "e.g. --learning_curve 0.25 0.5 (three or more points for the fit)")
    from hipx.data import filenames, subsets

    for k in range(cfg.folds):
        train = folds.fold_files(cfg.data_dir, design, cfg.folds, k, cv_seed, cfg.cv_val)["train"]
        try:
            subsets.nested_subsets(train, [*sizes, 1.0], seed=[cv_seed, k])
        except ValueError as exc:
            n = len({filenames.decode(f).patient for f in train})
            raise UserError(f"--learning_curve {given}: fold {k} trains on {n} patients: {exc}") from None
    return sizes
