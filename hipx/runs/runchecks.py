"""What a command does with an existing run, checked before anything is written: ``--test`` scores
the run as trained (its network, folds and report settings), ``--resume`` continues it exactly as
configured (only where and how fast this session runs may differ; a moved data folder when it holds
the images the run recorded), ``--extend_epochs N`` trains a finished run longer. Every refusal names
the command that works (:func:`resume_command`, :func:`test_command`).
"""
from __future__ import annotations

import logging
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from hipx.core import runconfig
from hipx.runs import runfiles
from hipx.core.cli import UserError
from hipx.core.runconfig import RunConfig

logger = logging.getLogger("main")


@dataclass(frozen=True)
class Action:
    """What this command does with its run: train a new one (the default), only score it on test
    (``--test``; ``overwrite``: replacing the run's existing test result), or continue it
    (``--resume``, ``--extend_epochs N`` more epochs)."""

    test: bool = False
    resume: bool = False
    extend_epochs: int | None = None
    overwrite: bool = False

    @property
    def reads_run(self) -> bool:
        return self.test or self.resume


@dataclass(frozen=True)
class Outcome:
    """What main.run did with one run folder: the test metrics, the configuration the run ran with (a resumed run's own)
    and whether it was ``unchanged`` (finished before, nothing written)."""

    result: dict
    cfg: RunConfig
    unchanged: bool = False


def command(*arguments: str) -> str:
    """``python main.py ARGUMENTS`` as the user can paste it: this interpreter (relative when it lies
    below the current folder, e.g. .venv/bin/python) and this script."""
    python = sys.executable or "python3"
    if python.startswith(os.getcwd() + os.sep):
        python = os.path.relpath(python)
    script = sys.argv[0] if sys.argv and sys.argv[0].endswith("main.py") else "main.py"
    return shlex.join([python, script, *map(str, arguments)])


def resume_command(cfg: RunConfig) -> str:
    """The command that continues this run."""
    fold = cfg.fold
    extra = []
    if cfg.is_fold:  # a cross-validation fold: continue the whole cross-validation
        fold = fold[: len(fold) - len(str(cfg.cv_fold))]
        extra = ["--folds", str(cfg.cv_folds)]
    if cfg.out_root != "outs":
        extra += ["--out_root", str(cfg.out_root)]
    return command("--resume", "--save_dir", cfg.save_dir, "--fold", fold, *extra)


def test_command(cfg: RunConfig) -> str:
    """The command that scores this run on test."""
    extra = ["--out_root", str(cfg.out_root)] if cfg.out_root != "outs" else []
    return command("--test", "--save_dir", cfg.save_dir, "--fold", cfg.fold, *extra)


def _shown(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _same(key: str, a, b) -> bool:
    if key in ("data_dir", "pretrained") and isinstance(a, str) and isinstance(b, str):
        return os.path.normpath(a) == os.path.normpath(b)
    return list(a) == list(b) if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) else a == b


def refuse_changes(cfg: RunConfig, given: set[str], config: RunConfig, out: Path) -> str | None:
    """``--resume`` continues the run as configured: a flag given with another value than the run's
    is refused, naming it and the command that works (the session's device, GPUs, workers and cache
    may differ). Returns the data folder to use instead of the run's when ``--data_dir`` names where
    the run's images moved (:func:`moved_data`), else None."""
    moved = None
    for key in sorted((given & set(runconfig.FIELDS)) - set(runconfig.SESSION_KEYS)):
        if _same(key, getattr(cfg, key), getattr(config, key)):
            continue
        if key == "data_dir":
            moved = moved_data(cfg, config, out)
            continue
        if key == "folds" and config.is_fold:
            right = resume_command(cfg.replace(cv_folds=config.cv_folds))
            raise UserError(f"--folds {cfg.folds}: the cross-validation {out.parent} has {config.cv_folds} folds "
                            f"and --resume continues it as configured; continue it with: {right}")
        raise UserError(f"--{key} {_shown(getattr(cfg, key))}: the run {out} was configured with --{key} "
                        f"{_shown(getattr(config, key))}, and --resume continues a run exactly as configured (leave "
                        f"the flag out: {resume_command(cfg)}). To train longer use --resume --extend_epochs N; to "
                        "train differently start a new run (another --save_dir or --fold)")
    return moved


def moved_data(cfg: RunConfig, config: RunConfig, out: Path) -> str:
    """``--resume --data_dir NEW`` for a run whose data folder moved: NEW is returned when it holds the
    images (and sizes) the run recorded in data_files.csv; refused, saying what differs, otherwise."""
    try:
        files = runfiles.split_files(config.replace(data_dir=cfg.data_dir), cfg.data_dir)
        differ = runfiles.data_files_differ(out, files, cfg.data_dir)
    except (OSError, ValueError) as exc:
        differ = str(exc)
    if differ:
        raise UserError(f"--data_dir {cfg.data_dir}: the run {out} was trained on {config.data_dir}, and --resume "
                        f"continues it on the same images only; {differ}. Continue on the run's own folder with "
                        f"{resume_command(cfg)}")
    logger.info("the run's data folder moved from %s to %s: it holds the images the run recorded, so the run goes "
                "on with it", config.data_dir, cfg.data_dir)
    return cfg.data_dir


