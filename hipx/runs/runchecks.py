"""What a command does with an existing run, checked before anything is written: ``--test`` scores
the run as trained (its network, folds and report settings), ``--resume`` continues it exactly as
configured (only where and how fast this session runs may differ; a moved data folder when it holds
the images the run recorded), ``--extend_epochs N`` trains a finished run longer. Every refusal names
the command that works (:func:`resume_command`, :func:`test_command`).

One rule says whether a run starts from nothing, for every action (:class:`Start`): it has no
checkpoint to go on from. A new run does; so does a ``--resume`` that finds no ``last.pth`` -- a
cross-validation fold never started or whose folder was deleted (made with the cross-validation's
own settings, :func:`resume_group`), a run stopped, or out of disk, before its first ``last.pth`` --
and it gets exactly what a new run gets (``hipx.inference.network``: the clinical start of residual
fusion, ``--pretrained``). ``--resume`` with a ``last.pth`` goes on from it, ``--test`` scores best.pth.
"""
from __future__ import annotations

import glob
import logging
import os
import shlex
import sys
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

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
    """What the training session did with one run folder (``session.run``): the test metrics, the
    configuration the run ran with (a resumed run's own) and whether it was ``unchanged`` (finished
    before, nothing written)."""

    result: dict
    cfg: RunConfig
    unchanged: bool = False


@dataclass(frozen=True)
class Start:
    """How a run begins, as :func:`prepare_run` read it: ``cfg``, this session's settings (a run read
    back has its own but for where this session runs); ``config``, the run's saved configuration (None
    when the run starts from nothing: it is made from ``cfg`` when the run starts); ``stats``, the
    clinical statistics saved with ``state``; ``state``, the checkpoint the run goes on from (last.pth
    for ``--resume``, best.pth for ``--test``) or None: the run starts from nothing. ``new``: the run
    folder holds no run yet (a new run, or a cross-validation fold never started or deleted)."""

    cfg: RunConfig
    config: RunConfig | None = None
    stats: Any = None  # loader.ClinicalStats
    state: dict | None = None
    new: bool = True

    @property
    def from_nothing(self) -> bool:
        """The rule: a run with no checkpoint to go on from starts from nothing, whatever the action."""
        return self.state is None

    def replace(self, **changes: Any) -> "Start":
        return replace(self, **changes)


def afresh(config: RunConfig) -> RunConfig:
    """A saved configuration as the settings of a run that starts from nothing (``--config``, a resumed
    run without ``last.pth``, a cross-validation fold made again): its epochs in one schedule (the
    restarts of ``--extend_epochs`` belong to the run that was extended). What a run measures when it
    starts (input channels, target, trainer, versions) is measured again when it starts."""
    return config.replace(restarts=[])


def command(*arguments: str) -> str:
    """``python main.py ARGUMENTS`` as the user can paste it: this interpreter (relative when it lies
    below the current folder, e.g. .venv/bin/python) and this script."""
    python = sys.executable or "python"
    if python.startswith(os.getcwd() + os.sep):
        python = os.path.relpath(python)
    script = sys.argv[0] if sys.argv and sys.argv[0].endswith("main.py") else "main.py"
    return shlex.join([python, script, *map(str, arguments)])


def resume_command(cfg: RunConfig) -> str:
    """The command that continues this run."""
    fold, save_dir = cfg.fold, cfg.save_dir
    extra = []
    if cfg.is_fold:  # a cross-validation fold: continue the whole cross-validation
        fold = fold[: len(fold) - len(str(cfg.cv_fold))]
        extra = ["--folds", str(cfg.cv_folds)]
    if cfg.is_fold and cfg.cv_subset is not None:  # a learning curve's fold, <save_dir>/lc_<size>: its whole group
        save_dir = PurePosixPath(str(save_dir)).parent.as_posix()
    if cfg.out_root != "outs":
        extra += ["--out_root", str(cfg.out_root)]
    if cfg.tensorboard:  # a session setting: the command that continues keeps logging
        extra.append("--tensorboard")
    return command("--resume", "--save_dir", save_dir, "--fold", fold, *extra)


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


