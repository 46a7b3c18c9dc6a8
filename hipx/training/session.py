"""The training session that ``main.py`` starts: one run folder (or the K folds of a cross-validation)
trained, resumed or only tested, from the checked flags to the test result on the console.

    result = start(args, given)   # main.py, after build_parser and its flag checks

:func:`start` builds the configuration once (``options.settings``) and the session's processes,
then :func:`run` takes each run folder through its life: read back and checked
(``runchecks.prepare_run``: whether it starts from nothing or goes on from a checkpoint), data
checked, folder claimed, trained by the trainer :func:`build_trainer` makes on the network of
``hipx.inference.network``, its best checkpoint tested, reported. A new run that fails or is
interrupted before it has a ``last.pth`` leaves no folder behind; a refused command writes nothing
into a run. ``pretrain.py`` stops the same way (:func:`interrupted`, :func:`remove_run`).
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NoReturn

from hipx.core import fusion
from hipx.core.cli import UserError
from hipx.core.files import disk_full_advice
from hipx.core.runconfig import RunConfig
from hipx.data import filenames
from hipx.inference import network
from hipx.runs import runfiles
from hipx.runs.runchecks import (Action, Outcome, Start, command, extend, finished, prepare_run, resume_command,
                                 resume_group)
from hipx.training import loaders as run_data
from hipx.training import options

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Session:
    """What one command runs with, the same for every run (fold) it trains or tests: the ``action``,
    the flags the user ``given`` (--resume and --test compare them with the run's), the processes
    (``dist``, a ``runtime.Dist``: torchrun)."""

    action: Action
    given: frozenset[str]
    dist: Any


def start(args: argparse.Namespace, given: set[str]) -> dict | list[dict]:
    """Run the command ``main.py`` parsed (``args``; ``given``: the flags set on the command line):
    train, resume or test one run, or every fold of ``--folds K``. Returns the test metrics (a list,
    one per fold). A default run group this job made is removed again if it fails and leaves it empty."""
    cfg, overrides = options.settings(args, given)  # the one configuration; args is not read after this
    if given & {"late_fuse", "image_only"}:  # the older spellings of --fusion: checked as --fusion on --resume/--test
        given = given | {"fusion"}
    action = Action(test=bool(args.test), resume=args.resume, extend_epochs=args.extend_epochs,
                    overwrite=args.overwrite)
    from hipx.core import runtime

    runtime.short_openmp_spin()  # before torch loads: threads that wait do not spin away a shared core
    dist_info = runtime.init_distributed(cfg.device)
    runtime.setup_logging(level=logging.INFO if dist_info.is_main else logging.WARNING)
    for note in overrides:
        logger.info("--config %s: %s", args.config, note)
    session = Session(action, frozenset(given), dist_info)
    made = []  # a default run group (and --out_root) this job made: removed again if it fails and leaves them empty
    if cfg.save_dir is None and not dist_info.enabled:
        made = [] if Path(cfg.out_root).exists() else [Path(cfg.out_root)]
        cfg = cfg.replace(save_dir=runfiles.new_group(cfg.out_root, time.strftime("%Y%m%d-%H%M%S")))
        made.append(Path(cfg.out_root) / cfg.save_dir)
    elif cfg.save_dir is None:  # torchrun: every rank names it alike
        cfg = cfg.replace(save_dir=time.strftime("%Y%m%d-%H%M%S"))
    try:
        result = train_or_test(cfg, session)
    except BaseException:
        for folder in reversed(made):
            try:
                os.rmdir(folder)  # only while empty: a run saved there stays
            except OSError:
                break
        raise
    runtime.leave_distributed(dist_info)
    return result


def train_or_test(cfg: RunConfig, session: Session) -> dict | list[dict]:
    """One run, or with ``--folds K`` each fold (a resumed cross-validation with its own settings,
    ``runchecks.resume_group``) and the summary over them."""
    if cfg.runs_folds:
        from hipx.training import crossval

        if session.action.resume:
            cfg = resume_group(cfg, set(session.given))
        return crossval.cross_validate(cfg, lambda fold_cfg: run(fold_cfg, session), session.dist.is_main)
    return run(cfg, session).result


def run(cfg: RunConfig, session: Session) -> Outcome:
    """Train (or resume, or only test) one run folder. A new run that fails or is interrupted before
    its first epoch is saved leaves no folder behind; a refused command writes nothing into the run."""
    action = session.action
    out = runfiles.run_dir(cfg.save_dir, cfg.fold, cfg.out_root)
    begin = prepare_run(cfg, action, set(session.given), out)
    cfg = begin.cfg
    if begin.from_nothing:  # at once: an offline --pretrained imagenet or a wrong path stops before any data is read
        network.check_pretrained(cfg)
    if action.resume and begin.config is not None and finished(out, begin.config, begin.state) \
            and not action.extend_epochs:
        logger.info("the run %s finished all %d epochs (best epoch %d) and is tested; nothing to resume, "
                    "nothing changed. To train it longer: %s --extend_epochs N", out, begin.config.epoch,
                    int(begin.state["best"]["epoch"]), resume_command(cfg))
        result = runfiles.load_run(out).test_metrics()
        summary(result, out)
        return Outcome(result, cfg, unchanged=True)
    if action.resume and not Path(cfg.data_dir).is_dir():
        raise UserError(f"the run's data folder {cfg.data_dir} is not there; nothing was changed. If it moved, "
                        f"continue with: {resume_command(cfg)} --data_dir NEW_FOLDER (accepted when it holds the "
                        f"images the run recorded in {runfiles.Run(out).file(runfiles.DATA_FILES)})")
    files = runfiles.split_files(cfg, cfg.data_dir)
    # refuses unusable splits before any file is written
    data_summary = run_data.describe(files, training=not action.test, folds=cfg.cv_folds)
    if not action.test:
        run_data.check_patients(files, cfg.allow_shared_patients)
    target = target_of(cfg, begin.config, files)  # a target the data cannot give stops here, before any file
    if action.extend_epochs and begin.state is None:  # after the data checks: the run stays as it was
        raise UserError(f"--extend_epochs: the run {out} has not finished an epoch yet; continue it with "
                        f"{resume_command(cfg)}")
    claim = runfiles.claim_run(out) if session.dist.is_main else None  # a second job on this folder stops here
    created = claim if claim is not None and begin.new and claim.dir in claim.created else None
    if claim is not None and begin.new and not action.resume and any(p.name != runfiles.LOCK for p in out.iterdir()):
        claim.release()  # another job wrote a run here since prepare_run looked
        raise UserError(f"{out} already holds a run (another job wrote it a moment ago); nothing was changed. "
                        f"Choose another --save_dir / --fold, or continue that run with {resume_command(cfg)}")
    try:
        if action.extend_epochs:
            config = extend(cfg, action.extend_epochs, begin.config, begin.state, out)
            begin = begin.replace(config=config, cfg=cfg.replace(epoch=config.epoch, restarts=config.restarts))
        threads = use_settings(begin.cfg)
        return Outcome(train_and_test(begin, session, out, files, data_summary, threads, target), begin.cfg)
    except KeyboardInterrupt:
        interrupted(out, created, command(*sys.argv[1:]), resume_command(cfg))
    except BaseException as exc:
        done = saved_epochs(out)
        if created is not None and done == 0:
            remove_run(created)  # a failed start leaves nothing: the same command works once the cause is fixed
            raise
        if isinstance(exc, OSError) and out.is_dir():  # a full disk: the run is kept, and --resume goes on with it
            raise disk_full_advice(exc, f"continue the run with: {resume_command(cfg)} " + (
                f"(it goes on after epoch {done}, saved in {runfiles.LAST})" if done else
                f"(no epoch was saved in {runfiles.LAST}: it starts from nothing, as configured)")) from None
        raise
    finally:
        if claim is not None:
            claim.release()


def interrupted(out: Path, created: Path | runfiles.Claim | None, again: str, resume: str) -> NoReturn:
    """Ctrl-C: one line saying what is kept and the command that continues (``resume``) or, for a new
    run stopped before its first epoch was saved, whose folder ``created`` is removed, starts it
    ``again``; then exit 130. pretrain.py stops the same way."""
    done = saved_epochs(out)
    if done == 0 and created is not None:
        remove_run(created)
        logger.error("interrupted before the first epoch finished; nothing was kept. Start again with: %s", again)
    elif done == 0:
        logger.error("interrupted in epoch 1, before any epoch was saved; continue (from epoch 1) with: %s", resume)
    else:
        logger.error("interrupted in epoch %d; epochs 1-%d are saved in %s; continue exactly from there with: %s",
                     done + 1, done, runfiles.Run(out).file(runfiles.LAST), resume)
    raise SystemExit(130) from None


def use_settings(cfg: RunConfig) -> str:
    """Threads and determinism, once prepare_run has read a resumed run's settings: both change the
    last digits of the results, so a resumed run uses the ones it was configured with. Returns the
    threads chosen, in words."""
    from hipx.core import runtime

    threads = runtime.choose_threads(cfg.cpus, cfg.workers, gpu=runtime.cuda_wanted(cfg.device),
                                     adaptive=not cfg.deterministic)
    if cfg.deterministic:
        runtime.make_deterministic()
    return threads


def saved_epochs(out: Path) -> int:
    """Epochs a run can go on from: those its last.pth holds, else 0 (a run whose first last.pth was never
    written -- stopped, or out of disk, while writing it -- has saved nothing to continue; it starts from
    nothing again). Its history.csv can be an epoch ahead: written just before last.pth, whose write the
    disk may not have taken. An unreadable last.pth counts the history's epochs."""
    import torch

    folder = runfiles.Run(out)
    if not folder.has_checkpoint(runfiles.LAST):
        return 0
    try:  # mmap: the epoch is read without loading the weights
        return int(torch.load(folder.file(runfiles.LAST), map_location="cpu", weights_only=True, mmap=True)["epoch"])
    except Exception:  # noqa: BLE001 - torch raises many kinds for a damaged file; --resume then says which
        return folder.saved_epochs()


def remove_run(created: Path | runfiles.Claim) -> None:
    """Remove what a failed start made: a folder (pretrain.py), or what a run folder's claim made."""
    from hipx.core import runtime

    runtime.close_log_file()
    if isinstance(created, runfiles.Claim):
        created.undo()
    else:
        shutil.rmtree(created, ignore_errors=True)


def build_trainer(cfg: RunConfig, config: RunConfig, loaders: dict, stats, device, out: Path, dist_info=None,
                  device_augmenter=None, action: Action = Action(), state: dict | None = None):
    """The trainer of the run's ``config`` and its fusion mode, with the run's network
    (``network.run_network``: from the checkpoint ``state`` it goes on from, or started from nothing)
    on ``device``, compiled and DDP-wrapped as this session's ``cfg`` asks, and the optimiser: what
    ``train_and_test`` trains and ``bench.py`` times."""
    import torch

    from hipx.core import runtime
    from hipx.models import count_parameters
    from hipx.training import losses
    from hipx.training.trainer import ClassifyTrainer, LateFuseClassifyTrainer

    dist_info = dist_info or runtime.Dist()
    precision = runtime.select_precision(cfg.dtype, device)
    channels_last = runtime.use_channels_last(cfg.channels_last)
    model = network.run_network(config, state, loaders["train"].dataset.files, stats)
    logger.info("model %s (%s, %d input channels, %.2f M parameters); precision %s; channels_last %s",
                config.model, fusion.text(config.fusion), config.in_chans,
                count_parameters(model) / 1e6, precision.name, channels_last)
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if cfg.compile:
        model.compile()  # in place: checkpoints keep the plain parameter names
        logger.info("torch.compile: the first training and the first validation batch compile the network")
    if dist_info.enabled:
        if cfg.sync_bn:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    trainer_cls = LateFuseClassifyTrainer if fusion.mode(config.fusion).clinical_vector else ClassifyTrainer
    optimizer = scheduler = None
    if not action.test:
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lrG, betas=(cfg.beta, 0.999))
        if cfg.sched == "cosine":  # over the run's epochs, or since the last --extend_epochs restart
            cycle = cfg.epoch - (config.restarts or [0])[-1]
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cycle)
    return trainer_cls(model=model, loaders=loaders, loss_fn=losses.build_loss(cfg.loss, cfg.focal_gamma, cfg.t_alpha),
                       optimizer=optimizer, scheduler=scheduler, device=device, run_dir=out, config=config,
                       clinical_stats=stats.to_dict(), precision=precision, select_metric=cfg.select_metric,
                       seed=cfg.seed, channels_last=channels_last, dist_info=dist_info,
                       device_augment=device_augmenter, ema_decay=config.ema, tta=config.tta,
                       validate_start=fusion.mode(config.fusion).clinical_offset)