def prepare_run(cfg: RunConfig, action: Action, given: set[str], out: Path):
    """This session's settings, the run's configuration and clinical statistics: new, or read back from
    an existing run for ``--test`` (best.pth: the network, folds and report settings from the run, the
    rest from the command line) and ``--resume`` (last.pth, or config.json of a run stopped in its
    first epoch: every setting from the run but where this session runs). Returns (cfg, config, stats,
    resume_state); config is None for a new run. Nothing is written."""
    new_fold_of_cv = action.resume and cfg.is_fold and not out.exists()
    folder = runfiles.Run(out)
    if not action.reads_run or new_fold_of_cv:
        if out.exists() and any(p.name != runfiles.LOCK for p in out.iterdir()):
            how = ("it stopped before finishing its first epoch: continue it with --resume"
                   if not folder.has_checkpoint(runfiles.LAST) else "continue it with --resume, score it with --test")
            raise UserError(f"{out} already holds a run; nothing was changed. {how[0].upper() + how[1:]}, or choose "
                            f"another --save_dir / --fold (e.g. {resume_command(cfg)})")
        return cfg, None, None, None
    from hipx.data import loader

    if action.test:
        return _test_settings(cfg, action, given, out) + (None,)

    state = None
    if folder.has_checkpoint(runfiles.LAST):
        state = folder.load_checkpoint(runfiles.LAST)
        config = RunConfig.from_dict(state["config"])
    elif folder.config_file.is_file():  # killed in its first epoch: start it again, as configured
        config = RunConfig.from_dict(folder.read_config())
    else:
        first_fold = runfiles.Run(out.parent / f"fold{cfg.fold}0").config_file
        if not cfg.is_fold and first_fold.is_file():
            k = runfiles.read_json(first_fold).get("cv_folds")
            raise UserError(f"--resume: {out.parent} holds a {k}-fold cross-validation (fold{cfg.fold}0 ...), not "
                            f"one run fold{cfg.fold}; give its number of folds: {resume_command(cfg)} --folds {k}")
        raise UserError(f"--resume: no run to continue at {out} (no {runfiles.LAST} or {runfiles.CONFIG}); check "
                        "--save_dir, --fold and --out_root, or start a new run without --resume")
    moved = refuse_changes(cfg, given, config, out)
    cfg = config.replace(**{key: getattr(cfg, key) for key in runconfig.SESSION_KEYS})
    if moved:  # checked by moved_data: the same images in their new place
        cfg = cfg.replace(data_dir=moved)
    stats = loader.ClinicalStats.from_dict(state["clinical_stats"]) if state else None
    return cfg, config, stats, state


def _test_settings(cfg: RunConfig, action: Action, given: set[str], out: Path):
    """``--test``: the network, folds and (unless given) report settings of the run's best.pth; a
    command line that disagrees with the network, or an existing test result without ``--overwrite``,
    is refused. Returns (cfg, config, stats)."""
    from hipx.data import loader

    folder = runfiles.Run(out)
    if not folder.has_checkpoint(runfiles.BEST):
        raise UserError(f"--test: no {runfiles.BEST} in {out} to score (check --save_dir, --fold and --out_root). "
                        f"{runfiles.missing_advice(out)}")
    state = folder.load_checkpoint(runfiles.BEST)
    config = RunConfig.from_dict(state["config"])
    for key in runconfig.NETWORK_KEYS:  # the run fixes the network: a command line that disagrees is refused
        if key in given and not _same(key, getattr(cfg, key), getattr(config, key)):
            raise UserError(f"--{key} {_shown(getattr(cfg, key))}: the run {out} was trained with --{key} "
                            f"{_shown(getattr(config, key))}, and --test scores it as trained; leave the flag out: "
                            f"{test_command(cfg)}")
    if folder.is_tested() and not action.overwrite:
        raise UserError(f"{out} already holds its test result ({runfiles.TEST_METRICS}); nothing was changed. "
                        f"To score the run again and replace it: {test_command(cfg)} --overwrite")
    changes = {key: getattr(config, key) for key in runconfig.NETWORK_KEYS}
    if "bootstrap" not in given:  # the run's own report settings, e.g. --bootstrap 0 = no report
        changes["bootstrap"] = config.bootstrap
    if "data_dir" not in given:
        changes["data_dir"] = config.data_dir
    if config.is_fold:  # a fold keeps its own splits
        changes.update(cv_folds=config.cv_folds, cv_fold=config.cv_fold, cv_seed=config.cv_seed,
                       cv_design=config.cv_design, cv_val=config.cv_val)
    return cfg.replace(**changes), config, loader.ClinicalStats.from_dict(state["clinical_stats"])


def finished(out: Path, config: RunConfig, state: dict | None) -> bool:
    """Whether a run trained all its epochs and wrote its test (and report) files."""
    done = state is not None and len(state.get("history") or []) >= int(config.epoch)
    folder = runfiles.Run(out)
    return done and folder.is_tested() and (not config.bootstrap or folder.has_report())


def extend(cfg: RunConfig, epochs: int, config: RunConfig, state: dict, out: Path) -> RunConfig:
    """``--resume --extend_epochs N`` on a finished run: N more epochs, a new cosine cycle from --lrG
    (warm restart) for the cosine schedule, and the old test and report files removed, since they
    describe the shorter run; the extended run writes them anew when it ends (its log says so:
    main.train_and_test, once the run's log file is open)."""
    done = len(state.get("history") or [])
    if done < int(config.epoch):
        raise UserError(f"--extend_epochs: the run {out} has finished {done} of its {config.epoch} epochs; "
                        f"finish it first ({resume_command(cfg)}), then extend it")
    config = config.replace(epoch=done + epochs, restarts=[*config.restarts, done])
    runfiles.Run(out).remove_results()
    return config