def prepare_run(cfg: RunConfig, action: Action, given: set[str], out: Path) -> Start:
    """This session's settings, the run's configuration, clinical statistics and the checkpoint it goes
    on from: new, or read back from an existing run for ``--test`` (best.pth: the network, folds and
    report settings from the run, the rest from the command line) and ``--resume`` (last.pth; without
    one the run starts from nothing, as configured in its config.json, or for a cross-validation fold
    never started as ``cfg`` -- the cross-validation's settings, :func:`resume_group` -- says). Nothing
    is written."""
    folder = runfiles.Run(out)
    if not action.reads_run:
        if out.exists() and any(p.name != runfiles.LOCK for p in out.iterdir()):
            how = ("it stopped before finishing its first epoch: continue it with --resume"
                   if not folder.has_checkpoint(runfiles.LAST) else "continue it with --resume, score it with --test")
            raise UserError(f"{out} already holds a run; nothing was changed. {how[0].upper() + how[1:]}, or choose "
                            f"another --save_dir / --fold (e.g. {resume_command(cfg)})")
        return Start(cfg)
    if action.test:
        return _test_settings(cfg, action, given, out)

    state = None
    if folder.has_checkpoint(runfiles.LAST):
        state = folder.load_checkpoint(runfiles.LAST)
        config = RunConfig.from_dict(state["config"])
    elif folder.config_file.is_file():  # stopped before its first last.pth: it starts again, as configured
        config = RunConfig.from_dict(folder.read_config())
    elif cfg.is_fold:  # a fold never started, or its folder deleted: made with the cross-validation's settings
        return Start(cfg)
    else:
        first_fold = runfiles.Run(out.parent / f"fold{cfg.fold}0").config_file
        if first_fold.is_file():
            k = runfiles.read_json(first_fold).get("cv_folds")
            raise UserError(f"--resume: {out.parent} holds a {k}-fold cross-validation (fold{cfg.fold}0 ...), not "
                            f"one run fold{cfg.fold}; give its number of folds: {resume_command(cfg)} --folds {k}")
        raise UserError(f"--resume: no run to continue at {out} (no {runfiles.LAST} or {runfiles.CONFIG}); check "
                        "--save_dir, --fold and --out_root, or start a new run without --resume")
    cfg = _resumed(cfg, given, config, out)
    if state is None:
        return Start(afresh(cfg), new=False)
    from hipx.data import loader

    return Start(cfg, config, loader.ClinicalStats.from_dict(state["clinical_stats"]), state, new=False)


def _resumed(cfg: RunConfig, given: set[str], config: RunConfig, out: Path) -> RunConfig:
    """The settings a resumed run goes on with: the run's ``config``, with where this session runs from
    ``cfg`` and the data folder where it moved to; other flags given with another value are refused."""
    moved = refuse_changes(cfg, given, config, out)
    cfg = config.replace(**{key: getattr(cfg, key) for key in runconfig.SESSION_KEYS})
    return cfg.replace(data_dir=moved) if moved else cfg  # moved: checked by moved_data, the same images


def resume_group(cfg: RunConfig, given: set[str]) -> RunConfig:
    """``--resume --folds K``: the cross-validation's own settings, read from a fold's config.json, so
    that a fold never started, or whose folder was deleted, is made as its group was configured (not
    from the command line's defaults) and the others go on as they were; a flag given with another
    value is refused, as for one run. Returns settings for ``crossval.cross_validate`` (its design and
    fold seed kept); refused when no fold of the group was ever configured."""
    group = runfiles.run_group(cfg.save_dir, cfg.out_root).dir
    for folder in sorted(group.glob(f"fold{glob.escape(cfg.fold)}*")):
        number = folder.name[len("fold") + len(cfg.fold):]
        if not (number.isdigit() and runfiles.Run(folder).config_file.is_file()):
            continue
        saved = RunConfig.from_dict(runfiles.Run(folder).read_config())
        if saved.is_fold and saved.cv_fold == int(number):
            as_fold = cfg.replace(fold=saved.fold, cv_folds=cfg.folds, cv_fold=saved.cv_fold)
            settings = _resumed(as_fold, given, saved, folder)
            return afresh(settings).replace(fold=cfg.fold, cv_folds=0, cv_fold=None)
    raise UserError(f"--resume: no cross-validation to continue at {group} (no fold{cfg.fold}0 ... with a "
                    f"{runfiles.CONFIG}); check --save_dir, --fold and --out_root, or start it without --resume")


def _test_settings(cfg: RunConfig, action: Action, given: set[str], out: Path) -> Start:
    """``--test``: the network, folds and (unless given) report settings of the run's best.pth, which
    the run goes on from; a command line that disagrees with the network, or an existing test result
    without ``--overwrite``, is refused."""
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
                       cv_design=config.cv_design, cv_val=config.cv_val, cv_subset=config.cv_subset)
    return Start(cfg.replace(**changes), config, loader.ClinicalStats.from_dict(state["clinical_stats"]), state,
                 new=False)


def finished(out: Path, config: RunConfig, state: dict | None) -> bool:
    """Whether a run trained all its epochs and wrote its test (and report) files."""
    done = state is not None and len(state.get("history") or []) >= int(config.epoch)
    folder = runfiles.Run(out)
    return done and folder.is_tested() and (not config.bootstrap or folder.has_report())


def extend(cfg: RunConfig, epochs: int, config: RunConfig, state: dict, out: Path) -> RunConfig:
    """``--resume --extend_epochs N`` on a finished run: N more epochs, a new cosine cycle from --lrG
    (warm restart) for the cosine schedule, and the old test and report files removed, since they
    describe the shorter run; the extended run writes them anew when it ends (its log says so:
    session.train_and_test, once the run's log file is open)."""
    done = len(state.get("history") or [])
    if done < int(config.epoch):
        raise UserError(f"--extend_epochs: the run {out} has finished {done} of its {config.epoch} epochs; "
                        f"finish it first ({resume_command(cfg)}), then extend it")
    config = config.replace(epoch=done + epochs, restarts=[*config.restarts, done])
    runfiles.Run(out).remove_results()
    return config