def train_and_test(begin: Start, session: Session, out: Path, files: dict, data_summary: str, threads: str,
                   target: tuple) -> dict:
    """Train the run ``begin`` describes (from nothing, or on from its last.pth) and test its best
    checkpoint -- or with ``--test`` only test it -- then write its report (``--bootstrap N``) and show
    the result. ``target``: the data folder's measurement and the run's target (:func:`target_of`).
    Returns the test metrics."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    from hipx.core import runtime
    from hipx.data import loader, preprocessing

    cfg, action, dist_info = begin.cfg, session.action, session.dist
    device = runtime.select_device_for(dist_info, cfg.device, cfg.gpus)
    stats = begin.stats
    if stats is None:  # a run that starts from nothing: normalised with its training images alone
        stats = loader.ClinicalStats.fit([filenames.decode(f) for f in files["train"]],
                                         warn=fusion.mode(cfg.fusion).uses_clinical)
    _open_run(begin, action, out, dist_info, device, threads, data_summary)
    device_augmenter = None if action.test else run_data.augment_on_device(cfg, device)
    logger.info("loader hands over %s images; augmentation %s", cfg.handover,
                f"on the device ({device_augmenter})" if device_augmenter else
                ("in the loader workers" if cfg.augment else "none"))
    measure, spec = target
    logger.info("target: %s", spec.describe())
    loaders = run_data.make_loaders(cfg, stats, files, dist_info, device_augmenter is not None,
                                    measure if spec.graded else None)
    config = begin.config if begin.config is not None else new_config(cfg, loaders["train"].dataset.channels, spec,
                                                                         dist_info.world)
    if dist_info.is_main and not action.test and (begin.from_nothing or action.extend_epochs):
        runfiles.Run(out).write_config(config.to_dict())
    if dist_info.is_main and not action.test and not runfiles.Run(out).file(runfiles.DATA_FILES).is_file():
        runfiles.write_data_files(out, files, cfg.data_dir)
    if dist_info.is_main and not action.test and not (out / preprocessing.FILE).is_file():
        preprocessing.record_preprocessing(cfg.data_dir, out)  # how its images were made, for predict.py on raw files
    trainer = build_trainer(cfg, config, loaders, stats, device, out, dist_info, device_augmenter, action,
                            begin.state)
    with logging_redirect_tqdm():
        if not action.test:
            _train(trainer, begin, action, dist_info)
        result = trainer.test()
    if dist_info.is_main:
        numbers = {}
        if cfg.bootstrap:
            from hipx.reports import run_report

            numbers = run_report.write_report(out, data_dir=cfg.data_dir, n_boot=cfg.bootstrap, seed=cfg.seed,
                                           files={k: [str(f) for f in v] for k, v in files.items()})
        summary(result, out, numbers.get("measurement"))
    runtime.close_log_file()
    return result


def new_config(cfg: RunConfig, in_chans: int, spec, world: int) -> RunConfig:
    """The configuration of a run that starts from nothing: its settings, with what the data and this
    machine say (input channels, the target fitted on its training images, trainer, versions)."""
    import torch

    from hipx.data import loader

    from hipx.models.classifier import RESIDUAL_HEADS

    return cfg.replace(in_chans=in_chans, target_spec=spec.to_dict(),
                       residual_head=RESIDUAL_HEADS[0] if fusion.mode(cfg.fusion).clinical_offset else None,
                       trainer="LateFuseClassifyTrainer" if fusion.mode(cfg.fusion).clinical_vector
                       else "ClassifyTrainer",
                       clinical_names=list(loader.CLINICAL_NAMES), torch=torch.__version__, world_size=world)


def _open_run(begin: Start, action: Action, out: Path, dist_info, device, threads: str, data_summary: str) -> None:
    """The run folder made and its train.log opened (rank 0), every rank seeded, and what the run is
    logged: where, on what, from which data, and how an extended run goes on."""
    import torch

    from hipx.core import runtime

    cfg, config = begin.cfg, begin.config
    if dist_info.enabled:
        torch.distributed.barrier()  # every rank has checked the run folder before rank 0 creates it
    if dist_info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        runtime.setup_logging(runfiles.Run(out).log_file)
    runtime.seed_everything(cfg.seed, dist_info.rank)
    logger.info("run folder %s; device %s%s; %s", out, device,
                f" (rank 0 of {dist_info.world})" if dist_info.enabled else "", threads)
    logger.info("data %s: %s", cfg.data_dir, data_summary)
    if action.extend_epochs:  # runchecks.extend made config.restarts end with the epochs done before
        logger.info("extending the run from %d to %d epochs%s; its test and report files were removed and are "
                    "written again for the best epoch when the run ends", config.restarts[-1], config.epoch,
                    " (the cosine schedule restarts at --lrG)" if config.sched == "cosine" else "")
    elif action.resume and begin.from_nothing:
        logger.info("the run has no %s to go on from: it starts from nothing, as a new run with its settings "
                    "would", runfiles.LAST)


def _train(trainer, begin: Start, action: Action, dist_info) -> None:
    """Fit the run: from nothing, or on from the last.pth it was read with (``--extend_epochs``: weights,
    optimiser moments and history go on, the schedule restarts at --lrG); with ``--tensorboard`` rank 0
    logs it (board.py), after the epochs it already saved."""
    from hipx.training import board
    from hipx.training.trainer import NonFiniteLossError

    cfg, state = begin.cfg, begin.state
    if state is not None:
        if action.extend_epochs:  # weights, optimizer moments and history go on; the schedule restarts
            state = {**state, "scheduler": None}
        trainer.restore(state)
        if action.extend_epochs:
            for group in trainer.optimizer.param_groups:
                group["lr"] = group["initial_lr"] = cfg.lrG
            if dist_info.is_main:
                trainer.save_last(len(trainer.history))  # from here --resume continues the extended run
        logger.info("resuming after epoch %d of %d", len(trainer.history), cfg.epoch)
    trainer.board = board.open_board(cfg.tensorboard and dist_info.is_main, trainer.run_dir, len(trainer.history))
    try:
        best = trainer.fit(cfg.epoch)
    except NonFiniteLossError as exc:
        logger.error("%s", exc)
        raise SystemExit(1) from None
    finally:
        if trainer.board is not None:
            trainer.board.close()
    logger.info("best epoch %d (val %s %.4f); scoring its checkpoint on test", best["epoch"], cfg.select_metric,
                best["value"])


def target_of(cfg: RunConfig, config: RunConfig | None, files: dict):
    """The data folder's measurement (``measures.read``) and the run's target: a saved run's own, or for
    a run that starts from nothing fitted to its training images (targets.build_spec). A user's mistake
    is one line."""
    from hipx.core import measures
    from hipx.core import targets

    try:
        measure = measures.read(cfg.data_dir)
        if config is not None:
            return measure, targets.TargetSpec.from_dict(config.target_spec)
        train = measure.of(files["train"]) if measure is not None else []
        absent = measures.absence(cfg.data_dir) if measure is None and cfg.target != "binary" else None
        return measure, targets.build_spec(cfg.target, measure, train, cfg.cut, absent)
    except (measures.MeasureError, targets.TargetError) as exc:
        raise UserError(str(exc)) from None


def summary(result: dict, out: Path, measurement: dict | None = None) -> None:
    """The test result on the console; ``measurement``: the report's predicted-against-measured block."""
    from hipx.reports import measurement as measure_report

    m = result["at_threshold"]
    print(f"test set ({result['n_images']} images), best epoch {result['epoch']}, "
          f"threshold {result['threshold']:.3f} from validation:")
    keys = ("roc_auc", "pr_auc", "accuracy", "sensitivity", "specificity", "f0_5", "f1", "f2", "brier")
    print("  " + "  ".join(f"{k} {_number(m[k])}" for k in keys))
    if measurement:
        print("  predicted against measured: " + measure_report.headline(measurement).lstrip("; "))
    print(f"files in {out}")


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"
